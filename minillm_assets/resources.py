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
from minillm_core.layout import CHECKOUT, Layout, project_root
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

    # -- paths -------------------------------------------------------------------------------
    def _abs(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.root_path / path

    @property
    def root_path(self) -> Path:
        return Path(self.root).resolve() if self.root else project_root()

    @property
    def sources(self) -> Path:
        return self._abs(self.sources_dir)

    @property
    def samples(self) -> Path:
        path = Path(self.samples_dir).expanduser()
        return path if path.is_absolute() else CHECKOUT / path

    @property
    def processed(self) -> Path:
        return self._abs(self.processed_dir)

    @property
    def out(self) -> Path:
        return self._abs(self.out_dir)

    @property
    def tf(self) -> Path:
        return self._abs(self.tf_dir) if self.tf_dir else Layout.at(self.root_path).tf

    def mix_path(self, output: str, heldout: bool = False) -> Path:
        return self.processed / f"{output}_chinese{'_heldout' if heldout else ''}.jsonl"

    @property
    def tokenizer_dir(self) -> Path:
        return self.out / "tokenizer"

    def tokens_dir(self, stage: str) -> Path:
        return self.out / "tokens" / stage

    def checkpoint_dir(self, stage: str) -> Path:
        return self.out / stage

    @property
    def results_file(self) -> Path:
        return self.tf / "eval_results.jsonl"

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
