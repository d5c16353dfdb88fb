"""The code location of tests/integration/test_postgres.py: the project's definitions, plus a schedule that
ticks every minute and skips, so the test sees the daemon record a tick without starting a run."""

import dagster as dg

from minillm_assets.definitions import defs as project_defs

PROBE_SCHEDULE = "minute_probe"


@dg.schedule(
    name=PROBE_SCHEDULE,
    cron_schedule="* * * * *",
    job_name="data_and_tokenizer",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def minute_probe(context: dg.ScheduleEvaluationContext) -> dg.SkipReason:
    return dg.SkipReason(f"probe tick at {context.scheduled_execution_time}")


defs = dg.Definitions.merge(project_defs, dg.Definitions(schedules=[minute_probe]))
