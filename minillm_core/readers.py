"""Readers for the on-disk formats Chinese chat corpora come in, detected from content.

Two layers, both streaming:

1. Containers (`sniff`, `iter_items`): JSON Lines (one value per line; a line may also hold
   several concatenated objects, as some Firefly copies do), a JSON array or a stream of
   pretty-printed values (parsed incrementally, one element at a time, never the whole file), CSV
   with a header (fields may hold commas, quotes and newlines), and plain lines (one document per
   line; only on request, since a non-JSON file is more often a mistake than a corpus).
   The container is chosen from the first bytes, not the extension: Belle `.json` files are JSON
   Lines, Alpaca `.json` files are one array, nanochat identity `.jsonl` lines are bare arrays.
   Files that are not text at all (gzip/zip/zstd/parquet bytes, an HTML error page, a Git LFS
   pointer, GBK-encoded text) are refused with a message that says what they look like.
2. Record schemas (`detect_format`, `convert`): each value's keys choose its schema (per record,
   so a file mixing ShareGPT and messages rows still reads), unless config forces one. Every
   schema converts to one of three shapes: a text, a conversation (role/content messages), or a
   preference pair (two conversations sharing the prompt); `to_output` then renders the shape the
   requested output needs.

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

Container = Literal["jsonl", "json_array", "json_stream", "csv", "lines"]
CONTAINERS: tuple[str, ...] = ("jsonl", "json_array", "json_stream", "csv", "lines")
FORMATS: tuple[str, ...] = (
    "text", "messages", "sharegpt", "alpaca", "belle_multiturn", "firefly", "mcq", "math",
    "dpo_messages", "dpo_conversation", "dpo_prompt",
)
Output = Literal["pretrain", "sft", "dpo"]

BOM = b"\xef\xbb\xbf"
# One JSON value (or one CSV/JSONL line) larger than this is treated as a broken file rather than
# buffered: a 4 GB file without newlines must not be read into memory by accident.
MAX_VALUE_BYTES = 64 << 20
_CHUNK = 1 << 20
_LOOKAHEAD = 64


class MixError(ValueError):
    """A source or setting the mix cannot use; the message names file:line or the field."""


class RecordError(Exception):
    """One record is unusable; `kind` is the counted reason, `detail` says where in the record."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
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
    (b"PAR1", "a Parquet file; export it to JSON Lines first (e.g. pandas.read_parquet(...)"
              ".to_json(out, orient='records', lines=True, force_ascii=False))"),
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
    body = head[len(BOM):] if head.startswith(BOM) else head
    for magic, what in _MAGIC:
        if body.startswith(magic):
            raise MixError(f"{display}: not a text file: it looks like {what}")
    stripped = body.lstrip()
    if stripped.startswith(b"version https://git-lfs.github.com/spec"):
        raise MixError(f"{display}: is a Git LFS pointer, not the data: run `git lfs pull` "
                       "in the repository you downloaded it from")
    low = stripped[:512].lower()
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        raise MixError(f"{display}: looks like an HTML/XML page (a failed or redirected "
                       "download?), not data: download the file again")
    if b"\x00" in body[:8192]:
        raise MixError(f"{display}: contains NUL bytes: binary data, or UTF-16 text "
                       "(re-save it as UTF-8)")
    if _looks_gbk(body):
        raise MixError(f"{display}: is not UTF-8; it decodes as GBK/GB18030: convert it with "
                       f"`iconv -f GB18030 -t UTF-8 {display} > out.jsonl`")
    if override is not None:
        if override not in CONTAINERS:
            raise MixError(f"{display}: unknown container {override!r}; allowed: "
                           + ", ".join(CONTAINERS))
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
        if isinstance(value, list) and value and all(
                isinstance(m, dict) and ("role" in m or "from" in m) for m in value):
            return Sniff("jsonl")
        return Sniff("json_array")
    delim = _delimiter(body)
    header = first_line.decode("utf-8", "replace")
    if header.count(delim) >= 1:
        return Sniff("csv", delim)
    raise MixError(f"{display}: not JSON Lines, a JSON array or CSV (first line starts "
                   f"{header[:40]!r}); for one plain-text document per line set this "
                   "source's container to 'lines' in the mix config")


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


