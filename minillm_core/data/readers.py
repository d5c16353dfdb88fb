"""Containers of the on-disk formats Chinese chat corpora come in, detected from content.

`sniff` chooses the container and `iter_items` streams its values: JSON Lines (one value per
line; a line may also hold several concatenated objects, as some Firefly copies do), a JSON array
or a stream of pretty-printed values (parsed incrementally, one element at a time, never the whole
file), CSV with a header (fields may hold commas, quotes and newlines), and plain lines (one
document per line; only on request, since a non-JSON file is more often a mistake than a corpus).
The container is chosen from the first bytes, not the extension: Belle `.json` files are JSON
Lines, Alpaca `.json` files are one array, nanochat identity `.jsonl` lines are bare arrays.
Files that are not text at all (gzip/zip/zstd/parquet bytes, an HTML error page, a Git LFS
pointer, GBK-encoded text) are refused with a message that says what they look like. What each
value means (its record schema) is `formats`' job.

Bad records raise `RecordError(kind, detail)`; the caller counts kinds per file and keeps the
first few `file:line: kind: detail` lines. Errors that make the rest of a file unreadable (a
syntax error inside a JSON array, a non-text file) raise `MixError` naming file and line.

Trade-off: JSON Lines is parsed with `json.loads` per line, which is the fast path (the
benchmark in docs/mix.md measures it); arrays and streams go through `raw_decode` on a
sliding 1 MiB window, slower but flat in memory however large the array is.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

from minillm_core.errors import DataError

Container = Literal["jsonl", "json_array", "json_stream", "csv", "lines"]
CONTAINERS: tuple[str, ...] = ("jsonl", "json_array", "json_stream", "csv", "lines")

BOM = b"\xef\xbb\xbf"
# One JSON value (or one CSV/JSONL line) larger than this is treated as a broken file rather than
# buffered: a 4 GB file without newlines must not be read into memory by accident.
MAX_VALUE_BYTES = 64 << 20
_CHUNK = 1 << 20
_LOOKAHEAD = 64


class MixError(DataError):
    """A source or setting the mix cannot use, located by `file` and `line` where known."""


class RecordError(DataError):
    """One record is unusable; `kind` is the counted reason, `detail` says where in the record.

    Raised by the hot paths without a location: the caller knows file and line and reports them.
    """

    def __init__(
        self, kind: str, detail: str = "", *, file: object = None, line: int | None = None
    ):
        super().__init__(f"{kind}: {detail}" if detail else kind, file=file, line=line)
        self.kind, self.detail = kind, detail


class NotApplicable(Exception):
    """A valid record that has no form for the requested output (plain text has no SFT form)."""


# ------------------------------------------------------------------------------- containers

_MAGIC: list[tuple[bytes, str]] = [
    (b"\x1f\x8b", "gzip-compressed bytes; decompress it first (gunzip)"),
    (b"PK\x03\x04", "a zip archive; unzip it first"),
    (b"BZh", "bzip2-compressed bytes; decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed bytes; decompress it first (unxz)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed bytes; decompress it first (unzstd)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive; extract it first"),
    (
        b"PAR1",
        "a Parquet file; export it to JSON Lines first (e.g. pandas.read_parquet(...)"
        ".to_json(out, orient='records', lines=True, force_ascii=False))",
    ),
]


@dataclass(frozen=True)
class Sniff:
    container: str
    delimiter: str = ","


def _looks_gbk(head: bytes) -> bool:
    # Decide by lines so that one corrupt line in a UTF-8 file stays a per-line skip, while a file
    # saved by a GBK editor (most non-ASCII lines invalid as UTF-8, all valid as GB18030) is named.
    lines = [ln for ln in head.split(b"\n")[:-1] if any(b >= 0x80 for b in ln)]
    bad = 0
    for ln in lines:
        try:
            ln.decode("utf-8")
        except UnicodeDecodeError:
            try:
                ln.decode("gb18030")
            except UnicodeDecodeError:
                continue
            bad += 1
    return bad >= 3 and bad * 2 >= len(lines)


def sniff(path: Path, display: str, override: str | None = None) -> Sniff:
    """Choose the container of `path` from its first bytes; raise MixError for non-text files."""
    with open(path, "rb") as f:
        head = f.read(64 << 10)
    body = head.removeprefix(BOM)
    for magic, what in _MAGIC:
        if body.startswith(magic):
            raise MixError(f"not a text file: it looks like {what}", file=display)
    stripped = body.lstrip()
    if stripped.startswith(b"version https://git-lfs.github.com/spec"):
        raise MixError(
            "is a Git LFS pointer, not the data: run `git lfs pull` in the "
            "repository you downloaded it from",
            file=display,
        )
    low = stripped[:512].lower()
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        raise MixError(
            "looks like an HTML/XML page (a failed or redirected download?), not "
            "data: download the file again",
            file=display,
        )
    if b"\x00" in body[:8192]:
        raise MixError(
            "contains NUL bytes: binary data, or UTF-16 text (re-save it as UTF-8)", file=display
        )
    if _looks_gbk(body):
        raise MixError(
            "is not UTF-8; it decodes as GBK/GB18030: convert it with "
            f"`iconv -f GB18030 -t UTF-8 {display} > out.jsonl`",
            file=display,
        )
    if override is not None:
        if override not in CONTAINERS:
            raise MixError(
                f"unknown container {override!r}; allowed: " + ", ".join(CONTAINERS),
                file=display,
                field="container",
            )
        return Sniff(override, _delimiter(body))
    if not stripped:
        return Sniff("jsonl")  # empty file: no records, counted as such by the caller
    first = stripped[:1]
    first_line = stripped.split(b"\n", 1)[0].strip()
    if first in (b"{", b"["):
        value = _whole_value(first_line)
        if first == b"{" and not isinstance(value, dict):
            # A corrupt first line must cost one record, not the file: JSON Lines if another
            # unindented line among the first ones is a whole object (in a pretty-printed stream
            # the top-level lines are a bare "{" or "}", and inner objects are indented).
            tops = [ln for ln in stripped.split(b"\n")[1:21] if ln.startswith(b"{")]
            value = next((v for v in map(_whole_value, tops) if isinstance(v, dict)), None)
            return Sniff("jsonl" if value is not None else "json_stream")
        if value is None:
            return Sniff("json_array")  # the first line is not a whole value: a pretty array
        if isinstance(value, dict):
            return Sniff("jsonl")
        # A one-line array is either a nanochat identity line (a list of messages) or a
        # whole-file array of records written on one line; the elements tell which.
        if (
            isinstance(value, list)
            and value
            and all(isinstance(m, dict) and ("role" in m or "from" in m) for m in value)
        ):
            return Sniff("jsonl")
        return Sniff("json_array")
    delim = _delimiter(body)
    header = first_line.decode("utf-8", "replace")
    if header.count(delim) >= 1:
        return Sniff("csv", delim)
    raise MixError(
        f"not JSON Lines, a JSON array or CSV (first line starts {header[:40]!r}); "
        "for one plain-text document per line set this source's container to "
        "'lines' in the mix config",
        file=display,
    )


def _whole_value(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8", "replace"))
    except (ValueError, RecursionError):  # JSONDecodeError, a 5000-digit number, deep nesting
        return None


def _delimiter(body: bytes) -> str:
    line = body.split(b"\n", 1)[0]
    return "\t" if line.count(b"\t") > line.count(b",") else ","


def decode_line(raw: bytes, line_no: int, strip: bool = True) -> str:
    """A line as text, BOM on line 1 removed; bad UTF-8 -> RecordError.

    JSON parsing ignores the trailing CR/LF, so the JSON Lines path passes strip=False and saves
    a copy of every line.
    """
    if line_no == 1 and raw.startswith(BOM):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError("invalid UTF-8", f"byte {exc.start} of the line ({exc.reason})") from None
    return text.rstrip("\r\n") if strip else text


class NonFiniteNumber(ValueError):
    """`NaN`, `Infinity` or `-Infinity` in JSON: Python's parser accepts them, the JSON standard
    (and the tools that read our outputs) do not, and they would reach loss weights and filters."""

    def __init__(self, name: str):
        super().__init__(f"{name} is not valid JSON (no NaN or Infinity)")
        self.name = name


def _reject_constant(name: str) -> Any:
    raise NonFiniteNumber(name)


# Strict: every value the mix reads goes through it, so a record holding NaN is refused (counted
# as invalid JSON at its file:line) instead of being written out again as non-standard JSON.
_decoder = json.JSONDecoder(parse_constant=_reject_constant)
# Only to find where an element with NaN ends, so one bad element does not end a JSON array.
_lenient = json.JSONDecoder()


def strict_loads(text: str) -> Any:
    """`json.loads` that refuses NaN/Infinity (NonFiniteNumber, a ValueError)."""
    return _decoder.decode(text)


# orjson parses several times faster than `json` and refuses everything `strict_loads` refuses
# (NaN, Infinity, lone surrogates, bad UTF-8, a BOM), but reads an integer beyond 64 bits (below
# -2**63, above 2**64 - 1) as a float. So a line holding a run of 19 digits (2**63 has 19), and
# every line orjson refuses, goes to the standard parser: values and error messages are always
# `strict_loads`'s.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else b for b in range(256))
_LONG_NUMBER = b"0" * 19


def _fast_loads(raw: bytes) -> tuple[bool, Any]:
    if _LONG_NUMBER in raw.translate(_DIGITS_AS_ZERO):
        return False, None
    try:
        return True, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False, None


def loads_bytes(raw: bytes) -> Any:
    """`strict_loads` of UTF-8 bytes (a ValueError on bad UTF-8 too), the fast way when it can."""
    ok, value = _fast_loads(raw)
    return value if ok else strict_loads(raw.decode("utf-8"))


_WS = re.compile(r"[ \t\r\n]*")


def _skip_ws(text: str, pos: int) -> int:
    m = _WS.match(text, pos)  # always matches (possibly empty)
    return m.end() if m else pos


# Deeper values are refused per record: Python's JSON parser raises RecursionError near 1000
# levels, and a value that just fits would make every later recursive step (placeholder filling,
# json.dumps of the output record) fail instead. Real chat records nest fewer than 10 levels.
MAX_DEPTH = 100
# A JSON escape of a UTF-16 surrogate: a lone one decodes to a str that cannot be written as UTF-8.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
    return False


def _check_value(text: str, values: list[Any]) -> list[Any]:
    """Refuse what parsed but cannot be processed: too deep, or holding a lone surrogate. Both
    checks run only when cheap counts over the raw text say they could apply."""
    if text.count("[") + text.count("{") > MAX_DEPTH and any(_too_deep(v) for v in values):
        raise RecordError("invalid JSON", f"nested deeper than {MAX_DEPTH} levels")
    if "\\u" in text and _ESCAPED_SURROGATE.search(text):
        try:
            json.dumps(values, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RecordError(
                "invalid UTF-8",
                f"a lone surrogate escape ({exc.object[exc.start : exc.end]!a}) is not a character",
            ) from None
    return values


def parse_jsonl_bytes(raw: bytes, line_no: int) -> list[Any]:
    """`parse_jsonl_line` of a raw line (`decode_line`'s errors included), the fast way when it
    can: a lone surrogate is orjson's to refuse, so only the depth is left to check."""
    ok, value = _fast_loads(raw)
    if not ok:
        return parse_jsonl_line(decode_line(raw, line_no, False))
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(value):
        raise RecordError("invalid JSON", f"nested deeper than {MAX_DEPTH} levels")
    return [value]


def _json_error(exc: Exception) -> RecordError:
    if isinstance(exc, json.JSONDecodeError):
        # Some messages end in "at" already ("Unterminated string starting at").
        at = "" if exc.msg.endswith(" at") else " at"
        return RecordError("invalid JSON", f"{exc.msg}{at} column {exc.colno}")
    if isinstance(exc, RecursionError):
        return RecordError("invalid JSON", "nested too deeply to parse")
    return RecordError("invalid JSON", str(exc).split(";")[0])  # e.g. a 5000-digit number


def parse_jsonl_line(text: str) -> list[Any]:
    """The values on one JSONL line: usually one; several when objects were concatenated."""
    try:
        value = _decoder.decode(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise _json_error(exc) from None
    except (ValueError, RecursionError) as exc:
        raise _json_error(exc) from None
    else:
        # Outside the try: RecordError is a ValueError too, and must keep its own kind.
        return _check_value(text, [value])
    values: list[Any] = []
    pos, n = 0, len(text)
    while True:
        pos = _skip_ws(text, pos)
        if pos >= n:
            return _check_value(text, values)
        try:
            value, pos = _decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            raise _json_error(exc) from None
        values.append(value)


def read_lines(f: BinaryIO, display: str) -> Iterator[bytes]:
    """Lines of a binary file, refusing one longer than MAX_VALUE_BYTES instead of buffering it."""
    readline = f.readline
    line_no = 0
    while raw := readline(MAX_VALUE_BYTES):
        line_no += 1
        if len(raw) >= MAX_VALUE_BYTES and not raw.endswith(b"\n"):
            raise MixError(
                f"line longer than {MAX_VALUE_BYTES >> 20} MiB; is this one JSON "
                "document without newlines? Split it into JSON Lines",
                file=display,
                line=line_no,
            )
        yield raw


class _StreamWindow:
    """The unparsed tail of a JSON array or stream, decoded, with the line number at `pos`."""

    def __init__(self, f: BinaryIO, display: str):
        self.f, self.display = f, display
        self.udec = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.buf, self.pos, self.line, self.eof, self.first_chunk = "", 0, 1, False, True
        self.fill()

    def fill(self) -> None:
        chunk = self.f.read(_CHUNK)
        if self.first_chunk and chunk.startswith(BOM):
            chunk = chunk[3:]
        self.first_chunk = False
        self.eof = not chunk
        self.buf = self.buf[self.pos :] + self.udec.decode(chunk, final=self.eof)
        self.pos = 0

    def advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def skip_ws(self) -> bool:
        """Move past whitespace, reading on as needed; False at the end of the file."""
        while True:
            self.advance(_skip_ws(self.buf, self.pos))
            if self.pos < len(self.buf):
                return True
            if self.eof:
                return False
            self.fill()

    def fatal(self, what: str, at: int) -> MixError:
        return MixError(
            what, file=self.display, line=self.line + self.buf.count("\n", self.pos, at)
        )

    def decode(self) -> tuple[Any, int] | None:
        """The value at `pos` and where it ends; None when more input must be read first."""
        buf, pos = self.buf, self.pos
        try:
            try:
                value, end = _decoder.raw_decode(buf, pos)
            except NonFiniteNumber as exc:
                # Costs this element only: the lenient parser finds where it ends.
                value, end = _json_error(exc), _lenient.raw_decode(buf, pos)[1]
        except json.JSONDecodeError as exc:
            if self.eof or len(buf) - pos > MAX_VALUE_BYTES:
                raise self.fatal(
                    f"invalid JSON: {exc.msg} (an array or stream cannot be read "
                    "past a syntax error; fix the file)",
                    exc.pos,
                ) from None
            return None
        except (ValueError, RecursionError) as exc:
            # Valid JSON the parser refuses (nesting near 1000 levels, a number of 4300+
            # digits): where the element ends is unknown, so the rest cannot be read either.
            raise self.fatal(
                f"invalid JSON: {_json_error(exc).detail} (an array or stream "
                "cannot be read past it; fix the file)",
                pos,
            ) from None
        # A number cut by the chunk edge ("0" of "0.5") decodes; keep some lookahead.
        if len(buf) - end < _LOOKAHEAD and not self.eof:
            return None
        return value, end


def _element(text: str, value: Any) -> Any:
    """An element read from a stream, or the RecordError that makes it unusable."""
    if isinstance(value, RecordError):
        return value
    if _has_surrogates(text):
        return RecordError("invalid UTF-8", "in this element")
    try:
        return _check_value(text, [value])[0]
    except RecordError as exc:
        return exc


def iter_stream(f: BinaryIO, display: str, array: bool) -> Iterator[tuple[int, Any]]:
    """(line, value) for each element of a JSON array, or each value of a concatenated stream.

    Reads 1 MiB at a time and keeps only the unparsed tail. Invalid UTF-8 is decoded with
    surrogate escapes and reported per element (RecordError as the value) so one bad byte costs
    one record; a JSON syntax error is fatal, since an array cannot be resynchronised after it.
    """
    w = _StreamWindow(f, display)
    if array:
        if not w.skip_ws():
            return
        if w.buf[w.pos] != "[":
            raise w.fatal(f"expected a JSON array, found {w.buf[w.pos]!r}", w.pos)
        w.advance(w.pos + 1)
    after_value = False
    while w.skip_ws():
        ch = w.buf[w.pos]
        if array and ch == "]":
            w.advance(w.pos + 1)
            if w.skip_ws():
                raise w.fatal("data after the end of the JSON array", w.pos)
            return
        if array and ch == ",":
            w.advance(w.pos + 1)
            after_value = False
            continue
        if after_value:
            raise w.fatal(
                f"invalid JSON: expected ',' or ']' after an element, found {ch!r}", w.pos
            )
        got = w.decode()
        if got is None:
            w.fill()
            continue
        value, end = got
        text, start_line = w.buf[w.pos : end], w.line
        w.advance(end)
        after_value = array
        yield start_line, _element(text, value)
    if array:
        raise w.fatal("JSON array is not closed (truncated file?)", w.pos)


_SURROGATE = re.compile("[\udc80-\udcff]")


def _has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def iter_csv(f: BinaryIO, display: str, delimiter: str) -> Iterator[tuple[int, Any]]:
    """(line, row dict) for each CSV row after the header; a row spanning bad UTF-8 is an error."""
    bad_lines: set[int] = set()
    counter = [0]

    def lines() -> Iterator[str]:
        for raw in read_lines(f, display):
            counter[0] += 1
            try:
                yield decode_line(raw, counter[0]) + "\n"
            except RecordError:
                bad_lines.add(counter[0])
                yield raw.decode("utf-8", "replace").rstrip("\r\n") + "\n"

    # The csv module refuses fields over 128 KiB by default, which would end the whole file at
    # one long answer; allow what a JSON Lines line may hold (process-wide, only ever raised).
    if csv.field_size_limit() < MAX_VALUE_BYTES:
        csv.field_size_limit(MAX_VALUE_BYTES)
    reader = csv.reader(lines(), delimiter=delimiter)
    header: list[str] | None = None
    last = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # A NUL, a bare CR or a stray quote costs its row, not the file: the reader starts
            # afresh on the next line.
            start, last = last + 1, reader.line_num
            yield start, RecordError("CSV error", str(exc).split(" - ")[0])
            continue
        start, last = last + 1, reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if header is None:
            header = [h.strip() or f"column{i}" for i, h in enumerate(row)]
            continue
        if any(n in bad_lines for n in range(start, last + 1)):
            yield start, RecordError("invalid UTF-8", "in this row")
        elif len(row) != len(header):
            yield (
                start,
                RecordError(
                    "wrong number of columns",
                    f"expected {len(header)} ({', '.join(header)}), got {len(row)}",
                ),
            )
        else:
            yield start, dict(zip(header, row))


def iter_items(path: Path, display: str, sn: Sniff) -> Iterator[tuple[int, Any]]:
    """(line, value-or-RecordError) for every item in a file, whatever its container."""
    with open(path, "rb") as f:
        if sn.container in ("jsonl", "lines"):
            for line_no, raw in enumerate(read_lines(f, display), 1):
                if raw.isspace():
                    continue
                try:
                    if sn.container == "lines":
                        yield line_no, {"text": decode_line(raw, line_no)}
                        continue
                    values = parse_jsonl_line(decode_line(raw, line_no, strip=False))
                except RecordError as exc:
                    yield line_no, exc
                    continue
                for v in values:
                    yield line_no, v
        elif sn.container == "csv":
            yield from iter_csv(f, display, sn.delimiter)
        else:
            yield from iter_stream(f, display, array=sn.container == "json_array")
