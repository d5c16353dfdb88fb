"""What the mix tells the user: `mix_report.json` beside the outputs, the file warnings, and the
dry run.

`mix_report.json` holds one section per output (`build_mix` of each output replaces its own
section under a lock, so the three mix assets may run at once): every bad or dropped line
(file, line, reason, detail), the counts per reason and per source file, and the counts of each
policy (duplicates, decontamination, size cap, re-sampling cap, control characters, unmatched
and empty files). The log shows the first few lines and the count per reason.
"""

from __future__ import annotations

import fcntl
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minillm_core.artifacts import write_json
from minillm_core.data.config import MixConfig, quotas
from minillm_core.data.formats import CANONICAL_KEYS
from minillm_core.data.readers import MixError
from minillm_core.data.scan import (
    EXAMPLES_KEPT,
    FileScan,
    check_bad_fraction,
    resolve_files,
    scan_file,
    unmatched_files,
)
from minillm_core.progress import LogFn, emit

REPORT_NAME = "mix_report.json"
_POLICY_COUNTS = (
    "duplicates_total",
    "duplicates_per_file",
    "contaminated_total",
    "contaminated_per_file",
    "decontam_window",
    "dropped_total",
    "dropped_per_file",
    "control_chars_stripped",
    "quota_unmet",
    "unmatched_files",
    "empty_files",
    "near_duplicates_total",
    "near_duplicates_per_file",
)


def file_warnings(
    cfg: MixConfig, output: str, files: list[FileScan], meta: dict[str, Any], log: LogFn | None
) -> None:
    """Name the files no category uses, and the empty and zero-record ones (counted in meta)."""
    unmatched = unmatched_files(cfg)
    meta["unmatched_files"] = sorted(unmatched)
    for msg in unmatched.values():
        emit(log, f"mix {output}: warning: {msg}")
    empty = [fs.display for fs in files if fs.items == 0]
    zero = [fs.display for fs in files if fs.items and not fs.valid]
    meta["empty_files"] = empty
    meta["zero_record_files"] = zero
    for d in empty:
        emit(log, f"mix {output}: warning: {d}: empty (no records)")
    for d in zero:
        emit(log, f"mix {output}: warning: {d}: no record usable for {output}")


def policy_counts(files: list[FileScan], meta: dict[str, Any]) -> None:
    """The per-file counts of the record policies, into meta."""
    dropped = {fs.display: dict(fs.dropped) for fs in files if fs.dropped}
    meta["dropped_per_file"] = dropped
    meta["dropped_total"] = sum(sum(d.values()) for d in dropped.values())
    meta["control_chars_stripped"] = {
        fs.display: fs.controls_stripped for fs in files if fs.controls_stripped
    }


def log_problems(output: str, files: list[FileScan], log: LogFn | None) -> None:
    """The first few bad or dropped lines, and the count per reason."""
    reasons: Counter[str] = Counter()
    shown = 0
    for fs in files:
        for line, reason, detail in fs.problems:
            reasons[reason] += 1
            if shown < EXAMPLES_KEPT * 2:
                shown += 1
                emit(log, f"mix {output}: skipped {fs.display}:{line}: {reason}: {detail}")
    if reasons:
        emit(
            log,
            f"mix {output}: skipped per reason: "
            + ", ".join(f"{k}: {v}" for k, v in reasons.most_common())
            + f" (every line in {REPORT_NAME})",
        )


def section(output: str, files: list[FileScan], meta: dict[str, Any]) -> dict[str, Any]:
    """This output's part of mix_report.json."""
    per_reason: Counter[str] = Counter()
    per_source: dict[str, dict[str, int]] = {}
    lines = []
    for fs in files:
        c = Counter(reason for _line, reason, _d in fs.problems)
        if c:
            per_source[fs.display] = dict(c)
        per_reason.update(c)
        lines += [
            {"file": fs.display, "line": line, "reason": reason, "detail": detail}
            for line, reason, detail in fs.problems
        ]
    return {
        "output": output,
        "bad_lines": lines,
        # Valid records of a format with no form for this output (plain text has no SFT form):
        # counted per file, the first few lines named.
        "no_form_for_output": {
            fs.display: {"records": fs.not_applicable, "first_lines": fs.na_lines}
            for fs in files
            if fs.not_applicable
        },
        "counts_per_reason": dict(per_reason),
        "counts_per_source": per_source,
        **{k: meta[k] for k in _POLICY_COUNTS if k in meta},
    }


def write_report(out_dir: Path, output: str, sec: dict[str, Any]) -> Path:
    """Replace `output`'s section of out_dir/mix_report.json (atomic, under a lock)."""
    path = out_dir / REPORT_NAME
    with open(out_dir / f".{REPORT_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = {}
        if not isinstance(report, dict):
            report = {}
        report[output] = sec
        write_json(path, report)
    return path


def _dry_file(
    cfg: MixConfig,
    output: str,
    cat: str,
    where: tuple[Path, str, Path],
    show: int,
    out: Callable[[str], None],
) -> None:
    p, d, root = where
    fs = scan_file(p, d, root, cfg, cat, output, None, keep_samples=show, check_bad=False)
    fmts = ", ".join(f"{k} x{v}" for k, v in fs.formats.most_common()) or "-"
    out(
        f"{d}: {fs.sniff.container}, {fmts}; valid {fs.valid}, bad "
        f"{sum(fs.bad.values())}, dropped {sum(fs.dropped.values())}, no {output} form "
        f"{fs.not_applicable}" + ("; EMPTY" if not fs.items else "")
    )
    for line, reason, detail in fs.problems:
        out(f"  skipped {d}:{line}: {reason}: {detail}")
    for s in fs.samples:
        rec = {k: s[k] for k in (*CANONICAL_KEYS[output], "source")}
        out("  sample " + json.dumps(rec, ensure_ascii=False)[:600])
    check_bad_fraction(fs, cfg)


def dry_run(
    cfg: MixConfig, outputs: list[str], show: int = 2, out: Callable[[str], None] = print
) -> list[str]:
    """Print per file the detected container and formats, counts per output, every skipped
    line and a few samples; go on past a failing file or category. Returns the failures (an
    empty list: a build would read every file)."""
    failures: list[str] = []
    for msg in unmatched_files(cfg).values():
        out(f"warning: {msg}")
    for output in outputs:
        q = quotas(cfg, output)
        out(f"== {output}: quotas {q}")
        for cat in q:
            try:
                files, used_samples = resolve_files(cfg, cat)
            except MixError as exc:
                failures.append(str(exc))
                out(f"-- category {cat}: FAILED: {exc}")
                continue
            out(f"-- category {cat}" + (" (shipped samples)" if used_samples else ""))
            for where in files:
                try:
                    _dry_file(cfg, output, cat, where, show, out)
                except MixError as exc:
                    failures.append(str(exc))
                    out(f"{where[1]}: FAILED: {exc}")
    if failures:
        out(f"dry run: {len(failures)} failures:")
        for f in failures:
            out(f"  {f}")
    return failures