_decoder = json.JSONDecoder()
_WS = re.compile(r"[ \t\r\n]*")


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
            raise RecordError("invalid UTF-8", f"a lone surrogate escape "
                              f"({exc.object[exc.start:exc.end]!a}) is not a character") from None
    return values


def _json_error(exc: Exception) -> RecordError:
    if isinstance(exc, json.JSONDecodeError):
        return RecordError("invalid JSON", f"{exc.msg} at column {exc.colno}")
    if isinstance(exc, RecursionError):
        return RecordError("invalid JSON", "nested too deeply to parse")
    return RecordError("invalid JSON", str(exc).split(";")[0])  # e.g. a 5000-digit number


def parse_jsonl_line(text: str) -> list[Any]:
    """The values on one JSONL line: usually one; several when objects were concatenated."""
    try:
        return _check_value(text, [json.loads(text)])
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise _json_error(exc) from None
    except (ValueError, RecursionError) as exc:
        raise _json_error(exc) from None
    values, pos, n = [], 0, len(text)
    while True:
        pos = _WS.match(text, pos).end()
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
            raise MixError(f"{display}:{line_no}: line longer than {MAX_VALUE_BYTES >> 20} MiB; "
                           "is this one JSON document without newlines? Split it into JSON Lines")
        yield raw


def iter_stream(f: BinaryIO, display: str, array: bool) -> Iterator[tuple[int, Any]]:
    """(line, value) for each element of a JSON array, or each value of a concatenated stream.

    Reads 1 MiB at a time and keeps only the unparsed tail. Invalid UTF-8 is decoded with
    surrogate escapes and reported per element (RecordError as the value) so one bad byte costs
    one record; a JSON syntax error is fatal, since an array cannot be resynchronised after it.
    """
    udec = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    buf, pos, line, eof, started, first_chunk = "", 0, 1, False, not array, True
    after_value = False

    def fill() -> None:
        nonlocal buf, pos, eof, first_chunk
        chunk = f.read(_CHUNK)
        if first_chunk and chunk.startswith(BOM):
            chunk = chunk[3:]
        first_chunk = False
        eof = not chunk
        buf = buf[pos:] + udec.decode(chunk, final=eof)
        pos = 0

    def advance(to: int) -> None:
        nonlocal pos, line
        line += buf.count("\n", pos, to)
        pos = to

    def fatal(what: str, at: int) -> MixError:
        return MixError(f"{display}:{line + buf.count(chr(10), pos, at)}: {what}")

    fill()
    while True:
        advance(_WS.match(buf, pos).end())
        if pos >= len(buf):
            if eof:
                if array and started:
                    raise fatal("JSON array is not closed (truncated file?)", pos)
                return
            fill()
            continue
        ch = buf[pos]
        if not started:
            if ch != "[":
                raise fatal(f"expected a JSON array, found {ch!r}", pos)
            started = True
            advance(pos + 1)
            continue
        if array and ch == "]":
            advance(pos + 1)
            while True:
                advance(_WS.match(buf, pos).end())
                if pos < len(buf):
                    raise fatal("data after the end of the JSON array", pos)
                if eof:
                    return
                fill()
        if array and ch == ",":
            advance(pos + 1)
            after_value = False
            continue
        if after_value:
            raise fatal(f"invalid JSON: expected ',' or ']' after an element, found {ch!r}", pos)
        try:
            value, end = _decoder.raw_decode(buf, pos)
            # A number cut by the chunk edge ("0" of "0.5") decodes; keep some lookahead.
            truncated = len(buf) - end < _LOOKAHEAD and not eof
        except json.JSONDecodeError as exc:
            if eof or len(buf) - pos > MAX_VALUE_BYTES:
                raise fatal(f"invalid JSON: {exc.msg} (an array or stream cannot be read past "
                            "a syntax error; fix the file)", exc.pos) from None
            truncated = True
        except (ValueError, RecursionError) as exc:
            # Valid JSON the parser refuses (nesting near 1000 levels, a number of 4300+
            # digits): where the element ends is unknown, so the rest cannot be read either.
            raise fatal(f"invalid JSON: {_json_error(exc).detail} (an array or stream cannot "
                        "be read past it; fix the file)", pos) from None
        if truncated:
            fill()
            continue
        text = buf[pos:end]
        start_line = line
        advance(end)
        after_value = array
        if _has_surrogates(text):
            yield start_line, RecordError("invalid UTF-8", "in this element")
        else:
            try:
                yield start_line, _check_value(text, [value])[0]
            except RecordError as exc:
                yield start_line, exc


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
            yield start, RecordError("wrong number of columns", f"expected {len(header)} "
                                     f"({', '.join(header)}), got {len(row)}")
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


