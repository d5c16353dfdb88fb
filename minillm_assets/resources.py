"""The one resource that chooses the profile and where artifacts live.

`profile` (smoke | gpu) picks a preset of settings from `minillm_core.profiles`; run config from
the Launchpad or `--config-json` layers on top. Nothing else in the graph branches on the profile.
Relative paths resolve against the project root (the folder holding workspace.yaml, or
`MINILLM_ROOT`), never against the current directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field, field_validator

from minillm_core.config import ConfigError, CoreConfig, check_within_roots
from minillm_core.devices import require_device, require_profile
from minillm_core.errors import DeviceUnavailableError
from minillm_core.layout import Layout
from minillm_core.model import ModelConfig
from minillm_core.profiles import PROFILES, preset

C = TypeVar("C", bound=CoreConfig)

STAGES = ("pretrain", "sft", "dpo")

# What a run without the device its profile needs should do instead (resources.minillm.config).
INSTEAD = (
    "Select the cpu or smoke profile (resources: minillm: config: profile), "
    "or run `scripts/run.sh --profile cpu` / `scripts/run.sh --smoke-test`"
)

# Config fields naming where a stage writes: run config may move them, but only inside the roots.
OUTPUT_FIELDS = ("out_dir", "output_dir", "tensorboard_dir", "results_file")


class MiniLLMResource(dg.ConfigurableResource):
    """Profile and artifact roots for the MiniLLM graph."""

    profile: str = Field(default="smoke", description=f"One of: {', '.join(PROFILES)}.")
    root: str = Field(default="", description="Project root; empty = MINILLM_ROOT or the checkout.")
    sources_dir: str = Field(default="data/chinese", description="Your source JSONL/CSV files.")
    samples_dir: str = Field(
        default="dataset",
        description="Shipped samples, used per category "
        "when sources_dir has none for it (relative: to the checkout).",
    )
    processed_dir: str = Field(default="data/processed", description="Where the mixes go.")
    out_dir: str = Field(default="out", description="Tokenizer, token tensors, checkpoints.")
    tf_dir: str = Field(
        default="",
        description="TensorBoard logs and eval_results.jsonl; "
        "empty = $TF_DIR or ../tf_dir (one level above the project).",
    )
    seq_len: int = Field(
        default=0,
        ge=0,
        description="The model's context: token tensors pack "
        "rows of this length and every stage trains at it; 0 = the profile's.",
    )

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str) -> str:
        if v not in PROFILES:
            raise ValueError(f"unknown profile {v!r}; allowed: {', '.join(PROFILES)}")
        return v

    # -- paths: asked of minillm_core.layout, the one module that knows them -----------------
    @property
    def layout(self) -> Layout:
        return Layout.at(
            self.root or None,
            sources_dir=self.sources_dir,
            samples_dir=self.samples_dir,
            processed_dir=self.processed_dir,
            out_dir=self.out_dir,
            tf_dir=self.tf_dir,
        )

    @property
    def root_path(self) -> Path:
        return self.layout.root

    @property
    def sources(self) -> Path:
        return self.layout.sources

    @property
    def samples(self) -> Path:
        return self.layout.samples

    @property
    def processed(self) -> Path:
        return self.layout.processed

    @property
    def out(self) -> Path:
        return self.layout.out

    @property
    def tf(self) -> Path:
        return self.layout.tf

    def mix_path(self, output: str, heldout: bool = False) -> Path:
        return self.layout.mix_path(output, heldout)

    @property
    def tokenizer_dir(self) -> Path:
        return self.layout.tokenizer_dir

    def tokens_dir(self, stage: str) -> Path:
        return self.layout.tokens_dir(stage)

    def checkpoint_dir(self, stage: str) -> Path:
        return self.layout.checkpoint_dir(stage)

    @property
    def results_file(self) -> Path:
        return self.layout.results_file

    # -- settings ----------------------------------------------------------------------------
    def require_devices(self, asset: str, run_config: Mapping[str, Any]) -> None:
        """Fail at once, with one line, when the profile needs a device this machine lacks
        (the first assets call it, so a gpu run without CUDA stops before the mix). A run that
        sends training to Kubernetes pods needs no local GPU: it is not checked here."""
        ops = (run_config or {}).get("ops") or {}
        launchers = {
            ((op.get("config") or {}).get("distributed") or {}).get("launcher")
            for op in ops.values()
            if isinstance(op, Mapping)
        }
        if "k8s" in launchers:
            return
        try:
            require_profile(self.profile, INSTEAD)
        except DeviceUnavailableError as exc:
            raise dg.Failure(description=f"{asset}: {exc}", allow_retries=False) from None

    def require_device(self, device: str, concern: str) -> None:
        """DeviceUnavailableError (one line) when a stage's device is not on this machine."""
        require_device(device, f"{concern} device {device}", INSTEAD)

    def preset(self, concern: str) -> dict[str, Any]:
        values = preset(self.profile, concern)
        if concern == "model" and self.seq_len:
            values["max_position_embeddings"] = self.seq_len
        return values

    @property
    def context_length(self) -> int:
        """The one sequence length of this graph (tensors and training derive from it)."""
        return ModelConfig.resolve(self.preset("model")).max_position_embeddings

    def settings(
        self,
        cls: type[C],
        concern: str,
        user: dg.Config | dict | None,
        base: dict[str, Any] | None = None,
    ) -> C:
        """Field defaults < `base` (paths the asset derives) < the profile preset < run config.
        Output paths must resolve inside the artifact roots (out, processed, tf)."""
        if isinstance(user, dg.Config):
            user = user.model_dump(exclude_none=True)
        try:
            cfg = cls.resolve(base, self.preset(concern), user)
            check_within_roots(
                cfg.model_dump(),
                [self.out, self.processed, self.tf],
                [f for f in OUTPUT_FIELDS if f in cls.model_fields],
            )
            return cfg
        except ConfigError as exc:
            raise dg.Failure(
                description=f"{exc}\n(set it under ops.<asset>.config in run config)"
            ) from exc
