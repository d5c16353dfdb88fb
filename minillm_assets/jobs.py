"""Jobs and the retraining schedule."""

from __future__ import annotations

import dagster as dg

retrain_job = dg.define_asset_job(
    "retrain", selection=dg.AssetSelection.all(),
    description="The whole graph: mixes, tokenizer, tensors, pretrain, SFT, DPO and evals.")

data_job = dg.define_asset_job(
    "data_and_tokenizer", selection=dg.AssetSelection.groups("data", "tokenizer"),
    description="Mixes, tokenizer and token tensors, without training.")

stage_jobs = [
    dg.define_asset_job(f"{stage}_stage",
                        selection=dg.AssetSelection.assets(f"{stage}_checkpoint", f"{stage}_eval"),
                        description=f"Train and evaluate the {stage} stage from existing inputs.")
    for stage in ("pretrain", "sft", "dpo")
]

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain", job=retrain_job, cron_schedule="0 3 * * 1",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain everything on Mondays at 03:00 (stopped until you turn it on).")

jobs = [retrain_job, data_job, *stage_jobs]
schedules = [weekly_retrain]
