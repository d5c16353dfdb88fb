"""Held-out decontamination by long exact overlap: no training record shares a 50-character
window with a held-out record.

Published LLM reports decontaminate with 13-token (GPT-3) or 50-character windows; the mix runs
before the tokenizer exists, so it counts characters. A window is taken over a record's
*normalised text*: every string of its canonical fields except roles (the text, the turns'
contents), whitespace runs collapsed, joined by one space, then NFKC, the same normalisation
as the dedup key. A conversation and the pretrain text built from it therefore have the same
windows, so one index serves every output.

Every window is hashed with a polynomial rolling hash modulo 2^64 in numpy (base odd, so it
has an inverse and each window's hash comes from two prefix sums without a Python loop),
mixed by a final avalanche step; the held-out windows are kept as one sorted uint64 array
(8 bytes a window), and a training record is tested with one `searchsorted`. A 64-bit false
match between two different windows is about a 1e-19 chance per pair of windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from minillm_core.data.config import MixConfig
from minillm_core.data.dedup import _nfkc
from minillm_core.data.policy import strings
from minillm_core.data.readers import loads_bytes
from minillm_core.data.sampling import draw_training
from minillm_core.data.scan import FileScan
from minillm_core.data.spool import write_pass
from minillm_core.layout import Layout
from minillm_core.schema import STAGES

WINDOW_CHARS = 50
BATCH_CHARS = 1 << 16  # per numpy pass of the decontamination (flat memory: a few MB at most)
_BASE = 0x9E3779B97F4A7C15  # odd: invertible modulo 2^64
_INV = pow(_BASE, -1, 1 << 64)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_BIT = np.array([1 << i for i in range(8)], dtype=np.uint8)
_pw: np.ndarray = np.ones(1, dtype=np.uint64)
_ipw: np.ndarray = np.ones(1, dtype=np.uint64)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B^j and B^-j (mod 2^64) for j < n, grown by doubling and kept."""
    global _pw, _ipw
    if len(_pw) < n:
        size = max(n, 2 * len(_pw))
        _pw = np.cumprod(np.full(size, _BASE, dtype=np.uint64)) * np.uint64(_INV)
        _ipw = np.cumprod(np.full(size, _INV, dtype=np.uint64)) * np.uint64(_BASE)
    return _pw[:n], _ipw[:n]


def record_text(fields: dict[str, Any]) -> str:
    """The normalised text the windows are taken over (module docstring)."""
    return _nfkc(" ".join(" ".join(s.split()) for s in strings(fields, []) if not s.isspace()))


def window_hashes(text: str, window: int = WINDOW_CHARS) -> np.ndarray:
    """The uint64 hash of every `window`-character substring of `text` (none if shorter)."""
    n = len(text)
    if n < window or window <= 0:
        return np.zeros(0, dtype=np.uint64)
    a = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    pw, ipw = _powers(n)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(a * pw, out=prefix[1:])
    h: np.ndarray = (prefix[window:] - prefix[:-window]) * ipw[: n - window + 1]
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return h


