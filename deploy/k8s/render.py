"""Render the Kubernetes manifests in this folder from the project's own settings code.

    python deploy/k8s/render.py            # rewrite training-pod.yaml and multinode-job.yaml
    python deploy/k8s/render.py --check    # exit 1 if a file differs from what would be rendered

- `training-pod.yaml`: the pod the `pretrain_checkpoint` asset creates through dagster-k8s's
  PipesK8sClient when run config sets `distributed: {launcher: k8s, nproc_per_node: 8}` (one node,
  8 GPUs); the client adds the Pipes environment variables and a run-specific name. Built by
  `minillm_assets.k8s.k8s_pod_spec` and `k8s_command`, the functions the asset calls; the ranks
  read their configs from the rank config file the asset writes beside the checkpoint.
- `multinode-job.yaml`: several nodes, outside Dagster: a headless Service and an Indexed Job of
  `nnodes` pods, each running torchrun with the training command (`python -m minillm_cli.train
  pretrain` and its flags, no Dagster needed in the image); they meet at the c10d rendezvous on
  pod 0. Apply it with kubectl; the checkpoint lands on the shared claim like any other run.

tests/unit/test_k8s.py renders both, validates them against the Kubernetes API models (and, when
dagster-k8s is installed, through PipesK8sClient's own pod builder), and checks these files are
current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

# The example deployment: an image built from deploy/k8s/Dockerfile, the project root on a
# ReadWriteMany claim mounted at /project, 8 GPUs per node.
IMAGE = "registry.example.com/minillm:latest"
ROOT = "/project"
CLAIM = "minillm-project"
GPUS = 8
NODES = 2
RDZV_PORT = 29400


def _configs(nnodes: int) -> tuple[Any, Any, Any, Any]:
    from minillm_assets.k8s import K8sPodConfig
    from minillm_core.model import ModelConfig
    from minillm_core.profiles import preset
    from minillm_core.train import TrainConfig
    from minillm_core.train.ddp import DistributedConfig

    train = TrainConfig.resolve(
        preset("gpu", "pretrain"),
        {
            "stage": "pretrain",
            "data_path": f"{ROOT}/out/tokens/pretrain",
            "out_dir": f"{ROOT}/out/pretrain",
            "tensorboard_dir": f"{ROOT}/tf_dir/pretrain",
        },
    )
    model = ModelConfig.resolve(preset("gpu", "model"), {"vocab_size": 6400})
    name = "minillm-pretrain"
    dist = DistributedConfig(
        launcher="k8s" if nnodes == 1 else "torchrun",
        nproc_per_node=GPUS,
        nnodes=nnodes,
        rdzv_endpoint=None if nnodes == 1 else f"{name}-0.{name}:{RDZV_PORT}",
        rdzv_id=name,
    )
    k8s = K8sPodConfig(
        image=IMAGE,
        volume_claim=CLAIM,
        mount_path=ROOT,
        cpu="32",
        memory="256Gi",
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    return train, model, dist, k8s


def training_pod() -> dict[str, Any]:
    from minillm_assets.k8s import k8s_command, k8s_pod_spec

    train, model, dist, k8s = _configs(1)
    spec = k8s_pod_spec(k8s, dist, gpu=True, mount_path=ROOT)
    spec["containers"][0]["image"] = IMAGE
    out = Path(train.out_dir)  # the asset writes the rank config here, on the claim
    spec["containers"][0]["command"] = k8s_command(
        out / ".torchrun-config-RUN_ID.json", dist, "RUN_ID", out / ".torchrun-failure-RUN_ID.json"
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "dagster-RUN_ID-pretrain-checkpoint",
            "labels": {"app.kubernetes.io/part-of": "minillm", "minillm/stage": "pretrain"},
        },
        "spec": spec,
    }


def multinode_job() -> list[dict[str, Any]]:
    from minillm_assets.k8s import k8s_pod_spec
    from minillm_cli.train import stage_flags

    train, model, dist, k8s = _configs(NODES)
    name = "minillm-pretrain"
    spec = k8s_pod_spec(k8s, dist, gpu=True, mount_path=ROOT)
    c = spec["containers"][0]
    c["image"] = IMAGE
    # torchrun with the training command: no Dagster in the loop, pod 0 hosts the rendezvous.
    c["command"] = [
        "python",
        "-m",
        "torch.distributed.run",
        *dist.torchrun_args(),
        "-m",
        "minillm_cli.train",
        "pretrain",
        "--dist_backend",
        "nccl",
        "--dist_timeout_s",
        repr(dist.timeout_s),
        *stage_flags(train, model),
    ]
    c["ports"] = [{"name": "rendezvous", "containerPort": RDZV_PORT}]
    spec["subdomain"] = name  # pod i answers at <name>-i.<name> through the headless Service
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "minillm"}},
        "spec": {
            "clusterIP": "None",
            "selector": {"job-name": name},
            "ports": [{"name": "rendezvous", "port": RDZV_PORT}],
            # the rendezvous must resolve before the pods are ready
            "publishNotReadyAddresses": True,
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "minillm"}},
        "spec": {
            "completionMode": "Indexed",
            "completions": NODES,
            "parallelism": NODES,
            # a lost node fails the job at once (torchrun restarts nothing either);
            # rerunning continues from the resume state on the claim
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/part-of": "minillm"}},
                "spec": spec,
            },
        },
    }
    return [service, job]


HEADER = (
    "# Rendered by deploy/k8s/render.py (do not edit by hand; edit the renderer and re-run it).\n"
)


def documents() -> dict[str, str]:
    return {
        "training-pod.yaml": HEADER + yaml.safe_dump(training_pod(), sort_keys=False, width=100),
        "multinode-job.yaml": HEADER
        + yaml.safe_dump_all(multinode_job(), sort_keys=False, width=100),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    args = p.parse_args(argv)
    stale = []
    for name, text in documents().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale: {', '.join(stale)}; run python deploy/k8s/render.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
