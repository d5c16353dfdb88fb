"""Several GPUs and several machines: PyTorch DDP under `torchrun`, with the one training loop.

Nothing here is a launcher of its own. `torchrun` (torch.distributed.run, the elastic agent) starts
the processes, assigns ranks and restarts nothing (`--max_restarts 0`: a failed stage is retried
by Dagster from its last resume state, not by the agent mid-run). This module is what each of
those processes runs, plus the settings that describe a launch:

- `DistributedConfig`: processes per node, nodes, rendezvous endpoint, backend (nccl on GPU, gloo
  on CPU), the process-group timeout, and whether to launch at all (`launcher`).
- `python -m minillm_core.distributed {pretrain|sft|dpo} [the stage's flags]`: the per-rank
  entry point. It joins the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR/PORT in the environment), puts rank r on cuda:LOCAL_RANK, and calls
  `minillm_core.train.train`, which wraps the model in DistributedDataParallel when the group has
  more than one process. The flags are `minillm pretrain`'s. Run without torchrun it is simply
  one process, as `minillm pretrain` is.
- `python -m minillm_core.distributed launch [--failure_file F] [torchrun options] <entry> ...`:
  torchrun itself (`torch.distributed.run.run`), plus one line naming the rank that failed first
  and why (its exception, or the signal that killed it), written to F. Dagster's subprocess client
  does not hand back the child's stderr, so this is how the asset's failure names the rank.

Failures: the elastic agent notices a rank that exits (an exception, a SIGKILL, an OOM kill) and
stops the others, so a dead rank never leaves the rest waiting. A rank that hangs (a stuck
collective, a deadlocked data read) is turned into an error by the process-group timeout
(`timeout_s`): gloo raises in the waiting collective, NCCL's watchdog aborts the communicator.
Exceptions are recorded with torch's `@record`, so the agent's report carries the message.

Reporting: only rank 0 logs, writes checkpoints and TensorBoard (see `train`), so a caller that
reports to an orchestrator (minillm_assets.launch opens Dagster Pipes) does it on rank 0 only;
this module never imports Dagster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field, model_validator
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

from minillm_core.artifacts import ArtifactError, write_json
from minillm_core.config import ConfigError, CoreConfig
from minillm_core.progress import LogFn

MODULE = "minillm_core.distributed"


class DistributedConfig(CoreConfig):
    """How a training stage is launched: in this process, or as torchrun ranks."""

    launcher: Literal["auto", "in_process", "torchrun", "k8s"] = Field(
        "auto", description="auto = torchrun when nproc_per_node x nnodes > 1, else in this "
        "process; k8s = torchrun in a Kubernetes pod (Dagster's PipesK8sClient, one node)")
    nproc_per_node: int = Field(1, ge=1, description="processes (GPUs) per node")
    nnodes: int = Field(1, ge=1, description="nodes (machines); more than 1 needs rdzv_endpoint")
    rdzv_endpoint: str | None = Field(None, description="host:port of the c10d rendezvous that "
                                      "every node joins (multi-node); None = this node alone")
    rdzv_id: str | None = Field(None, description="rendezvous id shared by the nodes of one job; "
                                "None = the Dagster run id")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="collective backend: auto = nccl on cuda, gloo on cpu")
    timeout_s: float = Field(600.0, gt=0, description="process-group timeout: a collective that "
                             "waits longer (a stuck or lost rank) fails the stage")
    monitor_interval_s: float = Field(0.5, gt=0, description="how often torchrun checks its ranks")

    @model_validator(mode="after")
    def _rendezvous(self) -> "DistributedConfig":
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"nnodes={self.nnodes} needs rdzv_endpoint (host:port that every node "
                             "can reach, e.g. the first node's address)")
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def uses_torchrun(self) -> bool:
        return self.launcher == "torchrun" or (self.launcher == "auto" and self.world_size > 1)

    def torchrun_args(self, run_id: str | None = None) -> list[str]:
        """torchrun's options for this launch (everything before the entry point)."""
        args = ["--nproc_per_node", str(self.nproc_per_node), "--nnodes", str(self.nnodes),
                "--max_restarts", "0", "--monitor_interval", str(self.monitor_interval_s)]
        if self.rdzv_endpoint:
            args += ["--rdzv_backend", "c10d", "--rdzv_endpoint", self.rdzv_endpoint,
                     "--rdzv_id", self.rdzv_id or run_id or "minillm"]
        else:
            # One node: torchrun picks a free port on localhost itself.
            args += ["--standalone"]
        return args


# ---------------------------------------------------------------------------------------------
# Inside a rank
# ---------------------------------------------------------------------------------------------

