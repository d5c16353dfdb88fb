"""Metric math: pure functions on tensors and text; the tests check them against known answers.

Loss per token depends on the vocabulary; bits per byte (summed loss in bits over the UTF-8 bytes
the target tokens spell, special tokens left out, as nanochat does) does not, so runs with
different tokenizers compare.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from minillm_core.inference import logits_of
from minillm_core.schema import IGNORE_INDEX


def token_nll(
    model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per-position negative log-likelihood [B, T] in nats, 0 where `labels == -100`.

    Labels are already aligned with the inputs (`labels[t]` is the target at position `t`, the
    token-rows convention), so there is no shift here. Computed in float32 whatever the autocast
    dtype: a bf16 log-softmax over a large vocabulary loses the digits the comparison needs.
    """
    logits = logits_of(model(input_ids)).float()
    b, t, v = logits.shape
    nll = F.cross_entropy(
        logits.reshape(b * t, v), labels.reshape(b * t), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return nll.view(b, t)


def sequence_logps(
    model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Summed log-probability [B] of each row's target tokens (labels != -100)."""
    return -token_nll(model, input_ids, labels).sum(dim=1)


class LossTotals:
    """Running sums for loss, perplexity and bits per byte."""

    def __init__(self) -> None:
        self.nats = 0.0  # over every target token
        self.tokens = 0
        self.byte_nats = 0.0  # over target tokens that spell at least one byte
        self.bytes = 0

    def add(
        self, nll: torch.Tensor, labels: torch.Tensor, token_bytes: torch.Tensor | None
    ) -> None:
        mask = labels != IGNORE_INDEX
        self.nats += float(nll[mask].double().sum())
        self.tokens += int(mask.sum())
        if token_bytes is not None:
            nb = token_bytes.to(labels.device)[labels.clamp(min=0)] * mask
            self.byte_nats += float(nll[nb > 0].double().sum())
            self.bytes += int(nb.sum())

    def metrics(self) -> dict[str, float]:
        if self.tokens == 0:
            raise ValueError("no target tokens to score (empty held-out data?)")
        loss = self.nats / self.tokens
        out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": float(self.tokens)}
        if self.bytes:
            out["bits_per_byte"] = self.byte_nats / (math.log(2) * self.bytes)
            out["bytes"] = float(self.bytes)
        return out


def preference_metrics(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> dict[str, float]:
    """DPO held-out metrics from summed log-probs [N] of each pair under policy and reference.

    margin_i = beta * ((pc - rc) - (pr - rr)); accuracy = share with margin_i > 0 (ties miss).
    """
    chosen_reward = beta * (policy_chosen - ref_chosen).double()
    rejected_reward = beta * (policy_rejected - ref_rejected).double()
    margin = chosen_reward - rejected_reward
    return {
        "preference_accuracy": float((margin > 0).double().mean()),
        "reward_margin": float(margin.mean()),
        "chosen_reward": float(chosen_reward.mean()),
        "rejected_reward": float(rejected_reward.mean()),
        "chosen_logp": float(policy_chosen.double().mean()),
        "rejected_logp": float(policy_rejected.double().mean()),
        "pairs": float(margin.numel()),
    }


def mc_pick(option_logps: torch.Tensor | Sequence[float]) -> int:
    """Index of the option with the highest likelihood (the first one on ties)."""
    return int(torch.argmax(torch.as_tensor(option_logps, dtype=torch.float64)))


# An option line of the question: "A. 甲", "B、乙", "(C) 丙", "D：丁".
_OPTION_RE = re.compile(r"^\s*[(（]?([A-J])\s*[).．、:：)）]", re.MULTILINE)
# Where the answer states its letter: at the start ("B. 北京", "(B)") or after a short lead-in
# ("答案是 B：北京", the mix's rendering of CMMLU/C-Eval rows; "正确答案：B"). The letter must not
# run into other Latin letters ("Beijing" is no answer B).
_ANSWER_RE = re.compile(
    r"^\s*(?:(?:正确)?答案\s*(?:是|为|:|：)?\s*)?[(（【\[]?\s*([A-J])(?![A-Za-z])"
)


class MCItem(BaseModel):
    """One multiple-choice question: the prompt messages, option letters, the gold letter, and
    the text the answer puts before its letter (the same lead-in is given for every option)."""

    prompt: list[dict[str, Any]]
    letters: list[str]
    gold: str
    lead: str = ""


def parse_mc_item(conversation: Sequence[Mapping[str, Any]]) -> MCItem | None:
    """A knowledge conversation -> MCItem, or None when it is not a lettered question.

    The last message is the assistant's answer stating the gold letter (see `_ANSWER_RE`); the
    options are the lettered lines of the last user message (A-D assumed when none parse).
    """
    if len(conversation) < 2 or conversation[-1].get("role") != "assistant":
        return None
    answer = conversation[-1].get("content")
    prompt = [dict(m) for m in conversation[:-1]]
    if not isinstance(answer, str) or prompt[-1].get("role") != "user":
        return None
    m = _ANSWER_RE.match(answer)
    if m is None:
        return None
    letters = sorted(set(_OPTION_RE.findall(str(prompt[-1].get("content", "")))))
    if len(letters) < 2:
        letters = ["A", "B", "C", "D"]
    if m.group(1) not in letters:
        return None
    return MCItem(prompt=prompt, letters=letters, gold=m.group(1), lead=answer[: m.start(1)])


def _norm(text: str) -> str:
    # Case and spacing do not change who the model says it is: "MiniLLM开源社区" names the
    # author "MiniLLM 开源社区"; full-width letters fold to ASCII (NFKC).
    return "".join(unicodedata.normalize("NFKC", text).lower().split())


def identity_scores(
    samples: Sequence[Mapping[str, Any]],
    probes: Mapping[str, str],
    name: str,
    author: str,
    foreign: Iterable[str],
) -> dict[str, float]:
    """Score the identity probes among `samples` ({prompt, completion}); marks each sample.

    A "name" probe passes when the answer contains the configured name, an "author" probe when
    it contains the author (ignoring case, spaces and full-width forms). `identity_foreign`
    counts probe answers naming another assistant (a name inside our own name or author, or
    containing it, is not foreign).
    """
    expected = {"name": _norm(name), "author": _norm(author)}
    own = (expected["name"], expected["author"])
    others = [_norm(f) for f in foreign]
    others = [f for f in others if f and not any(f in o or o in f for o in own)]
    passed: dict[str, list[float]] = {"name": [], "author": []}
    foreign_hits = 0
    for s in samples:
        kind = probes.get(s["prompt"])
        if kind is None:
            continue
        text = _norm(str(s["completion"]))
        ok = expected[kind] in text
        s["probe"], s["passed"] = kind, ok  # type: ignore[index]
        passed[kind].append(1.0 if ok else 0.0)
        foreign_hits += any(f in text for f in others)
    out: dict[str, float] = {}
    for kind, vals in passed.items():
        if vals:
            out[f"identity_{kind}"] = sum(vals) / len(vals)
    allv = passed["name"] + passed["author"]
    if allv:
        out["identity_score"] = sum(allv) / len(allv)
        out["identity_foreign"] = float(foreign_hits)
    return out


def _token_bytes(tokenizer: Any) -> list[bytes | None]:
    """The raw bytes of every token id (None for special tokens).

    Uses the tokenizer's raw token bytes (`token_bytes(id)`, tiktoken's
    `decode_single_token_bytes`): a byte-level BPE token can be half a Chinese character, which
    `decode([id])` would turn into a 3-byte replacement character.
    """
    vocab = tokenizer.get_vocab_size()
    specials = getattr(tokenizer, "special_tokens", {})
    special_ids = set(specials.values() if isinstance(specials, Mapping) else specials)
    raw = getattr(tokenizer, "token_bytes", None) or getattr(
        tokenizer, "decode_single_token_bytes", None
    )
    out: list[bytes | None] = []
    for i in range(vocab):
        if i in special_ids:
            out.append(None)
            continue
        try:
            out.append(bytes(raw(i)) if raw else tokenizer.decode([i]).encode("utf-8"))
        except (KeyError, ValueError):  # an id the tokenizer cannot decode spells nothing
            out.append(None)
    return out


def token_byte_lengths(tokenizer: Any) -> torch.Tensor:
    """UTF-8 bytes each token id spells (0 for special tokens) as a long tensor [V]."""
    return torch.tensor([len(b) if b else 0 for b in _token_bytes(tokenizer)], dtype=torch.long)
