"""Training stages as torchrun jobs, driven by the checkpoint assets through Dagster Pipes.

Two halves of one launch:

- the asset side, `run_torchrun`: builds `torchrun [options] -m minillm_assets.launch <stage>
  <flags>` (through `minillm_core.distributed launch`, which is torchrun plus a one-line report
  of the rank that failed) and runs it with `dg.PipesSubprocessClient`, which streams rank 0's
  log lines and its materialization report into the run;
- the rank side, `python -m minillm_assets.launch <stage> <flags>` (what every torchrun process
  runs): rank 0 opens Dagster Pipes and reports; the other ranks never touch Pipes (two reporters
  in one Pipes session fail the run), they only train. Outside Dagster `open_dagster_pipes()`
  finds no session and does nothing, so the same command runs standalone.

The metadata a stage reports is built by one function, `checkpoint_metadata`, for the in-process
path and for rank 0 alike, so the asset page shows the same keys whichever way it ran.

The rank side imports this package, hence Dagster (about 1-2 s per process); a machine with torch
but no Dagster runs the core entry point `python -m minillm_core.distributed` under torchrun
instead (see docs/distributed.md).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from pydantic import Field

from minillm_assets._util import image_md, to_metadata
from minillm_core.config import ConfigError, CoreConfig
from minillm_core.distributed import DistributedConfig, env_rank, run_stage, stage_flags

RANK_ENTRY = "minillm_assets.launch"


def checkpoint_metadata(report: Any, tensorboard: Path | None) -> dict[str, Any]:
    """The asset metadata of a finished stage (a core TrainReport), as Dagster metadata values."""
    meta = to_metadata(report.metadata)
    if report.loss_curve_png:
        meta["loss_curve"] = image_md(report.loss_curve_png, f"{report.metadata['stage']} loss")
    meta = {**meta, "final_loss": report.final_loss, "steps": report.steps,
            "tokens_seen": report.tokens_seen, "tokens_per_s": report.tokens_per_s,
            "num_parameters": report.num_parameters,
            "path": dg.MetadataValue.path(str(report.checkpoint_dir))}
    if tensorboard is not None:
        meta["tensorboard"] = dg.MetadataValue.path(str(tensorboard))
    return meta


# MetadataValue class -> the type name of the Pipes protocol ({"raw_value": ..., "type": ...}).
_PIPES_TYPES = {dg.TextMetadataValue: "text", dg.MarkdownMetadataValue: "md",
                dg.PathMetadataValue: "path", dg.FloatMetadataValue: "float",
                dg.IntMetadataValue: "int", dg.BoolMetadataValue: "bool",
                dg.JsonMetadataValue: "json"}


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
            out[key] = {"raw_value": value, "type": "float"} if math.isfinite(value) \
                else {"raw_value": None, "type": "null"}
        else:
            out[key] = {"raw_value": value, "type": "infer"}
    return out


# ---------------------------------------------------------------------------------------------
# Asset side
# ---------------------------------------------------------------------------------------------

def torchrun_command(stage: str, cfg: Any, model_cfg: Any, dist_cfg: DistributedConfig,
                     run_id: str | None, failure_file: Path | None = None) -> list[str]:
    """The whole command line: torchrun (with the failure report) running this module per rank."""
    head = [sys.executable, "-m", "minillm_core.distributed", "launch"]
    if failure_file is not None:
        head += ["--failure_file", str(failure_file)]
    return [*head, *dist_cfg.torchrun_args(run_id), "-m", RANK_ENTRY, stage,
            "--dist_backend", dist_cfg.backend, "--dist_timeout_s", repr(dist_cfg.timeout_s),
            *stage_flags(cfg, model_cfg)]


def run_torchrun(context: dg.AssetExecutionContext, asset: str, stage: str, cfg: Any,
                 model_cfg: Any, dist_cfg: DistributedConfig,
                 env: Mapping[str, str] | None = None) -> dg.MaterializeResult:
    """Run the stage as a torchrun job through Pipes; rank 0's report becomes the result.

    A failed job raises a Failure that names the rank that failed first and its error (the
    exception it raised, or the signal that killed it), read from the launcher's failure file."""
    with tempfile.TemporaryDirectory(prefix="minillm-torchrun-") as tmp:
        failure = Path(tmp) / "failure.json"
        command = torchrun_command(stage, cfg, model_cfg, dist_cfg, context.run.run_id, failure)
        context.log.info(f"{asset}: {dist_cfg.world_size} processes ({dist_cfg.nnodes} node(s) x "
                         f"{dist_cfg.nproc_per_node}); command: {' '.join(command)}")
        try:
            invocation = dg.PipesSubprocessClient().run(command=command, context=context,
                                                        env=dict(env or {}))
        except Exception as exc:
            # The client says only "failed with code 1" (its error class is not public API);
            # the launcher's failure file says which rank failed and how. Without that file
            # (torchrun itself failed, the run was interrupted) the original error stands.
            why = _failure(failure)
            if why is None:
                raise
            raise dg.Failure(description=f"{asset}: {why}") from exc
    results = invocation.get_results()
    if not results:
        raise dg.Failure(description=f"{asset}: the torchrun job ended without rank 0 reporting "
                                     "a materialization", allow_retries=False)
    return invocation.get_materialize_result()


