"""One training loop for pretrain, SFT and DPO.

A stage is (rows, objective): pretrain reads next-token rows and minimises cross-entropy, SFT reads
chat rows and minimises cross-entropy on assistant tokens, DPO reads preference pairs and minimises
the DPO loss against a frozen reference (`minillm_core.objectives`). Everything else -- data order,
mixed precision, accumulation, clipping, the learning-rate schedule, logging, checkpoints, resume,
guards -- is this one loop. The seed kept a near-copy of its loop per stage, so fixes landed in
one copy and not the others.

Data order and resume. The training data is one stream of samples: epoch e is a permutation of the
dataset that depends only on (seed, e), and the stream is epoch 0, then epoch 1, ... A run's
position is the number of *global* samples consumed, so the resume state does not depend on the
batch split: a run may resume under another number of processes.

Several processes (DDP under torchrun, see `minillm_core.distributed`). When a process group is
initialised, `train` wraps the model in DistributedDataParallel. The global batch stays
batch_size x accumulation_steps for any world size W: each optimizer step is accumulation_steps
micro-batches of batch_size rows, dealt round-robin to the ranks (W micro-batches per round,
accumulation_steps / W rounds), so rank r reads only its own rows of the memory-mapped shards and
the gradient is the same mean over the same micro-batches as in one process. Losses, token counts
and the SIGTERM flag are gathered once per step so every rank takes the same decisions (stop on a
non-finite loss, save, stop on SIGTERM); only rank 0 writes files, logs and TensorBoard. The resume state (`resume.pt`) holds the weights, AdamW moments,
grad-scaler state, step, stream position, RNG states, the loss history and (DPO) the cached
reference log-probabilities; it is written atomically every `save_interval` steps, at the end,
and on SIGTERM. The learning rate is a pure function of the step, so there is no scheduler object
to save. On CPU in float32 a run killed at any instant and resumed ends with bitwise the same
weights as an uninterrupted run (tests/test_resume.py kills a real subprocess).

Refusals instead of silent surprises: rows of another stage, a vocabulary or tokenizer that does
not match the model or the resume state, a resume state from another config (each differing
field named), a non-finite loss (step, sample indices and the last good checkpoint named), a DPO
reference that is not frozen, and CUDA out-of-memory (which setting to lower).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import random
import signal
import sys
import threading
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, Field, field_validator, model_validator
from torch import nn

from minillm_core.artifacts import ArtifactError, atomic_path, read_json, require, sha256_file
from minillm_core.checkpoint import (RESUME, config_diff, load_checkpoint, load_resume,
                                     load_weights_into, read_meta, require_same_model,
                                     save_checkpoint, save_resume, weights_state)
from minillm_core.config import ConfigError, CoreConfig, validate_device
from minillm_core.model import MiniLLM, ModelConfig
from minillm_core.objectives import DPOLoss, pretrain_loss, sft_loss
from minillm_core.profiles import PROFILES
from minillm_core.progress import LogFn, Progress, emit

Stage = Literal["pretrain", "sft", "dpo"]
IGNORE = -100

# The seed's per-stage values (minimind's train_pretrain / train_full_sft / train_dpo), applied
# to every field left unset. Paths are relative to the working directory, the project root when
# run through `minillm`.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"epochs": 2, "batch_size": 32, "learning_rate": 5e-4, "accumulation_steps": 8,
                 "max_seq_len": 512, "data_path": "out/tokens/pretrain", "out_dir": "out/pretrain",
                 "group_by_length": False},
    "sft": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-5, "accumulation_steps": 1,
            "max_seq_len": 512, "data_path": "out/tokens/sft", "out_dir": "out/sft",
            "pretrained_path": "out/pretrain", "group_by_length": False},
    "dpo": {"epochs": 1, "batch_size": 4, "learning_rate": 4e-8, "accumulation_steps": 1,
            "max_seq_len": 1024, "data_path": "out/tokens/dpo", "out_dir": "out/dpo",
            "pretrained_path": "out/sft", "group_by_length": True},
}


class TrainConfig(CoreConfig):
    """Settings of one training stage. Fields left None take the stage's value in STAGE_DEFAULTS."""

    stage: Stage = Field(description="pretrain | sft | dpo")
    data_path: str | None = Field(None, description="token tensors directory, or a JSONL mix (then "
                                  "--tokenizer_dir is needed)")
    tokenizer_dir: str | None = Field(None, description="trained tokenizer, to tokenize a JSONL mix")
    out_dir: str | None = Field(None, description="checkpoint directory (weights, sidecar, resume state)")
    epochs: int | None = Field(None, ge=1, description="passes over the data (pretrain 2, sft 2, dpo 1)")
    batch_size: int | None = Field(None, ge=1, description="rows (DPO: pairs) per micro-batch")
    accumulation_steps: int | None = Field(None, ge=1, description="micro-batches per optimizer step")
    learning_rate: float | None = Field(None, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor, as a fraction of the peak")
    warmup_steps: int | None = Field(None, ge=0, description="linear warmup steps; None = warmup_ratio")
    warmup_ratio: float = Field(0.01, ge=0, lt=1, description="warmup as a fraction of all steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decay on matrices (not norms)")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = no clipping")
    device: str = Field("cpu", description="cpu, cuda, cuda:N")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="autocast dtype (weights stay float32); float16 uses a grad scaler")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    num_workers: int = Field(0, ge=0, description="DataLoader workers; rows are memory-map slices, "
                             "so 0 (no worker start-up) is usually fastest")
    log_interval: int = Field(100, ge=1, description="steps between log lines and TensorBoard points")
    save_interval: int = Field(1000, ge=1, description="steps between checkpoints + resume states")
    max_seq_len: int | None = Field(None, ge=2, description="rows longer than this are cut")
    tensorboard_dir: str | None = Field(None, description="TensorBoard root; scalars go to <root>/<stage>")
    pretrained_path: str | None = Field(None, description="initial weights (SFT: pretrain, DPO: SFT checkpoint)")
    ref_path: str | None = Field(None, description="DPO reference checkpoint; None = pretrained_path")
    beta: float = Field(0.1, gt=0, description="DPO temperature")
    cache_reference: bool = Field(True, description="DPO: keep reference log-probs per pair for later "
                                  "epochs (2 floats per pair)")
    group_by_length: bool | None = Field(None, description="batch rows of similar length together "
                                         "(less padding); default: on for dpo, off otherwise")
    tokenizer_hash: str | None = Field(None, description="refuse data made with another tokenizer")
    resume: bool = Field(True, description="continue an interrupted run found in out_dir")
    compile: bool = Field(False, description="torch.compile the model")
    seed: int = Field(42, description="model init, data order and dropout")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms for this run")

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        return validate_device(v)

    @model_validator(mode="after")
    def _stage_defaults(self) -> "TrainConfig":
        # After validation, also on assignment (validate_assignment): a field set to None
        # always means "the stage's value". Written through __dict__ to not re-trigger validation.
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if getattr(self, key) is None:
                self.__dict__[key] = value
        return self

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
                hint = (f" (e.g. --batch_size {self.global_batch // world} --accumulation_steps "
                        f"{world} keeps the global batch of {self.global_batch})")
            raise ConfigError(
                f"accumulation_steps={self.accumulation_steps} does not split across {world} "
                f"processes: each optimizer step is accumulation_steps micro-batches of batch_size "
                f"rows shared out among the processes, so accumulation_steps must be a multiple of "
                f"{world}; raise it and lower batch_size to keep the global batch{hint}")
        return self.accumulation_steps // world


