"""Checks on an evaluation's metrics: pure, with thresholds held as data (the profile's
`eval_checks` preset), so the Dagster asset checks and `minillm eval --profile` read the same."""

from __future__ import annotations

import math
from collections.abc import Mapping

from minillm_core.eval.config import EvalReport

# Valid range of every metric whatever the profile: a number outside it is a bug, not a bad model.
VALID_RANGES: dict[str, tuple[float, float]] = {
    "loss": (0.0, 100.0),
    "perplexity": (1.0, math.inf),
    "bits_per_byte": (0.0, 100.0),
    "mc_accuracy": (0.0, 1.0),
    "mc_chance": (0.0, 1.0),
    "preference_accuracy": (0.0, 1.0),
    "identity_name": (0.0, 1.0),
    "identity_author": (0.0, 1.0),
    "identity_score": (0.0, 1.0),
    "chosen_logp": (-math.inf, 0.0),
    "rejected_logp": (-math.inf, 0.0),
    "identity_foreign": (0.0, math.inf),
    "tokens": (1.0, math.inf),
    "bytes": (1.0, math.inf),
    "pairs": (1.0, math.inf),
    "mc_items": (0.0, math.inf),
}


def eval_thresholds(profile: str, stage: str) -> dict[str, tuple[float | None, float | None]]:
    """A profile's thresholds for one stage: `profiles.PROFILES[profile]["eval_checks"][stage]`,
    metric -> (min, max), None = unbounded (empty when the profile sets none). The profile is
    the one place they live (data, not branches in `evaluate`); the Dagster asset checks read
    the same preset."""
    from minillm_core.profiles import preset

    return {k: tuple(v) for k, v in preset(profile, "eval_checks").get(stage, {}).items()}


def check_eval(
    report_or_metrics: EvalReport | Mapping[str, float],
    thresholds: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> list[str]:
    """Problems with an evaluation's metrics; empty means the check passes.

    Always: every metric is a finite number inside its VALID_RANGES. Then each threshold
    `metric: (min, max)`; a threshold on a metric the evaluation did not produce is a problem
    (a check that silently passes on missing data is worse than none).
    """
    metrics = (
        report_or_metrics.metrics
        if isinstance(report_or_metrics, EvalReport)
        else report_or_metrics
    )
    problems: list[str] = []
    if not metrics:
        problems.append("no metrics")
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{key}: not a number ({value!r})")
            continue
        if not math.isfinite(value):
            problems.append(f"{key}: not finite ({value})")
            continue
        lo, hi = VALID_RANGES.get(key, (-math.inf, math.inf))
        if not lo <= value <= hi:
            problems.append(f"{key}: {value:.6g} outside its valid range [{lo}, {hi}]")
    for key, (low, high) in (thresholds or {}).items():
        if key not in metrics:
            problems.append(f"{key}: missing (threshold {low}..{high})")
            continue
        value = metrics[key]
        if low is not None and not value >= low:
            problems.append(f"{key}: {value:.6g} below the threshold {low}")
        if high is not None and not value <= high:
            problems.append(f"{key}: {value:.6g} above the threshold {high}")
    return problems
