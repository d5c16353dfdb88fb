"""Several GPUs and several machines: PyTorch DDP under `torchrun`, with the one training loop.

Nothing here is a launcher of its own. `torchrun` (torch.distributed.run, the elastic agent) starts
the processes, assigns ranks and restarts nothing (`--max_restarts 0`: a failed stage is retried
by Dagster from its last resume state, not by the agent mid-run). This module holds

- `DistributedConfig`: processes per node, nodes, rendezvous endpoint, backend (nccl on GPU, gloo
  on CPU), the process-group timeout, and whether to launch at all (`launcher`);
- `Comm`: the collectives the loop needs (gather, the RNG states and DPO cache of every rank);
- the rank entry point, `python -m minillm_core.train RANK_CONFIG.json`: the launcher writes the
  resolved TrainConfig, ModelConfig and DistributedConfig to one JSON file (lossless: no flag
  spelling in between) and every rank reads it, joins the process group torchrun set up (RANK,
  WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the environment), puts rank r on cuda:LOCAL_RANK
  and trains. Without torchrun it is simply one process. (`minillm pretrain ...` under torchrun is
  the same with command-line flags; see minillm_cli.train.)
- `python -m minillm_core.train launch [--failure_file F] [torchrun options] <entry> ...`:
  torchrun itself (`torch.distributed.run.run`), plus one line naming the rank that failed first
  and why (its exception, or the signal that killed it), written to F. Dagster's subprocess client
  does not hand back the child's stderr, so this is how the asset's failure names the rank.

Failures: the elastic agent notices a rank that exits (an exception, a SIGKILL, an OOM kill) and
stops the others, so a dead rank never leaves the rest waiting. A rank that hangs (a stuck
collective, a deadlocked data read) is turned into an error by the process-group timeout
(`timeout_s`): gloo raises in the waiting collective, NCCL's watchdog aborts the communicator.

Reporting: only rank 0 logs, writes checkpoints and TensorBoard, so a caller that reports to an
orchestrator (minillm_assets.pipes opens Dagster Pipes) does it on rank 0 only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field, model_validator
from torch import nn

from minillm_core.artifacts import write_json
from minillm_core.config import CoreConfig
from minillm_core.errors import MiniLLMError
from minillm_core.progress import LogFn

ENTRY = "minillm_core.train"


class DistributedConfig(CoreConfig):
    """How a training stage is launched: in this process, or as torchrun ranks."""

    launcher: Literal["auto", "in_process", "torchrun", "k8s"] = Field(
        "auto",
        description="auto = torchrun when nproc_per_node x nnodes > 1, else in this "
        "process; k8s = torchrun in a Kubernetes pod (Dagster's PipesK8sClient, one node)",
    )
    nproc_per_node: int = Field(1, ge=1, description="processes (GPUs) per node")
    nnodes: int = Field(1, ge=1, description="nodes (machines); more than 1 needs rdzv_endpoint")
    rdzv_endpoint: str | None = Field(
        None,
        description="host:port of the c10d rendezvous that "
        "every node joins (multi-node); None = this node alone",
    )
    rdzv_id: str | None = Field(
        None, description="rendezvous id shared by the nodes of one job; None = the Dagster run id"
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="collective backend: auto = nccl on cuda, gloo on cpu"
    )
    timeout_s: float = Field(
        600.0,
        gt=0,
        description="process-group timeout: a collective that "
        "waits longer (a stuck or lost rank) fails the stage",
    )
    monitor_interval_s: float = Field(0.5, gt=0, description="how often torchrun checks its ranks")

    @model_validator(mode="after")
    def _rendezvous(self) -> DistributedConfig:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"nnodes={self.nnodes} needs rdzv_endpoint (host:port that every node "
                "can reach, e.g. the first node's address)"
            )
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def uses_torchrun(self) -> bool:
        return self.launcher == "torchrun" or (self.launcher == "auto" and self.world_size > 1)

    def torchrun_args(self, run_id: str | None = None) -> list[str]:
        """torchrun's options for this launch (everything before the entry point)."""
        args = [
            "--nproc_per_node",
            str(self.nproc_per_node),
            "--nnodes",
            str(self.nnodes),
            "--max_restarts",
            "0",
            "--monitor_interval",
            str(self.monitor_interval_s),
        ]
        if self.rdzv_endpoint:
            args += [
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                self.rdzv_endpoint,
                "--rdzv_id",
                self.rdzv_id or run_id or "minillm",
            ]
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


