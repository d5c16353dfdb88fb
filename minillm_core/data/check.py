"""Checks of a built mix file, for the Dagster asset checks: a list of problems, empty when fine."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from minillm_core.artifacts import sidecar_path
from minillm_core.data import decontam, formats
from minillm_core.data.config import OUTPUTS
from minillm_core.data.dedup import content_key
from minillm_core.data.formats import CANONICAL_KEYS
from minillm_core.data.readers import MixError, RecordError, loads_bytes, strict_loads
from minillm_core.schema import ROLES


class _Problems:
    """The first `limit` problems, and how many more there were."""

    def __init__(self, limit: int):
        self.limit, self.more = limit, 0
        self.items: list[str] = []

    def __call__(self, msg: str) -> None:
        if len(self.items) < self.limit:
            self.items.append(msg)
        else:
            self.more += 1

    def result(self) -> list[str]:
        return self.items + ([f"... and {self.more} more problems"] if self.more else [])


def check_mix(path: Path | str, output: str, max_problems: int = 20) -> list[str]:
    """Problems found in a built mix file (empty list: fine), for Dagster asset checks.

    Checks every record (streaming): JSON, a `source` with file/line/category, non-empty text
    (pretrain), a valid conversation ending with an assistant turn (sft), a consistent pair
    (dpo); then, from the sidecar, that the counts per category match what was drawn; and, for
    a training file, that no source record also appears in the held-out file beside it, nor
    (when the mix was built with dedup) a record of the same normalised content (a held-out
    twin), nor one sharing a `decontam_window`-character window with a held-out record.
    """
    return check_mix_counts(path, output, max_problems)[0]


def check_mix_counts(
    path: Path | str, output: str, max_problems: int = 20
) -> tuple[list[str], dict[str, int]]:
    """`check_mix`'s problems and its overlap counts: `heldout_twins` (same source or same
    normalised content) and `window_overlaps` (training records sharing a window)."""
    p = Path(path)
    counts = {"heldout_twins": 0, "window_overlaps": 0}
    if not p.is_file():
        return [f"{p}: missing"], counts
    problem = _Problems(max_problems)
    held_name = p.name.replace(".jsonl", "_heldout.jsonl")
    held = _Held(held_name)
    held_path = p.with_name(held_name)
    if not p.name.endswith("_heldout.jsonl") and held_path.is_file():
        held.load(held_path, output, _built_with(p))
    n, per_cat = _check_records(p, output, held, problem)
    _check_counts(p, n, per_cat, problem)
    counts.update(held.counts)
    return problem.result(), counts


def _built_with(p: Path) -> dict:
    """The config the mix was built with (empty: no sidecar, reported on its own)."""
    try:
        cfg = strict_loads(sidecar_path(p).read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _content(rec: dict, output: str) -> dict:
    return {k: rec[k] for k in CANONICAL_KEYS[output]}


class _Held:
    """What the held-out file beside a training file holds: its (file, line) sources, its dedup
    keys (when built with dedup) and its windows; and how many training records hit each."""

    def __init__(self, name: str):
        self.name = name
        self.sources: set[tuple[str, int]] = set()
        self.keys: set[bytes] = set()
        self.index = decontam.WindowIndex(0)
        self.counts = {"heldout_twins": 0, "window_overlaps": 0}

    def load(self, held: Path, output: str, built: dict) -> None:
        # A mix built with decontamination off is still checked (at the default window).
        window = built.get("decontam_window") or decontam.WINDOW_CHARS
        self.index = decontam.WindowIndex(int(window))
        for rec in decontam.mix_records(held):
            try:
                self.sources.add((rec["source"]["file"], rec["source"]["line"]))
                if built.get("dedup"):
                    self.keys.add(content_key(_content(rec, output)))
                self.index.add(_content(rec, output))
            except (KeyError, TypeError):
                pass  # reported when the held-out file itself is checked
        self.index.freeze()

    def same_source(self, src: dict, where: str, problem: _Problems) -> None:
        if (src["file"], src["line"]) in self.sources:
            self.counts["heldout_twins"] += 1
            problem(f"{where}: {src['file']}:{src['line']} is also in {self.name}")

    def same_content(self, rec: dict, output: str, where: str, problem: _Problems) -> None:
        fields = _content(rec, output)
        if self.keys and content_key(fields) in self.keys:
            self.counts["heldout_twins"] += 1
            problem(f"{where}: same content as a record in {self.name} (a held-out twin)")
        elif self.index.overlaps(fields):
            self.counts["window_overlaps"] += 1
            problem(
                f"{where}: shares a {self.index.window}-character window with a record in "
                f"{self.name}"
            )


def _check_records(p: Path, output: str, held: _Held, problem: _Problems) -> tuple[int, Counter]:
    """(records, records per category) of a mix file, each record checked."""
    per_cat: Counter = Counter()
    n = 0
    with open(p, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            n += 1
            where = f"{p}:{line_no}"
            try:
                rec = loads_bytes(raw)
            except ValueError as exc:
                problem(f"{where}: invalid JSON ({exc})")
                continue
            if not isinstance(rec, dict):
                problem(f"{where}: not an object")
                continue
            src = rec.get("source")
            if not (
                isinstance(src, dict)
                and isinstance(src.get("file"), str)
                and src["file"]
                and isinstance(src.get("line"), int)
                and src["line"] >= 1
                and isinstance(src.get("category"), str)
            ):
                problem(f"{where}: missing or malformed source (need file, line, category)")
            else:
                per_cat[src["category"]] += 1
                held.same_source(src, where, problem)
            try:
                _check_canonical(rec, output)
            except RecordError as exc:
                problem(f"{where}: {exc}")
                continue
            held.same_content(rec, output, where, problem)
    return n, per_cat


def _check_counts(p: Path, n: int, per_cat: Counter, problem: _Problems) -> None:
    """The counts in the sidecar: the total, and per category the quota times its repeat."""
    meta_path = sidecar_path(p)
    if not meta_path.is_file():
        problem(f"{meta_path}: missing sidecar")
        return
    counts = json.loads(meta_path.read_text(encoding="utf-8")).get("counts", {})
    if p.name.endswith("_heldout.jsonl"):
        want_total = counts.get("heldout_records")
        want_cat = counts.get("heldout_per_category", {})
    else:
        want_total = counts.get("records")
        # What was drawn: the quota times the category's repeat, less where `max_repeat`
        # left a quota unmet (the sidecar says so).
        want_cat = counts.get("records_per_category", {})
    if want_total is not None and n != want_total:
        problem(f"{p}: {n} records, the sidecar says {want_total}")
    for c, want in want_cat.items():
        if per_cat.get(c, 0) != want:
            problem(f"{p}: category {c} has {per_cat.get(c, 0)} records, quota {want}")


def _check_canonical(rec: dict, output: str) -> None:
    def conv(key: str) -> list[dict]:
        msgs = rec.get(key)
        if not isinstance(msgs, list):
            raise RecordError("missing field", key)
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
                raise RecordError("bad message", f"{key}[{i}] needs a known role and content")
        return formats.validate_conversation(msgs, key)

    if output == "pretrain":
        t = rec.get("text")
        if not isinstance(t, str) or not t.strip():
            raise RecordError("empty content", "text")
    elif output == "sft":
        conv("conversations")
    elif output == "dpo":
        formats.check_pair(conv("chosen"), conv("rejected"))
    else:
        raise MixError(
            f"output must be one of {', '.join(OUTPUTS)} (got {output!r})", field="output"
        )
