"""One optimizer step: accumulate the micro-batches' gradients, agree across ranks on what
happened, refuse a non-finite loss or gradient, clip, update.

There is one host sync per optimizer step: the losses must be checked before the update. With
several ranks, the losses, token counts and the SIGTERM flag of all ranks are gathered in that one
collective, so every rank sees the same numbers and takes the same decisions (stop on a
non-finite loss, save, stop on SIGTERM).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from minillm_core.errors import NonFiniteLossError, OutOfMemoryError
from minillm_core.inference import autocast
from minillm_core.train.config import TrainConfig
from minillm_core.train.state import TrainState


@dataclass
class Micro:
    """This rank's micro-batches of one step: which are real (not a stand-in), and what they gave."""

    real: list[int]
    losses: list[torch.Tensor] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    sources: list[list[int]] = field(default_factory=list)
    metrics: list[dict[str, torch.Tensor]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)


@dataclass
class Outcome:
    """What every rank agrees on after the step's collective."""

    losses: torch.Tensor  # the real micro-batches' losses, in global order
    tokens: int
    stop: bool


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA or CPU allocation failure (the CPU allocator raises a plain RuntimeError)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text
    )


def out_of_memory(cfg: TrainConfig, width: int, device: torch.device) -> OutOfMemoryError:
    """The one line a user needs: the flags that lower memory (batch, then the row length, then
    the activations' dtype), keeping the global batch through accumulation."""
    keep = f" and raise --accumulation_steps to keep the global batch of {cfg.global_batch}"
    half = ", or --dtype bfloat16" if cfg.dtype in ("float32", "auto") else ""
    return OutOfMemoryError(
        f"out of memory on {device} at batch_size={cfg.batch_size}, rows of {width} positions",
        f"lower --batch_size{keep if cfg.batch_size > 1 else ''}, or pretrain at a lower "
        f"--max_seq_len{half}",
    )


def accumulate(
    fwd: Any,
    ddp: Any,
    objective: Any,
    batches: Iterator[dict[str, Any]],
    state: TrainState,
    cfg: TrainConfig,
    comm: Any,
    acc_rank: int,
    end: int,
) -> Micro:
    """Forward and backward over this rank's micro-batches of the step; advances the position."""
    world, rank, device = comm.world, comm.rank, comm.device
    # This step's rounds of `world` micro-batches; near the end of the stream a round may have
    # fewer real micro-batches than ranks (see data.MicroBatches).
    round_rows = cfg.batch_size * world
    n_micro = min(acc_rank, math.ceil((end - state.position) / round_rows))
    micro = Micro(
        [
            min(world, math.ceil((end - (state.position + k * round_rows)) / cfg.batch_size))
            for k in range(n_micro)
        ]
    )
    # Each real micro-batch's mean loss weighs equally in the step's gradient: a rank scales by
    # world / (real micro-batches of the step), as DDP averages over ranks (in one process this
    # is loss / n_micro, the plain accumulation average).
    share = sum(micro.real) / world
    for k in range(n_micro):
        batch = next(batches)
        weight = 1.0 if rank < micro.real[k] else 0.0
        micro.sources.append(batch["indices"].tolist() if weight else [])
        micro.tokens.append(batch["num_tokens"] if weight else 0)
        state.position = min(state.position + round_rows, end)
        tensors = {
            key: v.to(device, non_blocking=True) for key, v in batch.items() if torch.is_tensor(v)
        }
        # DDP all-reduces the gradients once per step, in the last backward.
        sync = contextlib.nullcontext() if world == 1 or k == n_micro - 1 else ddp.no_sync()
        try:
            with sync:
                with autocast(device, cfg.dtype):
                    loss, metrics = objective(fwd, tensors)
                scaled = loss / share if weight else loss * 0.0
                state.scaler.scale(scaled).backward()
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise out_of_memory(cfg, int(tensors["input_ids"].shape[-1]), device) from exc
        micro.losses.append(loss.detach())
        if weight:
            micro.metrics.append(metrics)
        micro.keys.update(metrics)
    return micro


