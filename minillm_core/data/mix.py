"""Build the Chinese pretrain / SFT / DPO mixes from user sources, streaming, with located errors.

`build_mix(cfg, output, out_dir)` writes `{output}_chinese.jsonl` (training) and
`{output}_chinese_heldout.jsonl` (a seeded split no training stage reads), each with a sidecar.

How it stays flat in memory (the requirement: peak RSS must not grow with the sources):

1. Scan (`scan`). Every file of every category feeding `output` is read line by line (or element
   by element, `readers`), each record converted and validated (`formats`). Nothing per record
   is kept, so memory is O(files + bad lines), not O(records).
2. Dedup (`dedup`, on by default): a record whose normalised content repeats an earlier one, in
   any file or category feeding the output, is dropped before anything is drawn, so held-out
   records have no twin in training. An 8-byte key per record while it runs.
3. Select (`sampling`). Per category, held-out ordinals first, then the training ordinals and how
   often each is repeated: O(q) integers for a quota q.
4. Write (`spool`). A second pass converts only the chosen records into an unlinked spool file in
   `out_dir`; the output is then assembled from the spool in a seeded shuffled order, repeating
   records as often as drawn. Outputs are written under temporary names and renamed into place,
   so a failed build leaves nothing under a final name.

Canonical records: pretrain `{"text", "source", ...}`, sft `{"conversations", "source", ...}`,
dpo `{"chosen", "rejected", "source", ...}`, where `source` = {file, line, category} and `...` are
the record's original fields (a field whose name clashes with a canonical one is kept as
`original_<name>`, unless it holds the same value).

Evidence: `bench/bench_mix.py` measures throughput and peak RSS at 0.1x, 1x and 10x input (the
table is in docs/mix.md): the peak grows only with the O(q) selection, which stops growing once
the sources exceed the quotas, so end-to-end time is dominated by converting and writing the
outputs.
"""

from __future__ import annotations

import errno
import random
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from minillm_core.artifacts import (
    atomic_path,
    disk_full_error,
    sidecar_path,
    write_json,
)
from minillm_core.data import report
from minillm_core.data.config import OUTPUTS, MixConfig, Output, quotas
from minillm_core.data.decontam import contaminated_draws, heldout_index
from minillm_core.data.dedup import distinct_ordinals
from minillm_core.data.readers import MixError
from minillm_core.data.sampling import draw_heldout, draw_training, heldout_count
from minillm_core.data.scan import EXAMPLES_KEPT, FileScan, resolve_files, scan_file
from minillm_core.data.spool import Spool, write_pass
from minillm_core.layout import Layout
from minillm_core.progress import LogFn, Progress, emit

SCHEMA_VERSION = 1
Found = dict[str, tuple[list[tuple[Path, str, Path]], bool]]


class MixReport(BaseModel):
    path: Path
    heldout_path: Path
    records: int
    heldout_records: int
    metadata: dict[str, Any]


