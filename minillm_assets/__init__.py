"""MiniLLM's Dagster code location: assets, resources, checks, jobs and schedules.

Thin calls into `minillm_core`; load with `dagster dev -w workspace.yaml` or
`dagster asset materialize -m minillm_assets --select ...`.
"""

from minillm_assets.definitions import defs

__all__ = ["defs"]
