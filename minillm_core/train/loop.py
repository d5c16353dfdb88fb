"""One training loop for pretrain, SFT and DPO.

A stage is (rows, objective): pretrain reads next-token rows and minimises cross-entropy, SFT reads
chat rows and minimises cross-entropy on assistant tokens, DPO reads preference pairs and minimises
the DPO loss against a frozen reference (`train.objectives`). Everything else is this one loop and
the modules it names: the data order and batches (`data`), the model, optimiser, schedule and RNG
(`state`), one optimizer step with its guards (`step`), checkpoints and exact resume
(`checkpointer`), what is shown (`logger`) and the collectives of several processes (`ddp`). The
seed kept a near-copy of its loop per stage, so fixes landed in one copy and not the others.

Several processes (DDP under torchrun): when a process group is initialised, the model is wrapped
in DistributedDataParallel and each rank reads its own micro-batches of the same global batch;
only rank 0 writes files, logs and TensorBoard.

Refusals instead of silent surprises: rows of another stage or longer than the model's context, a
vocabulary or tokenizer that does not match the model or the resume state, a resume state from
another config (each differing field named), a non-finite loss (step, sample indices and the last
good checkpoint named), a DPO reference that is not frozen, and out-of-memory (which flags to
change, as `OutOfMemoryError.advice`).
"""

from __future__ import annotations

import math
import signal
import threading
import types
from pathlib import Path
from typing import Any, Self

import torch

from minillm_core import allocator
from minillm_core.errors import TrainingInterrupted
from minillm_core.model import ModelConfig
from minillm_core.progress import LogFn, emit
from minillm_core.train import step as one
from minillm_core.train.checkpointer import Checkpointer, fingerprint, sidecar_base
from minillm_core.train.config import TrainConfig, TrainReport
from minillm_core.train.data import micro_batches, open_data
from minillm_core.train.ddp import Comm, world_and_rank
from minillm_core.train.logger import StepLogger, silent
from minillm_core.train.objectives import make_objective
from minillm_core.train.state import build_model, deterministic, new_state


def train(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    log: LogFn | None = None,
    *,
    dataset: Any | None = None,
) -> TrainReport:
    """Train one stage and write its checkpoint into cfg.out_dir; see the module docstring.

    `dataset` (any map-style dataset of token rows with a `meta` dict or `vocab_size`/`pad_id`
    attributes) replaces reading cfg.data_path; tests use it for in-memory data."""
    world, rank = world_and_rank()
    comm = Comm(world, rank, torch.device(cfg.device), cfg.seed)
    log = silent if rank else log  # only rank 0 speaks
    out = Path(cfg.required_path("out_dir"))
    acc_rank = cfg.rank_accumulation(world)
    with deterministic(cfg.deterministic):
        data = open_data(cfg, model_cfg, dataset)
        model, init_dir, init_hash = build_model(cfg, model_cfg, data.meta, comm.device, rank, log)
        n_params = _announce(
            cfg, model.num_parameters(trainable_only=True), data.n, comm.device, rank, log
        )
        objective = make_objective(cfg, model_cfg, comm.device)
        total_steps, end = _plan(cfg, data.n)
        state = new_state(cfg, model, comm.device, total_steps, init_dir, init_hash)
        ckpt = Checkpointer(
            out,
            fingerprint(cfg.model_dump(), model_cfg.model_dump(), data.meta, data.n, init_hash),
            sidecar_base(cfg, data.meta, init_dir),
            data.n,
            comm,
        )
        note = ckpt.resume(state, objective, cfg.resume) or _resuming(cfg, state, end, data.n, ckpt)
        if note:
            emit(log, note)
        ddp = comm.wrap(model)
        fwd = torch.compile(ddp) if cfg.compile else ddp
        if cfg.compile and hasattr(objective, "reference"):
            objective.reference = torch.compile(objective.reference)
        batches = micro_batches(data, cfg, state.position, end, rank, world, comm.device)
        emit(
            log,
            f"{cfg.stage}: {total_steps} steps of {cfg.global_batch} samples ({cfg.batch_size} x "
            f"{acc_rank} accumulation x {world} process{'es' if world > 1 else ''}), "
            f"{cfg.epochs} epoch(s) of {data.n:,}; starting at step {state.step}",
        )
        where = {"out": out, "n": data.n}
        with StepLogger(cfg, comm, log, total_steps, state.step) as shown, SigtermFlag() as sigterm:
            while state.step < total_steps and state.position < end:
                lr = state.set_lr()
                micro = one.accumulate(
                    fwd, ddp, objective, batches, state, cfg, comm, acc_rank, end
                )
                outcome = one.agree(micro, comm, sigterm.set)
                state.tokens_seen += outcome.tokens
                shown.tokens(outcome.tokens)
                where["last_saved"] = ckpt.last_saved
                grad_norm = one.update(state, model, cfg, micro, outcome, comm, where)
                shown.step(state, lr, grad_norm, micro.metrics, micro.keys, data.n)
                if outcome.stop:
                    ckpt.save(state, objective, finished=False)
                    raise TrainingInterrupted(
                        f"{cfg.stage}: SIGTERM at step {state.step}; resume state saved to "
                        f"{ckpt.path}, run the stage again to continue"
                    )
                if state.step % cfg.save_interval == 0 and state.step < total_steps:
                    ckpt.save(state, objective, finished=False)
        ckpt.save(state, objective, finished=True)
        comm.barrier()  # no rank reports done before rank 0's checkpoint is in place
        return shown.report(state, out, data.meta, data.n, n_params)


def _plan(cfg: TrainConfig, n: int) -> tuple[int, int]:
    """(optimizer steps, end of the sample stream) of the whole run."""
    total_samples = cfg.epochs * n
    total_steps = math.ceil(total_samples / cfg.global_batch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    return total_steps, min(total_samples, total_steps * cfg.global_batch)


def _announce(
    cfg: TrainConfig, n_params: int, n: int, device: torch.device, rank: int, log: LogFn | None
) -> int:
    msg = f"{cfg.stage}: {n_params:,} trainable parameters ({n_params / 1e6:.2f}M), {n:,} samples"
    if device.type == "cpu":
        msg += f"; {allocator.describe()}"
    if rank == 0:
        print(msg, flush=True)  # stdout, as the seed does, and the log for the Dagster run
    if log is not None:
        log(msg)
    return n_params


def _resuming(cfg: TrainConfig, state: Any, end: int, n: int, ckpt: Checkpointer) -> str | None:
    if not state.step:
        return None
    return (
        f"{cfg.stage}: resuming at step {state.step}/{state.schedule.total_steps} (sample "
        f"{state.position:,} of {end:,}, epoch {state.position // n + 1}) from {ckpt.path}"
    )


class SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between steps (so the resume state it then saves
    is consistent); restores the previous handler afterwards. Off the main thread signals cannot
    be caught, and the flag just stays unset."""

    def __init__(self) -> None:
        self.set = False
        self._prev: Any = None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        self.set = True

    def __exit__(self, *exc: object) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGTERM, self._prev)
