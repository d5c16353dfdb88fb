"""The training corpus of the tokenizer: the mixes' records as plain text, streamed and capped."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import regex

from minillm_core.progress import LogFn, Progress, emit
from minillm_core.schema import text_of

_HAN_RE = regex.compile(r"\p{Han}")


def _conversation_text(messages: Any) -> str:
    return "\n".join(
        text_of(m.get("content", m.get("value", "")) or "") for m in messages if isinstance(m, dict)
    )


def record_texts(record: Any) -> list[str]:
    """Plain text of one mix record: pretrain `text`, SFT `conversations`/`messages`, DPO
    `chosen`+`rejected` (the shared prompt once, then both final answers)."""
    if isinstance(record, list):  # nanochat's bare-array conversation lines
        return [_conversation_text(record)]
    if not isinstance(record, dict):
        return []
    if isinstance(record.get("text"), str):
        return [record["text"]]
    for key in ("conversations", "messages"):
        if isinstance(record.get(key), list):
            return [_conversation_text(record[key])]
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        return [_conversation_text(chosen), _conversation_text(rejected[k:])]
    return []


class CorpusStats:
    """What the training stream read: counts for the metadata, and a sample of Han characters
    (first `han_sample_chars` characters) for the common-character coverage figure."""

    def __init__(self, han_sample_chars: int = 20_000_000):
        self.files: dict[str, int] = {}
        self.records = self.docs = self.docs_truncated = self.chars = self.bytes = 0
        self.bad_lines = 0
        self.cap_reached = False
        self.han: Counter = Counter()
        self._han_budget = han_sample_chars

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "records": self.records,
            "docs": self.docs,
            "docs_truncated": self.docs_truncated,
            "chars": self.chars,
            "bytes": self.bytes,
            "bad_lines": self.bad_lines,
            "max_chars_total_reached": self.cap_reached,
        }

    def take(self, text: str, max_chars_per_doc: int, max_chars_total: int) -> str:
        """`text` cut to the per-document cap and to what the total cap leaves; counted."""
        if len(text) > max_chars_per_doc:
            text = text[:max_chars_per_doc]
            self.docs_truncated += 1
        room = max_chars_total - self.chars
        if len(text) >= room:
            text = text[:room]
            self.cap_reached = True
        self.docs += 1
        self.chars += len(text)
        self.bytes += len(text.encode("utf-8"))
        if self._han_budget > 0:
            sample = text[: self._han_budget]
            self._han_budget -= len(sample)
            self.han.update(_HAN_RE.findall(sample))
        return text


def _file_records(path: Path, bar: Progress, stats: CorpusStats) -> Iterator[Any]:
    """The JSON records of one mix file; lines that do not parse are counted and skipped."""
    with open(path, "rb") as f:
        for line in f:
            bar.update(len(line))
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                stats.bad_lines += 1


def iter_mix_texts(
    paths: Sequence[Path],
    max_chars_per_doc: int,
    max_chars_total: int,
    stats: CorpusStats | None = None,
    log: LogFn | None = None,
) -> Iterator[str]:
    """Stream the documents of JSONL mixes as plain text, capped per document and in total.

    Reads one line at a time, so memory stays bounded whatever the corpus size."""
    stats = stats if stats is not None else CorpusStats()
    total_bytes = sum(Path(p).stat().st_size for p in paths)
    with Progress(total_bytes, "tokenizer: reading", unit="B", log=log) as bar:
        for path in paths:
            n = 0
            for record in _file_records(path, bar, stats):
                n += 1
                stats.records += 1
                for text in record_texts(record):
                    if not text:
                        continue
                    text = stats.take(text, max_chars_per_doc, max_chars_total)
                    if text:
                        yield text
                    if stats.cap_reached:
                        stats.files[str(path)] = n
                        emit(
                            log,
                            f"tokenizer: max_chars_total={max_chars_total:,} reached "
                            f"in {path} after {n} records; the rest is not read",
                        )
                        return
            stats.files[str(path)] = n
