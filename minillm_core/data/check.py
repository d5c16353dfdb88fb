"""Checks of a built mix file, for the Dagster asset checks: a list of problems, empty when fine."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from minillm_core.artifacts import sidecar_path
from minillm_core.data import formats
from minillm_core.data.config import OUTPUTS
from minillm_core.data.dedup import content_key
from minillm_core.data.formats import CANONICAL_KEYS
from minillm_core.data.readers import MixError, RecordError, strict_loads
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
    (dpo); then, from the sidecar, that the counts per category match the quotas; and, for a
    training file, that no source record also appears in the held-out file beside it, nor (when
    the mix was built with dedup) a record of the same normalised content: a held-out twin.
    """
    p = Path(path)
    if not p.is_file():
        return [f"{p}: missing"]
    problem = _Problems(max_problems)
    held_name = p.name.replace(".jsonl", "_heldout.jsonl")
    held = p.with_name(held_name) if not p.name.endswith("_heldout.jsonl") else None
    sources: set[tuple[str, int]] = set()
    keys: set[int] = set()
    if held is not None and held.is_file():
        sources, keys = _heldout_index(held, output, _built_with_dedup(p))
    n, per_cat = _check_records(p, output, (sources, keys), held_name, problem)
    _check_counts(p, n, per_cat, problem)
    return problem.result()


def _built_with_dedup(p: Path) -> bool:
    try:
        return bool(strict_loads(sidecar_path(p).read_text(encoding="utf-8"))["config"]["dedup"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no sidecar (reported on its own) or one from before dedup existed


def _content(rec: dict, output: str) -> dict:
    return {k: rec[k] for k in CANONICAL_KEYS[output]}


def _heldout_index(
    held: Path, output: str, with_keys: bool
) -> tuple[set[tuple[str, int]], set[int]]:
    """The (file, line) sources of the held-out records and, `with_keys`, their dedup keys."""
    sources: set[tuple[str, int]] = set()
    keys: set[int] = set()
    with open(held, "rb") as f:
        for raw in f:
            try:
                rec = strict_loads(raw.decode("utf-8"))
                sources.add((rec["source"]["file"], rec["source"]["line"]))
                if with_keys:
                    keys.add(content_key(_content(rec, output)))
            except (ValueError, KeyError, TypeError):
                pass  # reported when the held-out file itself is checked
    return sources, keys


def _check_records(
    p: Path,
    output: str,
    held: tuple[set[tuple[str, int]], set[int]],
    held_name: str,
    problem: _Problems,
) -> tuple[int, Counter]:
    """(records, records per category) of a mix file, each record checked."""
    per_cat: Counter = Counter()
    n = 0
    with open(p, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            n += 1
            where = f"{p}:{line_no}"
            try:
                rec = strict_loads(raw.decode("utf-8"))
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
                if (src["file"], src["line"]) in held[0]:
                    problem(f"{where}: {src['file']}:{src['line']} is also in {held_name}")
            try:
                _check_canonical(rec, output)
            except RecordError as exc:
                problem(f"{where}: {exc}")
                continue
            if held[1] and content_key(_content(rec, output)) in held[1]:
                problem(f"{where}: same content as a record in {held_name} (a held-out twin)")
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
        want_cat = {
            c: counts["quotas"][c] * counts["category_repeat"][c] for c in counts.get("quotas", {})
        }
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
