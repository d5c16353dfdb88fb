"""Jobs and the retraining schedule.

Every job that materializes a training asset carries the run tag `minillm/device_pool`: the
instance's run queue (deploy/dagster.yaml) runs at most one run per value of that tag at a time,
so two scheduled trainings never share a device. The value is `MINILLM_DEVICE_POOL` (default
`default`): one name per device or node group. On Kubernetes (`MINILLM_K8S_TRAIN_GPUS` set, as
deploy/helm/values.yaml does) the training runs also carry `dagster-k8s/config`, which makes the
K8sRunLauncher put their pods on that pool's GPU nodes.
"""

from __future__ import annotations

import json
import os

import dagster as dg

DEVICE_POOL_TAG = "minillm/device_pool"
# Node label naming a GPU node's pool on Kubernetes (the tag's value is the label's value).
DEVICE_POOL_NODE_LABEL = "minillm/device-pool"


def device_pool() -> str:
    return os.environ.get("MINILLM_DEVICE_POOL", "default")


def training_run_tags() -> dict[str, str]:
    """Run tags for any run that materializes a training asset (jobs, sensor run requests)."""
    pool = device_pool()
    tags = {DEVICE_POOL_TAG: pool}
    gpus = os.environ.get("MINILLM_K8S_TRAIN_GPUS", "")
    if gpus:
        gpu = {"nvidia.com/gpu": gpus}
        # a JSON string: run tags are strings, and dagster-k8s parses this one
        tags["dagster-k8s/config"] = json.dumps(
            {
                "pod_spec_config": {
                    "node_selector": {DEVICE_POOL_NODE_LABEL: pool},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
                "container_config": {"resources": {"limits": gpu, "requests": gpu}},
            }
        )
    return tags


retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.all(),
    tags=training_run_tags(),
    description="The whole graph: mixes, tokenizer, tensors, pretrain, SFT, DPO and evals.",
)

data_job = dg.define_asset_job(
    "data_and_tokenizer",
    selection=dg.AssetSelection.groups("data", "tokenizer"),
    description="Mixes, tokenizer and token tensors, without training.",
)

stage_jobs = [
    dg.define_asset_job(
        f"{stage}_stage",
        selection=dg.AssetSelection.assets(f"{stage}_checkpoint", f"{stage}_eval"),
        tags=training_run_tags(),
        description=f"Train and evaluate the {stage} stage from existing inputs.",
    )
    for stage in ("pretrain", "sft", "dpo")
]

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule="0 3 * * 1",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain everything on Mondays at 03:00 (stopped until you turn it on).",
)

jobs = [retrain_job, data_job, *stage_jobs]
schedules = [weekly_retrain]
