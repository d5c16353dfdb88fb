"""Training stages as torchrun jobs, driven by the checkpoint assets through Dagster Pipes.

Two halves of one launch:

- the asset side, `run_torchrun`: writes the resolved configs to a rank config file (JSON,
  lossless) and runs `torchrun [options] -m minillm_assets.pipes CONFIG.json` (through
  `python -m minillm_core.train launch`, which is torchrun plus a one-line report of the rank that
  failed) with `dg.PipesSubprocessClient`, which streams rank 0's log lines and its
  materialization report into the run;
- the rank side, `python -m minillm_assets.pipes CONFIG.json` (what every torchrun process runs):
  rank 0 opens Dagster Pipes and reports; the other ranks never touch Pipes (two reporters in one
  Pipes session fail the run), they only train. Outside Dagster `open_dagster_pipes()` finds no
  session and does nothing, so the same command runs standalone.

The metadata a stage reports is built by one function, `checkpoint_metadata`, for the in-process
path and for rank 0 alike, so the asset page shows the same keys whichever way it ran.

The rank side imports this package, hence Dagster (a slower start per process); a machine with
torch but no Dagster runs the core entry point `python -m minillm_core.train CONFIG.json` under
torchrun instead (see docs/distributed.md). The Kubernetes launch is in minillm_assets.k8s.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from minillm_assets._util import image_md, to_metadata
from minillm_core.train.ddp import (
    DistributedConfig,
    env_rank,
    read_rank_config,
    run_rank,
    write_rank_config,
)

RANK_ENTRY = "minillm_assets.pipes"
LAUNCHER = "minillm_core.train"


def checkpoint_metadata(report: Any, tensorboard: Path | None) -> dict[str, Any]:
    """The asset metadata of a finished stage (a core TrainReport), as Dagster metadata values."""
    meta = to_metadata(report.metadata)
    if report.loss_curve_png:
        meta["loss_curve"] = image_md(report.loss_curve_png, f"{report.metadata['stage']} loss")
    meta = {
        **meta,
        "final_loss": report.final_loss,
        "steps": report.steps,
        "tokens_seen": report.tokens_seen,
        "tokens_per_s": report.tokens_per_s,
        "num_parameters": report.num_parameters,
        "path": dg.MetadataValue.path(str(report.checkpoint_dir)),
    }
    if tensorboard is not None:
        meta["tensorboard"] = dg.MetadataValue.path(str(tensorboard))
    return meta


# MetadataValue class -> the type name of the Pipes protocol ({"raw_value": ..., "type": ...}).
_PIPES_TYPES = {
    dg.TextMetadataValue: "text",
    dg.MarkdownMetadataValue: "md",
    dg.PathMetadataValue: "path",
    dg.FloatMetadataValue: "float",
    dg.IntMetadataValue: "int",
    dg.BoolMetadataValue: "bool",
    dg.JsonMetadataValue: "json",
}


def to_pipes_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Dagster metadata -> what `report_asset_materialization` sends (typed raw values), so the
    values arrive with the types the in-process path gives them (a path stays a path link)."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, dg.MetadataValue):
            kind = _PIPES_TYPES.get(type(value))
            if kind is None:
                raise TypeError(f"metadata {key!r}: no Pipes type for {type(value).__name__}")
            raw = value.value
            if kind == "float" and not math.isfinite(raw):
                raw = None if math.isnan(raw) else raw
                kind = "null" if raw is None else kind
            out[key] = {"raw_value": raw, "type": kind}
        elif isinstance(value, bool):
            out[key] = {"raw_value": value, "type": "bool"}
        elif isinstance(value, int):
            out[key] = {"raw_value": value, "type": "int"}
        elif isinstance(value, float):
            out[key] = (
                {"raw_value": value, "type": "float"}
                if math.isfinite(value)
                else {"raw_value": None, "type": "null"}
            )
        else:
            out[key] = {"raw_value": value, "type": "infer"}
    return out


# ---------------------------------------------------------------------------------------------
# Asset side
# ---------------------------------------------------------------------------------------------


def torchrun_command(
    config_file: Path,
    dist_cfg: DistributedConfig,
    run_id: str | None,
    failure_file: Path | None = None,
) -> list[str]:
    """The whole command line: torchrun (with the failure report) running this module per rank."""
    head = [sys.executable, "-m", LAUNCHER, "launch"]
    if failure_file is not None:
        head += ["--failure_file", str(failure_file)]
    return [*head, *dist_cfg.torchrun_args(run_id), "-m", RANK_ENTRY, str(config_file)]


def run_torchrun(
    context: dg.AssetExecutionContext,
    asset: str,
    stage: str,
    cfg: Any,
    model_cfg: Any,
    dist_cfg: DistributedConfig,
    env: Mapping[str, str] | None = None,
) -> dg.MaterializeResult:
    """Run the stage as a torchrun job through Pipes; rank 0's report becomes the result.

    A failed job raises a Failure that names the rank that failed first and its error (the
    exception it raised, or the signal that killed it), read from the launcher's failure file."""
    with tempfile.TemporaryDirectory(prefix="minillm-torchrun-") as tmp:
        config = write_rank_config(Path(tmp) / f"{stage}.json", cfg, model_cfg, dist_cfg)
        failure = Path(tmp) / "failure.json"
        command = torchrun_command(config, dist_cfg, context.run.run_id, failure)
        context.log.info(
            f"{asset}: {dist_cfg.world_size} processes ({dist_cfg.nnodes} node(s) x "
            f"{dist_cfg.nproc_per_node}); command: {' '.join(command)}"
        )
        try:
            invocation = dg.PipesSubprocessClient().run(
                command=command, context=context, env=dict(env or {})
            )
        except Exception as exc:
            # The client says only "failed with code 1" (its error class is not public API);
            # the launcher's failure file says which rank failed and how. Without that file
            # (torchrun itself failed, the run was interrupted) the original error stands.
            why = failure_of(failure)
            if why is None:
                raise
            raise dg.Failure(description=f"{asset}: {why}") from exc
    results = invocation.get_results()
    if not results:
        raise dg.Failure(
            description=f"{asset}: the torchrun job ended without rank 0 reporting "
            "a materialization",
            allow_retries=False,
        )
    return invocation.get_materialize_result()


def failure_of(path: Path) -> str | None:
    """The launcher's one-line summary of the rank that failed, if it wrote one."""
    try:
        summary: str = json.loads(path.read_text(encoding="utf-8"))["summary"]
        return summary
    except (OSError, ValueError, KeyError):
        return None


# ---------------------------------------------------------------------------------------------
# Rank side
# ---------------------------------------------------------------------------------------------


def rank_main(argv: Sequence[str] | None = None) -> int:
    """What each torchrun process runs: train; on rank 0 also log and report through Pipes."""
    from dagster_pipes import open_dagster_pipes

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(f"usage: python -m {RANK_ENTRY} RANK_CONFIG.json", file=sys.stderr)
        return 2
    if env_rank() != 0:
        run_rank(args[0])
        return 0
    with open_dagster_pipes() as pipes:
        report = run_rank(args[0], log=pipes.log.info)
        tb = read_rank_config(args[0])[0].tensorboard_dir
        pipes.report_asset_materialization(
            metadata=to_pipes_metadata(checkpoint_metadata(report, Path(tb) if tb else None))
        )
    return 0


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    # @record: an exception in a rank lands in torchrun's error file, so the job's failure report
    # (and the asset's Failure) carries its message, not only an exit code.
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(record(rank_main)())
