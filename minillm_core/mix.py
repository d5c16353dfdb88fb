"""Build the Chinese pretrain / SFT / DPO mixes from user sources, streaming, with located errors.

`build_mix(cfg, output, out_dir)` writes `{output}_chinese.jsonl` (training) and
`{output}_chinese_heldout.jsonl` (a seeded split no training stage reads), each with a sidecar.

How it stays flat in memory (the requirement: peak RSS must not grow with the sources):

1. Scan. Every file of every category feeding `output` is read line by line (or element by
   element, `readers`), each record converted and validated. Kept per file: counts, the first few
   errors, and for JSON Lines a sparse list of lines that do not hold exactly one valid record.
   Nothing per record is kept, so memory is O(files + bad lines), not O(records).
2. Select. Per category, with N valid records and quota q: held-out ordinals are drawn first
   (seeded by seed and category only, so pretrain and SFT hold out the same records when their
   counts agree), then q training ordinals from the rest: without replacement when N is large
   enough, else every record k times plus a seeded remainder (the seed re-sampled with
   replacement; whole copies give the same expected counts with less variance), reported as a
   repeat factor. O(q) integers, and one byte per record while drawing (Floyd's algorithm;
   `random.sample` would copy the population into a list of Python ints).
3. Write. A second pass converts only the chosen records (JSON Lines lines before the next chosen
   one are skipped without parsing) into an unlinked spool file in `out_dir`; the output is then
   assembled from the spool in a seeded shuffled order, repeating records as often as drawn.
   Outputs are written under temporary names and renamed into place, so a failed build leaves
   nothing under a final name.

Canonical records: pretrain `{"text", "source", ...}`, sft `{"conversations", "source", ...}`,
dpo `{"chosen", "rejected", "source", ...}`, where `source` = {file, line, category} and `...` are
the record's original fields (a field whose name clashes with a canonical one is kept as
`original_<name>`, unless it holds the same value).

Evidence: `bench/bench_mix.py` measures throughput and peak RSS at 0.1x, 1x and 10x input (the
table is in docs/mix.md). On 1 GB of sources (all three outputs, 1.9 GB of source read) the
whole build read 51 MB/s by the wall clock and 52 MB per CPU-second on a 2-core machine at load 1
(the scan alone 140 MB/s), and the peak RSS was 1.25x that at 1x; what remains of the growth is
the O(q) selection, which stops growing once the sources exceed the quotas. At the seed's quotas
the outputs are 2.6 GB whatever the input size, so end-to-end time is dominated by converting and
writing them until the sources reach a few GB.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from minillm_core import readers
from minillm_core.artifacts import atomic_path, disk_full_error, sidecar_path, write_json
from minillm_core.config import ConfigError, CoreConfig
from minillm_core.profiles import PROFILES
from minillm_core.progress import Progress, emit
from minillm_core.readers import (CANONICAL_KEYS, CONTAINERS, FORMATS, MixError, NotApplicable,
                                  RecordError, Sniff)

Output = Literal["pretrain", "sft", "dpo"]
OUTPUTS: tuple[str, ...] = ("pretrain", "sft", "dpo")
LogFn = Callable[[str], None]
EXAMPLES_KEPT = 5  # first `file:line: reason` lines kept per file and overall
SCHEMA_VERSION = 1

__all__ = ["CategoryConfig", "MixConfig", "MixError", "MixReport", "SourceOverride", "build_mix",
           "check_mix", "dry_run", "main", "quotas"]


# ------------------------------------------------------------------------------- config

class SourceOverride(CoreConfig):
    """Force the container and/or record format of the files a glob matches (else detected)."""

    container: str | None = Field(None, description="one of " + ", ".join(CONTAINERS))
    format: str | None = Field(None, description="one of " + ", ".join(FORMATS))

    @field_validator("container")
    @classmethod
    def _container(cls, v: str | None) -> str | None:
        if v is not None and v not in CONTAINERS:
            raise ValueError(f"unknown container {v!r}; allowed: {', '.join(CONTAINERS)}")
        return v

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        if v is not None and v not in FORMATS:
            raise ValueError(f"unknown format {v!r}; allowed: {', '.join(FORMATS)}")
        return v


class CategoryConfig(CoreConfig):
    """One category of the mix: where its files are, how many records, which outputs it feeds."""

    sources: list[str] = Field(description="globs relative to sources_dir (and samples_dir)")
    target: int = Field(ge=1, description="distinct-draw quota per output, before `repeat`")
    outputs: list[Output] = Field(min_length=1)
    repeat: int = Field(1, ge=1, description="each drawn record appears this many times "
                                             "(identity: 2, as nanochat's SFT)")
    format: str | None = Field(None, description="record format for every file (else detected)")
    overrides: dict[str, SourceOverride] = Field(
        default_factory=dict, description="file glob (relative to its directory) -> override")
    fill_placeholders: bool = Field(False, description="fill {{name}}/{{author}} from "
                                                       "model_name/model_author; refuse others")

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        return SourceOverride._format(v)


def _default_categories() -> dict[str, CategoryConfig]:
    # The seed's quotas; every category also looks for a top-level file named after it, so
    # dropping `identity_conversations.jsonl` into data/chinese/ is enough.
    def cat(name: str, target: int, outputs: list[str], exts: tuple[str, ...] = (".json*",),
            **kw: Any) -> CategoryConfig:
        globs = [f"{name}/**/*{e}" for e in exts] + [f"{name}*{e}" for e in exts]
        return CategoryConfig(sources=globs, target=target, outputs=outputs, **kw)

    return {
        "general": cat("general", 460_000, ["pretrain", "sft"]),
        "knowledge": cat("knowledge", 100_000, ["pretrain", "sft"], (".json*", ".csv")),
        "math": cat("math", 8_000, ["pretrain", "sft"]),
        "identity": cat("identity", 1_000, ["sft"], repeat=2, fill_placeholders=True),
        "preference": cat("preference", 60_000, ["dpo"]),
    }


class MixConfig(CoreConfig):
    """Settings of the data mix (defaults: the seed's)."""

    sources_dir: Path = Field(Path("data/chinese"), description="the user's sources")
    samples_dir: Path = Field(Path("dataset"), description="shipped samples, used per category "
                                                           "when sources_dir has none for it")
    allow_samples: bool = Field(True, description="False: a category without user files fails")
    categories: dict[str, CategoryConfig] = Field(default_factory=_default_categories)
    seed: int = 42
    max_records: dict[Output, int] = Field(
        default_factory=dict, description="cap per output; the quotas feeding it are scaled "
                                          "down proportionally (smoke: 64/16/8)")
    heldout_fraction: float = Field(0.01, ge=0.0, lt=1.0, description="per category, of the "
                                    "distinct records used")
    heldout_min: int = Field(1, ge=0, description="held-out records per category, at least")
    max_bad_fraction: float = Field(0.1, ge=0.0, le=1.0, description="a file with more bad "
                                    "records than this fails the build")
    model_name: str = Field("MiniLLM", min_length=1, description="fills {{name}} in identity data")
    model_author: str = Field("MiniLLM 开源社区", min_length=1,
                              description="fills {{author}} in identity data")

    @field_validator("max_records")
    @classmethod
    def _caps(cls, v: dict[str, int]) -> dict[str, int]:
        for k, n in v.items():
            if n < 1:
                raise ValueError(f"max_records.{k} must be >= 1 (got {n})")
        return v

    @staticmethod
    def load_layer(path: Path | str) -> dict[str, Any]:
        """Settings from a JSON or YAML file (a layer for `MixConfig.resolve`)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(f"mix config {p}: {exc.strerror}") from None
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml  # only when a YAML file is given (a dagster dependency)
                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml and json raise unrelated types
            raise ConfigError(f"mix config {p}: cannot parse: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("mix"), dict):
            data = data["mix"]  # a shared settings file with one section per concern
        if not isinstance(data, dict):
            raise ConfigError(f"mix config {p}: expected a mapping of settings")
        return data


def quotas(cfg: MixConfig, output: str) -> dict[str, int]:
    """Distinct draws per category feeding `output`, after the `max_records` cap.

    Under a cap C, records (quota x repeat) are split in proportion to the uncapped ones, every
    category keeping at least one draw (when C allows), rounded by largest remainder so the
    total is as close to C as the repeats allow without exceeding it.
    """
    cats = {n: c for n, c in cfg.categories.items() if output in c.outputs}
    cap = cfg.max_records.get(output)  # type: ignore[call-overload]
    if cap is None or sum(c.target * c.repeat for c in cats.values()) <= cap:
        return {n: c.target for n, c in cats.items()}
    weight = sum(c.target * c.repeat for c in cats.values())
    ideal = {n: cap * c.target / weight for n, c in cats.items()}  # draws, before repeats
    q = {n: min(cats[n].target, max(1, math.floor(x))) for n, x in ideal.items()}
    used = lambda: sum(q[n] * cats[n].repeat for n in q)  # noqa: E731
    # Categories forced up to one draw may push the total over; take back from the largest.
    while used() > cap and any(v > 1 for v in q.values()):
        big = max((n for n in q if q[n] > 1), key=lambda n: (q[n] * cats[n].repeat, n))
        q[big] -= 1
    for n in sorted(q, key=lambda n: (-(ideal[n] - math.floor(ideal[n])), n)):
        if used() + cats[n].repeat <= cap and q[n] < cats[n].target:
            q[n] += 1
    return q


# ------------------------------------------------------------------------------- report

class MixReport(BaseModel):
    path: Path
    heldout_path: Path
    records: int
    heldout_records: int
    metadata: dict[str, Any]


# ------------------------------------------------------------------------------- scanning

@dataclass
class FileScan:
    path: Path
    display: str
    category: str
    sniff: Sniff
    fmt: str | None
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    valid: int = 0
    not_applicable: int = 0
    bad: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)
    # JSON Lines only: (line, valid records on it) for non-blank lines with other than one, in
    # file order; lets the write pass skip unchosen lines without parsing them.
    exc_lines: array = field(default_factory=lambda: array("q"))
    exc_counts: array = field(default_factory=lambda: array("q"))
    samples: list[dict] = field(default_factory=list)

    @property
    def items(self) -> int:
        return self.valid + self.not_applicable + sum(self.bad.values())


class _Converter:
    """Turns one parsed value of a category into canonical fields for one output."""

    def __init__(self, cfg: MixConfig, category: str, output: str, check_only: bool = False):
        c = cfg.categories[category]
        self.output, self.category, self.check_only = output, category, check_only
        self.names = {"name": cfg.model_name, "author": cfg.model_author} \
            if c.fill_placeholders else None

    def __call__(self, value: Any, fmt: str | None) -> tuple[str, Any, dict]:
        if self.names is not None:
            value = readers.fill_placeholders(value, self.names)
        fmt = fmt or readers.detect_format(value)
        return fmt, value, readers.convert(value, fmt, self.output, self.check_only)


def resolve_files(cfg: MixConfig, category: str) -> tuple[list[tuple[Path, str, Path]], bool]:
    """[(path, display name, root)] of a category, sorted; and whether shipped samples are used."""
    c = cfg.categories[category]
    for root, is_sample in ((cfg.sources_dir, False), (cfg.samples_dir, True)):
        if is_sample and not cfg.allow_samples:
            break
        found: dict[Path, None] = {}
        if root.is_dir():
            for pattern in c.sources:
                for p in root.glob(pattern):
                    rel = p.relative_to(root)
                    # Editors' and our own temporaries, READMEs: never data.
                    if p.is_file() and not any(part.startswith(".") for part in rel.parts) \
                            and not p.name.lower().startswith("readme"):
                        found[p] = None
        if found:
            files = sorted(found, key=lambda p: str(p.relative_to(root)))
            return [(p, str(p), root) for p in files], is_sample
    where = f"under {cfg.sources_dir}" + (f" nor under {cfg.samples_dir} (shipped samples)"
                                          if cfg.allow_samples else "")
    raise MixError(f"category {category!r}: no files match {', '.join(c.sources)} {where}")


def _override(c: CategoryConfig, root: Path, path: Path) -> tuple[str | None, str | None]:
    rel = str(path.relative_to(root))
    container, fmt = None, c.format
    for pattern, ov in c.overrides.items():
        if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(path.name, pattern):
            container = ov.container or container
            fmt = ov.format or fmt
    return container, fmt


def _count_item(fs: FileScan, conv: _Converter, line: int, value: Any,
                keep_samples: int = 0) -> bool:
    """Validate one item into `fs`'s counters; True when it is a usable record for the output."""
    if isinstance(value, RecordError):
        _bad(fs, line, value)
        return False
    try:
        fmt, value, fields = conv(value, fs.fmt)
    except RecordError as exc:
        _bad(fs, line, exc)
        return False
    except NotApplicable:
        fs.not_applicable += 1
        return False
    fs.formats[fmt] += 1
    fs.valid += 1
    if len(fs.samples) < keep_samples:
        fs.samples.append(_record(fields, value, fs.display, line, fs.category))
    return True


def _bad(fs: FileScan, line: int, exc: RecordError) -> None:
    fs.bad[exc.kind] += 1
    if len(fs.examples) < EXAMPLES_KEPT:
        fs.examples.append(f"{fs.display}:{line}: {exc}")


def scan_file(path: Path, display: str, root: Path, cfg: MixConfig, category: str, output: str,
              progress: Progress | None = None, keep_samples: int = 0) -> FileScan:
    """Pass 1 over one file: counts, errors, formats, hash (module docstring, step 1)."""
    c = cfg.categories[category]
    container, fmt = _override(c, root, path)
    st = path.stat()
    fs = FileScan(path, display, category, readers.sniff(path, display, container), fmt,
                  size=st.st_size, mtime_ns=st.st_mtime_ns)
    # Fields are only needed here for the samples shown; counting only validates.
    conv = _Converter(cfg, category, output, check_only=not keep_samples)
    h = hashlib.sha256()
    if fs.sniff.container == "jsonl":
        # The hot loop of the whole stage: kept flat and free of per-line allocations beyond the
        # parse itself (see the benchmark).
        pending = 0
        update, decode, parse = h.update, readers.decode_line, readers.parse_jsonl_line
        with open(path, "rb") as f:
            for line_no, raw in enumerate(readers.read_lines(f, display), 1):
                update(raw)
                pending += len(raw)
                if pending >= 1 << 20 and progress is not None:
                    progress.update(pending)
                    pending = 0
                if raw.isspace():
                    continue
                try:
                    values = parse(decode(raw, line_no, False))
                except RecordError as exc:
                    _bad(fs, line_no, exc)
                    fs.exc_lines.append(line_no)
                    fs.exc_counts.append(0)
                    continue
                n = 0
                for v in values:
                    n += _count_item(fs, conv, line_no, v, keep_samples)
                if n != 1:
                    fs.exc_lines.append(line_no)
                    fs.exc_counts.append(n)
        if progress is not None:
            progress.update(pending)
    else:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        for line, value in readers.iter_items(path, display, fs.sniff):
            _count_item(fs, conv, line, value, keep_samples)
        if progress is not None:
            progress.update(fs.size)
    fs.sha256 = h.hexdigest()
    bad = sum(fs.bad.values())
    if bad and bad > cfg.max_bad_fraction * fs.items:
        reasons = ", ".join(f"{k}: {v}" for k, v in fs.bad.most_common())
        raise MixError(f"{display}: {bad} of {fs.items} records are bad "
                       f"({bad / fs.items:.0%} > max_bad_fraction {cfg.max_bad_fraction:.0%}; "
                       f"{reasons}); first: " + "; ".join(fs.examples))
    return fs


def _record(fields: dict, value: Any, display: str, line: int, category: str) -> dict:
    rec = dict(fields)
    rec["source"] = {"file": display, "line": line, "category": category}
    if isinstance(value, dict):
        for k, v in value.items():
            if k in rec or k == "source":
                if rec.get(k) != v:
                    rec[f"original_{k}"] = v
            elif k in ("messages", "conversations") and "conversations" in fields \
                    and v == fields["conversations"]:
                continue  # the same messages under the other name: no need to keep twice
            else:
                rec[k] = v
    return rec


# ------------------------------------------------------------------------------- selection

def heldout_count(cfg: MixConfig, n_valid: int, quota: int) -> int:
    if n_valid <= 1:
        return 0
    want = max(cfg.heldout_min, math.ceil(cfg.heldout_fraction * min(quota, n_valid)))
    return min(want, n_valid - 1)  # at least one record must remain for training


def sample_sorted(rng: random.Random, n: int, k: int) -> np.ndarray:
    """k distinct integers of range(n), uniformly, sorted (Floyd's algorithm).

    `random.sample(range(n), k)` copies the whole population into a list when k is a large part
    of n (28+ bytes per source record); Floyd's draw with a byte per record keeps the peak flat.
    """
    mark = bytearray(n)
    randbelow = rng.randrange
    for j in range(n - k, n):
        t = randbelow(j + 1)
        mark[j if mark[t] else t] = 1
    return np.flatnonzero(np.frombuffer(mark, dtype=np.uint8)).astype(np.int64, copy=False)


def select(seed: int, output: str, category: str, n_valid: int, quota: int,
           n_heldout: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heldout ordinals, training ordinals, multiplicities), ordinals sorted, disjoint."""
    held = sample_sorted(random.Random(f"{seed}:heldout:{category}"), n_valid, n_heldout)
    pool = n_valid - n_heldout
    rng = random.Random(f"{seed}:train:{output}:{category}")
    if quota <= pool:
        picks = sample_sorted(rng, pool, quota)
        mult = np.ones(quota, dtype=np.int32)
    else:
        # Fewer records than the quota: every record k times, a seeded remainder once more.
        k, r = divmod(quota, pool)
        picks = np.arange(pool, dtype=np.int64)
        mult = np.full(pool, k, dtype=np.int32)
        mult[sample_sorted(rng, pool, r)] += 1
    # Pool index -> ordinal among all records, stepping over the held-out ones (stays sorted).
    picks += np.searchsorted(held - np.arange(n_heldout, dtype=np.int64), picks, side="right")
    return held, picks, mult


# ------------------------------------------------------------------------------- writing

def _make_encoder() -> Callable[[Any], str]:
    """What json.dumps(rec, ensure_ascii=False) returns, for one record, minus its overhead.

    json.dumps builds a new JSONEncoder for non-default arguments, and JSONEncoder.encode a new
    C encoder per call; this runs per chosen record (over a million at the seed's quotas), so
    the C encoder is built once, with exactly the arguments JSONEncoder.iterencode would pass.
    Falls back to the encoder's own method where the C accelerator is missing.
    """
    from json import encoder as je
    if je.c_make_encoder is None or je.c_encode_basestring is None:
        return json.JSONEncoder(ensure_ascii=False).encode
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys,
    # allow_nan); markers is the circular-reference memo, empty again after every call.
    c_encode = je.c_make_encoder({}, json.JSONEncoder().default, je.c_encode_basestring, None,
                                 ": ", ", ", False, False, True)
    return lambda rec: "".join(c_encode(rec, 0))


class _Spool:
    """Chosen records, converted, in an unlinked temporary file; read back in any order."""

    def __init__(self, directory: Path):
        # A 1 MiB buffer: the default (8 KiB) costs a write syscall every few records.
        self.f = tempfile.TemporaryFile(dir=directory, prefix=".mix-spool-", buffering=1 << 20)
        self.bounds = array("q", [0])  # record s is bytes bounds[s]:bounds[s + 1]
        # One per spool, not per module: its circular-reference memo is not thread-safe, and
        # an encoding error could leave it dirty (that build fails; the next gets a fresh one).
        self._encode = _make_encoder()

    def add(self, rec: dict) -> int:
        data = (self._encode(rec) + "\n").encode("utf-8")
        self.f.write(data)
        self.bounds.append(self.bounds[-1] + len(data))
        return len(self.bounds) - 2

    def write(self, slots: array, path: Path) -> int:
        self.f.flush()
        fd, b, pread = self.f.fileno(), self.bounds, os.pread
        # pread, not mmap: pages of a mapped spool count in the process's RSS, and the spool
        # grows with the distinct records drawn (1.3 GB at the seed's quotas). One pread and
        # one buffered write per record measured fastest (copy_file_range per record, joining
        # into big os.write calls and mmap slices with MADV_DONTNEED were all slower); the
        # loop body is kept to those two calls, names bound locally.
        with open(path, "wb", buffering=1 << 20) as out:
            write = out.write
            for s in slots:
                lo = b[s]
                write(pread(fd, b[s + 1] - lo, lo))
            return out.tell()

    def close(self) -> None:
        # Unlinked scratch: a failed flush of buffered data (a full disk) loses nothing.
        with contextlib.suppress(OSError):
            self.f.close()


def _write_pass(fs: FileScan, cfg: MixConfig, output: str, wanted: np.ndarray,
                emit_slot: Callable[[int, int], None], spool: _Spool) -> None:
    """Pass 2 over one file: convert the records at the `wanted` local ordinals into the spool."""
    st = fs.path.stat()
    if (st.st_size, st.st_mtime_ns) != (fs.size, fs.mtime_ns):
        raise MixError(f"{fs.display}: changed while the mix was being built; run it again")
    conv = _Converter(cfg, fs.category, output)
    want = array("q")
    want.frombytes(memoryview(np.ascontiguousarray(wanted, dtype=np.int64)).cast("B"))
    ptr, ordinal = 0, 0

    def take(line: int, value: Any) -> bool:
        """Convert one item; spool it if its ordinal is wanted. True when it is valid."""
        nonlocal ptr
        if isinstance(value, RecordError):
            return False
        try:
            fmt, value, fields = conv(value, fs.fmt)
        except (RecordError, NotApplicable):
            return False
        if ptr < len(want) and want[ptr] == ordinal:
            slot = spool.add(_record(fields, value, fs.display, line, fs.category))
            emit_slot(ptr, slot)
            ptr += 1
        return True

    if fs.sniff.container == "jsonl":
        # Most lines are skipped once the sources outnumber the quota: per line, only the
        # cheapest checks (next_exc is the next exceptional line, 0 when there is none left).
        exc_lines, exc_counts, e = fs.exc_lines, fs.exc_counts, 0
        next_exc = exc_lines[0] if exc_lines else 0
        n_want = len(want)
        with open(fs.path, "rb") as f:
            for line_no, raw in enumerate(readers.read_lines(f, fs.display), 1):
                if raw.isspace():
                    continue
                n = 1
                if line_no == next_exc:
                    n = exc_counts[e]
                    e += 1
                    next_exc = exc_lines[e] if e < len(exc_lines) else 0
                if n and want[ptr] < ordinal + n:
                    try:
                        text = readers.decode_line(raw, line_no, False)
                        try:
                            # The scan checked this line (nesting depth, lone surrogates), so a
                            # line with one record needs only the parse; the full reader splits
                            # lines of several values (or of one valid value among others).
                            values = [json.loads(text)] if n == 1 else None
                        except (ValueError, RecursionError):
                            values = None
                        if values is None:
                            values = readers.parse_jsonl_line(text)
                    except RecordError:
                        values = []
                    got = 0
                    for v in values:
                        if take(line_no, v):
                            ordinal += 1
                            got += 1
                    if got != n:
                        raise MixError(f"{fs.display}:{line_no}: changed while the mix was "
                                       "being built; run it again")
                    if ptr == n_want:  # ptr only moves in take()
                        return
                else:
                    ordinal += n
    else:
        for line, value in readers.iter_items(fs.path, fs.display, fs.sniff):
            if take(line, value):
                ordinal += 1
            if ptr == len(want):
                return
    raise MixError(f"{fs.display}: changed while the mix was being built; run it again")


def build_mix(cfg: MixConfig, output: Output, out_dir: Path | str,
              log: LogFn | None = None) -> MixReport:
    """Write `out_dir/{output}_chinese.jsonl` and its held-out split (module docstring)."""
    if output not in OUTPUTS:
        raise MixError(f"output must be one of {', '.join(OUTPUTS)} (got {output!r})")
    t0, cpu0 = time.monotonic(), time.process_time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    q = quotas(cfg, output)
    if not q:
        raise MixError(f"no category feeds {output!r}: set `outputs` of at least one category")
    found = {c: resolve_files(cfg, c) for c in q}  # fail fast, before any long scan
    owner: dict[Path, str] = {}
    for cat, (files, _) in found.items():
        for p, d, _root in files:
            if owner.setdefault(p.resolve(), cat) != cat:
                # The same records in two categories would be drawn twice and could be held
                # out in one and trained on in the other.
                raise MixError(f"{d}: matched by the globs of both categories "
                               f"{owner[p.resolve()]!r} and {cat!r}; narrow one of them")
    total_bytes = sum(p.stat().st_size for files, _ in found.values() for p, _, _ in files)
    emit(log, f"mix {output}: {sum(len(f) for f, _ in found.values())} files, "
              f"{total_bytes / 1e6:.1f} MB, quotas {q}")

    scans: dict[str, list[FileScan]] = {}
    samples_used: list[str] = []
    with Progress(total_bytes, f"mix {output}: scan", unit="B", log=log) as prog:
        for cat, (files, used) in found.items():
            scans[cat] = [scan_file(p, d, root, cfg, cat, output, prog) for p, d, root in files]
            if used:
                samples_used.append(cat)
    if samples_used:
        emit(log, f"mix {output}: no files under {cfg.sources_dir} for "
                  f"{', '.join(samples_used)}: using the shipped samples in {cfg.samples_dir}")

    scan_seconds = time.monotonic() - t0
    scan_cpu_seconds = time.process_time() - cpu0  # the rate on one dedicated core
    main_path = out_dir / f"{output}_chinese.jsonl"
    held_path = out_dir / f"{output}_chinese_heldout.jsonl"
    meta: dict[str, Any] = {"output": output, "quotas": q, "records_per_category": {},
                            "distinct_per_category": {}, "heldout_per_category": {},
                            "repeat_factors": {}, "category_repeat": {},
                            "valid_per_category": {}, "records_per_file": {}}
    # Select every category first: the totals size the occurrence list exactly (no regrowth).
    chosen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for cat, files in scans.items():
        c = cfg.categories[cat]
        n_valid = sum(fs.valid for fs in files)
        if n_valid == 0:
            na = sum(fs.not_applicable for fs in files)
            bad = sum(sum(fs.bad.values()) for fs in files)
            raise MixError(
                f"category {cat!r}: no records usable for {output} in "
                f"{', '.join(fs.display for fs in files)} ({na} valid records of a format "
                f"that has no {output} form, {bad} bad)")
        n_held = heldout_count(cfg, n_valid, q[cat])
        held, train, mult = select(cfg.seed, output, cat, n_valid, q[cat], n_held)
        pool = n_valid - n_held
        meta["valid_per_category"][cat] = n_valid
        meta["distinct_per_category"][cat] = int(len(train))
        meta["heldout_per_category"][cat] = n_held
        meta["records_per_category"][cat] = int(mult.sum()) * c.repeat
        meta["repeat_factors"][cat] = round(q[cat] / pool, 3) if q[cat] > pool else 1.0
        meta["category_repeat"][cat] = c.repeat
        if q[cat] > pool:
            emit(log, f"mix {output}: category {cat} has {pool} distinct training records "
                      f"for a quota of {q[cat]}: each repeated about {q[cat] / pool:.1f}x")
        # One sorted list of wanted ordinals per category, multiplicity 0 meaning held out;
        # both inputs are sorted and disjoint, so a merge by insertion does it without a sort.
        at = np.searchsorted(train, held)
        chosen[cat] = (np.insert(train, at, held), np.insert(mult * c.repeat, at, 0))
        del held, train, mult, at

    # Spool slot of each training occurrence (8 bytes each), filled in source order.
    train_slots = array("q", [0]) * sum(meta["records_per_category"].values())
    held_slots = array("q")
    filled = 0
    spool = _Spool(out_dir)
    try:
        for cat, files in scans.items():
            ords, mults = chosen.pop(cat)
            bounds = np.cumsum([0] + [fs.valid for fs in files])
            for i, fs in enumerate(files):
                lo, hi = np.searchsorted(ords, [bounds[i], bounds[i + 1]])
                if lo == hi:
                    continue
                # Python ints, counted per file once: this runs per chosen record, where
                # indexing a numpy array and a dict update each cost more than the rest.
                m = mults[lo:hi].tolist()
                if n_file := sum(m):
                    per_file = meta["records_per_file"]
                    per_file[fs.display] = per_file.get(fs.display, 0) + n_file

                def emit_slot(k: int, slot: int, m: list = m) -> None:
                    nonlocal filled
                    n = m[k]
                    if n == 1:
                        train_slots[filled] = slot
                        filled += 1
                    elif n:
                        train_slots[filled:filled + n] = array("q", [slot]) * n
                        filled += n
                    else:
                        held_slots.append(slot)

                _write_pass(fs, cfg, output, ords[lo:hi] - bounds[i], emit_slot, spool)
        assert filled == len(train_slots), (filled, len(train_slots))
        random.Random(f"{cfg.seed}:order:{output}").shuffle(train_slots)
        random.Random(f"{cfg.seed}:order-heldout:{output}").shuffle(held_slots)
        with atomic_path(main_path) as tmp_main, atomic_path(held_path) as tmp_held:
            n_bytes = spool.write(train_slots, tmp_main)
            held_bytes = spool.write(held_slots, tmp_held)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # the spool filled the disk (outputs are never partial)
            raise disk_full_error(exc, main_path, spool.bounds[-1]) from exc
        raise
    finally:
        spool.close()

    all_files = [fs for files in scans.values() for fs in files]
    skipped = {fs.display: dict(fs.bad) for fs in all_files if fs.bad}
    examples = [e for fs in all_files for e in fs.examples][:EXAMPLES_KEPT * 2]
    source_bytes = sum(fs.size for fs in all_files)
    meta.update({
        "records": len(train_slots), "heldout_records": len(held_slots),
        "bytes": n_bytes, "heldout_bytes": held_bytes, "source_bytes": source_bytes,
        "source_files": len(all_files),
        "formats_per_file": {fs.display: dict(fs.formats) for fs in all_files},
        "containers_per_file": {fs.display: fs.sniff.container for fs in all_files},
        "skipped": skipped, "skipped_total": sum(sum(d.values()) for d in skipped.values()),
        "skipped_examples": examples,
        "not_applicable": {fs.display: fs.not_applicable for fs in all_files
                           if fs.not_applicable},
        "shipped_samples_used": bool(samples_used), "samples_categories": samples_used,
    })
    sidecar = {"schema": SCHEMA_VERSION, "artifact": main_path.name, "heldout": held_path.name,
               "config": cfg.model_dump(mode="json"),
               "inputs": {fs.display: {"sha256": fs.sha256, "bytes": fs.size,
                                       "category": fs.category} for fs in all_files},
               "counts": {k: meta[k] for k in ("records", "heldout_records",
                                               "records_per_category", "heldout_per_category",
                                               "quotas", "category_repeat")},
               "metadata": meta}
    write_json(sidecar_path(main_path), sidecar)
    write_json(sidecar_path(held_path), {**sidecar, "artifact": held_path.name,
                                         "training_artifact": main_path.name})
    seconds = time.monotonic() - t0
    meta["seconds"] = round(seconds, 3)
    meta["scan_seconds"] = round(scan_seconds, 3)
    meta["scan_mb_per_s"] = round(source_bytes / 1e6 / max(scan_seconds, 1e-9), 2)
    meta["scan_cpu_seconds"] = round(scan_cpu_seconds, 3)
    meta["source_mb_per_s"] = round(source_bytes / 1e6 / max(seconds, 1e-9), 2)
    for line in examples:
        emit(log, f"mix {output}: skipped {line}")
    emit(log, f"mix {output}: wrote {len(train_slots)} records ({n_bytes / 1e6:.1f} MB) to "
              f"{main_path} and {len(held_slots)} held out, in {seconds:.1f}s; "
              f"skipped {meta['skipped_total']} bad records")
    return MixReport(path=main_path, heldout_path=held_path, records=len(train_slots),
                     heldout_records=len(held_slots), metadata=meta)


# ------------------------------------------------------------------------------- checks

def check_mix(path: Path | str, output: str, max_problems: int = 20) -> list[str]:
    """Problems found in a built mix file (empty list: fine), for Dagster asset checks.

    Checks every record (streaming): JSON, a `source` with file/line/category, non-empty text
    (pretrain), a valid conversation ending with an assistant turn (sft), a consistent pair
    (dpo); then, from the sidecar, that the counts per category match the quotas; and, for a
    training file, that no source record also appears in the held-out file beside it.
    """
    p = Path(path)
    problems: list[str] = []
    more = 0

    def problem(msg: str) -> None:
        nonlocal more
        if len(problems) < max_problems:
            problems.append(msg)
        else:
            more += 1

    if not p.is_file():
        return [f"{p}: missing"]
    per_cat: Counter = Counter()
    sources: set[tuple[str, int]] = set()
    held_name = p.name.replace(".jsonl", "_heldout.jsonl")
    held = p.with_name(held_name) if not p.name.endswith("_heldout.jsonl") else None
    if held is not None and held.is_file():
        with open(held, "rb") as f:
            for raw in f:
                try:
                    s = json.loads(raw)["source"]
                    sources.add((s["file"], s["line"]))
                except (ValueError, KeyError, TypeError):
                    pass  # reported when the held-out file itself is checked
    n = 0
    with open(p, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            n += 1
            where = f"{p}:{line_no}"
            try:
                rec = json.loads(raw)
            except ValueError as exc:
                problem(f"{where}: invalid JSON ({exc})")
                continue
            if not isinstance(rec, dict):
                problem(f"{where}: not an object")
                continue
            src = rec.get("source")
            if not (isinstance(src, dict) and isinstance(src.get("file"), str) and src["file"]
                    and isinstance(src.get("line"), int) and src["line"] >= 1
                    and isinstance(src.get("category"), str)):
                problem(f"{where}: missing or malformed source (need file, line, category)")
            else:
                per_cat[src["category"]] += 1
                if (src["file"], src["line"]) in sources:
                    problem(f"{where}: {src['file']}:{src['line']} is also in {held_name}")
            try:
                _check_canonical(rec, output)
            except RecordError as exc:
                problem(f"{where}: {exc}")
    meta_path = sidecar_path(p)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        counts = meta.get("counts", {})
        if p.name.endswith("_heldout.jsonl"):
            want_total, want_cat = counts.get("heldout_records"), counts.get(
                "heldout_per_category", {})
        else:
            want_total = counts.get("records")
            want_cat = {c: counts["quotas"][c] * counts["category_repeat"][c]
                        for c in counts.get("quotas", {})}
        if want_total is not None and n != want_total:
            problem(f"{p}: {n} records, the sidecar says {want_total}")
        for c, want in want_cat.items():
            if per_cat.get(c, 0) != want:
                problem(f"{p}: category {c} has {per_cat.get(c, 0)} records, quota {want}")
    else:
        problem(f"{meta_path}: missing sidecar")
    if more:
        problems.append(f"... and {more} more problems")
    return problems


def _check_canonical(rec: dict, output: str) -> None:
    def conv(key: str) -> list[dict]:
        msgs = rec.get(key)
        if not isinstance(msgs, list):
            raise RecordError("missing field", key)
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in readers.ROLES or "content" not in m:
                raise RecordError("bad message", f"{key}[{i}] needs a known role and content")
        return readers.validate_conversation(msgs, key)

    if output == "pretrain":
        t = rec.get("text")
        if not isinstance(t, str) or not t.strip():
            raise RecordError("empty content", "text")
    elif output == "sft":
        conv("conversations")
    elif output == "dpo":
        readers._pair(conv("chosen"), conv("rejected"))
    else:
        raise MixError(f"output must be one of {', '.join(OUTPUTS)} (got {output!r})")


# ------------------------------------------------------------------------------- command

def dry_run(cfg: MixConfig, outputs: list[str], show: int = 2,
            out: Callable[[str], None] = print) -> None:
    """Print per file the detected container and formats, counts per output, a few samples."""
    for output in outputs:
        q = quotas(cfg, output)
        out(f"== {output}: quotas {q}")
        for cat in q:
            files, used_samples = resolve_files(cfg, cat)
            tag = " (shipped samples)" if used_samples else ""
            out(f"-- category {cat}{tag}")
            for p, d, root in files:
                fs = scan_file(p, d, root, cfg, cat, output, None, keep_samples=show)
                fmts = ", ".join(f"{k} x{v}" for k, v in fs.formats.most_common()) or "-"
                out(f"{d}: {fs.sniff.container}, {fmts}; valid {fs.valid}, bad "
                    f"{sum(fs.bad.values())}, no {output} form {fs.not_applicable}")
                for e in fs.examples:
                    out(f"  skipped {e}")
                for s in fs.samples:
                    out("  sample " + json.dumps({k: s[k] for k in (*CANONICAL_KEYS[output],
                                                                    "source")},
                                                 ensure_ascii=False)[:600])


def _kv(text: str) -> tuple[str, int]:
    k, sep, v = text.partition("=")
    if not sep or k not in OUTPUTS or not v.isdigit():
        raise argparse.ArgumentTypeError(f"expected OUTPUT=N with OUTPUT in "
                                         f"{'/'.join(OUTPUTS)} (got {text!r})")
    return k, int(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="minillm mix", description=__doc__.split("\n")[0])
    ap.add_argument("--output-dir", "--output_dir", default="data/processed", type=Path)
    ap.add_argument("--outputs", nargs="+", choices=OUTPUTS, default=list(OUTPUTS))
    ap.add_argument("--config", type=Path, help="JSON or YAML file of MixConfig fields")
    ap.add_argument("--profile", choices=sorted(PROFILES), help="apply a profile's mix preset")
    ap.add_argument("--sources-dir", "--data_path", dest="sources_dir", type=Path)
    ap.add_argument("--samples-dir", type=Path)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--max-records", nargs="+", type=_kv, metavar="OUTPUT=N")
    ap.add_argument("--model-name")
    ap.add_argument("--model-author")
    ap.add_argument("--dry-run", action="store_true",
                    help="print detected formats, counts and samples; write nothing")
    ap.add_argument("--show", type=int, default=2, help="samples per file in --dry-run")
    args = ap.parse_args(argv)
    try:
        from minillm_core.profiles import preset
        layers: list[dict[str, Any] | None] = [preset(args.profile, "mix") if args.profile
                                               else None]
        if args.config:
            layers.append(MixConfig.load_layer(args.config))
        layers.append({"sources_dir": args.sources_dir, "samples_dir": args.samples_dir,
                       "seed": args.seed, "model_name": args.model_name,
                       "model_author": args.model_author,
                       "max_records": dict(args.max_records) if args.max_records else None})
        cfg = MixConfig.resolve(*layers)
        if args.dry_run:
            dry_run(cfg, args.outputs, args.show)
            return 0
        for output in args.outputs:
            r = build_mix(cfg, output, args.output_dir)
            print(f"{output}: {r.records} records -> {r.path}; {r.heldout_records} held out "
                  f"-> {r.heldout_path}")
    except (MixError, ConfigError) as exc:
        print(f"minillm mix: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