def env_rank() -> int:
    """This process's global rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: str, local_rank: int) -> str:
    """The device of one rank: every cuda setting becomes cuda:LOCAL_RANK (one GPU per process;
    `cuda:0` on every rank would put all of them on one card)."""
    return f"cuda:{local_rank}" if torch.device(device).type == "cuda" else device


def init_process_group(backend: str, device: str, timeout_s: float) -> None:
    """Join the process group torchrun described in the environment."""
    if backend == "auto":
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
        if backend == "nccl":
            kwargs["device_id"] = torch.device(device)  # eager NCCL init, bound to this GPU
    dist.init_process_group(backend=backend, timeout=dt.timedelta(seconds=timeout_s), **kwargs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--dist_backend", choices=["auto", "nccl", "gloo"], default="auto")
    p.add_argument("--dist_timeout_s", type=float, default=DistributedConfig.model_fields["timeout_s"].default)
    return p


def run_stage(stage: str, argv: Sequence[str], log: LogFn | None = None) -> Any:
    """Train `stage` with `minillm <stage>` flags in this process, as one rank of the torchrun
    job when the environment says so. Returns the TrainReport (on every rank; only rank 0's
    carries the loss plot)."""
    from minillm_core.train import _fill_model_from_upstream, parse_train_args, train, train_overrides

    ns, rest = _parser().parse_known_args(list(argv))
    cfg, model_cfg = parse_train_args(stage, rest)
    model_cfg = _fill_model_from_upstream(cfg, model_cfg, train_overrides(stage, rest)[1])
    world = env_world()
    if world == 1:
        return train(cfg, model_cfg, log=log)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cfg.device = rank_device(cfg.device, local_rank)
    init_process_group(ns.dist_backend, cfg.device, ns.dist_timeout_s)
    try:
        return train(cfg, model_cfg, log=log)
    finally:
        dist.destroy_process_group()


def stage_flags(cfg: Any, model_cfg: Any) -> list[str]:
    """Flags that rebuild exactly these (resolved) configs in a rank: every set field, spelled as
    the stage's command line spells it (floats in repr, which round-trips)."""
    out: list[str] = []
    for obj, skip in ((cfg, {"stage"}), (model_cfg, set())):
        for name, value in obj.model_dump().items():
            if name in skip or value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            out += [f"--{name}", repr(value) if isinstance(value, float) else str(value)]
    return out


_USAGE = (f"usage: python -m {MODULE} {{pretrain|sft|dpo}} [--dist_backend auto|nccl|gloo] "
          f"[--dist_timeout_s S] [stage options]\n"
          f"       python -m {MODULE} launch [--failure_file F] [torchrun options] ENTRY [args]")


@record
def main(argv: Sequence[str] | None = None) -> int:
    """Per-rank entry point (under torchrun) or a one-process run (without)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "launch":
        return launch_main(args[1:])
    if not args or args[0] not in ("pretrain", "sft", "dpo"):
        print(_USAGE, file=sys.stderr)
        return 2
    from minillm_core.train import NonFiniteLossError, TrainingInterrupted

    try:
        report = run_stage(args[0], args[1:])
    except (ConfigError, ArtifactError, NonFiniteLossError, TrainingInterrupted) as exc:
        if "TORCHELASTIC_ERROR_FILE" in os.environ:
            raise  # under torchrun: @record writes it where the agent's failure report finds it
        print(f"minillm {args[0]}: {exc}", file=sys.stderr)
        return 1
    if env_rank() == 0:
        print(json.dumps(report.metadata, indent=2, default=str))
    return 0


# ---------------------------------------------------------------------------------------------
# Around torchrun: the first failure, in one line
# ---------------------------------------------------------------------------------------------

def failure_summary(exc: ChildFailedError) -> str:
    """'rank R (local rank L on HOST, pid P) failed: <exception or signal>' for the first rank
    that failed, then the others by rank."""
    first, _ = exc.get_first_failure()
    lines = []
    for rank in [first] + sorted(r for r in exc.failures if r != first):
        f = exc.failures[rank]
        msg = f.message
        if isinstance(msg, dict):  # an error file written by @record: "Type: text" + traceback
            msg = msg.get("message", json.dumps(msg))
        if f.exitcode < 0:
            why = f"killed by signal {-f.exitcode} ({f.signal_name()})"
            why = f"{why}: {msg}" if msg and not str(msg).startswith("Signal ") else why
        else:
            why = f"exit code {f.exitcode}: {msg}"
        lines.append(f"rank {rank} (local rank {f.local_rank}, pid {f.pid}) failed: {why}")
    head = f"torchrun job {exc.name!r}: {lines[0]}"
    return "\n".join([head] + [f"  also {line}" for line in lines[1:]])


def launch_main(argv: Sequence[str]) -> int:
    """`torchrun` with the first failure written to --failure_file (and stderr)."""
    from torch.distributed import run as torchrun

    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--failure_file", default=None)
    ns, rest = p.parse_known_args(list(argv))
    args = torchrun.parse_args(rest)
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        summary = failure_summary(exc)
        print(summary, file=sys.stderr, flush=True)
        if ns.failure_file:
            write_json(Path(ns.failure_file), {"summary": summary})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
