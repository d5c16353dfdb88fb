"""`TrainState`: everything a run changes as it goes -- the model, the optimiser (with the grad
scaler), the learning-rate schedule, the step and stream position, and the RNG states -- and how
it is built at the start of a run.

The learning rate is a pure function of the step (`LRSchedule`), so there is no scheduler object
to save. The model's initial weights are a pure function of the seed: every RNG draw made while
building the state happens in one fixed order (policy, initial weights, DPO reference), so the
RNG state a resume file records, and with it the dropout stream, is the same on every run.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minillm_core.artifacts import require, sha256_file
from minillm_core.errors import ConfigError
from minillm_core.model import MiniLLM, ModelConfig
from minillm_core.progress import LogFn, emit
from minillm_core.train.checkpointer import WEIGHTS, load_checkpoint, require_same_model
from minillm_core.train.config import PARENT, TrainConfig


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup to the peak, then cosine down to min_lr_ratio x peak at the last step."""

    peak: float
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float

    @classmethod
    def of(cls, cfg: TrainConfig, total_steps: int) -> LRSchedule:
        warm = (
            cfg.warmup_steps
            if cfg.warmup_steps is not None
            else int(cfg.warmup_ratio * total_steps)
        )
        return cls(cfg.learning_rate, total_steps, warm, cfg.min_lr_ratio)

    def __call__(self, step: int) -> float:
        peak, warm = self.peak, self.warmup_steps
        if step < warm:
            return peak * (step + 1) / warm
        progress = (step - warm) / max(1, self.total_steps - warm)
        floor = self.min_lr_ratio * peak
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "warmup_cosine", "total_steps": self.total_steps}


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """The learning rate of `step` of `total` under `cfg` (the schedule as a plain function)."""
    return LRSchedule.of(cfg, total)(step)