# ------------------------------------------------------------------------------- schemas

ROLES = ("system", "user", "assistant", "tool")
_ROLE_SET = frozenset(ROLES)
# ShareGPT and its variants (Belle 3.5M uses "assistant" where ShareGPT uses "gpt").
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bot": "assistant", "system": "system",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}
# Which role may follow which: an optional leading system, then user/assistant alternation, with
# tool results allowed only after an assistant turn (which made the call) or another result.
_NEXT = {None: ("system", "user"), "system": ("user",), "user": ("assistant",),
         "assistant": ("user", "tool"), "tool": ("assistant", "tool")}
_TOOL_STRING_FIELDS = ("tools", "tool_calls")
_BELLE = re.compile(r"(?:^|\n)[ \t]*(Human|Assistant)[ \t]*[:：]")
_BELLE_START = re.compile(r"\s*Human[ \t]*[:：]")
_CALC = re.compile(r"<<[^<>]*>>")
_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")


def detect_format(value: Any) -> str:
    """The record schema of one parsed value, from its keys."""
    if isinstance(value, list):
        return "messages"
    if not isinstance(value, dict):
        raise RecordError("not an object", f"got a JSON {type(value).__name__}")
    if "chosen" in value and "rejected" in value:
        if isinstance(value["chosen"], list):
            return "dpo_messages"
        if "conversations" in value or "messages" in value:
            return "dpo_conversation"
        return "dpo_prompt"
    if "response_chosen" in value:
        return "dpo_prompt"
    conv = value.get("conversations", value.get("messages"))
    if isinstance(conv, list):
        if conv and isinstance(conv[0], dict) and "from" in conv[0]:
            return "sharegpt"
        return "messages"
    if "instruction" in value and "output" in value:
        ins = value["instruction"]
        if isinstance(ins, str) and _BELLE_START.match(ins):
            return "belle_multiturn"
        return "alpaca"
    if "target" in value and "input" in value:
        return "firefly"
    keys = {k.lower() if isinstance(k, str) else k for k in value}
    if {"question", "a", "b", "c", "d", "answer"} <= keys:
        return "mcq"
    if {"question", "answer"} <= keys:
        return "math"
    if "text" in value:
        return "text"
    shown = ", ".join(sorted(map(str, value))[:8])
    raise RecordError("unrecognised record", f"keys {{{shown}}} match no known format")


def _str_field(d: dict, key: str, *, required: bool = True, empty_ok: bool = False) -> str:
    if key not in d or d[key] is None:
        if required:
            raise RecordError("missing field", key)
        return ""
    v = d[key]
    if not isinstance(v, str):
        raise RecordError("non-string content", f"{key} is a {type(v).__name__}")
    if required and not empty_ok and (not v or v.isspace()):
        raise RecordError("empty content", key)
    return v


