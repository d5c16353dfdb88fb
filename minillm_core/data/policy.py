"""Per-record policies applied before a record is counted: control characters and size.

Control characters: C0 controls other than tab, newline and carriage return (NUL and ESC
included) and DEL are *stripped* from every string of a record, and the records touched are
counted per file (`control_chars_stripped`). They carry no text, terminals act on them, and a
tokenizer would learn bytes no user types; stripping keeps the rest of the record, which is
almost always fine text around a stray byte. Lone UTF-16 surrogates are not characters at all:
the readers refuse such a record as invalid UTF-8 at its file:line.

Size: a record whose content (every string of its canonical fields but the roles) has more than
`max_record_chars` characters is *dropped* (`Dropped`, reason "too long"), counted and named at
its file:line in mix_report.json. Dropped records are not bad input: they do not count towards
a file's `max_bad_fraction`. Truncating instead would cut a conversation before its answer.
"""

from __future__ import annotations

import re
from typing import Any

from minillm_core.data.readers import RecordError

_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Dropped(RecordError):
    """A valid record left out by a documented policy (reported, not counted as bad input)."""


def _has_controls(value: Any) -> bool:
    t = type(value)
    if t is str:
        return _CONTROLS.search(value) is not None
    if t is dict:
        return any(_has_controls(v) for v in value.values())
    if t is list:
        return any(_has_controls(v) for v in value)
    return False


def _strip(value: Any) -> Any:
    t = type(value)
    if t is str:
        return _CONTROLS.sub("", value)
    if t is dict:
        return {k: _strip(v) for k, v in value.items()}
    if t is list:
        return [_strip(v) for v in value]
    return value


def strip_controls(value: Any) -> tuple[Any, bool]:
    """(value without control characters, whether any were removed); unchanged values are
    returned as they are, without a copy."""
    if not _has_controls(value):
        return value, False
    return _strip(value), True


# One pattern with a literal first byte: the regex engine then skips to each backslash with
# memchr, several times faster than three separate searches on lines full of `\\n` escapes.
_CONTROL_ESCAPE = re.compile(rb"\\(?:[bf]|u00)")


def line_may_have_controls(raw: bytes) -> bool:
    """Whether a JSON Lines line could decode to a string with a control character. The strict
    parser refuses raw C0 bytes inside strings, so only their escapes (`\\u00XX`, `\\b`, `\\f`)
    and a raw DEL can; two byte searches instead of a walk over the parsed value."""
    return b"\x7f" in raw or _CONTROL_ESCAPE.search(raw) is not None


def strings(value: Any, out: list[str]) -> list[str]:
    """Every string of a value, in order, except the values of `role` keys."""
    t = type(value)
    if t is str:
        out.append(value)
    elif t is list:
        for v in value:
            strings(v, out)
    elif t is dict:
        for k, v in value.items():
            if k != "role":
                strings(v, out)
    return out


def check_size(fields: dict[str, Any], max_chars: int) -> None:
    """Raise `Dropped("too long")` when the record's content exceeds `max_chars` characters."""
    n = sum(map(len, strings(fields, [])))
    if n > max_chars:
        raise Dropped("too long", f"{n} characters > max_record_chars {max_chars}")