def _decay_groups(
    params: list[nn.Parameter], cfg: TrainConfig, **extra: Any
) -> list[dict[str, Any]]:
    """Two param groups: matrices with weight decay, vectors (norms) without."""
    return [
        {**extra, "params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {**extra, "params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: MiniLLM, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decay on matrices, not on norms), or with `optimizer="muon"` Muon for the blocks'
    matrices and AdamW for the rest (`minillm_core.train.muon`)."""
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer == "muon":
        return _muon(model, cfg, trained, betas)
    groups = _decay_groups([p for _, p in trained], cfg)
    try:
        # The fused kernel updates every parameter in one pass (CUDA and, since torch 2.4, CPU).
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas)


def _muon(
    model: MiniLLM,
    cfg: TrainConfig,
    trained: list[tuple[str, nn.Parameter]],
    betas: tuple[float, float],
) -> torch.optim.Optimizer:
    from minillm_core.inference import autocast_dtype
    from minillm_core.train.muon import Muon

    def is_matrix(name: str, p: nn.Parameter) -> bool:
        return p.dim() == 2 and name.startswith("model.layers.")

    device = next(model.parameters()).device
    muon = {
        "params": [p for n, p in trained if is_matrix(n, p)],
        "muon": True,
        "lr_ratio": cfg.muon_lr / cfg.learning_rate,
        "weight_decay": cfg.weight_decay,
        "momentum": cfg.muon_momentum,
        "ns_steps": 5,
        # bf16 where the device multiplies it natively (CUDA, AVX512-BF16/AMX CPUs)
        "ns_dtype": autocast_dtype("auto", device),
    }
    if not muon["params"]:
        raise ConfigError("optimizer muon: the model has no trainable block matrices")
    rest = [p for n, p in trained if not is_matrix(n, p)]
    adam = _decay_groups(rest, cfg, muon=False, betas=betas, eps=1e-8)
    return Muon([muon, *adam], lr=cfg.learning_rate)


# ---------------------------------------------------------------------------------------------
# RNG states
# ---------------------------------------------------------------------------------------------


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The dropout seed of a rank other than 0 (same initial weights, its own dropout masks)."""
    return (seed * 1_000_003 + rank * 7_919 + step) % 2**63


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _py_state(random.getstate()),
        "numpy": _np_state(np.random.get_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state(st: tuple[Any, ...]) -> list[Any]:
    return [st[0], list(st[1]), st[2]]


def _np_state(st: Any) -> list[Any]:
    return [
        st[0],
        torch.from_numpy(np.asarray(st[1]).astype(np.int64)),
        int(st[2]),
        int(st[3]),
        float(st[4]),
    ]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_rank_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """torch.use_deterministic_algorithms for the run only."""
    prev = torch.are_deterministic_algorithms_enabled()
    if on:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


# ---------------------------------------------------------------------------------------------
# The state
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Model, optimiser, grad scaler, LR schedule, step, stream position and counters; the RNG
    states are the process's own and are captured by `rng_state()` when saving."""

    model: MiniLLM
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: LRSchedule
    init_dir: Path | None = None
    init_hash: str | None = None
    step: int = 0
    position: int = 0
    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)

    def set_lr(self) -> float:
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_ratio", 1.0)
        return lr

    def load(self, saved: dict[str, Any]) -> None:
        """The counters, optimiser and scaler of a resume state (weights: the checkpointer)."""
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        self.step, self.position = int(saved["step"]), int(saved["position"])
        self.tokens_seen = int(saved["tokens_seen"])
        self.losses = [float(x) for x in saved["losses"].tolist()]


def build_model(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    data_meta: dict[str, Any],
    device: torch.device,
    rank: int,
    log: LogFn | None,
) -> tuple[MiniLLM, Path | None, str | None]:
    """The model at its initial weights (seeded init, or the parent checkpoint), on `device`."""
    seed_all(cfg.seed)
    model = MiniLLM(model_cfg)
    init_dir = init_weights_dir(cfg)
    init_hash = None
    if init_dir is not None:
        _load_init(model, init_dir, data_meta, log)
        init_hash = sha256_file(init_dir / WEIGHTS)
    model.to(device).train()
    if rank > 0:
        # Same initial weights on every rank (the seed above), different dropout masks after it.
        torch.manual_seed(rank_seed(cfg.seed, rank, 0))
    return model, init_dir, init_hash


def new_state(
    cfg: TrainConfig,
    model: MiniLLM,
    device: torch.device,
    total_steps: int,
    init_dir: Path | None,
    init_hash: str | None,
) -> TrainState:
    return TrainState(
        model=model,
        optimizer=make_optimizer(model, cfg),
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.dtype == "float16"),
        schedule=LRSchedule.of(cfg, total_steps),
        init_dir=init_dir,
        init_hash=init_hash,
    )


def init_weights_dir(cfg: TrainConfig) -> Path | None:
    if cfg.stage == "pretrain" and not cfg.pretrained_path:
        return None
    if not cfg.pretrained_path:
        raise ConfigError(f"{cfg.stage} starts from trained weights: set pretrained_path")
    producer = PARENT[cfg.stage] or "pretrain"
    what = {"pretrain": "initial", "sft": "pretrain", "dpo": "SFT"}[cfg.stage]
    d = require(cfg.pretrained_path, f"{what} checkpoint (run `minillm {producer}` first)")
    require(d / WEIGHTS, f"{what} checkpoint weights")
    return d


def _load_init(model: MiniLLM, d: Path, data_meta: dict[str, Any], log: LogFn | None) -> None:
    src, meta = load_checkpoint(d)
    require_same_model(model.config, d, meta)
    th, dh = meta.get("tokenizer_hash"), data_meta.get("tokenizer_hash")
    if th and dh and th != dh:
        raise ConfigError(
            f"tokenizer mismatch: checkpoint {d} was trained with tokenizer {th[:12]}, "
            f"the data was made with {dh[:12]}"
        )
    if not meta.get("finished", True):
        emit(
            log, f"warning: {d} is an unfinished {meta.get('stage')} run (step {meta.get('step')})"
        )
    model.load_state_dict(src.state_dict())