class TrainReport(BaseModel):
    checkpoint_dir: Path
    final_loss: float
    steps: int
    tokens_seen: int
    tokens_per_s: float
    num_parameters: int
    loss_curve_png: Path | None
    metadata: dict[str, Any]


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became inf/NaN; the stage stops instead of skipping the batch."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM arrived; the resume state was saved and the next run continues from it."""


# ---------------------------------------------------------------------------------------------
# Data: a stream of samples over epochs, batches padded to their longest row
# ---------------------------------------------------------------------------------------------

def epoch_order(seed: int, epoch: int, n: int, lengths: Sequence[int] | None = None,
                batch: int = 1, chunk_batches: int = 64) -> torch.Tensor:
    """The dataset permutation of one epoch: a pure function of (seed, epoch[, lengths]).

    With `lengths`, rows of similar length share a batch: the shuffled order is cut into chunks of
    `chunk_batches` batches, each chunk is sorted by length and cut into batches, and the batches
    of a chunk are shuffled again. A batch is padded to its longest row, so this removes most of
    the padding of variable-length rows (DPO pairs) while the data still arrives in random order.
    """
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) % (2**63))
    perm = torch.randperm(n, generator=g)
    if lengths is None or batch <= 1:
        return perm
    lens = torch.as_tensor(lengths, dtype=torch.long)
    out = []
    size = batch * chunk_batches
    for lo in range(0, n, size):
        chunk = perm[lo:lo + size]
        chunk = chunk[torch.argsort(lens[chunk], descending=True, stable=True)]
        batches = list(chunk.split(batch))
        out.extend(batches[i] for i in torch.randperm(len(batches), generator=g).tolist())
    return torch.cat(out)


class SampleStream:
    """Dataset indices of global stream positions [start, end); epoch e = positions e*n .. e*n+n-1."""

    def __init__(self, seed: int, n: int, lengths: Sequence[int] | None = None, batch: int = 1):
        self.seed, self.n, self.lengths, self.batch = seed, n, lengths, batch
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def indices(self, start: int, end: int) -> list[int]:
        out = []
        pos = start
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            if epoch != self._epoch:
                self._epoch = epoch
                self._order = epoch_order(self.seed, epoch, self.n, self.lengths, self.batch)
            take = min(end - pos, self.n - offset)
            out.extend(self._order[offset:offset + take].tolist())
            pos += take
        return out


def row_lengths(ds: Any, stage: str) -> list[int]:
    """Positions each row costs (a DPO pair: its longer side, what its batch is padded to).

    Token tensors (`TokenDataset.sequences`) answer from the row index alone: the token arrays
    are memory-map views whose length needs no page of the corpus, so every DDP rank can compute
    the (global) length order without reading the whole data set. Each stored sequence is one
    longer than its input_ids, a constant that leaves the order unchanged."""
    if hasattr(ds, "sequences"):
        return [max(len(t) for t, _ in ds.sequences(i)) - 1 for i in range(len(ds))]
    if stage == "dpo":
        return [max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"])) for r in map(ds.__getitem__, range(len(ds)))]
    return [len(ds[i]["input_ids"]) for i in range(len(ds))]


class _MicroBatches(torch.utils.data.Sampler):
    """Batch sampler: micro-batch k holds stream positions [k*bs, (k+1)*bs) (clipped to `end`),
    starting at `start`, so a resumed run reads exactly the micro-batches the first run had left.

    With `world` processes, micro-batch k goes to rank k mod world (a "round" is world consecutive
    micro-batches), so each rank reads only its own rows. In the last round of a run the stream may
    end before every rank has rows; such a rank gets a stand-in (the round's first micro-batch),
    which the loop runs with weight 0: DDP needs every rank in every gradient all-reduce, and a
    zero-weighted real batch is the simplest way to take part without changing the gradient."""

    def __init__(self, stream: SampleStream, start: int, end: int, batch_size: int,
                 rank: int = 0, world: int = 1):
        self.stream, self.start, self.end, self.bs = stream, start, end, batch_size
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.bs * self.world
        for pos in range(self.start, self.end, step):
            lo = min(pos + self.rank * self.bs, self.end)
            hi = min(lo + self.bs, self.end)
            if lo == hi and self.world > 1:
                lo, hi = pos, min(pos + self.bs, self.end)  # the stand-in (weight 0)
            idx = self.stream.indices(lo, hi)
            if idx:
                yield [(i, p) for i, p in zip(idx, range(lo, hi))]

    def __len__(self) -> int:
        return math.ceil((self.end - self.start) / (self.bs * self.world))


class _Indexed(torch.utils.data.Dataset):
    """Wraps a map-style dataset so each row carries its dataset index (for error messages,
    the DPO reference cache) and its stream position."""

    def __init__(self, ds: Any):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, dict[str, torch.Tensor]]:
        return key[0], self.ds[key[0]]