# ---------------------------------------------------------------------------------------------
# Asset side, on Kubernetes: the same torchrun job in a pod (dagster-k8s's PipesK8sClient)
# ---------------------------------------------------------------------------------------------

class K8sPodConfig(CoreConfig):
    """The pod a training stage runs in when `distributed.launcher` is k8s (one node, its GPUs).

    The pod must see the project's files at the same absolute paths as the Dagster run (the
    asset checks read the checkpoint the pod writes): mount the claim that holds the project
    root at `mount_path`, the root the resource resolves (deploy/k8s/ shows the whole setup)."""

    image: str | None = Field(None, description="image with this project installed (deploy/k8s/Dockerfile)")
    namespace: str | None = Field(None, description="None = the namespace the run is in, else default")
    volume_claim: str | None = Field(None, description="PersistentVolumeClaim holding the project "
                                     "root (data, out/, tf_dir); None = no volume (files die with the pod)")
    mount_path: str | None = Field(None, description="where the claim is mounted; None = the project root")
    shm_size: str = Field("16Gi", description="/dev/shm size: NCCL and DataLoader workers pass "
                          "tensors through it, and the container default (64M) is too small")
    cpu: str | None = Field(None, description="CPU request and limit, e.g. '32'")
    memory: str | None = Field(None, description="memory request and limit, e.g. '256Gi'")
    node_selector: dict[str, str] = Field(default_factory=dict, description="e.g. {'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3'}")
    tolerations: list[dict[str, str]] = Field(default_factory=list, description="e.g. [{'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}]")
    service_account: str | None = Field(None, description="service account of the training pod")
    delete_pod_on_completion: bool = Field(True, description="False keeps a failed pod for kubectl logs")


def k8s_pod_spec(k8s: K8sPodConfig, dist_cfg: DistributedConfig, gpu: bool, mount_path: str
                 ) -> dict[str, Any]:
    """The pod spec (camelCase, as kubectl takes it) that PipesK8sClient completes with the image,
    the command and the Pipes environment: one container, nproc_per_node GPUs, a memory-backed
    /dev/shm, the project volume."""
    limits: dict[str, str] = {}
    if gpu:
        # The device plugin hands out whole GPUs: one per torchrun process.
        limits["nvidia.com/gpu"] = str(dist_cfg.nproc_per_node)
    if k8s.cpu:
        limits["cpu"] = k8s.cpu
    if k8s.memory:
        limits["memory"] = k8s.memory
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shm_size}}]
    if k8s.volume_claim:
        mounts.append({"name": "project", "mountPath": mount_path})
        volumes.append({"name": "project", "persistentVolumeClaim": {"claimName": k8s.volume_claim}})
    container: dict[str, Any] = {
        "name": "train",
        "resources": {"limits": limits, "requests": dict(limits)} if limits else {},
        "volumeMounts": mounts,
        "workingDir": mount_path,
        "env": [{"name": "MINILLM_ROOT", "value": mount_path}, {"name": "MPLBACKEND", "value": "Agg"}],
    }
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    if k8s.node_selector:
        spec["nodeSelector"] = dict(k8s.node_selector)
    if k8s.tolerations:
        spec["tolerations"] = [dict(t) for t in k8s.tolerations]
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    return spec


