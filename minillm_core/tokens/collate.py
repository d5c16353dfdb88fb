"""The one way rows become a batch: right-padded to the longest row.

Right padding is safe for a causal model: a real position never attends to a later pad. Inputs
pad with the tokenizer's pad id, labels with IGNORE_INDEX (no loss), masks with 0. Training,
evaluation and inference all batch through here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from minillm_core.schema import IGNORE_INDEX


def fill_value(key: str, pad_id: int) -> int:
    """What pads the column `key`: labels get IGNORE_INDEX, masks 0, token ids `pad_id`."""
    if key.endswith("labels"):
        return IGNORE_INDEX
    return 0 if key.endswith("mask") else pad_id


def pad(seqs: Sequence[Any], fill: int, width: int) -> torch.Tensor:
    """1-D sequences (tensors or lists of ints) as one [len(seqs), width] long tensor."""
    out = torch.full((len(seqs), width), fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        t = torch.as_tensor(s, dtype=torch.long)
        out[i, : t.numel()] = t
    return out


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate_rows(
    rows: Sequence[Mapping[str, Any]], pad_id: int, multiple: int = 1
) -> dict[str, torch.Tensor]:
    """Rows of named 1-D columns -> one padded tensor per column, all to the longest column of
    any row (rounded up to `multiple`), so related columns (DPO's chosen and rejected) line up."""
    if not rows:
        raise ValueError("collate_rows: empty batch")
    width = round_up(max(len(r[k]) for r in rows for k in r), multiple)
    return {k: pad([r[k] for r in rows], fill_value(k, pad_id), width) for k in rows[0]}


def training_batch(
    items: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    stage: str,
    pad_id: int,
    multiple: int = 1,
    doc_start: int | None = None,
) -> dict[str, Any]:
    """(index, row) pairs -> a training batch: `input_ids`, `labels` (SFT: `loss_mask`), the
    dataset `indices` and the real `num_tokens`; with `doc_start` (the token that opens each
    packed document), `doc_ids`: the document of every position, for the model's document mask.

    DPO pairs become one [2P, T] batch, chosen rows then rejected rows, padded to the longest of
    both, so the policy and the reference each run one forward per micro-batch; padding to the
    batch's longest row rather than to the context length is most of the DPO saving, as
    preference pairs are mostly far shorter."""
    rows = [r for _, r in items]
    if stage == "dpo":
        cols = {
            "input_ids": [r[f"{s}_input_ids"] for s in ("chosen", "rejected") for r in rows],
            "labels": [r[f"{s}_labels"] for s in ("chosen", "rejected") for r in rows],
        }
    else:
        cols = {"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]}
        if stage == "sft" and "loss_mask" in rows[0]:
            cols["loss_mask"] = [r["loss_mask"] for r in rows]
    width = round_up(max(len(s) for s in cols["input_ids"]), multiple)
    batch: dict[str, Any] = {k: pad(v, fill_value(k, pad_id), width) for k, v in cols.items()}
    if doc_start is not None:
        batch["doc_ids"] = (batch["input_ids"] == doc_start).cumsum(1)
    batch["indices"] = torch.tensor([i for i, _ in items], dtype=torch.long)
    batch["num_tokens"] = sum(len(s) for s in cols["input_ids"])
    return batch
