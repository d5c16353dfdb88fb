"""What a training stage is told: `TrainConfig` (with the seed's per-stage defaults) and what it
reports back, `TrainReport`.

The sequence length is not a training setting: every stage trains at the model's context
(`ModelConfig.max_position_embeddings`), the length the token tensors are packed at. Default
paths are not settings of the core either: the front ends take them from `minillm_core.layout`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from minillm_core.config import CoreConfig, validate_device
from minillm_core.errors import ConfigError
from minillm_core.schema import Stage

# The stage each stage starts from (its initial weights and, for DPO, its reference).
PARENT: dict[str, str | None] = {"pretrain": None, "sft": "pretrain", "dpo": "sft"}

# The seed's per-stage values (minimind's train_pretrain / train_full_sft / train_dpo), applied
# to every field left unset.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 5e-4,
        "accumulation_steps": 8,
        "group_by_length": False,
    },
    "sft": {
        "epochs": 2,
        "batch_size": 16,
        "learning_rate": 1e-5,
        "accumulation_steps": 1,
        "group_by_length": False,
    },
    "dpo": {
        "epochs": 1,
        "batch_size": 4,
        "learning_rate": 4e-8,
        "accumulation_steps": 1,
        "group_by_length": True,
    },
}


class TrainConfig(CoreConfig):
    """Settings of one training stage. Fields left unset (or None) take the stage's value in
    STAGE_DEFAULTS, so after construction they always hold a value (hence typed without None;
    the None defaults are only the "unset" marker the validator replaces)."""

    stage: Stage = Field(description="pretrain | sft | dpo")
    data_path: str | None = Field(
        None, description="token tensors directory, or a JSONL mix (then --tokenizer_dir is needed)"
    )
    tokenizer_dir: str | None = Field(
        None, description="trained tokenizer, to tokenize a JSONL mix"
    )
    out_dir: str | None = Field(
        None, description="checkpoint directory (weights, sidecar, resume state)"
    )
    epochs: int = Field(None, ge=1, description="passes over the data (pretrain 2, sft 2, dpo 1)")  # type: ignore[assignment]
    batch_size: int = Field(None, ge=1, description="rows (DPO: pairs) per micro-batch")  # type: ignore[assignment]
    accumulation_steps: int = Field(None, ge=1, description="micro-batches per optimizer step")  # type: ignore[assignment]
    learning_rate: float = Field(None, gt=0, description="peak learning rate")  # type: ignore[assignment]
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="cosine floor, as a fraction of the peak"
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="linear warmup steps; None = warmup_ratio"
    )
    warmup_ratio: float = Field(0.01, ge=0, lt=1, description="warmup as a fraction of all steps")
    weight_decay: float = Field(0.01, ge=0, description="decoupled decay on matrices (not norms)")
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw",
        description="adamw, or muon: Muon (orthogonalised momentum) for the blocks' matrices, "
        "AdamW at learning_rate for embeddings and norms",
    )
    muon_lr: float = Field(0.02, gt=0, description="Muon's peak learning rate (same schedule)")
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="Muon's Nesterov momentum")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = no clipping")
    device: str = Field("cpu", description="cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32",
        description="autocast dtype (weights stay float32); float16 uses a grad scaler; auto = "
        "bfloat16 on cuda and on a CPU with native bf16 (AVX512-BF16, AMX, Arm BF16), "
        "else float32",
    )
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    num_workers: int = Field(
        0,
        ge=0,
        description="DataLoader workers; rows are memory-map slices, "
        "so 0 (no worker start-up) is usually fastest",
    )
    log_interval: int = Field(
        100, ge=1, description="steps between log lines and TensorBoard points"
    )
    save_interval: int = Field(1000, ge=1, description="steps between checkpoints + resume states")
    tensorboard_dir: str | None = Field(
        None, description="TensorBoard root; scalars go to <root>/<stage>"
    )
    pretrained_path: str | None = Field(
        None, description="initial weights (SFT: pretrain, DPO: SFT checkpoint)"
    )
    ref_path: str | None = Field(
        None, description="DPO reference checkpoint; None = pretrained_path"
    )
    beta: float = Field(0.1, gt=0, description="DPO temperature")
    cache_reference: bool = Field(
        True,
        description="DPO: keep reference log-probs per pair for later epochs (2 floats per pair)",
    )
    group_by_length: bool = Field(
        None,
        description="batch rows of similar length together "
        "(less padding); default: on for dpo, off otherwise",
    )  # type: ignore[assignment]
    tokenizer_hash: str | None = Field(None, description="refuse data made with another tokenizer")
    resume: bool = Field(True, description="continue an interrupted run found in out_dir")
    compile: bool = Field(False, description="torch.compile the model")
    document_mask: bool = Field(
        True,
        description="pretrain on packed rows: attention stays within each document, "
        "as at inference (off: each document also sees the end of the one before)",
    )
    seed: int = Field(42, description="model init, data order and dropout")
    deterministic: bool = Field(
        False, description="torch.use_deterministic_algorithms for this run"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        return validate_device(v)

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults(cls, data: Any) -> Any:
        # Before validation, so the stage's values are checked like given ones and the fields
        # are typed as what they always hold after construction.
        stage = data.get("stage") if isinstance(data, dict) else None
        if isinstance(stage, str) and stage in STAGE_DEFAULTS:  # a wrong type is the validator's
            data = dict(data)
            for key, value in STAGE_DEFAULTS[data["stage"]].items():
                if data.get(key) is None:
                    data[key] = value
        return data

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step, for any number of processes (they split it, see
        `rank_accumulation`)."""
        return self.batch_size * self.accumulation_steps

    def rank_accumulation(self, world: int) -> int:
        """Micro-batches each of `world` processes runs per optimizer step.

        The global batch must split into whole micro-batches per rank: accumulation_steps a
        multiple of the world size. Otherwise the effective batch (and so the training) would
        depend on how many GPUs ran it, which is what makes results irreproducible across
        machines; refusing is clearer than silently changing the batch."""
        if self.accumulation_steps % world:
            hint = ""
            if self.global_batch % world == 0:
                hint = (
                    f" (e.g. --batch_size {self.global_batch // world} --accumulation_steps "
                    f"{world} keeps the global batch of {self.global_batch})"
                )
            raise ConfigError(
                f"accumulation_steps={self.accumulation_steps} does not split across {world} "
                f"processes: each optimizer step is accumulation_steps micro-batches of batch_size "
                f"rows shared out among the processes, so accumulation_steps must be a multiple of "
                f"{world}; raise it and lower batch_size to keep the global batch{hint}"
            )
        return self.accumulation_steps // world

    def required_path(self, name: str) -> str:
        """A path setting the run cannot do without (the front ends fill them from the layout)."""
        value = getattr(self, name)
        if not value:
            raise ConfigError(f"{self.stage}: {name} is not set")
        return str(value)


class TrainReport(BaseModel):
    checkpoint_dir: Path
    final_loss: float
    steps: int
    tokens_seen: int
    tokens_per_s: float
    num_parameters: int
    loss_curve_png: Path | None
    metadata: dict[str, Any]
