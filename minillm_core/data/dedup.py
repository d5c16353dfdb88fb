"""Exact deduplication per output, before the held-out split and before re-sampling.

Two records are the same when their canonical fields (the text, the conversation, the pair; not
`source` or other metadata) are equal after Unicode NFKC (full-width and half-width punctuation
fold) and with whitespace runs collapsed. The first occurrence wins, in category order then file
order, so a record repeated across files or categories is drawn once, and a held-out record can
have no twin in training.

Memory: the scan keeps an 8-byte hash per valid record (`FileScan.keys`, an array, not a set of
strings); finding the first occurrences sorts them once, and what remains is one 8-byte ordinal
per distinct record. A 64-bit hash makes a false match among a million records about a 3e-8
chance.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # scan imports content_key from here
    from minillm_core.data.scan import FileScan


def _flatten(value: Any, out: list[str]) -> list[str]:
    """A value as tokens: strings with whitespace runs collapsed to one space and ends stripped
    (marked by a leading quote), dict keys sorted (marked by a trailing colon), brackets for
    structure, other scalars as JSON. Joined by a control character (stripped from records by
    `policy`, so no string holds one), it is the key's text: one walk and one join, about a
    third cheaper than rebuilding the value and `json.dumps` with sorted keys."""
    t = type(value)
    if t is str:
        out.append('"' + " ".join(value.split()))
    elif t is list:
        out.append("[")
        for v in value:
            _flatten(v, out)
        out.append("]")
    elif t is dict:
        out.append("{")
        for k in sorted(value):
            v = value[k]
            out.append(k + ":")
            if type(v) is str:  # inline: most values are strings, and a call costs more
                out.append('"' + " ".join(v.split()))
            else:
                _flatten(v, out)
        out.append("}")
    else:
        out.append(json.dumps(value))
    return out


# NFKC is slow on CJK text (every character is decomposed and recomposed), while the characters
# it changes in Chinese corpora are nearly always full-width ASCII (punctuation, digits, letters),
# the ideographic and no-break spaces and the ellipsis. These are replaced first: the seven most
# frequent by `in` and `replace` (C loops), the rest by one regex pass when it finds any. The full
# NFKC runs only when something else is left, so the result is always NFKC's.
_COMPAT = re.compile("[\uff01-\uff5e\u3000\u2026\u00a0]")
_COMPAT_MAP = {
    chr(c): unicodedata.normalize("NFKC", chr(c))
    for c in [*range(0xFF01, 0xFF5F), 0x3000, 0x2026, 0xA0]
}
_FREQUENT = [(ch, _COMPAT_MAP[ch]) for ch in "，：！）（；？"]


def _nfkc(text: str) -> str:
    if unicodedata.is_normalized("NFKC", text):
        return text
    for ch, to in _FREQUENT:
        if ch in text:
            text = text.replace(ch, to)
    if _COMPAT.search(text):
        for ch in set(_COMPAT.findall(text)):
            text = text.replace(ch, _COMPAT_MAP[ch])
    return text if unicodedata.is_normalized("NFKC", text) else unicodedata.normalize("NFKC", text)


def content_key(fields: dict) -> bytes:
    """The 8-byte dedup key of a record's canonical fields (module docstring)."""
    text = _nfkc("\x1f".join(_flatten(fields, [])))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def distinct_ordinals(scans: dict[str, list[FileScan]]) -> dict[str, np.ndarray]:
    """Per category, the sorted valid-record ordinals that are first occurrences of their key;
    sets each file's `duplicates` count."""
    files = [fs for cat_files in scans.values() for fs in cat_files]
    keys = np.concatenate(
        [np.frombuffer(fs.keys, dtype=np.uint64) for fs in files] or [np.zeros(0, dtype=np.uint64)]
    )
    keep = np.zeros(len(keys), dtype=bool)
    keep[np.unique(keys, return_index=True)[1]] = True
    del keys
    at = 0
    for fs in files:  # near-duplicates (scan order) that are not exact ones go too
        if fs.near:
            near = at + np.frombuffer(fs.near, dtype=np.int64)
            fs.near_duplicates = int(keep[near].sum())
            keep[near] = False
        at += fs.valid
    out: dict[str, np.ndarray] = {}
    start = 0
    for cat, cat_files in scans.items():
        n = sum(fs.valid for fs in cat_files)
        k = keep[start : start + n]
        at = start
        for fs in cat_files:
            fs.duplicates = int(fs.valid - keep[at : at + fs.valid].sum()) - fs.near_duplicates
            at += fs.valid
        out[cat] = np.flatnonzero(k).astype(np.int64, copy=False)
        start += n
    return out
