"""Training stages on Kubernetes: the same torchrun job as on one machine, in a pod created by
dagster-k8s's PipesK8sClient (one node, its GPUs); rank 0 reports through Pipes as locally.

The pod must see the project's files at the same absolute paths as the Dagster run: the rank
config file and the failure report are written to the checkpoint folder on the shared claim, and
the asset checks read the checkpoint the pod writes (deploy/k8s/ shows the whole setup).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from minillm_assets.pipes import failure_of, torchrun_command
from minillm_core.config import CoreConfig
from minillm_core.errors import ConfigError
from minillm_core.train.ddp import DistributedConfig, write_rank_config


class K8sPodConfig(CoreConfig):
    """The pod a training stage runs in when `distributed.launcher` is k8s (one node, its GPUs).

    The pod must see the project's files at the same absolute paths as the Dagster run (the
    asset checks read the checkpoint the pod writes): mount the claim that holds the project
    root at `mount_path`, the root the resource resolves (deploy/k8s/ shows the whole setup)."""

    image: str | None = Field(
        None, description="image with this project installed (deploy/k8s/Dockerfile)"
    )
    namespace: str | None = Field(
        None, description="None = the namespace the run is in, else default"
    )
    volume_claim: str | None = Field(
        None,
        description="PersistentVolumeClaim holding the project "
        "root (data, out/, tf_dir); None = no volume (files die with the pod)",
    )
    mount_path: str | None = Field(
        None, description="where the claim is mounted; None = the project root"
    )
    shm_size: str = Field(
        "16Gi",
        description="/dev/shm size: NCCL and DataLoader workers pass "
        "tensors through it, and the container default (64M) is too small",
    )
    cpu: str | None = Field(None, description="CPU request and limit, e.g. '32'")
    memory: str | None = Field(None, description="memory request and limit, e.g. '256Gi'")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="e.g. {'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3'}"
    )
    tolerations: list[dict[str, str]] = Field(
        default_factory=list,
        description="e.g. [{'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}]",
    )
    service_account: str | None = Field(None, description="service account of the training pod")
    delete_pod_on_completion: bool = Field(
        True, description="False keeps a failed pod for kubectl logs"
    )


def k8s_pod_spec(
    k8s: K8sPodConfig, dist_cfg: DistributedConfig, gpu: bool, mount_path: str
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
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shm_size}}
    ]
    if k8s.volume_claim:
        mounts.append({"name": "project", "mountPath": mount_path})
        volumes.append(
            {"name": "project", "persistentVolumeClaim": {"claimName": k8s.volume_claim}}
        )
    container: dict[str, Any] = {
        "name": "train",
        "resources": {"limits": limits, "requests": dict(limits)} if limits else {},
        "volumeMounts": mounts,
        "workingDir": mount_path,
        "env": [
            {"name": "MINILLM_ROOT", "value": mount_path},
            {"name": "MPLBACKEND", "value": "Agg"},
        ],
    }
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    if k8s.node_selector:
        spec["nodeSelector"] = dict(k8s.node_selector)
    if k8s.tolerations:
        spec["tolerations"] = [dict(t) for t in k8s.tolerations]
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    return spec


def k8s_command(
    config_file: Path, dist_cfg: DistributedConfig, run_id: str | None, failure_file: Path | None
) -> list[str]:
    """The pod's command: the same torchrun job as on one machine, with the image's python."""
    return ["python", *torchrun_command(config_file, dist_cfg, run_id, failure_file)[1:]]


def run_k8s(
    context: dg.AssetExecutionContext,
    asset: str,
    stage: str,
    cfg: Any,
    model_cfg: Any,
    dist_cfg: DistributedConfig,
    k8s: K8sPodConfig,
    root: Path,
) -> dg.MaterializeResult:
    """Run the stage's torchrun job in a pod through PipesK8sClient; rank 0 reports as locally."""
    if dist_cfg.nnodes > 1:
        raise ConfigError(
            f"the k8s launcher runs one pod (one node), not nnodes={dist_cfg.nnodes}: "
            "for several nodes apply deploy/k8s/multinode-job.yaml (an Indexed Job "
            "whose pods join one torchrun rendezvous)"
        )
    if not k8s.image:
        raise ConfigError(
            "k8s.image is not set: the image with this project installed "
            "(deploy/k8s/Dockerfile builds one)"
        )
    try:
        from dagster_k8s import PipesK8sClient
    except ImportError as exc:
        raise ConfigError(
            "the k8s launcher needs dagster-k8s (pip install 'minillm[k8s]')"
        ) from exc
    mount = k8s.mount_path or str(root)
    run_id = context.run.run_id
    # On the shared volume, so the pod reads the config and the run reads the rank's failure.
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = write_rank_config(out / f".torchrun-config-{run_id}.json", cfg, model_cfg, dist_cfg)
    failure = out / f".torchrun-failure-{run_id}.json"
    command = k8s_command(config, dist_cfg, run_id, failure)
    spec = k8s_pod_spec(k8s, dist_cfg, torch_device_is_cuda(cfg.device), mount)
    context.log.info(f"{asset}: pod with {dist_cfg.nproc_per_node} process(es), image {k8s.image}")
    try:
        invocation = PipesK8sClient().run(
            context=context,
            image=k8s.image,
            command=command,
            namespace=k8s.namespace,
            base_pod_spec=spec,
            base_pod_meta={
                "labels": {"app.kubernetes.io/part-of": "minillm", "minillm/stage": stage}
            },
            delete_pod_on_completion=k8s.delete_pod_on_completion,
        )
    except Exception as exc:
        why = failure_of(failure) if k8s.volume_claim else None
        if why is None:
            raise
        raise dg.Failure(description=f"{asset}: {why}") from exc
    finally:
        failure.unlink(missing_ok=True)
        config.unlink(missing_ok=True)
    return invocation.get_materialize_result()


def torch_device_is_cuda(device: str) -> bool:
    return device.split(":")[0] == "cuda"
