"""One mix record -> one row: the encoder, the chat cut, and the row tensors.

A stored row is a sequence `seq` of at most `max_length + 1` token ids (SFT/DPO: with a 0/1 mask
parallel to it, 1 on assistant tokens and `<|assistant_end|>`). `make_row` turns it into the
tensors training reads: `input_ids = seq[:-1]`, `labels = seq[1:]`, IGNORE_INDEX where the mask
is 0, `loss_mask = mask[1:]`. Labels are derived from ids and mask at read time, so they cannot
drift out of line with the ids; TokenDataset, JsonlDataset and `encode_record` all go through
`make_row`, so evaluation sees exactly what training sees.

Truncation is ours, not the tokenizer's: `render_conversation` is asked for everything and the
cut happens here, where it is counted (the seed lost answers silently). An SFT sample with no
assistant label left after the cut, or a DPO pair in which either side's final answer would be cut
away entirely (the pair would carry no preference), is dropped and counted instead of trained on.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minillm_core.errors import ConfigError, DataError
from minillm_core.schema import IGNORE_INDEX, STAGES, Stage, raw_messages
from minillm_core.tokens.config import TensorConfig
from minillm_core.tokens.stats import Stats

# render_conversation truncates to its max_tokens; we ask for everything and cut ourselves.
_NO_LIMIT = 1 << 62

# The stored sequences of one row: one (ids, mask) per stream; mask None for pretrain.
Parts = list[tuple[list[int], list[int] | None]]
# What a stage's encoder returns: the row's sequences and why the record is dropped ("" if kept).
_Encoded = tuple[Parts, str]


def _special_id(tok: Any, name: str, what: str) -> int:
    try:
        return int(tok.encode_special(name))
    except Exception as exc:  # the tokenizer raises its own KeyError/ValueError for an unknown name
        raise ConfigError(
            f"{what}: {name!r} is not a special token of the tokenizer ({exc})"
        ) from None


def _pad_id(tok: Any, bos_id: int) -> int:
    # Padded positions are never trained (labels IGNORE_INDEX), so any valid id works; a dedicated
    # <|pad|> is clearer in a debugger when the tokenizer has one, else BOS (always present).
    try:
        return int(tok.encode_special("<|pad|>"))
    except KeyError:
        return bos_id


class Encoder:
    """The tokenizer plus the resolved special ids of one config; shared by export and JSONL rows."""

    def __init__(self, tok: Any, cfg: TensorConfig):
        self.tok, self.cfg = tok, cfg
        self.vocab_size = int(tok.get_vocab_size())
        self.bos_id = _special_id(tok, cfg.bos_token, "bos_token")
        self.eos_id = _special_id(tok, cfg.eos_token, "eos_token") if cfg.append_eos else None
        self.pad_id = _pad_id(tok, self.bos_id)
        self.limit = cfg.max_length + 1  # stored tokens per row: max_length inputs + 1 target

    def pretrain(self, texts: list[str]) -> list[list[int]]:
        # One call for the whole batch: the tokenizer encodes in parallel threads (GIL released).
        threads = self.cfg.num_threads or os.cpu_count() or 1
        seqs: list[list[int]] = self.tok.encode(
            texts, prepend=self.bos_id, append=self.eos_id, num_threads=threads
        )
        return seqs

    def pretrain_one(self, text: str) -> list[int]:
        # A single text skips the batch path, which starts a thread pool per call.
        seq: list[int] = self.tok.encode(text, prepend=self.bos_id, append=self.eos_id)
        return seq

    def chat(self, conversation: Any) -> tuple[list[int], list[int]]:
        ids, mask = self.tok.render_conversation(
            {"messages": raw_messages(conversation)}, _NO_LIMIT
        )
        if len(ids) != len(mask):
            raise ValueError(f"render_conversation gave {len(ids)} ids but {len(mask)} mask values")
        return list(ids), [int(m) for m in mask]


def _final_answer_start(mask: Sequence[int]) -> int:
    """Index where the last run of 1s in the mask starts (the final assistant answer), or -1."""
    end = len(mask) - 1
    while end >= 0 and not mask[end]:
        end -= 1
    if end < 0:
        return -1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return start


@dataclass
class _Cut:
    """One chat sequence after truncation to the row limit."""

    ids: list[int]
    mask: list[int]
    full_len: int
    cut_tokens: int
    cut_assistant: int
    supervised: int  # label positions kept (mask[1:] ones)
    has_answer: bool  # the full conversation has an assistant token at all
    answer_kept: bool  # some token of the final assistant answer survives the cut


def _cut_chat(ids: list[int], mask: list[int], limit: int) -> _Cut:
    full = len(ids)
    answer = _final_answer_start(mask)
    kept_ids, kept_mask = ids[:limit], mask[:limit]
    # Position 0 is never a target (it has no previous token), so it does not count as supervised.
    supervised = sum(kept_mask[1:])
    return _Cut(
        kept_ids,
        kept_mask,
        full,
        max(0, full - limit),
        sum(mask[limit:]),
        supervised,
        has_answer=answer >= 0,
        answer_kept=answer >= 1 and answer < limit,
    )


# ----------------------------------------------------------------------------- rows


def make_row(
    tokens: Any, mask: Any | None, prefix: str = "", loss_mask: bool = True
) -> dict[str, torch.Tensor]:
    """Row tensors from one stored sequence (and its mask): the single place rows are made."""
    seq = torch.from_numpy(np.array(tokens, dtype=np.int64))
    out = {prefix + "input_ids": seq[:-1].clone(), prefix + "labels": seq[1:].clone()}
    if mask is not None:
        m = torch.from_numpy(np.array(mask[1:], dtype=np.int64))
        out[prefix + "labels"][m == 0] = IGNORE_INDEX
        if loss_mask:
            out[prefix + "loss_mask"] = m
    return out


def stage_row(stage: str, parts: Sequence[tuple[Any, Any | None]]) -> dict[str, torch.Tensor]:
    """The row dict of a stage from its stored sequences (DPO: chosen, then rejected)."""
    if stage == "pretrain":
        return make_row(parts[0][0], None)
    if stage == "sft":
        return make_row(parts[0][0], parts[0][1])
    (ct, cm), (rt, rm) = parts
    return {
        **make_row(ct, cm, "chosen_", loss_mask=False),
        **make_row(rt, rm, "rejected_", loss_mask=False),
    }


# ----------------------------------------------------------------------------- one record


def record_parts(
    stage: str, record: Any, enc: Encoder, stats: Stats | None = None, line: int = 0
) -> Parts | None:
    """One mix record -> the stored sequences of its row (cut to the row limit), or None when the
    record is dropped; counts into `stats` when given. Raises ValueError on a malformed record."""
    if not isinstance(record, dict):
        raise ValueError("record is not a JSON object")
    counts = stats if stats is not None else Stats()
    if stage == "pretrain":
        parts, dropped = _pretrain_parts(record, enc, counts, line)
    elif stage == "sft":
        parts, dropped = _sft_parts(record, enc, counts, line)
    elif stage == "dpo":
        parts, dropped = _dpo_parts(record, enc, counts, line)
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if dropped:
        counts.drop(dropped)
        return None
    return parts


def _pretrain_parts(record: dict[str, Any], enc: Encoder, stats: Stats, line: int) -> _Encoded:
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError('pretrain record without a string "text"')
    seq = enc.pretrain_one(text) if text else []
    stats.sample([len(seq)], line, record, max(0, len(seq) - enc.limit), 0)
    # An empty text: BOS alone has no target.
    return [(seq[: enc.limit], None)], "empty" if len(seq) < 2 else ""


def _sft_parts(record: dict[str, Any], enc: Encoder, stats: Stats, line: int) -> _Encoded:
    c = _cut_chat(*enc.chat(record), enc.limit)
    stats.sample([c.full_len], line, record, c.cut_tokens, c.cut_assistant)
    dropped = "no_answer" if not c.has_answer else "answer_truncated" if c.supervised == 0 else ""
    return [(c.ids, c.mask)], dropped


def _dpo_parts(record: dict[str, Any], enc: Encoder, stats: Stats, line: int) -> _Encoded:
    sides = []
    for key in ("chosen", "rejected"):
        if key not in record:
            raise ValueError(f'dpo record without "{key}"')
        sides.append(_cut_chat(*enc.chat(record[key]), enc.limit))
    stats.sample(
        [c.full_len for c in sides],
        line,
        record,
        sum(c.cut_tokens for c in sides),
        sum(c.cut_assistant for c in sides),
    )
    dropped = (
        "no_answer"
        if any(not c.has_answer for c in sides)
        else "answer_truncated"
        if any(not c.answer_kept for c in sides)
        else ""
    )
    return [(c.ids, c.mask) for c in sides], dropped


def encode_record(
    stage: Stage, record: dict[str, Any], tokenizer: Any, cfg: TensorConfig
) -> dict[str, torch.Tensor] | None:
    """One mix record -> one row dict (as `TokenDataset[i]`), or None when the record is dropped
    (empty text, no assistant answer, answer cut away entirely). Always one document per row
    (pretrain truncates at max_length, whatever cfg.layout says): it serves held-out evaluation
    and small JSONL files, where a row per document is what one wants."""
    parts = record_parts(stage, record, Encoder(tokenizer, cfg))
    return None if parts is None else stage_row(stage, parts)


# ----------------------------------------------------------------------------- reading a mix


def read_jsonl(
    path: Path, hasher: Any = None, on_bytes: Callable[[int], None] | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record) one at a time, hashing the raw bytes on the way when given a
    hasher, so the mix is read once for both and never held whole."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if hasher is not None:
                hasher.update(raw)
            if on_bytes is not None:
                on_bytes(len(raw))
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"not valid JSON ({exc})", file=path, line=n) from None


def batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch
