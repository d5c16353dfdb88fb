"""The run summary: one table of what a run made, stage by stage (final training loss, the
latest evaluation's scores, wall time, artifact path), read from the artifacts themselves
(checkpoints' model.json, eval_results.jsonl, the tokenizer's metadata) and the step times the
pipeline saved (`Layout.step_times_file`). scripts/run.sh prints it at the end; `minillm summary`
prints it again at any time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from minillm_core.artifacts import read_json, write_json, write_text
from minillm_core.eval.results import read_results
from minillm_core.layout import Layout
from minillm_core.tokenizer.core import META_FILE

STAGES = ("pretrain", "sft", "dpo")
# The scores shown per evaluation, when present, in this order.
SCORES = ("bits_per_byte", "perplexity", "identity_score", "preference_accuracy", "reward_margin")


def save_step_times(layout: Layout, seconds: Mapping[str, float]) -> Path:
    """Record the seconds each step of a run took (written atomically)."""
    return write_json(layout.step_times_file, {k: round(v, 3) for k, v in seconds.items()})


def _step_times(layout: Layout) -> dict[str, float]:
    path = layout.step_times_file
    return {k: float(v) for k, v in read_json(path).items()} if path.is_file() else {}


def _seconds(times: Mapping[str, float], *steps: str) -> str:
    got = [times[s] for s in steps if s in times]
    return f"{sum(got):.1f} s" if got else "-"


def _num(x: Any) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def _latest_evals(layout: Layout) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for line in read_results(layout.results_file):
        latest[str(line.get("stage"))] = line
    return latest


def _stage_row(
    layout: Layout, stage: str, evals: Mapping[str, Any], times: Mapping[str, float]
) -> list[str] | None:
    ckpt = layout.checkpoint_dir(stage)
    meta_path = ckpt / "model.json"
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    loss = f"{_num(meta.get('final_loss'))} ({meta.get('step')} steps)"
    metrics = (evals.get(stage) or {}).get("metrics") or {}
    scores = ", ".join(f"{k} {_num(metrics[k])}" for k in SCORES if metrics.get(k) is not None)
    time = _seconds(times, f"{stage}_checkpoint", f"{stage}_eval")
    return [stage, loss, scores or "-", time, layout.relative(ckpt)]


def summary_rows(layout: Layout) -> list[list[str]]:
    """[stage, loss, scores, time, artifact] for each stage the layout holds."""
    times = _step_times(layout)
    rows: list[list[str]] = []
    mixes = [layout.mix_path(s) for s in STAGES if layout.mix_path(s).is_file()]
    if mixes:
        mb = sum(p.stat().st_size for p in mixes) / 2**20
        when = _seconds(times, *(f"{s}_mix" for s in STAGES))
        rows.append(["mix", "-", f"{len(mixes)} mixes, {mb:.1f} MB", when, _rel(layout, mixes)])
    tok_meta = layout.tokenizer_dir / META_FILE
    if tok_meta.is_file():
        vocab = read_json(tok_meta).get("vocab_size", "?")
        when = _seconds(times, "tokenizer")
        rows.append(["tokenizer", "-", f"vocab {vocab}", when, layout.relative(tok_meta.parent)])
    shards = [
        layout.tokens_dir(s) for s in STAGES if (layout.tokens_dir(s) / "index.json").is_file()
    ]
    if shards:
        when = _seconds(times, *(f"{s}_tokens" for s in STAGES))
        rows.append(["tokens", "-", f"{len(shards)} stages", when, _rel(layout, shards)])
    evals = _latest_evals(layout)
    rows += [r for s in STAGES if (r := _stage_row(layout, s, evals, times))]
    if (layout.hf_dir / "config.json").is_file():
        rows.append(
            ["hf export", "-", "-", _seconds(times, "hf_export"), layout.relative(layout.hf_dir)]
        )
    return rows


def _rel(layout: Layout, paths: list[Path]) -> str:
    parent = paths[0].parent
    return layout.relative(parent) + "/"


def summary_table(layout: Layout) -> str:
    """The summary as a markdown table, with the total time and where the results file is."""
    rows = summary_rows(layout)
    if not rows:
        return f"nothing built under {layout.out} yet"
    head = ["stage", "final loss", "scores", "time", "artifact"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in [head, ["-" * w for w in widths], *rows]
    ]
    times = _step_times(layout)
    if times:
        lines.append(f"\ntotal step time {sum(times.values()):.1f} s")
    lines.append(f"eval results: {layout.results_file}")
    return "\n".join(lines)


def write_summary(layout: Layout) -> str:
    """Print-ready summary, also saved as `Layout.summary_file`."""
    table = summary_table(layout)
    write_text(layout.summary_file, table + "\n")
    return table


__all__ = ["save_step_times", "summary_rows", "summary_table", "write_summary"]