def world_and_rank() -> tuple[int, int]:
    """(world size, rank) of the process group the caller initialised, else (1, 0)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def run_in_group(
    cfg: Any, model_cfg: Any, backend: str, timeout_s: float, log: LogFn | None = None
) -> Any:
    """Train in this process, as one rank of the torchrun job when the environment says so.
    Returns the TrainReport (on every rank; only rank 0's carries the loss plot)."""
    from minillm_core.train.loop import train

    if env_world() == 1:
        return train(cfg, model_cfg, log=log)
    cfg = cfg.model_copy(
        update={"device": rank_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))}
    )
    init_process_group(backend, cfg.device, timeout_s)
    try:
        return train(cfg, model_cfg, log=log)
    finally:
        dist.destroy_process_group()


class Comm:
    """The collectives of one run. With one process every method is a no-op or the identity, so
    the loop reads the same either way; with several, every rank calls them at the same point."""

    def __init__(self, world: int, rank: int, device: torch.device, seed: int):
        self.world, self.rank, self.device, self.seed = world, rank, device, seed

    def _comm_device(self) -> torch.device:
        # NCCL moves only CUDA tensors; gloo moves CPU tensors on any machine.
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """[world, *t.shape]: every rank's `t` (same shape on every rank), on the CPU."""
        t = t.to(self._comm_device())
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t)
        return torch.stack(parts).cpu()

    def gather_rows(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `t` ([n_rank, *rest], n_rank may differ), as a list indexed by rank."""
        n = self.gather(torch.tensor([t.shape[0]]))[:, 0].tolist()
        pad = torch.zeros((max(n), *t.shape[1:]), dtype=t.dtype)
        pad[: t.shape[0]] = t
        full = self.gather(pad)
        return [full[r, : n[r]] for r in range(len(n))]

    def gather_rng(self) -> list[dict[str, Any]]:
        """Every rank's torch RNG states (dropout), for an exact resume on the same number of
        ranks; empty with one process (rank 0's states are saved whole anyway)."""
        if self.world == 1:
            return []
        cpu = self.gather(torch.get_rng_state())
        states = [{"torch": cpu[r]} for r in range(len(cpu))]
        if self.device.type == "cuda":
            cuda = self.gather(torch.cuda.get_rng_state(self.device))
            for r, st in enumerate(states):
                st["cuda"] = cuda[r]
        return states

    def restore_rng(self, saved: dict[str, Any], step: int) -> None:
        from minillm_core.train.state import rank_seed, set_rank_rng, set_rng_state

        if self.rank == 0:
            set_rng_state(saved["rng"])
        elif self.rank < len(saved.get("rng_ranks", [])):
            set_rank_rng(saved["rng_ranks"][self.rank], self.device)
        else:  # resumed on more processes than saved it: a fresh dropout stream for this rank
            torch.manual_seed(rank_seed(self.seed, self.rank, step))

    def merge_dpo_cache(self, objective: Any) -> None:
        """Give every rank the union of the reference log-probabilities the ranks computed (each
        saw other pairs), so the saved cache is complete and later epochs reuse all of it."""
        st = objective.state_dict()
        idx = self.gather_rows(st["indices"])
        val = self.gather_rows(st["values"])
        objective.load_state_dict({"indices": torch.cat(idx), "values": torch.cat(val)})

    def sources(self, local: list[list[int]], real: list[int], m: int) -> list[int]:
        """Dataset rows of the m-th real micro-batch of the step (global order: round by round,
        rank by rank), which another rank may have read. Collective: every rank passes the same m."""
        if self.world == 1:
            return local[m]
        width = max((len(x) for x in local), default=0)
        width = int(self.gather(torch.tensor([width])).max())
        table = torch.full((len(local), max(width, 1)), -1, dtype=torch.long)
        for k, rows in enumerate(local):
            table[k, : len(rows)] = torch.tensor(rows, dtype=torch.long)
        every = self.gather(table)  # [world, n_micro, width]
        order = [(k, r) for k, n_real in enumerate(real) for r in range(n_real)]
        k, r = order[m]
        return [int(i) for i in every[r, k] if i >= 0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model DDP-wrapped when there are several ranks. Wrapped after the weights are
        loaded: DDP starts by broadcasting rank 0's parameters. The model has no buffers to keep
        in sync (RoPE tables are recomputed), so no per-forward buffer broadcast."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


# ---------------------------------------------------------------------------------------------
# The rank config file and the rank entry point
# ---------------------------------------------------------------------------------------------


def write_rank_config(path: Path, cfg: Any, model_cfg: Any, dist_cfg: DistributedConfig) -> Path:
    """The resolved configs of a launch, as the ranks read them back (`read_rank_config`)."""
    write_json(
        path,
        {
            "train": cfg.model_dump(mode="json"),
            "model": model_cfg.model_dump(mode="json"),
            "distributed": dist_cfg.model_dump(mode="json"),
        },
    )
    return path


def read_rank_config(path: Path | str) -> tuple[Any, Any, DistributedConfig]:
    from minillm_core.artifacts import read_json
    from minillm_core.model import ModelConfig
    from minillm_core.train.config import TrainConfig

    data = read_json(Path(path))
    return (
        TrainConfig.resolve(data["train"]),
        ModelConfig.resolve(data["model"]),
        DistributedConfig.resolve(data["distributed"]),
    )


def run_rank(config_path: Path | str, log: LogFn | None = None) -> Any:
    """What one torchrun process does with the launcher's config file: train as its rank."""
    cfg, model_cfg, dist_cfg = read_rank_config(config_path)
    return run_in_group(cfg, model_cfg, dist_cfg.backend, dist_cfg.timeout_s, log=log)


_USAGE = (
    f"usage: python -m {ENTRY} RANK_CONFIG.json\n"
    f"       python -m {ENTRY} launch [--failure_file F] [torchrun options] ENTRY [args]"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Per-rank entry point (under torchrun) or a one-process run (without), or the launcher."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "launch":
        return launch_main(args[1:])
    if len(args) != 1 or args[0].startswith("-"):
        print(_USAGE, file=sys.stderr)
        return 2
    return report_run("minillm", lambda: run_rank(args[0]))


def report_run(name: str, run: Callable[[], Any]) -> int:
    """A command's exit status around `run` (which returns a TrainReport): rank 0 prints the
    metadata; a MiniLLMError is one line on stderr, or, under torchrun, raised so that @record
    writes it where the agent's failure report finds it."""
    try:
        report = run()
    except MiniLLMError as exc:
        if "TORCHELASTIC_ERROR_FILE" in os.environ:
            raise
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    if env_rank() == 0:
        print(json.dumps(report.metadata, indent=2, default=str))
    return 0


# ---------------------------------------------------------------------------------------------
# Around torchrun: the first failure, in one line
# ---------------------------------------------------------------------------------------------


def failure_summary(exc: Any) -> str:
    """'rank R (local rank L on HOST, pid P) failed: <exception or signal>' for the first rank
    that failed (a torch ChildFailedError), then the others by rank."""
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
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    rest, failure_file = list(argv), None
    if rest[:1] == ["--failure_file"]:
        failure_file, rest = rest[1], rest[2:]
    try:
        torchrun.run(torchrun.parse_args(rest))
    except ChildFailedError as exc:
        summary = failure_summary(exc)
        print(summary, file=sys.stderr, flush=True)
        if failure_file:
            write_json(Path(failure_file), {"summary": summary})
        return 1
    return 0
