"""Pass 2 of the mix: convert only the chosen records of each file into an unlinked spool file,
from which the outputs are then assembled in any order (`Spool.write`).

JSON Lines lines before the next chosen one are skipped without parsing: the scan recorded which
lines do not hold exactly one valid record (`FileScan.exc_lines`), so ordinals can be counted
without reading the others. A file that changed since the scan fails the build.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from minillm_core.data import readers
from minillm_core.data.config import MixConfig
from minillm_core.data.readers import MixError, NotApplicable, RecordError
from minillm_core.data.scan import Converter, FileScan, canonical_record


def _make_encoder() -> Callable[[Any], str]:
    """What json.dumps(rec, ensure_ascii=False, allow_nan=False) returns, minus its overhead.

    json.dumps builds a new JSONEncoder for non-default arguments, and JSONEncoder.encode a new
    C encoder per call; this runs per chosen record (over a million at the seed's quotas), so
    the C encoder is built once, with exactly the arguments JSONEncoder(ensure_ascii=False,
    allow_nan=False).iterencode would pass (no NaN or Infinity is ever written).
    Falls back to the encoder's own method where the C accelerator is missing.
    """
    from json import encoder as je

    # The C accelerator is private to the json package (no stubs); hence the ignores.
    if je.c_make_encoder is None or je.c_encode_basestring is None:  # type: ignore[attr-defined]
        return json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys,
    # allow_nan); markers is the circular-reference memo, empty again after every call.
    c_encode = je.c_make_encoder(  # type: ignore[attr-defined]
        {},
        json.JSONEncoder().default,
        je.c_encode_basestring,  # type: ignore[attr-defined]
        None,
        ": ",
        ", ",
        False,
        False,
        False,
    )
    return lambda rec: "".join(c_encode(rec, 0))


class Spool:
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


def _changed(fs: FileScan, line: int | None = None) -> MixError:
    return MixError(
        "changed while the mix was being built; run it again", file=str(fs.path), line=line
    )


class _Picker:
    """Converts the items of one file in order and spools those at the wanted ordinals."""

    def __init__(
        self,
        fs: FileScan,
        conv: Converter,
        wanted: np.ndarray,
        emit_slot: Callable[[int, int], None],
        spool: Spool,
    ):
        self.fs, self.conv, self.emit_slot, self.spool = fs, conv, emit_slot, spool
        self.want = array("q")
        contiguous = np.ascontiguousarray(wanted, dtype=np.int64)
        self.want.frombytes(memoryview(contiguous).cast("B"))  # type: ignore[arg-type]
        self.ptr = 0  # index into `want` of the next record to spool
        self.ordinal = 0  # valid records seen so far

    def done(self) -> bool:
        return self.ptr == len(self.want)

    def take(self, line: int, value: Any) -> bool:
        """Convert one item; spool it if its ordinal is wanted. True when it is valid."""
        if isinstance(value, RecordError):
            return False
        try:
            _fmt, value, fields = self.conv(value, self.fs.fmt)
        except (RecordError, NotApplicable):
            return False
        if self.ptr < len(self.want) and self.want[self.ptr] == self.ordinal:
            fs = self.fs
            slot = self.spool.add(canonical_record(fields, value, fs.display, line, fs.category))
            self.emit_slot(self.ptr, slot)
            self.ptr += 1
        self.ordinal += 1
        return True


def _line_values(raw: bytes, line_no: int) -> list[Any]:
    """The values of a JSON Lines line the scan found valid records on."""
    try:
        return readers.parse_jsonl_bytes(raw, line_no)
    except RecordError:
        return []


def _pick_jsonl(fs: FileScan, p: _Picker) -> bool:
    """The JSON Lines pass; True once every wanted record is spooled."""
    # Most lines are skipped once the sources outnumber the quota: per line, only the cheapest
    # checks (next_exc is the next exceptional line, 0 when there is none left).
    exc_lines, exc_counts, e = fs.exc_lines, fs.exc_counts, 0
    next_exc = exc_lines[0] if exc_lines else 0
    want, n_want = p.want, len(p.want)
    with open(fs.path, "rb") as f:
        for line_no, raw in enumerate(readers.read_lines(f, str(fs.path)), 1):
            if raw.isspace():
                continue
            n = 1
            if line_no == next_exc:
                n = exc_counts[e]
                e += 1
                next_exc = exc_lines[e] if e < len(exc_lines) else 0
            if n and want[p.ptr] < p.ordinal + n:
                got = 0
                for v in _line_values(raw, line_no):
                    got += p.take(line_no, v)
                if got != n:
                    raise _changed(fs, line_no)
                if p.ptr == n_want:
                    return True
            else:
                p.ordinal += n
    return False


def write_pass(
    fs: FileScan,
    cfg: MixConfig,
    output: str,
    wanted: np.ndarray,
    emit_slot: Callable[[int, int], None],
    spool: Spool,
) -> None:
    """Pass 2 over one file: convert the records at the `wanted` local ordinals into the spool."""
    st = fs.path.stat()
    if (st.st_size, st.st_mtime_ns) != (fs.size, fs.mtime_ns):
        raise _changed(fs)
    p = _Picker(fs, Converter(cfg, fs.category, output), wanted, emit_slot, spool)
    if fs.sniff.container == "jsonl":
        if _pick_jsonl(fs, p):
            return
    else:
        for line, value in readers.iter_items(fs.path, str(fs.path), fs.sniff):
            p.take(line, value)
            if p.done():
                return
    raise _changed(fs)