def agree(micro: Micro, comm: Any, sigterm: bool) -> Outcome:
    """The step's losses and tokens of every rank, and whether any rank got SIGTERM."""
    device = comm.device
    local = torch.stack(
        [
            torch.stack(micro.losses).detach().double(),
            torch.tensor(
                [1.0 if comm.rank < r else 0.0 for r in micro.real],
                dtype=torch.float64,
                device=device,
            ),
            torch.tensor(micro.tokens, dtype=torch.float64, device=device),
        ],
        1,
    )
    if comm.world > 1:
        flag = torch.tensor([[float(sigterm)] * 3], dtype=torch.float64, device=device)
        every = comm.gather(torch.cat([local, flag]))  # [world, n_micro + 1, 3]
        stop = bool(every[:, -1, 0].max() > 0)
        # global micro-batch order: round by round, rank by rank
        every = every[:, :-1].transpose(0, 1).reshape(-1, 3)
    else:
        every, stop = local.cpu(), sigterm
    every = every[every[:, 1] > 0]
    return Outcome(every[:, 0].float(), int(every[:, 2].sum()), stop)


def update(
    state: TrainState,
    model: nn.Module,
    cfg: TrainConfig,
    micro: Micro,
    outcome: Outcome,
    comm: Any,
    where: dict[str, Any],
) -> torch.Tensor:
    """Refuse a non-finite loss or gradient norm, clip, step the optimiser; returns the norm."""
    bad = (~torch.isfinite(outcome.losses)).nonzero()
    if len(bad):
        m = int(bad[0])
        raise NonFiniteLossError(
            nonfinite_message(
                "loss",
                float(outcome.losses[m]),
                state,
                m,
                len(outcome.losses),
                comm.sources(micro.sources, micro.real, m),
                cfg,
                where,
            )
        )
    state.scaler.unscale_(state.optimizer)
    if cfg.grad_clip > 0:
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    else:
        grad_norm = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
        )
    if not state.scaler.is_enabled() and not torch.isfinite(grad_norm):
        # (with float16 an inf gradient is expected now and then: the scaler skips that step and
        # lowers its scale, which is the documented behaviour). After DDP's all-reduce the
        # gradients, hence this norm, are equal on all ranks.
        if comm.world == 1:
            sources = [i for rows in micro.sources for i in rows]
        else:
            sources = sorted(
                i
                for m in range(len(outcome.losses))
                for i in comm.sources(micro.sources, micro.real, m)
            )
        raise NonFiniteLossError(
            nonfinite_message(
                "gradient norm",
                float(grad_norm),
                state,
                None,
                len(outcome.losses),
                sources,
                cfg,
                where,
            )
        )
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.losses.append(float(outcome.losses.mean()))
    return grad_norm


def nonfinite_message(
    what: str,
    value: float,
    state: TrainState,
    micro: int | None,
    n_micro: int,
    sources: list[int],
    cfg: TrainConfig,
    where: dict[str, Any],
) -> str:
    """`where`: the checkpoint dir `out`, the `last_saved` step and the data size `n`."""
    at = (
        f"micro-batch {micro + 1} of {n_micro}" if micro is not None else f"{n_micro} micro-batches"
    )
    last = where["last_saved"]
    ckpt = (
        f"{where['out']} (step {last})"
        if last is not None
        else "none yet (no checkpoint was saved in this run)"
    )
    return (
        f"non-finite {what} ({value}) at step {state.step + 1} ({at}, epoch "
        f"{state.position / where['n']:.2f}) of the {cfg.stage} stage; the batch's source "
        f"records are rows {sources} of {cfg.data_path}; last good checkpoint: {ckpt}. Stopped "
        f"without updating the weights: lower the learning rate, check those records, or use "
        f"float32."
    )