def _pad(seqs: Sequence[torch.Tensor], fill: int, width: int) -> torch.Tensor:
    out = torch.full((len(seqs), width), fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : s.numel()] = s
    return out


def collate_batch(items: Sequence[tuple[int, dict[str, torch.Tensor]]], *, stage: str, pad_id: int,
                  max_len: int, multiple: int = 1) -> dict[str, Any]:
    """Rows -> one batch padded to its longest row (rounded up to `multiple`).

    DPO pairs become one [2P, T] batch, chosen rows then rejected rows, padded to the longest of
    both, so the policy and the reference each run one forward per micro-batch. Padding to the
    batch's longest row rather than to max_seq_len is the main DPO saving over the seed: preference
    pairs are mostly far shorter than the 1024 maximum.
    """
    indices = [i for i, _ in items]
    rows = [r for _, r in items]
    if stage == "dpo":
        ids = [r["chosen_input_ids"][:max_len] for r in rows] + [r["rejected_input_ids"][:max_len] for r in rows]
        labels = [r["chosen_labels"][:max_len] for r in rows] + [r["rejected_labels"][:max_len] for r in rows]
        masks = None
    else:
        ids = [r["input_ids"][:max_len] for r in rows]
        labels = [r["labels"][:max_len] for r in rows]
        masks = [r["loss_mask"][:max_len] for r in rows] if stage == "sft" and "loss_mask" in rows[0] else None
    width = max(s.numel() for s in ids)
    width = -(-width // multiple) * multiple
    batch: dict[str, Any] = {
        "input_ids": _pad(ids, pad_id, width),
        "labels": _pad([torch.as_tensor(x, dtype=torch.long) for x in labels], IGNORE, width),
        "indices": torch.tensor(indices, dtype=torch.long),
        "num_tokens": sum(int(s.numel()) for s in ids),
    }
    if masks is not None:
        batch["loss_mask"] = _pad([torch.as_tensor(m, dtype=torch.long) for m in masks], 0, width)
    return batch


def open_dataset(cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """The stage's rows and their meta (vocab_size, pad_id, tokenizer_hash, stage, data_hash)."""
    path = require(cfg.data_path, f"{cfg.stage} data (token tensors dir or JSONL mix)")
    from minillm_core import tensors

    if path.is_file():
        if not cfg.tokenizer_dir:
            raise ConfigError(f"data_path {path} is a JSONL mix: --tokenizer_dir is needed to tokenize it")
        from minillm_core.tokenizer import load_tokenizer

        tok = load_tokenizer(require(cfg.tokenizer_dir, "tokenizer"))
        ds = tensors.JsonlDataset(path, cfg.stage, tok, tensors.TensorConfig(max_length=cfg.max_seq_len))
        meta = {"vocab_size": ds.vocab_size, "pad_id": ds.pad_id, "tokenizer_hash": str(tok.hash),
                "stage": cfg.stage, "data_hash": sha256_file(path)}
        return ds, meta
    ds = tensors.TokenDataset(path, expected_tokenizer_hash=cfg.tokenizer_hash)
    meta = dict(ds.meta)
    # index.json is deterministic and holds the mix sha256 and the tokenizer hash: its hash
    # identifies the data without reading every shard.
    index = path / "index.json"
    meta.setdefault("data_hash", sha256_file(index) if index.exists() else None)
    return ds, meta


def dataset_meta(ds: Any) -> dict[str, Any]:
    meta = dict(getattr(ds, "meta", None) or {})
    for key in ("vocab_size", "pad_id", "tokenizer_hash", "stage"):
        if key not in meta and hasattr(ds, key):
            meta[key] = getattr(ds, key)
    return meta


# ---------------------------------------------------------------------------------------------
# Schedule, optimizer, precision
# ---------------------------------------------------------------------------------------------

def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to the peak, then cosine down to min_lr_ratio x peak at the last step."""
    peak = cfg.learning_rate
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    floor = cfg.min_lr_ratio * peak
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2))
    try:
        # The fused kernel updates every parameter in one pass (CUDA and, since torch 2.4, CPU).
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _autocast(cfg: TrainConfig) -> contextlib.AbstractContextManager:
    if cfg.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(cfg.device).type, dtype=_DTYPES[cfg.dtype])


# ---------------------------------------------------------------------------------------------
# RNG and resume state
# ---------------------------------------------------------------------------------------------

def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "python": _py_state(random.getstate()),
                             "numpy": _np_state(np.random.get_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state(st: tuple) -> list:
    return [st[0], list(st[1]), st[2]]


def _np_state(st: tuple) -> list:
    return [st[0], torch.from_numpy(np.asarray(st[1]).astype(np.int64)), int(st[2]), int(st[3]), float(st[4])]


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Fields that may change between an interrupted run and its resumption without changing what
# it computes (where and how fast, not what). Every other field must match.
_RESUME_FREE = {"data_path", "tokenizer_dir", "out_dir", "device", "num_workers", "log_interval",
                "save_interval", "tensorboard_dir", "pretrained_path", "ref_path", "resume",
                "compile", "tokenizer_hash"}


def _fingerprint(cfg: TrainConfig, model_cfg: ModelConfig, data_meta: dict[str, Any],
                 n_samples: int, init_hash: str | None) -> dict[str, Any]:
    fp = {f"train.{k}": v for k, v in cfg.model_dump().items() if k not in _RESUME_FREE}
    fp.update({f"model.{k}": v for k, v in model_cfg.model_dump().items()})
    fp.update({"data.tokenizer_hash": data_meta.get("tokenizer_hash"),
               "data.data_hash": data_meta.get("data_hash"),
               "data.vocab_size": data_meta.get("vocab_size"),
               "data.samples": n_samples, "init.weights_sha256": init_hash})
    return fp


# ---------------------------------------------------------------------------------------------
# Observability
# ---------------------------------------------------------------------------------------------

def plot_losses(losses: Sequence[float], path: Path, title: str) -> Path:
    """Loss per optimizer step plus a moving average, as a PNG (Agg canvas: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    w = max(1, len(losses) // 50)
    if w > 1:
        avg = np.convolve(np.asarray(losses, dtype=float), np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], avg, lw=1.5, label=f"mean of {w}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _downsample(xs: Sequence[float], n: int = 200) -> list[float]:
    if len(xs) <= n:
        return [float(x) for x in xs]
    stride = len(xs) / n
    return [float(xs[int(i * stride)]) for i in range(n)] + [float(xs[-1])]


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between steps (so the resume state it then saves
    is consistent); restores the previous handler afterwards. Off the main thread signals cannot
    be caught, and the flag just stays unset."""

    def __init__(self) -> None:
        self.set = False
        self._prev: Any = None

    def __enter__(self) -> "_SigtermFlag":
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        self.set = True

    def __exit__(self, *exc: object) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGTERM, self._prev)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def _init_weights_dir(cfg: TrainConfig) -> Path | None:
    if cfg.stage == "pretrain" and not cfg.pretrained_path:
        return None
    if not cfg.pretrained_path:
        raise ConfigError(f"{cfg.stage} starts from trained weights: set pretrained_path")
    what, producer = {"pretrain": ("initial", "pretrain"), "sft": ("pretrain", "pretrain"),
                      "dpo": ("SFT", "sft")}[cfg.stage]
    d = require(cfg.pretrained_path, f"{what} checkpoint (run `minillm {producer}` first)")
    require(d / "model.safetensors", f"{what} checkpoint weights")
    return d


def _check_data(cfg: TrainConfig, model_cfg: ModelConfig, meta: dict[str, Any], n: int) -> None:
    if meta.get("stage") not in (None, cfg.stage):
        raise ConfigError(f"{cfg.data_path} holds {meta['stage']} rows; the {cfg.stage} stage needs "
                          f"{cfg.stage} rows")
    if meta.get("vocab_size") is not None and int(meta["vocab_size"]) != model_cfg.vocab_size:
        raise ConfigError(f"vocabulary mismatch: the data was tokenized with a {meta['vocab_size']}-token "
                          f"tokenizer but the model has vocab_size {model_cfg.vocab_size}; set "
                          f"model vocab_size={meta['vocab_size']} (--vocab_size)")
    if cfg.tokenizer_hash and meta.get("tokenizer_hash") and meta["tokenizer_hash"] != cfg.tokenizer_hash:
        raise ConfigError(f"tokenizer mismatch: data made with tokenizer {meta['tokenizer_hash'][:12]}, "
                          f"expected {cfg.tokenizer_hash[:12]}")
    if n == 0:
        raise ConfigError(f"{cfg.data_path}: no {cfg.stage} rows to train on")


def _load_init(model: MiniLLM, d: Path, data_meta: dict[str, Any], log: LogFn | None) -> dict[str, Any]:
    src, meta = load_checkpoint(d)
    require_same_model(model.config, d, meta)
    th, dh = meta.get("tokenizer_hash"), data_meta.get("tokenizer_hash")
    if th and dh and th != dh:
        raise ConfigError(f"tokenizer mismatch: checkpoint {d} was trained with tokenizer {th[:12]}, "
                          f"the data was made with {dh[:12]}")
    if not meta.get("finished", True):
        emit(log, f"warning: {d} is an unfinished {meta.get('stage')} run (step {meta.get('step')})")
    model.load_state_dict(src.state_dict())
    return meta


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(device: torch.device) -> torch.device:
    # NCCL moves only CUDA tensors; gloo moves CPU tensors on any machine.
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _gather(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[world, *t.shape]: every rank's `t` (same shape on every rank), on the CPU."""
    t = t.to(_comm_device(device))
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.stack(parts).cpu()


def _gather_rows(t: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every rank's `t` ([n_rank, *rest], n_rank may differ), as a list indexed by rank."""
    n = _gather(torch.tensor([t.shape[0]]), device)[:, 0].tolist()
    pad = torch.zeros((max(n), *t.shape[1:]), dtype=t.dtype)
    pad[: t.shape[0]] = t
    full = _gather(pad, device)
    return [full[r, : n[r]] for r in range(len(n))]


def train(cfg: TrainConfig, model_cfg: ModelConfig, log: LogFn | None = None, *,
          dataset: Any | None = None) -> TrainReport:
    """Train one stage and write its checkpoint into cfg.out_dir; see the module docstring.

    `dataset` (any map-style dataset of token rows with a `meta` dict or `vocab_size`/`pad_id`
    attributes) replaces reading cfg.data_path; tests use it for in-memory data.
    """
    out = Path(cfg.out_dir)
    device = torch.device(cfg.device)
    # One process, or one rank of a process group that the caller initialised (torchrun +
    # minillm_core.distributed): the loop below is the same, DDP only wraps the model.
    world, rank = (dist.get_world_size(), dist.get_rank()) if _distributed() else (1, 0)
    prev_det = torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg, model_cfg, log, dataset, out, device, world, rank)
    finally:
        torch.use_deterministic_algorithms(prev_det)


def _train(cfg: TrainConfig, model_cfg: ModelConfig, log: LogFn | None, dataset: Any | None,
           out: Path, device: torch.device, world: int, rank: int) -> TrainReport:
    # Only rank 0 speaks: one log, one progress bar, one TensorBoard writer, one set of files.
    if rank != 0:
        log = _silent
    acc_rank = cfg.rank_accumulation(world)
    # ---- data --------------------------------------------------------------------------------
    if dataset is None:
        dataset, data_meta = open_dataset(cfg)
    else:
        data_meta = dataset_meta(dataset)
        data_meta.setdefault("data_hash", None)
    n = len(dataset)
    _check_data(cfg, model_cfg, data_meta, n)
    pad_id = int(data_meta.get("pad_id", 0))

    # ---- model (init is a pure function of the seed), initial weights, reference ----------------
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = MiniLLM(model_cfg)
    init_dir = _init_weights_dir(cfg)
    init_hash = None
    if init_dir is not None:
        _load_init(model, init_dir, data_meta, log)
        init_hash = sha256_file(init_dir / "model.safetensors")
    model.to(device).train()
    if rank > 0:
        # Same initial weights on every rank (the seed above), different dropout masks after it.
        torch.manual_seed(_rank_seed(cfg.seed, rank, 0))
    n_params = model.num_parameters(trainable_only=True)
    msg = f"{cfg.stage}: {n_params:,} trainable parameters ({n_params / 1e6:.2f}M), {n:,} samples"
    if rank == 0:
        print(msg, flush=True)  # stdout, as the seed does, and the log for the Dagster run
    if log is not None:
        log(msg)

    if cfg.stage == "pretrain":
        objective: Any = pretrain_loss
    elif cfg.stage == "sft":
        objective = sft_loss
    else:
        ref_dir = Path(cfg.ref_path or cfg.pretrained_path)
        reference, ref_meta = load_checkpoint(require(ref_dir, "DPO reference checkpoint"), device)
        require_same_model(model_cfg, ref_dir, ref_meta)
        reference.requires_grad_(False)
        objective = DPOLoss(reference, cfg.beta, cache=cfg.cache_reference and cfg.epochs > 1)

    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "float16")

    # ---- plan -------------------------------------------------------------------------------
    global_batch = cfg.global_batch
    total_samples = cfg.epochs * n
    total_steps = math.ceil(total_samples / global_batch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    stream_end = min(total_samples, total_steps * global_batch)
    fingerprint = _fingerprint(cfg, model_cfg, data_meta, n, init_hash)

    # ---- resume -----------------------------------------------------------------------------
    step, pos, tokens_seen = 0, 0, 0
    losses: list[float] = []
    resume_path = out / RESUME
    if cfg.resume and resume_path.exists():
        state = load_resume(resume_path)
        if state.get("finished"):
            emit(log, f"{resume_path}: the previous run finished; training anew")
        else:
            diff = config_diff(fingerprint, state.get("fingerprint", {}))
            if diff:
                raise ConfigError(
                    f"{resume_path} is from a run with other settings, refusing to resume:\n  "
                    + "\n  ".join(diff) + "\nrestore those settings, or delete the file "
                    "(or pass --resume false) to start over")
            load_weights_into(model, state["model"], str(resume_path))
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            step, pos, tokens_seen = int(state["step"]), int(state["position"]), int(state["tokens_seen"])
            losses = [float(x) for x in state["losses"].tolist()]
            if rank == 0:
                _set_rng_state(state["rng"])
            elif rank < len(state.get("rng_ranks", [])):
                _set_rank_rng(state["rng_ranks"][rank], device)
            else:  # resumed on more processes than saved it: a fresh dropout stream for this rank
                torch.manual_seed(_rank_seed(cfg.seed, rank, step))
            if isinstance(objective, DPOLoss) and "dpo_cache" in state:
                objective.load_state_dict(state["dpo_cache"])
            emit(log, f"{cfg.stage}: resuming at step {step}/{total_steps} (sample {pos:,} of "
                      f"{stream_end:,}, epoch {pos // n + 1}) from {resume_path}")

    fwd: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Wrapped after the weights are loaded: DDP starts by broadcasting rank 0's parameters.
        # The model has no buffers to keep in sync (RoPE tables are recomputed), so no per-forward
        # buffer broadcast.
        fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      broadcast_buffers=False)
    ddp = fwd
    fwd = torch.compile(fwd) if cfg.compile else fwd
    if isinstance(objective, DPOLoss) and cfg.compile:
        objective.reference = torch.compile(objective.reference)

    # ---- loader -----------------------------------------------------------------------------
    lengths = row_lengths(dataset, cfg.stage) if cfg.group_by_length else None
    # Length groups of one micro-batch (not x world): the stream then does not depend on the
    # number of processes, and each rank's micro-batch is still one group of similar lengths.
    stream = SampleStream(cfg.seed, n, lengths, cfg.batch_size)
    collate = functools.partial(collate_batch, stage=cfg.stage, pad_id=pad_id, max_len=cfg.max_seq_len,
                      # compiled graphs specialise on shapes: fewer distinct widths, fewer recompiles
                      multiple=64 if cfg.compile else 1)
    loader = torch.utils.data.DataLoader(
        _Indexed(dataset), batch_sampler=_MicroBatches(stream, pos, stream_end, cfg.batch_size, rank, world),
        collate_fn=collate, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
        # Its own generator: creating a loader iterator draws a seed, and drawing it from the
        # global RNG would shift the dropout stream of a resumed run by one draw.
        generator=torch.Generator().manual_seed(cfg.seed))
    batches = iter(loader)

    writer = None
    if cfg.tensorboard_dir and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(cfg.tensorboard_dir) / cfg.stage), purge_step=step + 1)

    last_saved: int | None = None
    if resume_path.exists() and step > 0:
        last_saved = step

    def save(finished: bool) -> None:
        nonlocal last_saved
        # Collective parts first (every rank calls save at the same step): each rank's RNG state
        # and, for DPO, the union of the reference caches the ranks filled.
        rng_ranks: list[dict[str, Any]] = []
        if world > 1:
            rng_ranks = _gather_rng(device)
            if isinstance(objective, DPOLoss) and objective.use_cache:
                _merge_dpo_cache(objective, device)
        if rank != 0:
            return
        state = {"format_version": 1, "stage": cfg.stage, "finished": finished, "step": step,
                 "position": pos, "tokens_seen": tokens_seen, "fingerprint": fingerprint,
                 "model": weights_state(model), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "rng": _rng_state(),
                 "lr_schedule": {"kind": "warmup_cosine", "total_steps": total_steps},
                 "losses": torch.tensor(losses, dtype=torch.float64)}
        if rng_ranks:
            state["rng_ranks"] = rng_ranks
        if isinstance(objective, DPOLoss):
            state["dpo_cache"] = objective.state_dict()
        # Weights + sidecar first, then the resume state: the resume state carries its own copy
        # of the weights, so a kill between the two files leaves a consistent pair either way.
        save_checkpoint(out, model, _sidecar(finished))
        save_resume(resume_path, state)
        last_saved = step

    def _sidecar(finished: bool) -> dict[str, Any]:
        return {"stage": cfg.stage, "step": step, "total_steps": total_steps, "finished": finished,
                "epoch": pos / n, "samples_seen": pos, "tokens_seen": tokens_seen, "world_size": world,
                "tokenizer_hash": data_meta.get("tokenizer_hash"), "data_hash": data_meta.get("data_hash"),
                "data_path": str(cfg.data_path), "init_from": str(init_dir) if init_dir else None,
                "train": json.loads(cfg.model_dump_json()),
                "final_loss": losses[-1] if losses else None, "losses": _downsample(losses)}

    # ---- steps ------------------------------------------------------------------------------
    emit(log, f"{cfg.stage}: {total_steps} steps of {global_batch} samples ({cfg.batch_size} x "
              f"{acc_rank} accumulation x {world} process{'es' if world > 1 else ''}), "
              f"{cfg.epochs} epoch(s) of {n:,}; starting at step {step}")
    bar = Progress(total_steps, f"{cfg.stage}", unit="step", log=None, disable=True if rank else None)
    bar.bar.n = bar.bar.initial = step
    t_start = time.perf_counter()
    t_window, tokens_window, session_tokens = t_start, 0, 0
    metric_sums: dict[str, float] = {}
    metric_count = 0
    grad_norm = torch.tensor(0.0)
    try:
        with _SigtermFlag() as sigterm:
            while step < total_steps and pos < stream_end:
                lr = lr_at(step, total_steps, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # This step's rounds of `world` micro-batches; near the end of the stream a round
                # may have fewer real micro-batches than ranks (see _MicroBatches).
                round_rows = cfg.batch_size * world
                n_micro = min(acc_rank, math.ceil((stream_end - pos) / round_rows))
                real = [min(world, math.ceil((stream_end - (pos + k * round_rows)) / cfg.batch_size))
                        for k in range(n_micro)]
                # Each real micro-batch's mean loss weighs equally in the step's gradient: a rank
                # scales by world / (real micro-batches of the step), as DDP averages over ranks
                # (in one process this is loss / n_micro, the plain accumulation average).
                share = sum(real) / world
                micro_losses, micro_tokens, micro_sources, step_metrics = [], [], [], []
                for k in range(n_micro):
                    batch = next(batches)
                    weight = 1.0 if rank < real[k] else 0.0
                    micro_sources.append(batch["indices"].tolist() if weight else [])
                    micro_tokens.append(batch["num_tokens"] if weight else 0)
                    pos = min(pos + round_rows, stream_end)
                    tensors = {k2: v.to(device, non_blocking=True) for k2, v in batch.items()
                               if torch.is_tensor(v)}
                    # DDP all-reduces the gradients once per step, in the last backward.
                    sync = contextlib.nullcontext() if world == 1 or k == n_micro - 1 else ddp.no_sync()
                    try:
                        with sync:
                            with _autocast(cfg):
                                loss, metrics = objective(fwd, tensors)
                            scaled = loss / share if weight else loss * 0.0
                            scaler.scale(scaled).backward()
                    except torch.OutOfMemoryError as exc:
                        raise RuntimeError(
                            f"out of memory on {device} at batch_size={cfg.batch_size}, "
                            f"max_seq_len={cfg.max_seq_len}: lower --batch_size (and raise "
                            f"--accumulation_steps to keep the global batch of {global_batch}) or "
                            f"--max_seq_len") from exc
                    micro_losses.append(loss.detach())
                    if weight:
                        step_metrics.append(metrics)
                    for k2 in metrics:  # same keys on every rank, even one with only a stand-in
                        metric_sums.setdefault(k2, 0.0)
                # One host sync per optimizer step: the loss must be checked before the update.
                # With several ranks the losses, token counts and SIGTERM flag of all ranks are
                # gathered here, so every rank sees the same numbers and decides alike.
                local = torch.stack([torch.stack(micro_losses).detach().double(),
                                     torch.tensor([1.0 if rank < r else 0.0 for r in real],
                                                  dtype=torch.float64, device=device),
                                     torch.tensor(micro_tokens, dtype=torch.float64, device=device)], 1)
                if world > 1:
                    flag = torch.tensor([[float(sigterm.set)] * 3], dtype=torch.float64, device=device)
                    every = _gather(torch.cat([local, flag]), device)  # [world, n_micro + 1, 3]
                    stop_now = bool(every[:, -1, 0].max() > 0)
                    # global micro-batch order: round by round, rank by rank
                    every = every[:, :-1].transpose(0, 1).reshape(-1, 3)
                else:
                    every = local.cpu()
                    stop_now = sigterm.set
                every = every[every[:, 1] > 0]
                step_losses = every[:, 0].float()
                step_tokens = int(every[:, 2].sum())
                tokens_seen += step_tokens
                session_tokens += step_tokens
                tokens_window += step_tokens
                bad = (~torch.isfinite(step_losses)).nonzero()
                if len(bad):
                    m = int(bad[0])
                    sources = micro_sources[m] if world == 1 else _gathered_sources(micro_sources, real, m, device)
                    raise NonFiniteLossError(_nonfinite_message(
                        "loss", float(step_losses[m]), step, m, len(step_losses), sources, cfg, out,
                        last_saved, pos, n))
                scaler.unscale_(optimizer)
                if cfg.grad_clip > 0:
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                else:
                    grad_norm = torch.linalg.vector_norm(torch.stack(
                        [p.grad.norm() for p in model.parameters() if p.grad is not None]))
                if not scaler.is_enabled() and not torch.isfinite(grad_norm):
                    # (with float16 an inf gradient is expected now and then: the scaler skips
                    # that step and lowers its scale, which is the documented behaviour)
                    # After DDP's all-reduce the gradients, hence this norm, are equal on all ranks.
                    sources = sum(micro_sources, []) if world == 1 else sorted(
                        sum((_gathered_sources(micro_sources, real, m, device)
                             for m in range(len(step_losses))), []))
                    raise NonFiniteLossError(_nonfinite_message(
                        "gradient norm", float(grad_norm), step, None, len(step_losses),
                        sources, cfg, out, last_saved, pos, n))
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_loss = float(step_losses.mean())
                losses.append(step_loss)
                for mt in step_metrics:
                    for k2, v in mt.items():
                        metric_sums[k2] = metric_sums.get(k2, 0.0) + float(v)
                metric_count += len(step_metrics)
                bar.update(1, loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")

                if step % cfg.log_interval == 0 or step == total_steps:
                    if world > 1:  # the means over every rank's micro-batches, not rank 0's
                        keys = sorted(metric_sums)
                        sums = _gather(torch.tensor([metric_sums[k2] for k2 in keys] + [metric_count],
                                                    dtype=torch.float64), device).sum(0).tolist()
                        metric_sums, metric_count = dict(zip(keys, sums[:-1])), int(sums[-1])
                    now = time.perf_counter()
                    tps = tokens_window / max(now - t_window, 1e-9)
                    means = {k: v / max(metric_count, 1) for k, v in metric_sums.items()}
                    eta = (total_steps - step) * (now - t_start) / max(1, step - bar.bar.initial)
                    line = (f"{cfg.stage} step {step}/{total_steps} epoch {pos / n:.2f} "
                            f"loss {means.get('loss', step_loss):.4f} lr {lr:.3e} "
                            f"grad_norm {float(grad_norm):.3f} {tps:,.0f} tok/s ETA {eta:.0f}s")
                    extra = {k: v for k, v in means.items() if k not in ("loss", "target_tokens")}
                    if extra:
                        line += " " + " ".join(f"{k} {v:.4f}" for k, v in extra.items())
                    if log is not None:
                        log(line)
                    else:
                        bar.bar.write(line, file=sys.stderr)
                    if writer is not None:
                        writer.add_scalar("loss", means.get("loss", step_loss), step)
                        writer.add_scalar("lr", lr, step)
                        writer.add_scalar("grad_norm", float(grad_norm), step)
                        writer.add_scalar("tokens_per_s", tps, step)
                        for k, v in extra.items():
                            writer.add_scalar(f"{cfg.stage}/{k}", v, step)
                    t_window, tokens_window = now, 0
                    metric_sums, metric_count = {}, 0

                if stop_now:
                    save(finished=False)
                    raise TrainingInterrupted(
                        f"{cfg.stage}: SIGTERM at step {step}; resume state saved to {resume_path}, "
                        f"run the stage again to continue")
                if step % cfg.save_interval == 0 and step < total_steps:
                    save(finished=False)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - t_start

    # ---- final artifacts --------------------------------------------------------------------
    save(finished=True)
    if world > 1:
        dist.barrier()  # no rank reports done before rank 0's checkpoint is in place
    png = plot_losses(losses, out / "loss.png", f"{cfg.stage} loss") if losses and rank == 0 else None
    tps = session_tokens / max(elapsed, 1e-9)
    final = losses[-1] if losses else float("nan")
    metadata = {"stage": cfg.stage, "final_loss": final,
                "final_loss_mean10": float(np.mean(losses[-10:])) if losses else None,
                "steps": step, "tokens_seen": tokens_seen, "tokens_per_s": round(tps, 1),
                "num_parameters": n_params, "epochs": round(pos / n, 4), "samples_seen": pos,
                "global_batch": global_batch, "world_size": world, "device": cfg.device,
                "dtype": cfg.dtype,
                "checkpoint_dir": str(out), "tokenizer_hash": data_meta.get("tokenizer_hash"),
                "data_hash": data_meta.get("data_hash")}
    emit(log, f"{cfg.stage}: done, {step} steps, loss {final:.4f}, {tokens_seen:,} tokens, "
              f"{tps:,.0f} tok/s -> {out}")
    return TrainReport(checkpoint_dir=out, final_loss=final, steps=step, tokens_seen=tokens_seen,
                       tokens_per_s=tps, num_parameters=n_params, loss_curve_png=png, metadata=metadata)


def _silent(msg: str) -> None:
    """The log of ranks other than 0: one voice per run."""


def _rank_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step) % 2**63


def _gather_rng(device: torch.device) -> list[dict[str, Any]]:
    """Every rank's torch RNG states (dropout), for an exact resume on the same number of ranks."""
    cpu = _gather(torch.get_rng_state(), device)
    states = [{"torch": cpu[r]} for r in range(len(cpu))]
    if device.type == "cuda":
        cuda = _gather(torch.cuda.get_rng_state(device), device)
        for r, st in enumerate(states):
            st["cuda"] = cuda[r]
    return states


def _set_rank_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _merge_dpo_cache(objective: DPOLoss, device: torch.device) -> None:
    """Give every rank the union of the reference log-probabilities the ranks computed (each saw
    other pairs), so the saved cache is complete and later epochs reuse all of it."""
    st = objective.state_dict()
    idx = _gather_rows(st["indices"], device)
    val = _gather_rows(st["values"], device)
    objective.load_state_dict({"indices": torch.cat(idx), "values": torch.cat(val)})


def _gathered_sources(local: list[list[int]], real: list[int], m: int, device: torch.device) -> list[int]:
    """Dataset rows of the m-th real micro-batch of the step (global order: round by round, rank by
    rank), which another rank may have read. Collective: every rank calls it with the same m."""
    width = max((len(x) for x in local), default=0)
    width = int(_gather(torch.tensor([width]), device).max())
    table = torch.full((len(local), max(width, 1)), -1, dtype=torch.long)
    for k, rows in enumerate(local):
        table[k, : len(rows)] = torch.tensor(rows, dtype=torch.long)
    every = _gather(table, device)  # [world, n_micro, width]
    order = [(k, r) for k, n_real in enumerate(real) for r in range(n_real)]
    k, r = order[m]
    return [int(i) for i in every[r, k] if i >= 0]


def _nonfinite_message(what: str, value: float, step: int, micro: int | None, n_micro: int,
                       sources: list[int], cfg: TrainConfig, out: Path, last_saved: int | None,
                       pos: int, n: int) -> str:
    where = f"micro-batch {micro + 1} of {n_micro}" if micro is not None else f"{n_micro} micro-batches"
    ckpt = (f"{out} (step {last_saved})" if last_saved is not None
            else "none yet (no checkpoint was saved in this run)")
    return (f"non-finite {what} ({value}) at step {step + 1} ({where}, epoch {pos / n:.2f}) of the "
            f"{cfg.stage} stage; the batch's source records are rows {sources} of {cfg.data_path}; "
            f"last good checkpoint: {ckpt}. Stopped without updating the weights: lower the "
            f"learning rate, check those records, or use float32.")


# ---------------------------------------------------------------------------------------------
# Command line: `minillm pretrain|sft|dpo` and scripts/train_*.py
# ---------------------------------------------------------------------------------------------

_MODEL_FLAGS = set(ModelConfig.model_fields)
_TRAIN_FLAGS = set(TrainConfig.model_fields) - {"stage"}


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _add_field(parser: argparse.ArgumentParser, name: str, field: Any) -> None:
    ann = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
    base = args[0]
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": field.description or ""}
    if typing.get_origin(base) is Literal:
        kwargs["choices"] = list(typing.get_args(base))
    elif base is bool:
        kwargs.update(type=_bool, nargs="?", const=True, metavar="BOOL")
    elif base in (int, float):
        kwargs["type"] = base
    parser.add_argument(f"--{name}", **kwargs)


def build_parser(stage: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"minillm {stage}",
        description=f"{stage} stage. Unset options take the profile's preset, then the defaults "
                    f"(stage defaults: {STAGE_DEFAULTS[stage]}).")
    p.add_argument("--profile", choices=sorted(PROFILES), default=argparse.SUPPRESS,
                   help="apply a profile preset under the flags")
    for name, field in TrainConfig.model_fields.items():
        if name != "stage":
            _add_field(p, name, field)
    for name, field in ModelConfig.model_fields.items():
        _add_field(p, name, field)
    return p


def train_overrides(stage: str, argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only the explicitly given flags, as (train fields, model fields); for config layering."""
    ns = vars(build_parser(stage).parse_args(list(argv)))
    ns.pop("profile", None)
    return ({k: v for k, v in ns.items() if k in _TRAIN_FLAGS},
            {k: v for k, v in ns.items() if k in _MODEL_FLAGS})


def parse_train_args(stage: str, argv: Sequence[str]) -> tuple[TrainConfig, ModelConfig]:
    """Flags over the profile preset (`--profile`) over the defaults."""
    ns = vars(build_parser(stage).parse_args(list(argv)))
    profile = ns.get("profile")
    train_over, model_over = train_overrides(stage, argv)
    t_pre, m_pre = {}, {}
    if profile:
        from minillm_core.profiles import preset

        t_pre, m_pre = preset(profile, stage), preset(profile, "model")
    cfg = TrainConfig.resolve(t_pre, {"stage": stage}, train_over)
    model_cfg = ModelConfig.resolve(m_pre, model_over)
    return cfg, model_cfg


def _fill_model_from_upstream(cfg: TrainConfig, model_cfg: ModelConfig, explicit: Mapping[str, Any]
                              ) -> ModelConfig:
    """For manual runs: SFT/DPO take the shape of the checkpoint they start from, and every stage
    takes the data's vocabulary size, unless the user set those fields."""
    fill: dict[str, Any] = {}
    if cfg.pretrained_path and (Path(cfg.pretrained_path) / "model.json").exists():
        fill.update(read_meta(cfg.pretrained_path).get("model", {}))
    elif "vocab_size" not in explicit and cfg.data_path:
        # Missing inputs are left to train(), which names them; a corrupt one fails here, named.
        p = Path(cfg.data_path)
        if (p / "index.json").is_file():
            fill["vocab_size"] = read_json(p / "index.json")["vocab_size"]
        elif p.is_file() and cfg.tokenizer_dir and Path(cfg.tokenizer_dir).is_dir():
            from minillm_core.tokenizer import load_tokenizer
            fill["vocab_size"] = load_tokenizer(cfg.tokenizer_dir).vocab_size
    base = model_cfg.model_dump()
    base.update({k: v for k, v in fill.items() if k not in explicit})
    return ModelConfig.resolve(base)


def _main(stage: str, argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, model_cfg = parse_train_args(stage, argv)
        model_cfg = _fill_model_from_upstream(cfg, model_cfg, train_overrides(stage, argv)[1])
        report = train(cfg, model_cfg)
    except (ConfigError, ArtifactError, NonFiniteLossError, TrainingInterrupted) as exc:
        print(f"minillm {stage}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.metadata, indent=2, default=str))
    return 0


def main_pretrain(argv: Sequence[str] | None = None) -> int:
    return _main("pretrain", argv)


def main_sft(argv: Sequence[str] | None = None) -> int:
    return _main("sft", argv)


def main_dpo(argv: Sequence[str] | None = None) -> int:
    return _main("dpo", argv)


if __name__ == "__main__":
    # python -m minillm_core.train {pretrain|sft|dpo} [flags]
    _stages = {"pretrain": main_pretrain, "sft": main_sft, "dpo": main_dpo}
    if len(sys.argv) < 2 or sys.argv[1] not in _stages:
        print("usage: python -m minillm_core.train {pretrain|sft|dpo} [options]", file=sys.stderr)
        sys.exit(2)
    sys.exit(_stages[sys.argv[1]](sys.argv[2:]))
