"""Held-out records -> what the scoring loops read: token rows built exactly as the training
tensors build them (same cuts, same masks), and multiple-choice items."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from minillm_core.data import clean_heldout
from minillm_core.errors import DataError
from minillm_core.eval.metrics import parse_mc_item
from minillm_core.progress import LogFn, emit


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, in order; DataError (file, line) on a bad line."""
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON ({exc.msg})", file=path, line=lineno) from None
            if not isinstance(obj, dict):
                raise DataError("expected a JSON object", file=path, line=lineno)
            yield obj


def heldout_records(
    path: Path, stage: str, log: LogFn | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The held-out records to score, and how many were left out: every object of `path`
    (DataError on a bad line) less those sharing a 50-character window, or their whole
    normalised text, with a training mix the `stage` checkpoint has seen
    (`minillm_core.data.decontam.clean_heldout`)."""
    records = list(read_jsonl(path))
    clean, dropped = clean_heldout(path, stage, records)
    if len(clean) < len(records):
        emit(
            log,
            f"eval {stage}: left out {len(records) - len(clean)} held-out records that "
            "overlap training data ("
            + ", ".join(f"{k}: {v}" for k, v in dropped.items() if v)
            + ")",
        )
    return clean, len(records) - len(clean)


def category(record: Mapping[str, Any]) -> str | None:
    src = record.get("source")
    if isinstance(src, Mapping):
        return src.get("category")
    if isinstance(record.get("category"), str):
        return record["category"]
    return None


def _messages(record: Mapping[str, Any]) -> list[dict[str, str]] | None:
    conv = record.get("conversations", record.get("messages"))
    return conv if isinstance(conv, list) else None


def encode_rows(
    stage: str, records: Iterable[Mapping[str, Any]], tokenizer: Any, max_seq_len: int, limit: int
) -> list[dict[str, torch.Tensor]]:
    """Records -> token rows exactly as the training tensors build them (same cuts, masks)."""
    from minillm_core import tokens as tensors

    cfg = tensors.TensorConfig(max_length=max_seq_len)
    rows = []
    for rec in records:
        row = tensors.encode_record(stage, rec, tokenizer, cfg)  # type: ignore[arg-type]
        if row is not None:
            rows.append(row)
        if len(rows) >= limit:
            break
    return rows


def mc_items(
    records: Iterable[Mapping[str, Any]], tokenizer: Any, max_seq_len: int, limit: int
) -> list[tuple[list[int], list[list[int]], int]]:
    """Knowledge records -> scoring items: prompt ids, per option the ids of `lead + letter`.

    The continuation is tokenized as one string, as training tokenized the answer: with the
    default split pattern a letter followed by punctuation or a space ends its pre-token, so
    the letter's token is the same here as in the trained answer.
    """
    items = []
    for rec in records:
        conv = _messages(rec)
        item = parse_mc_item(conv) if conv else None
        if item is None:
            continue
        ids = list(tokenizer.render_for_completion(item.prompt))
        options = [list(tokenizer.encode(item.lead + letter)) for letter in item.letters]
        if len(ids) + max(map(len, options)) > max_seq_len + 1:
            continue  # a cut prompt loses its options; skip rather than score nonsense
        items.append((ids, options, item.letters.index(item.gold)))
        if len(items) >= limit:
            break
    return items