def k8s_command(stage: str, cfg: Any, model_cfg: Any, dist_cfg: DistributedConfig, run_id: str | None,
                failure_file: Path | None) -> list[str]:
    """The pod's command: the same torchrun job as on one machine, with the image's python."""
    return ["python", *torchrun_command(stage, cfg, model_cfg, dist_cfg, run_id, failure_file)[1:]]


def run_k8s(context: dg.AssetExecutionContext, asset: str, stage: str, cfg: Any, model_cfg: Any,
            dist_cfg: DistributedConfig, k8s: K8sPodConfig, root: Path) -> dg.MaterializeResult:
    """Run the stage's torchrun job in a pod through PipesK8sClient; rank 0 reports as locally."""
    if dist_cfg.nnodes > 1:
        raise ConfigError(f"the k8s launcher runs one pod (one node), not nnodes={dist_cfg.nnodes}: "
                          "for several nodes apply deploy/k8s/multinode-job.yaml (an Indexed Job "
                          "whose pods join one torchrun rendezvous)")
    if not k8s.image:
        raise ConfigError("k8s.image is not set: the image with this project installed "
                          "(deploy/k8s/Dockerfile builds one)")
    try:
        from dagster_k8s import PipesK8sClient
    except ImportError as exc:
        raise ConfigError("the k8s launcher needs dagster-k8s (pip install 'minillm[k8s]')") from exc
    mount = k8s.mount_path or str(root)
    # On the shared volume, so the run (which mounts it too) can read the rank's failure.
    failure = Path(cfg.out_dir) / f".torchrun-failure-{context.run.run_id}.json"
    command = k8s_command(stage, cfg, model_cfg, dist_cfg, context.run.run_id, failure)
    spec = k8s_pod_spec(k8s, dist_cfg, torch_device_is_cuda(cfg.device), mount)
    context.log.info(f"{asset}: pod with {dist_cfg.nproc_per_node} process(es), image {k8s.image}")
    try:
        invocation = PipesK8sClient().run(
            context=context, image=k8s.image, command=command, namespace=k8s.namespace,
            base_pod_spec=spec, base_pod_meta={"labels": {"app.kubernetes.io/part-of": "minillm",
                                                         "minillm/stage": stage}},
            delete_pod_on_completion=k8s.delete_pod_on_completion)
    except Exception as exc:
        why = _failure(failure) if k8s.volume_claim else None
        if why is None:
            raise
        raise dg.Failure(description=f"{asset}: {why}") from exc
    finally:
        failure.unlink(missing_ok=True)
    return invocation.get_materialize_result()


def torch_device_is_cuda(device: str) -> bool:
    return device.split(":")[0] == "cuda"


def _failure(path: Path) -> str | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))["summary"]
    except (OSError, ValueError, KeyError):
        return None


# ---------------------------------------------------------------------------------------------
# Rank side
# ---------------------------------------------------------------------------------------------

def rank_main(argv: Sequence[str] | None = None) -> int:
    """What each torchrun process runs: train; on rank 0 also log and report through Pipes."""
    from dagster_pipes import open_dagster_pipes

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("pretrain", "sft", "dpo"):
        print(f"usage: python -m {RANK_ENTRY} {{pretrain|sft|dpo}} [--dist_backend B] "
              f"[--dist_timeout_s S] [stage options]", file=sys.stderr)
        return 2
    stage, flags = args[0], args[1:]
    if env_rank() != 0:
        run_stage(stage, flags)
        return 0
    with open_dagster_pipes() as pipes:
        report = run_stage(stage, flags, log=pipes.log.info)
        tb = _flag(flags, "tensorboard_dir")
        pipes.report_asset_materialization(
            metadata=to_pipes_metadata(checkpoint_metadata(report, Path(tb) if tb else None)))
    return 0


def _flag(flags: Sequence[str], name: str) -> str | None:
    for i, f in enumerate(flags[:-1]):
        if f == f"--{name}":
            return flags[i + 1]
    return None


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    # @record: an exception in a rank lands in torchrun's error file, so the job's failure report
    # (and the asset's Failure) carries its message, not only an exit code.
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(record(rank_main)())
