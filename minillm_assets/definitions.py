"""The one `Definitions` object of the MiniLLM code location."""

from __future__ import annotations

import os

import dagster as dg

from minillm_assets import data, evaluation, export, jobs, sensors, tokenization, training
from minillm_assets.resources import MiniLLMResource

# Every stage is a link in one chain and training must not share its device, so steps run one
# after another in the run's own process: the multiprocess executor would only add a process
# start per step without any parallelism to gain.
all_assets = [
    *sensors.source_assets,
    *data.assets,
    *tokenization.assets,
    *training.assets,
    *evaluation.assets,
    *export.assets,
]
all_checks = [
    *data.checks,
    *tokenization.checks,
    *training.checks,
    *evaluation.checks,
    *export.checks,
]

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=jobs.jobs,
    schedules=jobs.schedules,
    sensors=sensors.sensors,
    resources={"minillm": MiniLLMResource(profile=os.environ.get("MINILLM_PROFILE", "smoke"))},
    executor=dg.in_process_executor,
)