def normalize_message(m: Any, where: str) -> dict:
    """A role/content or from/value message as a role/content dict (other fields kept)."""
    if not isinstance(m, dict):
        raise RecordError("bad message", f"{where} is not an object")
    if "role" in m:
        if m["role"] not in _ROLE_SET:
            raise RecordError("unknown role", f"{where}.role = {m['role']!r}")
        if "content" not in m:
            raise RecordError("missing field", f"{where}.content")
        return m  # already canonical; shared, never mutated
    if "from" in m:
        role = SHAREGPT_ROLES.get(m["from"]) if isinstance(m["from"], str) else None
        if role is None:
            raise RecordError("unknown role", f"{where}.from = {m['from']!r}")
        if "value" not in m:
            raise RecordError("missing field", f"{where}.value")
        out = {"role": role, "content": m["value"]}
        if len(m) > 2:
            for k, v in m.items():
                if k != "from" and k != "value":
                    out[k] = v
        return out
    raise RecordError("missing field", f"{where}.role")


def validate_conversation(msgs: list[dict], where: str) -> list[dict]:
    """Check roles, order and contents; the list must end with an assistant turn."""
    if not msgs:
        raise RecordError("missing field", f"{where} is empty")
    prev = None
    for i, m in enumerate(msgs):
        role, content = m["role"], m["content"]
        if content.__class__ is not str:
            raise RecordError("non-string content", f"{where}[{i}].content is a "
                              f"{type(content).__name__}")
        # isspace() instead of strip(): no copy of a long string on the hot path.
        if (not content or content.isspace()) and not (role == "assistant"
                                                        and m.get("tool_calls")):
            raise RecordError("empty content", f"{where}[{i}] ({role})")
        if len(m) > 2:
            for key in _TOOL_STRING_FIELDS:
                if isinstance(m.get(key), str):
                    try:
                        json.loads(m[key])
                    except json.JSONDecodeError:
                        raise RecordError("invalid tool JSON", f"{where}[{i}].{key}") from None
        if role not in _NEXT[prev]:
            raise RecordError("bad role order", f"{where}[{i}]: {role} after "
                              f"{prev or 'the start'}")
        prev = role
    if prev != "assistant":
        raise RecordError("bad role order", f"{where} must end with an assistant turn "
                          f"(ends with {prev})")
    return msgs


def _messages(value: Any, where: str, system: Any = None) -> list[dict]:
    if not isinstance(value, list):
        raise RecordError("missing field", f"{where} is not a list")
    msgs = [normalize_message(m, f"{where}[{i}]") for i, m in enumerate(value)]
    if isinstance(system, str) and system.strip() and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def _history(d: dict) -> list[dict]:
    hist = d.get("history") or []
    if not isinstance(hist, list):
        raise RecordError("bad history", "history is not a list of [query, response] pairs")
    out: list[dict] = []
    for i, pair in enumerate(hist):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError("bad history", f"history[{i}] is not a [query, response] pair")
        q, a = pair
        if not isinstance(q, str) or not isinstance(a, str):
            raise RecordError("non-string content", f"history[{i}]")
        if not q.strip() and not a.strip():
            continue  # deepctrl data pads history with ['', ''] pairs: no turn, not an error
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


def _system(d: dict) -> list[dict]:
    s = d.get("system")
    return [{"role": "system", "content": s}] if isinstance(s, str) and s.strip() else []


def _alpaca(d: dict) -> list[dict]:
    ins = _str_field(d, "instruction")
    inp = _str_field(d, "input", required=False)
    user = f"{ins}\n{inp}" if inp.strip() else ins
    return [*_system(d), *_history(d), {"role": "user", "content": user},
            {"role": "assistant", "content": _str_field(d, "output")}]


def _belle_multiturn(d: dict) -> list[dict]:
    ins = _str_field(d, "instruction")
    parts = _BELLE.split(ins)
    # split() gives [before, role, text, role, text, ...]; text before the first marker is noise.
    if parts[0].strip():
        raise RecordError("bad role order", "instruction has text before the first Human:")
    msgs = []
    for role, text in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": text.strip()})
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()  # the trailing open "Assistant:" the output answers
    msgs.append({"role": "assistant", "content": _str_field(d, "output")})
    return msgs


