"""Where evaluations go: one JSON line each in `eval_results.jsonl` (appended under an exclusive
`flock` in a single `write` on an `O_APPEND` descriptor, so concurrent evaluations never
interleave), a table for the terminal and the Dagster UI, and TensorBoard scalars."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from minillm_core.layout import Layout


def append_jsonl(path: Path | str, record: Mapping[str, Any]) -> str:
    """Append `record` as one JSON line; safe against concurrent appenders. Returns the line.

    O_APPEND makes each write land at the end, the exclusive flock keeps two appenders (even on
    filesystems where O_APPEND is not atomic, e.g. NFS) from interleaving, and the line goes out
    in one `write` so a reader never sees half of it. If a crashed writer left a last line
    without its newline, a newline is written first so our line stays parseable.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n"
    data = line.encode("utf-8")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(p, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            written = os.write(fd, data)
            if written != len(data):  # a short write on a full disk: say so, do not hide it
                raise OSError(f"short write to {p}: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return line


def read_results(path: Path | str) -> list[dict[str, Any]]:
    """Every parseable line of a results file (a torn or foreign line is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for raw in p.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            obj = json.loads(raw)
            if isinstance(obj, dict):
                out.append(obj)
    return out


def _width(s: str) -> int:
    # Chinese characters take two terminal columns; pad by display width so columns line up.
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table whose columns also line up in a terminal."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")


_NOTES = {
    "loss": "nats per target token",
    "perplexity": "exp(loss)",
    "bits_per_byte": "vocabulary-independent, lower is better",
    "preference_accuracy": "share of pairs with margin > 0",
    "reward_margin": "beta * log-ratio margin",
    "identity_foreign": "answers naming another bot",
    "heldout_left_out": "held-out records not scored: they overlap training data",
}


# Counts are stored as floats so every metric has one type; tables show them as integers.
COUNT_METRICS = frozenset(
    {"tokens", "bytes", "pairs", "mc_items", "identity_foreign", "heldout_left_out"}
)


def _shown(key: str, value: Any) -> Any:
    if key in COUNT_METRICS and isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value


def metrics_table(metrics: Mapping[str, float]) -> str:
    rows = []
    for key, value in metrics.items():
        value = _shown(key, value)
        note = _NOTES.get(key, "")
        if key == "mc_accuracy" and "mc_chance" in metrics:
            note = f"chance {metrics['mc_chance']:.2f}"
        if key == "mc_chance":
            continue
        rows.append((key, value, note))
    return format_table(("metric", "value", "note"), rows)


def samples_markdown(samples: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (
            s["prompt"],
            str(s["completion"])[:200],
            "" if "passed" not in s else ("pass" if s["passed"] else "FAIL"),
        )
        for s in samples
    ]
    return format_table(("prompt", "completion", "probe"), rows)


_SUMMARY_KEYS = (
    "loss",
    "perplexity",
    "bits_per_byte",
    "mc_accuracy",
    "identity_score",
    "preference_accuracy",
    "reward_margin",
)


def print_latest(
    results_file: Path | str | None = None, n: int = 3, file: TextIO | None = None
) -> str:
    """Print the last `n` evaluations of a results file as a table; returns the table."""
    path = Path(results_file) if results_file else Layout.at().results_file
    lines = read_results(path)[-n:] if n > 0 else []
    if not lines:
        text = f"no evaluations in {path}"
    else:
        keys = [k for k in _SUMMARY_KEYS if any(k in r.get("metrics", {}) for r in lines)]
        rows = [
            (
                str(r.get("timestamp", ""))[:19],
                r.get("stage", ""),
                r.get("step", ""),
                Path(str(r.get("checkpoint", ""))).name,
                *(r.get("metrics", {}).get(k) for k in keys),
            )
            for r in lines
        ]
        text = format_table(("time", "stage", "step", "checkpoint", *keys), rows)
    print(text, file=file or sys.stdout, flush=True)
    return text


def write_tensorboard(log_dir: Path, stage: str, metrics: Mapping[str, float], step: int) -> None:
    """Scalars `eval/<stage>/<metric>` at the checkpoint's training step."""
    from torch.utils.tensorboard import SummaryWriter  # slow import: only when writing

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for key, value in metrics.items():
            if math.isfinite(value):
                writer.add_scalar(f"eval/{stage}/{key}", value, global_step=step)
    finally:
        writer.close()