def build_mix(
    cfg: MixConfig, output: Output, out_dir: Path | str, log: LogFn | None = None
) -> MixReport:
    """Write `out_dir/{output}_chinese.jsonl` and its held-out split (module docstring)."""
    if output not in OUTPUTS:
        raise MixError(
            f"output must be one of {', '.join(OUTPUTS)} (got {output!r})", field="output"
        )
    t0, cpu0 = time.monotonic(), time.process_time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    q = quotas(cfg, output)
    if not q:
        raise MixError(
            f"no category feeds {output!r}: set `outputs` of at least one category",
            field="categories",
        )
    found = _find_files(cfg, output, q, log)
    scans, samples_used = _scan_all(cfg, output, found, log)
    main_path = out_dir / f"{output}_chinese.jsonl"
    held_path = out_dir / f"{output}_chinese_heldout.jsonl"
    meta: dict[str, Any] = {
        "output": output,
        "quotas": q,
        "records_per_category": {},
        "distinct_per_category": {},
        "heldout_per_category": {},
        "repeat_factors": {},
        "category_repeat": {},
        "valid_per_category": {},
        "records_per_file": {},
        "quota_unmet": {},
    }
    distinct = _dedup(output, scans, meta, log, cfg.near_dedup) if cfg.dedup else {}
    # The scan's rate counts the dedup too (both grow with the sources); CPU: one dedicated core.
    scan_seconds, scan_cpu_seconds = time.monotonic() - t0, time.process_time() - cpu0
    # Select every category first: the totals size the occurrence list exactly (no regrowth).
    t1, cpu1 = time.monotonic(), time.process_time()
    chosen = _choose_all(cfg, output, scans, q, distinct, meta, log)
    # Timings stay out of the sidecar (written below): rebuilds are byte-identical.
    choose_seconds = (time.monotonic() - t1, time.process_time() - cpu1)
    slots, n_bytes, held_bytes = _write_outputs(
        cfg, output, scans, chosen, meta, out_dir, main_path, held_path
    )
    all_files = [fs for files in scans.values() for fs in files]
    report.file_warnings(cfg, output, all_files, meta, log)
    report.policy_counts(all_files, meta)
    _write_sidecars(
        cfg,
        all_files,
        samples_used,
        meta,
        main_path,
        held_path,
        {
            "records": len(slots.train),
            "heldout_records": len(slots.held),
            "bytes": n_bytes,
            "heldout_bytes": held_bytes,
        },
    )
    seconds = time.monotonic() - t0
    _timings(meta, seconds, (scan_seconds, scan_cpu_seconds), choose_seconds)
    report.log_problems(output, all_files, log)
    meta["report"] = str(
        report.write_report(out_dir, output, report.section(output, all_files, meta))
    )
    emit(
        log,
        f"mix {output}: wrote {len(slots.train)} records ({n_bytes / 1e6:.1f} MB) to "
        f"{main_path} and {len(slots.held)} held out, in {seconds:.1f}s; "
        f"skipped {meta['skipped_total']} bad records",
    )
    return MixReport(
        path=main_path,
        heldout_path=held_path,
        records=len(slots.train),
        heldout_records=len(slots.held),
        metadata=meta,
    )


def _timings(
    meta: dict[str, Any], seconds: float, scan: tuple[float, float], choose: tuple[float, float]
) -> None:
    """Timings into meta, after the sidecars (which stay byte-identical across rebuilds);
    scan and choose are (wall, CPU) seconds; the CPU rate is the rate on one dedicated core."""
    mb = meta["source_bytes"] / 1e6
    meta["seconds"] = round(seconds, 3)
    meta["decontam_seconds"] = round(choose[0], 3)  # with the (cheap) training draw
    meta["decontam_cpu_seconds"] = round(choose[1], 3)
    meta["scan_seconds"] = round(scan[0], 3)
    meta["scan_mb_per_s"] = round(mb / max(scan[0], 1e-9), 2)
    meta["scan_cpu_seconds"] = round(scan[1], 3)
    meta["source_mb_per_s"] = round(mb / max(seconds, 1e-9), 2)


def _find_files(cfg: MixConfig, output: str, q: dict[str, int], log: LogFn | None) -> Found:
    """The files of every category, found before any long scan so that a mistake fails fast."""
    found = {c: resolve_files(cfg, c) for c in q}
    owner: dict[Path, str] = {}
    for cat, (files, _) in found.items():
        for p, d, _root in files:
            if owner.setdefault(p.resolve(), cat) != cat:
                # The same records in two categories would be drawn twice and could be held
                # out in one and trained on in the other.
                raise MixError(
                    f"matched by the globs of both categories "
                    f"{owner[p.resolve()]!r} and {cat!r}; narrow one of them",
                    file=d,
                )
    total_bytes = sum(p.stat().st_size for files, _ in found.values() for p, _, _ in files)
    emit(
        log,
        f"mix {output}: {sum(len(f) for f, _ in found.values())} files, "
        f"{total_bytes / 1e6:.1f} MB, quotas {q}",
    )
    return found


def _scan_all(
    cfg: MixConfig, output: str, found: Found, log: LogFn | None
) -> tuple[dict[str, list[FileScan]], list[str]]:
    """Pass 1 over every file; and the categories that fell back to the shipped samples."""
    total_bytes = sum(p.stat().st_size for files, _ in found.values() for p, _, _ in files)
    scans: dict[str, list[FileScan]] = {}
    samples_used: list[str] = []
    near = None
    if cfg.dedup and cfg.near_dedup:
        from minillm_core.data.neardup import NearDup  # datasketch and scipy: 1 s, 60 MB

        near = NearDup(cfg.near_dedup_threshold, cfg.seed)
    with Progress(total_bytes, f"mix {output}: scan", unit="B", log=log) as prog:
        for cat, (files, used) in found.items():
            scans[cat] = [
                scan_file(p, d, root, cfg, cat, output, prog, near=near) for p, d, root in files
            ]
            if used:
                samples_used.append(cat)
    if samples_used:
        emit(
            log,
            f"mix {output}: no files under {cfg.sources_dir} for "
            f"{', '.join(samples_used)}: using the shipped samples in {cfg.samples_dir}",
        )
    return scans, samples_used