def _firefly(d: dict) -> list[dict]:
    return [{"role": "user", "content": _str_field(d, "input")},
            {"role": "assistant", "content": _str_field(d, "target")}]


def _ci(d: dict) -> dict:
    return {k.lower() if isinstance(k, str) else k: v for k, v in d.items()}


def _mcq(d: dict) -> list[dict]:
    c = _ci(d)
    q = _str_field(c, "question")
    opts = {k: _str_field(c, k.lower()).strip() for k in "ABCD"}
    ans = _str_field(c, "answer", empty_ok=True).strip().upper().rstrip(".")
    if not ans:
        raise RecordError("empty content", "answer is empty (a test split with withheld labels?)")
    if ans not in opts:
        raise RecordError("bad answer", f"answer must be one of A, B, C, D (got {ans!r})")
    choices = "\n".join(f"{k}. {v}" for k, v in opts.items())
    user = f"{q.strip()}\n{choices}\n请选出正确答案。"
    return [{"role": "user", "content": user},
            {"role": "assistant", "content": f"答案是 {ans}：{opts[ans]}"}]


def _math(d: dict) -> list[dict]:
    c = _ci(d)
    q = _str_field(c, "question")
    a = c.get("answer")
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        a = str(a)
    if not isinstance(a, str):
        raise RecordError("non-string content" if a is not None else "missing field", "answer")
    steps, sep, final = a.rpartition("####")
    if sep:
        # GSM8K: "<<48/2=24>>" calculator annotations are stripped (not turned into tool calls)
        # so every math record is plain text; the "#### N" line becomes an explicit answer.
        steps, final = _CALC.sub("", steps).strip(), final.strip()
        if not final:
            raise RecordError("empty content", "answer after ####")
        a = f"{steps}\n答案：{final}" if steps else f"答案：{final}"
    if not a.strip():
        raise RecordError("empty content", "answer")
    return [{"role": "user", "content": q.strip()}, {"role": "assistant", "content": a.strip()}]


def _reply(value: Any, where: str) -> dict:
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    m = normalize_message(value, where)
    if m["role"] != "assistant":
        raise RecordError("bad role order", f"{where} must be an assistant message")
    return m


def _pair(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict]]:
    validate_conversation(chosen, "chosen")
    validate_conversation(rejected, "rejected")
    if len(chosen) != len(rejected) or any(
            (a["role"], a["content"]) != (b["role"], b["content"])
            for a, b in zip(chosen[:-1], rejected[:-1])):
        raise RecordError("prompt differs", "chosen and rejected must share every turn "
                          "but the last")
    if chosen[-1]["content"].strip() == rejected[-1]["content"].strip():
        raise RecordError("chosen equals rejected", "the final assistant turns are identical")
    return chosen, rejected


def _dpo_messages(d: dict) -> tuple[list[dict], list[dict]]:
    sys_ = d.get("system")
    return _pair(_messages(d["chosen"], "chosen", sys_), _messages(d["rejected"], "rejected", sys_))


def _dpo_conversation(d: dict) -> tuple[list[dict], list[dict]]:
    key = "conversations" if "conversations" in d else "messages"
    conv = _messages(d[key], key, d.get("system"))
    return _pair(conv + [_reply(d["chosen"], "chosen")],
                 conv + [_reply(d["rejected"], "rejected")])


def _dpo_prompt(d: dict) -> tuple[list[dict], list[dict]]:
    for key in ("prompt", "question", "instruction"):
        if key in d:
            prompt = _str_field(d, key)
            break
    else:
        raise RecordError("missing field", "prompt (or question / instruction)")
    inp = _str_field(d, "input", required=False) if "instruction" in d else ""
    if inp.strip():
        prompt = f"{prompt}\n{inp}"
    if "chosen" in d:
        c, r = _reply(d["chosen"], "chosen"), _reply(d["rejected"], "rejected")
    else:
        c = _reply(d.get("response_chosen"), "response_chosen")
        r = _reply(d.get("response_rejected"), "response_rejected")
    head = [*_system(d), *_history(d), {"role": "user", "content": prompt}]
    return _pair(head + [c], head + [r])