class WindowIndex:
    """The windows of a set of (held-out) records, as one sorted uint64 array."""

    def __init__(self, window: int = WINDOW_CHARS):
        self.window = window
        self._parts: list[np.ndarray] = []
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.records = 0
        self._shift = np.uint64(48)
        self._filter = np.zeros(1 << 13, dtype=np.uint8)

    def _hashes(self, fields: dict[str, Any]) -> np.ndarray:
        # A text shorter than the window is one "window" of its own length: an exact twin
        # (same normalised text, e.g. a conversation and its pretrain text) still matches.
        text = record_text(fields)
        return window_hashes(text, min(self.window, len(text)))

    def add(self, fields: dict[str, Any]) -> None:
        self._parts.append(self._hashes(fields))
        self.records += 1

    def add_text(self, text: str) -> None:
        """`add` for a text already normalised (`record_text`)."""
        self._parts.append(window_hashes(text, min(self.window, len(text))))
        self.records += 1

    def freeze(self) -> WindowIndex:
        if self._parts:
            self.hashes = np.unique(np.concatenate([self.hashes, *self._parts]))
            self._parts = []
            # A bit filter over the top bits, 16 slots (2 bytes) a window, about 6% false
            # positives: most query windows are answered by one gather instead of a binary
            # search through the sorted array.
            bits = max(16, int(16 * len(self.hashes)).bit_length())
            self._shift = np.uint64(64 - bits)
            slots = self.hashes >> self._shift
            self._filter = np.zeros(1 << (bits - 3), dtype=np.uint8)
            np.bitwise_or.at(self._filter, slots >> np.uint64(3), _BIT[slots & np.uint64(7)])
        return self

    def __len__(self) -> int:
        return len(self.hashes)

    def _member(self, h: np.ndarray) -> np.ndarray:
        slots = h >> self._shift
        out: np.ndarray = (self._filter[slots >> np.uint64(3)] & _BIT[slots & np.uint64(7)]) > 0
        maybe = np.flatnonzero(out)
        if len(maybe):
            at = np.searchsorted(self.hashes, h[maybe])
            at[at == len(self.hashes)] = 0
            out[maybe] = self.hashes[at] == h[maybe]
        return out

    def hits(self, texts: list[str]) -> list[int]:
        """The indices of the normalised `texts` that share a window with the index: one
        numpy pass over their concatenation (windows that cross from one text into the next
        are masked), which costs far less than a call per record."""
        w = self.window
        out = [
            i
            for i, t in enumerate(texts)
            if 0 < len(t) < w and self._member(window_hashes(t, len(t))).any()
        ]
        longs = [i for i, t in enumerate(texts) if len(t) >= w]
        if not longs or not len(self.hashes):
            return sorted(out)
        lens = np.array([len(texts[i]) for i in longs], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        h = window_hashes("".join(texts[i] for i in longs), w)
        pos = np.flatnonzero(self._member(h))
        rid = np.searchsorted(starts, pos, side="right") - 1
        inside = pos <= starts[rid] + lens[rid] - w
        out += [longs[r] for r in np.unique(rid[inside]).tolist()]
        return sorted(out)

    def overlaps(self, fields: dict[str, Any]) -> bool:
        """Whether the record shares at least one window with the index."""
        if not len(self.hashes):
            return False
        h = self._hashes(fields)
        if not len(h):
            return False
        return bool(self._member(h).any())


CANONICAL = {"pretrain": ("text",), "sft": ("conversations",), "dpo": ("chosen", "rejected")}


def mix_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a built mix file (bad lines are the file check's to report)."""
    with open(path, "rb") as f:
        for raw in f:
            try:
                rec = loads_bytes(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec


def content(rec: dict[str, Any]) -> dict[str, Any]:
    """The canonical fields of a mix record, whatever its output."""
    return {k: rec[k] for keys in CANONICAL.values() for k in keys if k in rec}


def seen_mixes(heldout: Path, stage: str) -> list[Path]:
    """The training mixes beside a held-out file that a `stage` checkpoint has trained on
    (every stage up to it: an SFT model has also read the pretrain mix)."""
    lay = Layout.at(processed_dir=str(heldout.parent))
    upto = STAGES[: STAGES.index(stage) + 1] if stage in STAGES else STAGES
    return [p for s in upto if (p := lay.mix_path(s)).is_file() and p != heldout]


def clean_heldout(
    heldout: Path,
    stage: str,
    records: list[dict[str, Any]] | None = None,
    window: int = WINDOW_CHARS,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The held-out records of `stage` that share no `window`-character window (nor their
    whole normalised text) with any training mix the checkpoint saw (`seen_mixes`); and per
    training mix how many held-out records overlap it.

    Held-out records are drawn per output, so one output's held-out record can be another
    output's training record (the general category feeds pretrain and SFT); the eval scores
    only the clean ones.
    """
    if records is None:
        records = list(mix_records(heldout))
    if window <= 0:
        return records, {}
    index = WindowIndex(window)
    for rec in records:
        index.add(content(rec))
    index.freeze()
    dirty: set[int] = set()
    counts: dict[str, int] = {}
    for mix in seen_mixes(heldout, stage):
        train = WindowIndex(window)  # the training records that overlap some held-out one
        batch: list[str] = []
        for rec in mix_records(mix):
            batch.append(record_text(content(rec)))
            if len(batch) >= 1024:  # one numpy pass per batch (records are size-capped)
                for i in index.hits(batch):
                    train.add_text(batch[i])
                batch = []
        for i in index.hits(batch):
            train.add_text(batch[i])
        train.freeze()
        hit = {i for i, rec in enumerate(records) if train.overlaps(content(rec))}
        counts[mix.name] = len(hit)
        dirty |= hit
    return [r for i, r in enumerate(records) if i not in dirty], counts


# ------------------------------------------------------------------- the mix's decontamination


class _Collector:
    """Stands in for the spool of `write_pass`: held-out records go into a window index."""

    def __init__(self, index: WindowIndex):
        self.index = index

    def add(self, rec: dict[str, Any]) -> int:
        self.index.add(content(rec))
        return self.index.records - 1


def _per_file(
    files: list[FileScan], ords: np.ndarray
) -> Iterator[tuple[FileScan, np.ndarray, int]]:
    """Each file with the local ordinals of `ords` (sorted, category-wide) that fall in it, and
    the category ordinal of its first record."""
    bounds = np.cumsum([0] + [fs.valid for fs in files])
    for i, fs in enumerate(files):
        lo, hi = np.searchsorted(ords, [bounds[i], bounds[i + 1]])
        if lo < hi:
            yield fs, ords[lo:hi] - bounds[i], int(bounds[i])


def heldout_index(
    cfg: MixConfig, output: str, scans: dict[str, list[FileScan]], held: dict[str, np.ndarray]
) -> WindowIndex:
    """The windows of every held-out record of `output` (all categories), read back from the
    sources (only the held-out lines are parsed)."""
    index = WindowIndex(cfg.decontam_window)
    sink = _Collector(index)
    for cat, files in scans.items():
        for fs, local, _base in _per_file(files, held[cat]):
            write_pass(fs, cfg, output, local, lambda _k, _slot: None, sink)  # type: ignore[arg-type]
    return index.freeze()


class _Checker:
    """Stands in for the spool of `write_pass`: tests the records read against the index,
    a batch of texts at a time; `hits` are their positions in the order read."""

    def __init__(self, index: WindowIndex):
        self.index = index
        self.texts: list[str] = []
        self.chars = 0
        self.read = 0
        self.hits: list[int] = []

    def add(self, rec: dict[str, Any]) -> int:
        self.texts.append(record_text(content(rec)))
        self.chars += len(self.texts[-1])
        self.read += 1
        if self.chars >= BATCH_CHARS:
            self.flush()
        return self.read - 1

    def flush(self) -> None:
        base = self.read - len(self.texts)
        self.hits += [base + i for i in self.index.hits(self.texts)]
        self.texts, self.chars = [], 0


def _check(
    cfg: MixConfig, output: str, files: list[FileScan], index: WindowIndex, ords: np.ndarray
) -> np.ndarray:
    """The positions in `ords` (sorted category ordinals) of the records sharing a window with
    `index`; only those records are parsed (`write_pass` skips the other lines)."""
    out: list[int] = []
    offset = 0
    for fs, local, _base in _per_file(files, ords):
        sink = _Checker(index)
        write_pass(fs, cfg, output, local, lambda _k, _slot: None, sink)  # type: ignore[arg-type]
        sink.flush()
        fs.contaminated += len(sink.hits)
        out += [offset + k for k in sink.hits]
        offset += len(local)
    return np.asarray(out, dtype=np.int64)


def contaminated_draws(
    cfg: MixConfig,
    output: str,
    cat: str,
    files: list[FileScan],
    index: WindowIndex,
    space: np.ndarray,
    held: np.ndarray,
    quota: int,
) -> np.ndarray:
    """The indices (into `space`, a category's distinct ordinals) of the training candidates
    that share a window with `index`, found the way the build draws: draw, check what was drawn,
    exclude the hits, draw again, until a draw is clean. Only drawn records matter (the others
    are never written), so the cost follows the quota, not the sources; once half the pool has
    been checked, the rest is checked in one pass. Deterministic: the draw is seeded."""
    excluded, checked = held, np.zeros(0, dtype=np.int64)
    found = np.zeros(0, dtype=np.int64)
    everything = np.arange(len(space), dtype=np.int64)
    while len(space) > len(excluded):
        picks, _mult = draw_training(
            cfg.seed, output, cat, len(space), quota, excluded, cfg.max_repeat
        )
        if 2 * (len(checked) + len(picks)) > len(space):
            picks = np.setdiff1d(everything, excluded, assume_unique=True)
        new = np.setdiff1d(picks, checked, assume_unique=True)
        if not len(new):
            break
        hits = new[_check(cfg, output, files, index, space[new])]
        checked = np.union1d(checked, new)
        if not len(hits):
            break
        found = np.union1d(found, hits)
        excluded = np.union1d(excluded, hits)
    return found