def _choose_all(
    cfg: MixConfig,
    output: str,
    scans: dict[str, list[FileScan]],
    q: dict[str, int],
    distinct: dict[str, np.ndarray],
    meta: dict[str, Any],
    log: LogFn | None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per category the wanted ordinals and multiplicities: held-out records first (every
    category), then the training records that overlap them are excluded (`decontam`), then the
    training draw from what is left."""
    spaces: dict[str, np.ndarray] = {}  # per category: the ordinals of its distinct records
    held: dict[str, np.ndarray] = {}  # indices into spaces[cat]
    for cat, files in scans.items():
        n_valid = sum(fs.valid for fs in files)
        if n_valid == 0:
            na = sum(fs.not_applicable for fs in files)
            bad = sum(sum(fs.bad.values()) for fs in files)
            raise MixError(
                f"category {cat!r}: no records usable for {output} in "
                f"{', '.join(str(fs.path) for fs in files)} ({na} valid records of a format "
                f"that has no {output} form, {bad} bad)",
                field=f"categories.{cat}",
            )
        space = distinct.pop(cat, None)
        spaces[cat] = np.arange(n_valid, dtype=np.int64) if space is None else space
        if space is not None:
            meta["duplicates_per_category"][cat] = sum(fs.duplicates for fs in files)
        meta["valid_per_category"][cat] = n_valid
        n_held = heldout_count(cfg, len(spaces[cat]), q[cat])
        held[cat] = draw_heldout(cfg.seed, cat, len(spaces[cat]), n_held)
    contam = _decontaminate(cfg, output, scans, spaces, held, q, meta, log)
    return {
        cat: _choose(cfg, output, cat, q[cat], spaces[cat], held[cat], contam[cat], meta, log)
        for cat in scans
    }


def _decontaminate(
    cfg: MixConfig,
    output: str,
    scans: dict[str, list[FileScan]],
    spaces: dict[str, np.ndarray],
    held: dict[str, np.ndarray],
    q: dict[str, int],
    meta: dict[str, Any],
    log: LogFn | None,
) -> dict[str, np.ndarray]:
    """Per category the indices (into spaces[cat]) of the records the draw would have made
    training records that share a `decontam_window`-character window with any held-out record
    of this output (`decontam.contaminated_draws`)."""
    none = {cat: np.zeros(0, dtype=np.int64) for cat in scans}
    meta["decontam_window"] = cfg.decontam_window
    if not cfg.decontam_window:
        return none
    index = heldout_index(cfg, output, scans, {c: spaces[c][held[c]] for c in scans})
    meta["heldout_windows"] = len(index)
    found = {
        c: contaminated_draws(cfg, output, c, scans[c], index, spaces[c], held[c], q[c])
        if len(index)
        else none[c]
        for c in scans
    }
    per_file = {
        fs.display: fs.contaminated for files in scans.values() for fs in files if fs.contaminated
    }
    meta["contaminated_total"] = sum(per_file.values())
    meta["contaminated_per_file"] = per_file
    meta["contaminated_per_category"] = {c: len(h) for c, h in found.items()}
    if per_file:
        emit(
            log,
            f"mix {output}: dropped {meta['contaminated_total']} training records sharing a "
            f"{cfg.decontam_window}-character window with a held-out record: "
            + ", ".join(f"{d}: {n}" for d, n in list(per_file.items())[:EXAMPLES_KEPT]),
        )
    return found


def _choose(
    cfg: MixConfig,
    output: str,
    cat: str,
    quota: int,
    space: np.ndarray,
    held: np.ndarray,
    contaminated: np.ndarray,
    meta: dict[str, Any],
    log: LogFn | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One category's wanted ordinals, sorted, and how often each is written (0: held out)."""
    c = cfg.categories[cat]
    excluded = np.union1d(held, contaminated)
    pool = len(space) - len(excluded)
    if pool <= 0:
        raise MixError(
            f"category {cat!r}: no training records left for {output} after the held-out "
            f"split and decontamination ({len(held)} held out, {len(contaminated)} overlapping)",
            field=f"categories.{cat}",
        )
    picks, mult = draw_training(cfg.seed, output, cat, len(space), quota, excluded, cfg.max_repeat)
    held, train = space[held], space[picks]
    drawn = int(mult.sum())
    meta["distinct_per_category"][cat] = len(train)
    meta["heldout_per_category"][cat] = len(held)
    meta["records_per_category"][cat] = drawn * c.repeat
    meta["repeat_factors"][cat] = round(drawn / pool, 3) if drawn > pool else 1.0
    meta["category_repeat"][cat] = c.repeat
    if drawn < quota:
        meta["quota_unmet"][cat] = {"quota": quota, "drawn": drawn}
        emit(
            log,
            f"mix {output}: category {cat} has {pool} distinct training records for a "
            f"quota of {quota}: each written at most max_repeat={cfg.max_repeat} times, "
            f"so {drawn} records instead of {quota}",
        )
    elif quota > pool:
        emit(
            log,
            f"mix {output}: category {cat} has {pool} distinct training records "
            f"for a quota of {quota}: each repeated about {quota / pool:.1f}x",
        )
    # Both inputs are sorted and disjoint, so a merge by insertion does it without a sort.
    at = np.searchsorted(train, held)
    return np.insert(train, at, held), np.insert(mult * c.repeat, at, 0)


def _dedup(
    output: str,
    scans: dict[str, list[FileScan]],
    meta: dict[str, Any],
    log: LogFn | None,
    near_on: bool,
) -> dict[str, np.ndarray]:
    """The distinct ordinals per category (`dedup`), the duplicates counted into `meta`."""
    # The index: an 8-byte key per valid record while scanning, then an 8-byte ordinal per
    # distinct record (bench/bench_mix.py reports the bytes per distinct record).
    key_bytes = sum(fs.keys.itemsize * len(fs.keys) for files in scans.values() for fs in files)
    distinct = distinct_ordinals(scans)
    n_distinct = sum(len(d) for d in distinct.values())
    meta["dedup_index_bytes"] = key_bytes + 8 * n_distinct
    meta["dedup_bytes_per_distinct"] = round(meta["dedup_index_bytes"] / max(n_distinct, 1), 2)
    per_file = {
        fs.display: fs.duplicates for files in scans.values() for fs in files if fs.duplicates
    }
    meta.update(
        {
            "duplicates_total": sum(per_file.values()),
            "duplicates_per_file": per_file,
            "duplicates_per_category": {},
        }
    )
    near = {
        fs.display: fs.near_duplicates
        for files in scans.values()
        for fs in files
        if fs.near_duplicates
    }
    if near_on:
        meta["near_duplicates_total"] = sum(near.values())
        meta["near_duplicates_per_file"] = near
    for what, counts in (("exact duplicates", per_file), ("near-duplicates", near)):
        if counts:
            shown = ", ".join(f"{d}: {n}" for d, n in list(counts.items())[:EXAMPLES_KEPT])
            emit(
                log,
                f"mix {output}: dropped {sum(counts.values())} {what} "
                f"(first occurrence kept) in {shown}",
            )
    return distinct


class _Slots:
    """The spool slot of each output occurrence in source order: training ones repeated as
    drawn (8 bytes each, sized exactly up front), held-out ones once."""

    def __init__(self, n_train: int):
        self.train = array("q", [0]) * n_train
        self.held = array("q")
        self.filled = 0

    def emitter(self, m: list[int]) -> Callable[[int, int], None]:
        """The callback for one file, whose k-th wanted record is written m[k] times."""

        def emit_slot(k: int, slot: int) -> None:
            n = m[k]
            if n == 1:
                self.train[self.filled] = slot
                self.filled += 1
            elif n:
                self.train[self.filled : self.filled + n] = array("q", [slot]) * n
                self.filled += n
            else:
                self.held.append(slot)

        return emit_slot


def _spool_category(
    cfg: MixConfig,
    output: str,
    files: list[FileScan],
    ords: np.ndarray,
    mults: np.ndarray,
    slots: _Slots,
    spool: Spool,
    meta: dict[str, Any],
) -> None:
    bounds = np.cumsum([0] + [fs.valid for fs in files])
    for i, fs in enumerate(files):
        lo, hi = np.searchsorted(ords, [bounds[i], bounds[i + 1]])
        if lo == hi:
            continue
        # Python ints, counted per file once: the callback runs per chosen record, where
        # indexing a numpy array and a dict update each cost more than the rest.
        m = mults[lo:hi].tolist()
        if n_file := sum(m):
            per_file = meta["records_per_file"]
            per_file[fs.display] = per_file.get(fs.display, 0) + n_file
        write_pass(fs, cfg, output, ords[lo:hi] - bounds[i], slots.emitter(m), spool)


def _write_outputs(
    cfg: MixConfig,
    output: str,
    scans: dict[str, list[FileScan]],
    chosen: dict[str, tuple[np.ndarray, np.ndarray]],
    meta: dict[str, Any],
    out_dir: Path,
    main_path: Path,
    held_path: Path,
) -> tuple[_Slots, int, int]:
    """Pass 2 into the spool, then both outputs in their seeded orders; (slots, bytes of each)."""
    slots = _Slots(sum(meta["records_per_category"].values()))
    spool = Spool(out_dir)
    try:
        for cat, files in scans.items():
            ords, mults = chosen.pop(cat)
            _spool_category(cfg, output, files, ords, mults, slots, spool, meta)
        assert slots.filled == len(slots.train), (slots.filled, len(slots.train))
        random.Random(f"{cfg.seed}:order:{output}").shuffle(slots.train)
        random.Random(f"{cfg.seed}:order-heldout:{output}").shuffle(slots.held)
        with atomic_path(main_path) as tmp_main, atomic_path(held_path) as tmp_held:
            n_bytes = spool.write(slots.train, tmp_main)
            held_bytes = spool.write(slots.held, tmp_held)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # the spool filled the disk (outputs are never partial)
            raise disk_full_error(exc, main_path, spool.bounds[-1]) from exc
        raise
    finally:
        spool.close()
    return slots, n_bytes, held_bytes


def _recorded_config(cfg: MixConfig) -> dict[str, Any]:
    """The config as the sidecar records it: folders relative to the project root, as the
    records' `source.file`, so a moved or copied project keeps byte-identical artifacts."""
    config = cfg.model_dump(mode="json")
    lay = Layout.at(sources_dir=str(cfg.sources_dir), samples_dir=str(cfg.samples_dir))
    config["sources_dir"], config["samples_dir"] = (
        lay.relative(lay.sources),
        lay.relative(lay.samples),
    )
    return config


def _write_sidecars(
    cfg: MixConfig,
    all_files: list[FileScan],
    samples_used: list[str],
    meta: dict[str, Any],
    main_path: Path,
    held_path: Path,
    sizes: dict[str, int],
) -> None:
    """Complete `meta` with the per-file figures; write the sidecar of both outputs."""
    skipped = {fs.display: dict(fs.bad) for fs in all_files if fs.bad}
    meta.update(
        {
            **sizes,
            "source_bytes": sum(fs.size for fs in all_files),
            "source_files": len(all_files),
            "formats_per_file": {fs.display: dict(fs.formats) for fs in all_files},
            "containers_per_file": {fs.display: fs.sniff.container for fs in all_files},
            "skipped": skipped,
            "skipped_total": sum(sum(d.values()) for d in skipped.values()),
            "skipped_examples": [e for fs in all_files for e in fs.examples][: EXAMPLES_KEPT * 2],
            "not_applicable": {
                fs.display: fs.not_applicable for fs in all_files if fs.not_applicable
            },
            "shipped_samples_used": bool(samples_used),
            "samples_categories": samples_used,
        }
    )
    sidecar = {
        "schema": SCHEMA_VERSION,
        "artifact": main_path.name,
        "heldout": held_path.name,
        "config": _recorded_config(cfg),
        "inputs": {
            fs.display: {"sha256": fs.sha256, "bytes": fs.size, "category": fs.category}
            for fs in all_files
        },
        "counts": {
            k: meta[k]
            for k in (
                "records",
                "heldout_records",
                "records_per_category",
                "heldout_per_category",
                "quotas",
                "category_repeat",
            )
        },
        "metadata": meta,
    }
    write_json(sidecar_path(main_path), sidecar)
    write_json(
        sidecar_path(held_path),
        {**sidecar, "artifact": held_path.name, "training_artifact": main_path.name},
    )
