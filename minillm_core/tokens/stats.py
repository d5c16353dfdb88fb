"""What an export counts on the way: samples, truncation, drops, the longest sample, the length
histogram; turned into the index's `stats` and into at most one warning per kind of loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minillm_core.progress import LogFn, emit


@dataclass
class Stats:
    """Counters of one export (or one JsonlDataset), filled record by record or batch by batch."""

    samples: int = 0
    truncated_samples: int = 0
    truncated_tokens: int = 0
    truncated_assistant_tokens: int = 0
    longest: int = 0
    longest_line: int = 0
    longest_source: str = ""
    stream_tokens: int = 0  # pretrain: tokens of all documents before any cut
    padded_inputs: int = 0  # pretrain: input positions the padded layout keeps...
    padded_rows: int = 0  # ...in this many rows (computed for both layouts, see export_tokens)
    dropped: dict[str, int] = field(default_factory=dict)
    first_invalid: str = ""
    # hist[k] counts sequences of length in [2**k, 2**(k+1)); power-of-two bins need no upper bound
    hist: np.ndarray = field(default_factory=lambda: np.zeros(64, dtype=np.int64))

    def sample(
        self, lengths: Sequence[int], line: int, record: Any, cut: int, cut_assistant: int
    ) -> None:
        self.samples += 1
        for n in lengths:
            if n > 0:
                self.hist[n.bit_length() - 1] += 1
        longest = max(lengths)
        if longest > self.longest:
            self.longest, self.longest_line = longest, line
            self.longest_source = str(record.get("source", "")) if isinstance(record, dict) else ""
        if cut:
            self.truncated_samples += 1
            self.truncated_tokens += cut
            self.truncated_assistant_tokens += cut_assistant

    def add_lengths(
        self, lengths: np.ndarray, lines: Sequence[int], records: Sequence[Any]
    ) -> None:
        """Vectorised `sample` for a batch of pretrain documents (no truncation to count)."""
        self.samples += len(lengths)
        nz = lengths[lengths > 0]
        np.add.at(self.hist, np.frexp(nz)[1] - 1, 1)
        i = int(np.argmax(lengths))
        if lengths[i] > self.longest:
            self.longest, self.longest_line = int(lengths[i]), lines[i]
            self.longest_source = str(records[i].get("source", ""))

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def histogram(self) -> list[list[int]]:
        top = int(np.flatnonzero(self.hist).max()) + 1 if self.hist.any() else 0
        return [[1 << k, int(self.hist[k])] for k in range(top)]

    def invalid(self, line: int, exc: Exception) -> None:
        self.drop("invalid")
        if not self.first_invalid:
            self.first_invalid = f"line {line}: {type(exc).__name__}: {exc}"


def padding(inputs: int, rows: int, max_length: int) -> float:
    """The fraction of `rows * max_length` input positions that would be padding."""
    return 1.0 - inputs / (rows * max_length) if rows else 0.0


def index_stats(stats: Stats, inputs: int, seq_rows: int, max_length: int) -> dict[str, Any]:
    return {
        "samples": stats.samples,
        "padding_fraction": round(padding(inputs, seq_rows, max_length), 6),
        "truncated_samples": stats.truncated_samples,
        "truncated_tokens": stats.truncated_tokens,
        "truncated_assistant_tokens": stats.truncated_assistant_tokens,
        "dropped_samples": sum(stats.dropped.values()),
        "dropped": dict(sorted(stats.dropped.items())),
        "first_invalid": stats.first_invalid,
        "longest_sample": stats.longest,
        "longest_sample_line": stats.longest_line,
        "longest_sample_source": stats.longest_source,
        "length_histogram": stats.histogram(),
    }


def warn(stats: Stats, stage: str, mix: Path, max_length: int, log: LogFn | None) -> None:
    """At most one line per kind of loss, with the numbers a user needs to pick a max_length."""
    if stats.truncated_samples:
        cut_answers = stats.dropped.get("answer_truncated", 0)
        extra = (
            (
                f", {stats.truncated_assistant_tokens} assistant tokens cut, {cut_answers} samples "
                "dropped because their answer would be cut away entirely"
            )
            if stage != "pretrain"
            else ""
        )
        emit(
            log,
            f"WARNING: {stats.truncated_samples} of {stats.samples} {stage} samples are longer "
            f"than max_length={max_length} (+1 target) and were truncated "
            f"({stats.truncated_tokens} tokens cut{extra}); longest sample: {stats.longest} tokens "
            f"({mix}:{stats.longest_line}, source {stats.longest_source!r})",
        )
    if stats.dropped.get("invalid"):
        emit(
            log,
            f"WARNING: {stats.dropped['invalid']} {stage} records of {mix} could not be "
            f"encoded and were dropped; first: {stats.first_invalid}",
        )
