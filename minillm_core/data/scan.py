"""Pass 1 of the mix: find a category's files, then read each once, validating every record.

Kept per file (`FileScan`): counts, the first few errors, the content hash, and for JSON Lines a
sparse list of lines that do not hold exactly one valid record. Nothing per record is kept, so
memory is O(files + bad lines), not O(records).
"""

from __future__ import annotations

import fnmatch
import hashlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minillm_core.data import formats, policy, readers
from minillm_core.data.config import CategoryConfig, MixConfig
from minillm_core.data.dedup import content_key
from minillm_core.data.readers import MixError, NotApplicable, RecordError, Sniff
from minillm_core.layout import Layout
from minillm_core.progress import Progress

if TYPE_CHECKING:  # neardup imports decontam, which imports this module
    from minillm_core.data.neardup import NearDup

EXAMPLES_KEPT = 5  # first `file:line: reason` lines kept per file and overall


@dataclass
class FileScan:
    path: Path  # absolute: what error messages name
    display: str  # relative to the project root (`Layout.relative`): what artifacts record
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
    # With dedup on: the content key of each valid record, in order (8 bytes each), and how
    # many of them repeat an earlier record (set by `dedup.distinct_ordinals`).
    keys: array = field(default_factory=lambda: array("Q"))
    duplicates: int = 0
    # Every bad or dropped line: (line, reason, detail), for mix_report.json.
    problems: list[tuple[int, str, str]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # by policy (too long), not bad input
    controls_stripped: int = 0  # records that had control characters removed
    near: array = field(default_factory=lambda: array("q"))  # near-duplicates' local ordinals
    near_duplicates: int = 0  # of them, those not also exact duplicates (set by dedup)
    na_lines: list[int] = field(default_factory=list)  # the first lines with no form for the output
    contaminated: int = 0  # records dropped for sharing a window with a held-out record

    @property
    def items(self) -> int:
        return (
            self.valid + self.not_applicable + sum(self.bad.values()) + sum(self.dropped.values())
        )


class Converter:
    """Turns one parsed value of a category into canonical fields for one output.

    Every pass uses it, so the scan, the decontamination pass and the write pass agree on which
    records are valid (their ordinals line up): control characters are stripped first
    (`policy.strip_controls`), and a record over `max_record_chars` raises `TooLong`.
    """

    def __init__(self, cfg: MixConfig, category: str, output: str):
        c = cfg.categories[category]
        self.dedup = cfg.dedup
        self.output, self.category = output, category
        self.max_chars = cfg.max_record_chars
        self.names = (
            {"name": cfg.model_name, "author": cfg.model_author} if c.fill_placeholders else None
        )
        self.stripped = False  # whether the last call removed control characters
        # Set by the JSON Lines scan per line: the raw line cannot hold a control character
        # (`policy.line_may_have_controls`), so the walk over the value is skipped.
        self.line_clean = False
        # Set likewise: the raw line has at most `max_chars` bytes, and a character takes at least
        # one, so no record on it can be too long (unless placeholders are filled in).
        self.line_short = False

    def __call__(self, value: Any, fmt: str | None) -> tuple[str, Any, dict]:
        if self.line_clean:
            self.stripped = False
        else:
            value, self.stripped = policy.strip_controls(value)
        if self.names is not None:
            value = formats.fill_placeholders(value, self.names)
        fmt = fmt or formats.detect_format(value)
        fields = formats.convert(value, fmt, self.output)
        if not self.line_short or self.names is not None:
            policy.check_size(fields, self.max_chars)
        return fmt, value, fields


def _is_data(root: Path, p: Path) -> bool:
    """Editors' and our own temporaries (dot files and folders) and READMEs are never data."""
    rel = p.relative_to(root)
    return (
        p.is_file()
        and not any(part.startswith(".") for part in rel.parts)
        and not p.name.lower().startswith("readme")
    )


def _mapped_elsewhere(cfg: MixConfig, category: str, rel: str) -> bool:
    """Whether `files` maps this file to another category (the mapping beats the globs)."""
    return cfg.files.get(rel, category) != category


def _globbed(cfg: MixConfig, category: str, root: Path) -> dict[Path, None]:
    found: dict[Path, None] = {}
    if not root.is_dir():
        return found
    for pattern in cfg.categories[category].sources:
        for p in root.glob(pattern):
            if _is_data(root, p) and not _mapped_elsewhere(
                cfg, category, p.relative_to(root).as_posix()
            ):
                found[p] = None
    return found


def resolve_files(cfg: MixConfig, category: str) -> tuple[list[tuple[Path, str, Path]], bool]:
    """[(path, display name, root)] of a category, sorted; and whether shipped samples are used.
    The display name is the path as artifacts record it (`Layout.relative`).

    A category's files are those its globs match plus those `files` maps to it (relative to
    sources_dir); the shipped samples are used only when both find nothing."""
    c = cfg.categories[category]
    lay = Layout.at(sources_dir=str(cfg.sources_dir), samples_dir=str(cfg.samples_dir))
    mapped: dict[Path, None] = {}
    for rel, cat in cfg.files.items():
        if cat == category:
            p = lay.sources / rel
            if not p.is_file():
                raise MixError(
                    f"files: {rel!r} (mapped to {category!r}) is not a file under {lay.sources}",
                    field=f"files.{rel}",
                )
            mapped[p] = None
    for root, is_sample in ((lay.sources, False), (lay.samples, True)):
        if is_sample and not cfg.allow_samples:
            break
        found = {**_globbed(cfg, category, root), **(mapped if not is_sample else {})}
        if found:
            files = sorted(found, key=lambda p: str(p.relative_to(root)))
            return [(p, lay.relative(p), root) for p in files], is_sample
    where = f"under {lay.sources}" + (
        f" nor under {lay.samples} (shipped samples)" if cfg.allow_samples else ""
    )
    raise MixError(
        f"category {category!r}: no files match {', '.join(c.sources)} {where}",
        field=f"categories.{category}.sources",
    )


def unmatched_files(cfg: MixConfig) -> dict[str, str]:
    """Files under sources_dir that no category uses -> a warning saying which globs they
    missed and how to map them."""
    lay = Layout.at(sources_dir=str(cfg.sources_dir), samples_dir=str(cfg.samples_dir))
    root = lay.sources
    if not root.is_dir():
        return {}
    used = set(lay.sources / rel for rel in cfg.files)
    for cat in cfg.categories:
        used |= set(_globbed(cfg, cat, root))
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p in used or not _is_data(root, p):
            continue
        rel = p.relative_to(root).as_posix()
        globs = "; ".join(f"{n}: {', '.join(c.sources)}" for n, c in cfg.categories.items())
        out[rel] = (
            f"{p}: used by no category: it matches none of the globs ({globs}); to use it, "
            f'map it in the mix config, e.g. files: {{"{rel}": "general"}}, or move it '
            "into a category's folder"
        )
    return out


def _override(c: CategoryConfig, root: Path, path: Path) -> tuple[str | None, str | None]:
    rel = str(path.relative_to(root))
    container, fmt = None, c.format
    for pattern, ov in c.overrides.items():
        if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(path.name, pattern):
            container = ov.container or container
            fmt = ov.format or fmt
    return container, fmt


def count_item(
    fs: FileScan,
    conv: Converter,
    line: int,
    value: Any,
    keep_samples: int = 0,
    near: NearDup | None = None,
) -> bool:
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
        if len(fs.na_lines) < EXAMPLES_KEPT:
            fs.na_lines.append(line)
        return False
    fs.formats[fmt] += 1
    fs.valid += 1
    fs.controls_stripped += conv.stripped
    if conv.dedup:
        fs.keys.frombytes(content_key(fields))
        if near is not None and near.seen(fields):
            fs.near.append(fs.valid - 1)
    if len(fs.samples) < keep_samples:
        fs.samples.append(canonical_record(fields, value, fs.display, line, fs.category))
    return True


def _bad(fs: FileScan, line: int, exc: RecordError) -> None:
    fs.problems.append((line, exc.kind, exc.detail))
    if isinstance(exc, policy.Dropped):
        fs.dropped[exc.kind] += 1
        return
    fs.bad[exc.kind] += 1
    if len(fs.examples) < EXAMPLES_KEPT:
        fs.examples.append(f"{fs.display}:{line}: {exc}")


def _scan_jsonl(
    fs: FileScan,
    conv: Converter,
    h: Any,
    progress: Progress | None,
    keep_samples: int,
    near: NearDup | None,
) -> None:
    """The JSON Lines scan: the hot loop of the whole stage, kept flat and free of per-line
    allocations beyond the parse itself (see bench/bench_mix.py)."""
    pending = 0
    update, parse = h.update, readers.parse_jsonl_bytes
    may_have_controls = policy.line_may_have_controls
    with open(fs.path, "rb") as f:
        for line_no, raw in enumerate(readers.read_lines(f, str(fs.path)), 1):
            update(raw)
            pending += len(raw)
            if pending >= 1 << 20 and progress is not None:
                progress.update(pending)
                pending = 0
            if raw.isspace():
                continue
            try:
                values = parse(raw, line_no)
            except RecordError as exc:
                _bad(fs, line_no, exc)
                fs.exc_lines.append(line_no)
                fs.exc_counts.append(0)
                continue
            n = 0
            conv.line_clean = not may_have_controls(raw)
            conv.line_short = len(raw) <= conv.max_chars
            for v in values:
                n += count_item(fs, conv, line_no, v, keep_samples, near)
            conv.line_clean = conv.line_short = False
            if n != 1:
                fs.exc_lines.append(line_no)
                fs.exc_counts.append(n)
    if progress is not None:
        progress.update(pending)


def scan_file(
    path: Path,
    display: str,
    root: Path,
    cfg: MixConfig,
    category: str,
    output: str,
    progress: Progress | None = None,
    keep_samples: int = 0,
    check_bad: bool = True,
    near: NearDup | None = None,
) -> FileScan:
    """Pass 1 over one file: counts, errors, formats, hash (module docstring, step 1)."""
    c = cfg.categories[category]
    container, fmt = _override(c, root, path)
    st = path.stat()
    fs = FileScan(
        path,
        display,
        category,
        readers.sniff(path, str(path), container),
        fmt,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
    )
    conv = Converter(cfg, category, output)
    h = hashlib.sha256()
    if fs.sniff.container == "jsonl":
        _scan_jsonl(fs, conv, h, progress, keep_samples, near)
    else:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        for line, value in readers.iter_items(path, str(path), fs.sniff):
            count_item(fs, conv, line, value, keep_samples, near)
        if progress is not None:
            progress.update(fs.size)
    fs.sha256 = h.hexdigest()
    if check_bad:
        check_bad_fraction(fs, cfg)
    return fs


def check_bad_fraction(fs: FileScan, cfg: MixConfig) -> None:
    """MixError when more than `max_bad_fraction` of a file's records are bad."""
    bad = sum(fs.bad.values())
    if bad and bad > cfg.max_bad_fraction * fs.items:
        reasons = ", ".join(f"{k}: {v}" for k, v in fs.bad.most_common())
        raise MixError(
            f"{bad} of {fs.items} records are bad "
            f"({bad / fs.items:.0%} > max_bad_fraction {cfg.max_bad_fraction:.0%}; "
            f"{reasons}); first: " + "; ".join(fs.examples),
            file=str(fs.path),
        )


def canonical_record(fields: dict, value: Any, display: str, line: int, category: str) -> dict:
    """The output record: canonical fields, `source`, then the original fields (module docstring
    of `minillm_core.data.mix`)."""
    rec = dict(fields)
    rec["source"] = {"file": display, "line": line, "category": category}
    if isinstance(value, dict):
        for k, v in value.items():
            if k in rec or k == "source":
                if rec.get(k) != v:
                    rec[f"original_{k}"] = v
            elif (
                k in ("messages", "conversations")
                and "conversations" in fields
                and v == fields["conversations"]
            ):
                continue  # the same messages under the other name: no need to keep twice
            else:
                rec[k] = v
    return rec
