"""What a run tells its watchers: the progress bar, a log line every `log_interval` steps,
TensorBoard scalars, the loss plot, and the metadata of the finished stage.

Only rank 0 speaks (one log, one bar, one TensorBoard writer); the others get a silent log. The
core never imports Dagster: log lines go to a `log` callable (Dagster's `context.log.info` in an
asset, stderr otherwise) and the metadata is returned as plain data in the `TrainReport`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from minillm_core.artifacts import atomic_path
from minillm_core.inference import autocast_dtype
from minillm_core.progress import LogFn, Progress, emit
from minillm_core.train.config import TrainConfig, TrainReport


def silent(msg: str) -> None:
    """The log of ranks other than 0: one voice per run."""


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
        ax.plot(steps[w - 1 :], avg, lw=1.5, label=f"mean of {w}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


class StepLogger:
    """Per-step bookkeeping of what is shown: the bar, windowed throughput, metric means."""

    def __init__(self, cfg: TrainConfig, comm: Any, log: LogFn | None, total_steps: int, step: int):
        self.cfg, self.comm, self.log, self.total = cfg, comm, log, total_steps
        self.bar = Progress(
            total_steps, cfg.stage, unit="step", log=None, disable=True if comm.rank else None
        )
        self.bar.bar.n = self.bar.bar.initial = step
        self.writer = None
        if cfg.tensorboard_dir and comm.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(Path(cfg.tensorboard_dir) / cfg.stage), purge_step=step + 1
            )
        self.t_start = self.t_window = time.perf_counter()
        self.tokens_window = self.session_tokens = 0
        self.metric_sums: dict[str, float] = {}
        self.metric_count = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.elapsed = time.perf_counter() - self.t_start

    def tokens(self, n: int) -> None:
        self.session_tokens += n
        self.tokens_window += n

    def step(
        self,
        state: Any,
        lr: float,
        grad_norm: torch.Tensor,
        metrics: list[dict[str, torch.Tensor]],
        keys: set[str],
        n: int,
    ) -> None:
        """After optimizer step `state.step`: the bar, and every log_interval steps a log line
        and TensorBoard points (collective: every rank calls it)."""
        step, step_loss = state.step, state.losses[-1]
        for k in keys:  # same keys on every rank, even one with only a stand-in batch
            self.metric_sums.setdefault(k, 0.0)
        for mt in metrics:
            for k, v in mt.items():
                self.metric_sums[k] = self.metric_sums.get(k, 0.0) + float(v)
        self.metric_count += len(metrics)
        self.bar.update(1, loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        if step % self.cfg.log_interval == 0 or step == self.total:
            self._line(state, lr, grad_norm, n)

    def _line(self, state: Any, lr: float, grad_norm: torch.Tensor, n: int) -> None:
        cfg, step, step_loss = self.cfg, state.step, state.losses[-1]
        if self.comm.world > 1:  # the means over every rank's micro-batches, not rank 0's
            keys = sorted(self.metric_sums)
            sums = (
                self.comm.gather(
                    torch.tensor(
                        [self.metric_sums[k] for k in keys] + [self.metric_count],
                        dtype=torch.float64,
                    )
                )
                .sum(0)
                .tolist()
            )
            self.metric_sums, self.metric_count = dict(zip(keys, sums[:-1])), int(sums[-1])
        now = time.perf_counter()
        tps = self.tokens_window / max(now - self.t_window, 1e-9)
        means = {k: v / max(self.metric_count, 1) for k, v in self.metric_sums.items()}
        eta = (self.total - step) * (now - self.t_start) / max(1, step - self.bar.bar.initial)
        line = (
            f"{cfg.stage} step {step}/{self.total} epoch {state.position / n:.2f} "
            f"loss {means.get('loss', step_loss):.4f} lr {lr:.3e} "
            f"grad_norm {float(grad_norm):.3f} {tps:,.0f} tok/s ETA {eta:.0f}s"
        )
        extra = {k: v for k, v in means.items() if k not in ("loss", "target_tokens")}
        if extra:
            line += " " + " ".join(f"{k} {v:.4f}" for k, v in extra.items())
        if self.log is not None:
            self.log(line)
        else:
            self.bar.bar.write(line, file=sys.stderr)
        if self.writer is not None:
            self.writer.add_scalar("loss", means.get("loss", step_loss), step)
            self.writer.add_scalar("lr", lr, step)
            self.writer.add_scalar("grad_norm", float(grad_norm), step)
            self.writer.add_scalar("tokens_per_s", tps, step)
            for k, v in extra.items():
                self.writer.add_scalar(f"{cfg.stage}/{k}", v, step)
        self.t_window, self.tokens_window = now, 0
        self.metric_sums, self.metric_count = {}, 0

    def report(
        self, state: Any, out: Path, data_meta: dict[str, Any], n: int, n_params: int
    ) -> TrainReport:
        """The finished stage: the loss plot (rank 0), the done line, the metadata."""
        cfg, losses = self.cfg, state.losses
        png = (
            plot_losses(losses, out / "loss.png", f"{cfg.stage} loss")
            if losses and self.comm.rank == 0
            else None
        )
        tps = self.session_tokens / max(self.elapsed, 1e-9)
        final = losses[-1] if losses else float("nan")
        metadata = {
            "stage": cfg.stage,
            "final_loss": final,
            "final_loss_mean10": float(np.mean(losses[-10:])) if losses else None,
            "steps": state.step,
            "tokens_seen": state.tokens_seen,
            "tokens_per_s": round(tps, 1),
            "num_parameters": n_params,
            "epochs": round(state.position / n, 4),
            "samples_seen": state.position,
            "global_batch": cfg.global_batch,
            "world_size": self.comm.world,
            "device": cfg.device,
            "dtype": str(autocast_dtype(cfg.dtype, cfg.device)).removeprefix("torch."),
            "checkpoint_dir": str(out),
            "tokenizer_hash": data_meta.get("tokenizer_hash"),
            "data_hash": data_meta.get("data_hash"),
        }
        emit(
            self.log,
            f"{cfg.stage}: done, {state.step} steps, loss {final:.4f}, "
            f"{state.tokens_seen:,} tokens, {tps:,.0f} tok/s -> {out}",
        )
        return TrainReport(
            checkpoint_dir=out,
            final_loss=final,
            steps=state.step,
            tokens_seen=state.tokens_seen,
            tokens_per_s=tps,
            num_parameters=n_params,
            loss_curve_png=png,
            metadata=metadata,
        )