def _text(d: dict) -> str:
    return _str_field(d, "text")


def _conversation(value: Any, fmt: str) -> list[dict]:
    if fmt == "messages":
        if isinstance(value, list):
            return validate_conversation(_messages(value, "messages"), "messages")
        key = "conversations" if "conversations" in value else "messages"
        if key not in value:
            raise RecordError("missing field", "conversations (or messages)")
        return validate_conversation(_messages(value[key], key, value.get("system")), key)
    if fmt == "sharegpt":
        if "conversations" not in value:
            raise RecordError("missing field", "conversations")
        return validate_conversation(_messages(value["conversations"], "conversations",
                                               value.get("system")), "conversations")
    return validate_conversation(_BUILDERS[fmt](value), fmt)


_BUILDERS: dict[str, Any] = {
    "alpaca": _alpaca, "belle_multiturn": _belle_multiturn, "firefly": _firefly, "mcq": _mcq,
    "math": _math, "dpo_messages": _dpo_messages, "dpo_conversation": _dpo_conversation,
    "dpo_prompt": _dpo_prompt}
_FORMAT_SET = frozenset(FORMATS)


def conversation_text(msgs: list[dict]) -> str:
    """Pretrain text of a conversation: the user and assistant turns, one per paragraph."""
    return "\n".join(m["content"].strip() for m in msgs if m["role"] in ("user", "assistant"))


CANONICAL_KEYS = {"pretrain": ("text",), "sft": ("conversations",), "dpo": ("chosen", "rejected")}


def convert(value: Any, fmt: str, output: str, check_only: bool = False) -> dict:
    """The canonical fields of one record for `output`; RecordError or NotApplicable if none.

    check_only: validate the same way, but the pretrain text of a conversation (which cannot
    fail once the conversation is valid) is not built; for the mix's counting pass.
    """
    if fmt not in _FORMAT_SET:
        raise MixError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if not isinstance(value, (dict, list)) or (isinstance(value, list) and fmt != "messages"):
        raise RecordError("not an object", f"got a JSON {type(value).__name__}")
    if fmt.startswith("dpo_"):
        if output != "dpo":
            raise NotApplicable
        for key in ("chosen", "rejected") if fmt != "dpo_prompt" else ():
            if key not in value:
                raise RecordError("missing field", key)
        chosen, rejected = _BUILDERS[fmt](value)
        return {"chosen": chosen, "rejected": rejected}
    if output == "dpo":
        raise NotApplicable
    if fmt == "text":
        if not isinstance(value, dict):
            raise RecordError("not an object", "a text record must be an object")
        if output == "sft":
            raise NotApplicable
        return {"text": _text(value)}
    conv = _conversation(value, fmt)
    if output == "sft":
        return {"conversations": conv}
    if check_only:
        return {}
    return {"text": conversation_text(conv)}


def fill_placeholders(value: Any, names: dict[str, str]) -> Any:
    """Substitute `{{name}}`-style placeholders in every string; any left over is refused."""
    if isinstance(value, str):
        if "{{" not in value:
            return value
        for key, rep in names.items():
            value = re.sub(r"\{\{\s*" + re.escape(key) + r"\s*\}\}", lambda _m, r=rep: r, value)
        left = _PLACEHOLDER.search(value)
        if left:
            raise RecordError("unfilled placeholder", f"{left.group(0)} has no value in the "
                              "mix config (model_name / model_author)")
        return value
    if isinstance(value, list):
        return [fill_placeholders(v, names) for v in value]
    if isinstance(value, dict):
        return {k: fill_placeholders(v, names) for k, v in value.items()}
    return value
