"""Scoring loops: a model over batches of token rows (padded by the one `collate`), and the greedy
samples (through the one `generate`). Every forward runs under inference mode and the requested
autocast; the metric math is in `minillm_core.eval.metrics`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from minillm_core.eval.metrics import (
    LossTotals,
    mc_pick,
    preference_metrics,
    sequence_logps,
    token_nll,
)
from minillm_core.inference import SamplingParams, autocast, generate, stop_ids
from minillm_core.schema import IGNORE_INDEX
from minillm_core.tokens import collate_rows


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _batch_logps(
    model: torch.nn.Module,
    rows: Sequence[Mapping[str, Any]],
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    b = collate_rows(rows, pad_id)
    with autocast(device, dtype):
        return sequence_logps(model, b["input_ids"].to(device), b["labels"].to(device)).cpu()


@torch.inference_mode()
def score_loss(
    model: torch.nn.Module,
    rows: Sequence[Mapping[str, torch.Tensor]],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    token_bytes: torch.Tensor | None,
) -> dict[str, float]:
    """Loss, perplexity and bits per byte over rows with `input_ids` and `labels`."""
    totals = LossTotals()
    for batch in _batches(rows, batch_size):
        b = collate_rows(
            [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in batch], pad_id
        )
        ids, labels = b["input_ids"].to(device), b["labels"].to(device)
        with autocast(device, dtype):
            nll = token_nll(model, ids, labels)
        totals.add(nll, labels, token_bytes)
    return totals.metrics()


@torch.inference_mode()
def score_preferences(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    rows: Sequence[Mapping[str, torch.Tensor]],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    beta: float,
) -> dict[str, float]:
    """Preference metrics over DPO rows (chosen/rejected input ids and labels)."""
    logps: dict[str, list[torch.Tensor]] = {"pc": [], "pr": [], "rc": [], "rr": []}
    for batch in _batches(rows, batch_size):
        for side, tag in (("chosen", "c"), ("rejected", "r")):
            sides = [
                {"input_ids": r[f"{side}_input_ids"], "labels": r[f"{side}_labels"]} for r in batch
            ]
            logps["p" + tag].append(_batch_logps(policy, sides, pad_id, device, dtype))
            logps["r" + tag].append(_batch_logps(reference, sides, pad_id, device, dtype))
    cat = {k: torch.cat(v) for k, v in logps.items()}
    return preference_metrics(cat["pc"], cat["pr"], cat["rc"], cat["rr"], beta)


@torch.inference_mode()
def score_multiple_choice(
    model: torch.nn.Module,
    items: Sequence[tuple[list[int], list[list[int]], int]],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Letter accuracy over items (prompt ids ending at `<|assistant_start|>`, per option the
    token ids of its answer up to and including the letter, gold index).

    Each option is scored by the log-likelihood of its continuation given the prompt; the
    options of one item share the lead-in, so they differ only where the letter is. A row per
    option (a batch holds `batch_size` rows). `mc_chance` is the mean of 1 / number of options.
    """
    rows = []
    for prompt, options, _ in items:
        for cont in options:
            full = list(prompt) + list(cont)
            labels = [IGNORE_INDEX] * (len(prompt) - 1) + list(cont)
            rows.append({"input_ids": torch.tensor(full[:-1]), "labels": torch.tensor(labels)})
    logps = [
        _batch_logps(model, batch, pad_id, device, dtype) for batch in _batches(rows, batch_size)
    ]
    flat = torch.cat(logps) if logps else torch.zeros(0)
    correct, start = 0, 0
    for _, options, gold in items:
        correct += mc_pick(flat[start : start + len(options)]) == gold
        start += len(options)
    n = len(items)
    return {
        "mc_accuracy": correct / n if n else 0.0,
        "mc_chance": sum(1 / len(x[1]) for x in items) / n if n else 0.0,
        "mc_items": float(n),
    }


def generate_samples(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    chat: bool,
    max_new_tokens: int,
    max_seq_len: int,
    device: torch.device,
    dtype: torch.dtype,
) -> list[dict[str, Any]]:
    """Greedy completions: chat prompts rendered as a user turn, else raw text after BOS."""
    greedy = SamplingParams(temperature=0.0, stop_ids=tuple(stop_ids(tokenizer)))
    samples = []
    for prompt in prompts:
        if chat:
            ids = list(tokenizer.render_for_completion([{"role": "user", "content": prompt}]))
        else:
            ids = [tokenizer.get_bos_token_id(), *tokenizer.encode(prompt)]
        with autocast(device, dtype):
            out = list(generate(model, ids, max_new_tokens, greedy, max_context=max_seq_len))
        samples.append(
            {
                "prompt": prompt,
                "completion": tokenizer.decode(out),
                "kind": "chat" if chat else "continuation",
            }
        )
    return samples
