"""Evaluation after every stage: numbers that mean the same thing across runs.

What is measured, per stage, on the held-out split of that stage's mix only (the mix writes
`data/processed/<stage>_chinese_heldout.jsonl`, a fixed seeded split no training stage reads):

- pretrain: held-out loss (mean next-token cross-entropy, nats), perplexity `exp(loss)`, and
  bits per byte: the summed loss in bits divided by the UTF-8 bytes those target tokens spell.
  Loss per token depends on the vocabulary (a bigger vocabulary packs more text into a token and
  so has a higher loss per token for the same model quality); loss per byte does not, so runs
  with different tokenizers compare (nanochat reports the same number). Special tokens spell no
  bytes and are left out of the bits-per-byte sums, as nanochat does. Plus greedy continuations
  of a few fixed text prefixes.
- sft: held-out masked loss (assistant tokens only, the SFT objective), greedy answers to a fixed
  prompt set whose identity probes ("你是谁？", "谁开发了你？") are scored against the configured
  name and author, and multiple-choice letter accuracy on held-out knowledge items: the model's
  likelihood of each option letter where the trained answer states it (right after
  `<|assistant_start|>` for "B. 北京", after the lead-in for the mix's "答案是 B：北京"), argmax
  wins. Scoring by letter likelihood instead of parsing generated text means a small model that
  rambles still gets a score, and the chance level (1 / number of options) is printed beside it.
- dpo: preference accuracy (share of held-out pairs where the policy's log-ratio over the
  reference, chosen minus rejected, is positive; a tie counts as a miss so an untrained policy
  equal to its reference scores 0, not 0.5), the mean reward margin `beta * that difference`,
  the policy's mean chosen / rejected log-probs, and the same prompt set.

Outputs: a small table printed to stdout; ONE JSON line appended to `results_file` (timestamp,
stage, checkpoint path and sha256, config, metrics, samples) under an exclusive `flock` and in a
single `write` on an `O_APPEND` descriptor, so concurrent evaluations never interleave; scalars
under `tensorboard_dir`; and `EvalReport.metadata` for the Dagster UI.

Everything is deterministic: greedy decoding, the first `max_samples` records in file order, and
seeded torch state. Asset checks call `check_eval` with thresholds held as data (the profile's
`eval_checks` preset); `evaluate` itself never asks which profile is active.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import re
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator, model_validator

from minillm_core.artifacts import require, sha256_file, sha256_tree
from minillm_core.config import CoreConfig, validate_device
from minillm_core.layout import Layout, project_root
from minillm_core.progress import LogFn, emit

Stage = Literal["pretrain", "sft", "dpo"]
IGNORE = -100

DEFAULT_PROMPTS = ["你是谁？", "谁开发了你？", "请用一句话介绍一下北京。", "1加1等于几？",
                   "写一句关于春天的诗。"]
DEFAULT_CONTINUATIONS = ["中国的首都是", "今天天气很好，我们", "人工智能是"]
# Names a small Chinese chat model tends to copy from its data when it "claims to be another
# assistant"; a probe answer naming one of these (and not the configured name) is flagged.
DEFAULT_FOREIGN_IDENTITIES = ["ChatGPT", "OpenAI", "GPT-4", "GPT-3", "Claude", "Anthropic",
                              "通义千问", "Qwen", "文心一言", "ERNIE", "Llama", "LLaMA", "MiniMind",
                              "智谱", "ChatGLM", "Kimi", "DeepSeek", "豆包"]


# ------------------------------------------------------------------------------------------------
# Config and report


class EvalConfig(CoreConfig):
    """Settings of one evaluation. Paths left unset derive from `stage` and the project root."""

    stage: Stage = Field(description="Which checkpoint kind is evaluated: pretrain, sft or dpo.")
    checkpoint: Path = Field(default=None, description="Checkpoint directory (model.safetensors "
                             "+ model.json). Default: out/<stage>.")  # type: ignore[assignment]
    reference_checkpoint: Path | None = Field(
        default=None, description="DPO only: the reference policy (the SFT checkpoint). "
        "Default for dpo: out/sft.")
    data_path: Path = Field(default=None, description="Held-out JSONL of the stage's mix. "
                            "Default: data/processed/<stage>_chinese_heldout.jsonl."
                            )  # type: ignore[assignment]
    tokenizer_dir: Path = Field(default=None, description="Tokenizer directory. Default: "
                                "out/tokenizer.")  # type: ignore[assignment]
    max_seq_len: int = Field(default=512, ge=8, description="Longest row scored, in tokens "
                             "(longer records are cut like the training tensors cut them).")
    max_samples: int = Field(default=200, ge=1, description="Records scored per metric group "
                             "(loss rows, knowledge items, preference pairs), first in file order.")
    batch_size: int = Field(default=8, ge=1, description="Rows per forward pass.")
    results_file: Path = Field(default=None, description="JSONL the evaluation appends one line "
                               "to. Default: <tf_dir>/eval_results.jsonl.")  # type: ignore
    tensorboard_dir: Path | None = Field(default=None, description="TensorBoard log dir. "
                                         "Default: <tf_dir>/eval. Empty string disables.")
    device: str = Field(default="auto", description="cpu, cuda, cuda:N, mps, or auto (cuda "
                        "when available, resolved when the evaluation starts).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Autocast dtype; auto = bfloat16 on cuda, else float32.")
    max_new_tokens: int = Field(default=64, ge=1, description="Greedy tokens per sample.")
    model_name: str = Field(default="MiniLLM", description="Name the identity probe expects.")
    model_author: str = Field(default="MiniLLM 开源社区", description="Author the identity probe "
                              "expects (the mix's default for {{author}}).")
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS),
                               description="Fixed chat prompts answered greedily (sft, dpo).")
    identity_probes: dict[str, Literal["name", "author"]] = Field(
        default_factory=lambda: {"你是谁？": "name", "谁开发了你？": "author"},
        description="Prompt -> which configured value its answer must contain.")
    foreign_identities: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FOREIGN_IDENTITIES),
        description="Other assistants' names; a probe answer naming one is counted.")
    continuation_prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CONTINUATIONS),
        description="Fixed text prefixes continued greedily (pretrain).")
    dpo_beta: float | None = Field(default=None, gt=0, description="DPO beta for the reward "
                                   "margin. Default: the beta the DPO checkpoint was trained "
                                   "with (model.json), else 0.1.")
    seed: int = Field(default=1337, description="Seeds torch before scoring (determinism).")

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        return validate_device(v, allow_auto=True)

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        # A "before" validator, because the config validates on assignment: an "after" one that
        # assigned fields would re-enter validation.
        if not isinstance(data, dict) or data.get("stage") not in ("pretrain", "sft", "dpo"):
            return data
        d = dict(data)
        root, stage = project_root(), d["stage"]
        tf = Layout.at().tf
        defaults = {
            "checkpoint": root / "out" / stage,
            "data_path": root / "data" / "processed" / f"{stage}_chinese_heldout.jsonl",
            "tokenizer_dir": root / "out" / "tokenizer",
            "results_file": tf / "eval_results.jsonl",
            "tensorboard_dir": tf / "eval",
        }
        if stage == "dpo":
            defaults["reference_checkpoint"] = root / "out" / "sft"
        # Only absent keys get a default: an explicit None (e.g. `tensorboard_dir` turned off,
        # then dumped and reloaded) must stay None. Strings, so JSON-mode validation accepts them.
        for key, value in defaults.items():
            if key not in d:
                d[key] = str(value)
        if d.get("tensorboard_dir") == "":
            d["tensorboard_dir"] = None
        return d


class EvalReport(BaseModel):
    stage: Stage
    metrics: dict[str, float]
    samples: list[dict[str, Any]]
    table_markdown: str
    results_line: dict[str, Any]
    metadata: dict[str, Any]


# ------------------------------------------------------------------------------------------------
# Metric math (pure functions on tensors; the tests check them against known answers)


def _logits(out: Any) -> torch.Tensor:
    """Model output -> logits [B, T, V] (a tensor, an object with `.logits`, or a tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}, expected logits")


def token_nll(model: torch.nn.Module, input_ids: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood [B, T] in nats, 0 where `labels == -100`.

    Labels are already aligned with the inputs (`labels[t]` is the target at position `t`, the
    token-rows convention), so there is no shift here. Computed in float32 whatever the autocast
    dtype: a bf16 log-softmax over a large vocabulary loses the digits the comparison needs.
    """
    logits = _logits(model(input_ids)).float()
    b, t, v = logits.shape
    nll = F.cross_entropy(logits.reshape(b * t, v), labels.reshape(b * t),
                          ignore_index=IGNORE, reduction="none")
    return nll.view(b, t)


def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability [B] of each row's target tokens (labels != -100)."""
    return -token_nll(model, input_ids, labels).sum(dim=1)


class LossTotals:
    """Running sums for loss, perplexity and bits per byte."""

    def __init__(self) -> None:
        self.nats = 0.0          # over every target token
        self.tokens = 0
        self.byte_nats = 0.0     # over target tokens that spell at least one byte
        self.bytes = 0

    def add(self, nll: torch.Tensor, labels: torch.Tensor,
            token_bytes: torch.Tensor | None) -> None:
        mask = labels != IGNORE
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
        out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
               "tokens": float(self.tokens)}
        if self.bytes:
            out["bits_per_byte"] = self.byte_nats / (math.log(2) * self.bytes)
            out["bytes"] = float(self.bytes)
        return out


def preference_metrics(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                       ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                       beta: float) -> dict[str, float]:
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
    r"^\s*(?:(?:正确)?答案\s*(?:是|为|:|：)?\s*)?[(（【\[]?\s*([A-J])(?![A-Za-z])")


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
    return MCItem(prompt=prompt, letters=letters, gold=m.group(1), lead=answer[:m.start(1)])


def _norm(text: str) -> str:
    # Case and spacing do not change who the model says it is: "MiniLLM开源社区" names the
    # author "MiniLLM 开源社区"; full-width letters fold to ASCII (NFKC).
    return "".join(unicodedata.normalize("NFKC", text).lower().split())


def identity_scores(samples: Sequence[Mapping[str, Any]], probes: Mapping[str, str],
                    name: str, author: str, foreign: Iterable[str]) -> dict[str, float]:
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


# ------------------------------------------------------------------------------------------------
# Checks (pure; thresholds are data so the asset checks pick them per profile)

# Valid range of every metric whatever the profile: a number outside it is a bug, not a bad model.
VALID_RANGES: dict[str, tuple[float, float]] = {
    "loss": (0.0, 100.0), "perplexity": (1.0, math.inf), "bits_per_byte": (0.0, 100.0),
    "mc_accuracy": (0.0, 1.0), "mc_chance": (0.0, 1.0), "preference_accuracy": (0.0, 1.0),
    "identity_name": (0.0, 1.0), "identity_author": (0.0, 1.0), "identity_score": (0.0, 1.0),
    "chosen_logp": (-math.inf, 0.0), "rejected_logp": (-math.inf, 0.0),
    "identity_foreign": (0.0, math.inf), "tokens": (1.0, math.inf), "bytes": (1.0, math.inf),
    "pairs": (1.0, math.inf), "mc_items": (0.0, math.inf),
}


def eval_thresholds(profile: str, stage: str) -> dict[str, tuple[float | None, float | None]]:
    """A profile's thresholds for one stage: `profiles.PROFILES[profile]["eval_checks"][stage]`,
    metric -> (min, max), None = unbounded (empty when the profile sets none). The profile is
    the one place they live (data, not branches in `evaluate`); the Dagster asset checks read
    the same preset."""
    from minillm_core.profiles import preset

    return {k: tuple(v) for k, v in preset(profile, "eval_checks").get(stage, {}).items()}


def check_eval(report_or_metrics: EvalReport | Mapping[str, float],
               thresholds: Mapping[str, tuple[float | None, float | None]] | None = None
               ) -> list[str]:
    """Problems with an evaluation's metrics; empty means the check passes.

    Always: every metric is a finite number inside its VALID_RANGES. Then each threshold
    `metric: (min, max)`; a threshold on a metric the evaluation did not produce is a problem
    (a check that silently passes on missing data is worse than none).
    """
    metrics = report_or_metrics.metrics if isinstance(report_or_metrics, EvalReport) \
        else report_or_metrics
    problems: list[str] = []
    if not metrics:
        problems.append("no metrics")
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{key}: not a number ({value!r})")
            continue
        if not math.isfinite(value):
            problems.append(f"{key}: not finite ({value})")
            continue
        lo, hi = VALID_RANGES.get(key, (-math.inf, math.inf))
        if not lo <= value <= hi:
            problems.append(f"{key}: {value:.6g} outside its valid range [{lo}, {hi}]")
    for key, (lo, hi) in (thresholds or {}).items():
        if key not in metrics:
            problems.append(f"{key}: missing (threshold {lo}..{hi})")
            continue
        value = metrics[key]
        if lo is not None and not value >= lo:
            problems.append(f"{key}: {value:.6g} below the threshold {lo}")
        if hi is not None and not value <= hi:
            problems.append(f"{key}: {value:.6g} above the threshold {hi}")
    return problems


# ------------------------------------------------------------------------------------------------
# Results file, tables, TensorBoard


def append_jsonl(path: Path | str, record: Mapping[str, Any]) -> str:
    """Append `record` as one JSON line; safe against concurrent appenders. Returns the line.

    O_APPEND makes each write land at the end, the exclusive flock keeps two appenders (even on
    filesystems where O_APPEND is not atomic, e.g. NFS) from interleaving, and the line goes out
    in one `write` so a reader never sees half of it. If a crashed writer left a last line
    without its newline, a newline is written first so our line stays parseable.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n"
    data = line.encode("utf-8")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(p, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            written = os.write(fd, data)
            if written != len(data):  # a short write on a full disk: say so, do not hide it
                raise OSError(f"short write to {p}: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return line


def read_results(path: Path | str) -> list[dict[str, Any]]:
    """Every parseable line of a results file (a torn or foreign line is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for raw in p.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            obj = json.loads(raw)
            if isinstance(obj, dict):
                out.append(obj)
    return out


def _width(s: str) -> int:
    # Chinese characters take two terminal columns; pad by display width so columns line up.
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table whose columns also line up in a terminal."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")


_NOTES = {
    "loss": "nats per target token", "perplexity": "exp(loss)",
    "bits_per_byte": "vocabulary-independent, lower is better",
    "preference_accuracy": "share of pairs with margin > 0",
    "reward_margin": "beta * log-ratio margin", "identity_foreign": "answers naming another bot",
}


# Counts are stored as floats so every metric has one type; tables show them as integers.
COUNT_METRICS = frozenset({"tokens", "bytes", "pairs", "mc_items", "identity_foreign"})


def _shown(key: str, value: Any) -> Any:
    if key in COUNT_METRICS and isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value


def metrics_table(metrics: Mapping[str, float]) -> str:
    rows = []
    for key, value in metrics.items():
        value = _shown(key, value)
        note = _NOTES.get(key, "")
        if key == "mc_accuracy" and "mc_chance" in metrics:
            note = f"chance {metrics['mc_chance']:.2f}"
        if key == "mc_chance":
            continue
        rows.append((key, value, note))
    return format_table(("metric", "value", "note"), rows)


def samples_markdown(samples: Sequence[Mapping[str, Any]]) -> str:
    rows = [(s["prompt"], str(s["completion"])[:200],
             "" if "passed" not in s else ("pass" if s["passed"] else "FAIL")) for s in samples]
    return format_table(("prompt", "completion", "probe"), rows)


_SUMMARY_KEYS = ("loss", "perplexity", "bits_per_byte", "mc_accuracy", "identity_score",
                 "preference_accuracy", "reward_margin")


def print_latest(results_file: Path | str | None = None, n: int = 3,
                 file: TextIO | None = None) -> str:
    """Print the last `n` evaluations of a results file as a table; returns the table."""
    path = Path(results_file) if results_file else Layout.at().tf / "eval_results.jsonl"
    lines = read_results(path)[-n:] if n > 0 else []
    if not lines:
        text = f"no evaluations in {path}"
    else:
        keys = [k for k in _SUMMARY_KEYS if any(k in r.get("metrics", {}) for r in lines)]
        rows = [(str(r.get("timestamp", ""))[:19], r.get("stage", ""), r.get("step", ""),
                 Path(str(r.get("checkpoint", ""))).name,
                 *(r.get("metrics", {}).get(k) for k in keys)) for r in lines]
        text = format_table(("time", "stage", "step", "checkpoint", *keys), rows)
    print(text, file=file or sys.stdout, flush=True)
    return text


def write_tensorboard(log_dir: Path, stage: str, metrics: Mapping[str, float], step: int) -> None:
    """Scalars `eval/<stage>/<metric>` at the checkpoint's training step."""
    from torch.utils.tensorboard import SummaryWriter  # slow import: only when writing

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for key, value in metrics.items():
            if math.isfinite(value):
                writer.add_scalar(f"eval/{stage}/{key}", value, global_step=step)
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------
# Scoring loops (model + tokenizer + token rows)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def pad_rows(rows: Sequence[Mapping[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad 1-D rows to the longest: `*labels` with -100, the rest with `pad_id`.

    Right padding is safe for causal models: a real position never attends to a later pad.
    """
    out: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        fill = IGNORE if key.endswith("labels") else (0 if key.endswith("mask") else pad_id)
        length = max(int(r[key].numel()) for r in rows)
        t = torch.full((len(rows), length), fill, dtype=torch.long)
        for i, r in enumerate(rows):
            t[i, : r[key].numel()] = r[key]
        out[key] = t
    return out


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


@torch.inference_mode()
def score_loss(model: torch.nn.Module, rows: Sequence[Mapping[str, torch.Tensor]], *,
               pad_id: int, batch_size: int, device: torch.device, dtype: torch.dtype,
               token_bytes: torch.Tensor | None) -> dict[str, float]:
    """Loss, perplexity and bits per byte over rows with `input_ids` and `labels`."""
    totals = LossTotals()
    for batch in _batches(rows, batch_size):
        b = pad_rows([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in batch], pad_id)
        ids, labels = b["input_ids"].to(device), b["labels"].to(device)
        with autocast(device, dtype):
            nll = token_nll(model, ids, labels)
        totals.add(nll, labels, token_bytes)
    return totals.metrics()


@torch.inference_mode()
def score_preferences(policy: torch.nn.Module, reference: torch.nn.Module,
                      rows: Sequence[Mapping[str, torch.Tensor]], *, pad_id: int,
                      batch_size: int, device: torch.device, dtype: torch.dtype,
                      beta: float) -> dict[str, float]:
    """Preference metrics over DPO rows (chosen/rejected input ids and labels)."""
    logps: dict[str, list[torch.Tensor]] = {"pc": [], "pr": [], "rc": [], "rr": []}
    for batch in _batches(rows, batch_size):
        for side, tag in (("chosen", "c"), ("rejected", "r")):
            b = pad_rows([{"input_ids": r[f"{side}_input_ids"], "labels": r[f"{side}_labels"]}
                          for r in batch], pad_id)
            ids, labels = b["input_ids"].to(device), b["labels"].to(device)
            with autocast(device, dtype):
                logps["p" + tag].append(sequence_logps(policy, ids, labels).cpu())
                logps["r" + tag].append(sequence_logps(reference, ids, labels).cpu())
    cat = {k: torch.cat(v) for k, v in logps.items()}
    return preference_metrics(cat["pc"], cat["pr"], cat["rc"], cat["rr"], beta)


@torch.inference_mode()
def score_multiple_choice(model: torch.nn.Module,
                          items: Sequence[tuple[list[int], list[list[int]], int]], *,
                          pad_id: int, batch_size: int, device: torch.device,
                          dtype: torch.dtype) -> dict[str, float]:
    """Letter accuracy over items (prompt ids ending at `<|assistant_start|>`, per option the
    token ids of its answer up to and including the letter, gold index).

    Each option is scored by the log-likelihood of its continuation given the prompt; the
    options of one item share the lead-in, so they differ only where the letter is. A row per
    option (a batch holds `batch_size` rows). `mc_chance` is the mean of 1 / number of options.
    """
    rows, owners = [], []
    for k, (prompt, options, _) in enumerate(items):
        for cont in options:
            full = list(prompt) + list(cont)
            labels = [IGNORE] * (len(prompt) - 1) + list(cont)
            rows.append({"input_ids": torch.tensor(full[:-1]), "labels": torch.tensor(labels)})
            owners.append(k)
    logps: list[torch.Tensor] = []
    for batch in _batches(rows, batch_size):
        b = pad_rows(batch, pad_id)
        with autocast(device, dtype):
            logps.append(sequence_logps(model, b["input_ids"].to(device),
                                        b["labels"].to(device)).cpu())
    flat = torch.cat(logps) if logps else torch.zeros(0)
    correct, start = 0, 0
    for prompt, options, gold in items:
        correct += mc_pick(flat[start: start + len(options)]) == gold
        start += len(options)
    n = len(items)
    return {"mc_accuracy": correct / n if n else 0.0,
            "mc_chance": sum(1 / len(x[1]) for x in items) / n if n else 0.0,
            "mc_items": float(n)}


# ------------------------------------------------------------------------------------------------
# The evaluation


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            yield obj


def _category(record: Mapping[str, Any]) -> str | None:
    src = record.get("source")
    if isinstance(src, Mapping):
        return src.get("category")
    if isinstance(record.get("category"), str):
        return record["category"]
    return None


def _messages(record: Mapping[str, Any]) -> list[dict[str, str]] | None:
    conv = record.get("conversations", record.get("messages"))
    return conv if isinstance(conv, list) else None


def _token_bytes(tokenizer: Any) -> list[bytes | None]:
    """The raw bytes of every token id (None for special tokens).

    Uses the tokenizer's raw token bytes (`token_bytes(id)`, tiktoken's
    `decode_single_token_bytes`): a byte-level BPE token can be half a Chinese character, which
    `decode([id])` would turn into a 3-byte replacement character.
    """
    vocab = tokenizer.get_vocab_size()
    specials = getattr(tokenizer, "special_tokens", {})
    special_ids = set(specials.values() if isinstance(specials, Mapping) else specials)
    raw = getattr(tokenizer, "token_bytes", None) or \
        getattr(tokenizer, "decode_single_token_bytes", None)
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


def _special_id(tokenizer: Any, name: str) -> int | None:
    try:
        return int(tokenizer.encode_special(name))
    except KeyError:  # not a special token of this tokenizer
        return None


def generate_samples(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *,
                     chat: bool, max_new_tokens: int, max_seq_len: int,
                     device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    """Greedy completions: chat prompts rendered as a user turn, else raw text after BOS."""
    from minillm_core.chat import stream_tokens

    stops = [i for i in (_special_id(tokenizer, "<|assistant_end|>"),
                         _special_id(tokenizer, "<|bos|>")) if i is not None]
    samples = []
    for prompt in prompts:
        if chat:
            ids = list(tokenizer.render_for_completion([{"role": "user", "content": prompt}]))
        else:
            ids = [tokenizer.get_bos_token_id(), *tokenizer.encode(prompt)]
        with autocast(device, dtype):
            out = list(stream_tokens(model, ids, max_new_tokens=max_new_tokens,
                                     temperature=0.0, stop_ids=stops, max_context=max_seq_len))
        samples.append({"prompt": prompt, "completion": tokenizer.decode(out),
                        "kind": "chat" if chat else "continuation"})
    return samples


def _encode_rows(stage: str, records: Iterable[Mapping[str, Any]], tokenizer: Any,
                 max_seq_len: int, limit: int) -> list[dict[str, torch.Tensor]]:
    """Records -> token rows exactly as the training tensors build them (same cuts, masks)."""
    from minillm_core import tensors

    cfg = tensors.TensorConfig(max_length=max_seq_len)
    rows = []
    for rec in records:
        row = tensors.encode_record(stage, rec, tokenizer, cfg)
        if row is not None:
            rows.append(row)
        if len(rows) >= limit:
            break
    return rows


def _mc_items(records: Iterable[Mapping[str, Any]], tokenizer: Any, max_seq_len: int,
              limit: int) -> list[tuple[list[int], list[list[int]], int]]:
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


def run_eval(cfg: EvalConfig, model: torch.nn.Module, tokenizer: Any, *,
             reference: torch.nn.Module | None = None, device: torch.device | None = None,
             dtype: torch.dtype = torch.float32, log: LogFn | None = None
             ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics and samples of an already loaded model (what `evaluate` calls; tests call it with
    tiny hand-built models). Reads only `cfg.data_path`."""
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    data = require(cfg.data_path, f"held-out {cfg.stage} data")
    pad_id = tokenizer.get_bos_token_id()  # any id: padded positions carry label -100
    metrics: dict[str, float] = {}
    common = dict(pad_id=pad_id, batch_size=cfg.batch_size, device=device, dtype=dtype)

    if cfg.stage in ("pretrain", "sft"):
        rows = _encode_rows(cfg.stage, read_jsonl(data), tokenizer, cfg.max_seq_len,
                            cfg.max_samples)
        emit(log, f"eval {cfg.stage}: scoring {len(rows)} held-out rows from {data}")
        metrics.update(score_loss(model, rows, token_bytes=token_byte_lengths(tokenizer),
                                  **common))
    if cfg.stage == "sft":
        knowledge = (r for r in read_jsonl(data) if _category(r) == "knowledge")
        items = _mc_items(knowledge, tokenizer, cfg.max_seq_len, cfg.max_samples)
        emit(log, f"eval sft: {len(items)} multiple-choice knowledge items")
        if items:
            metrics.update(score_multiple_choice(model, items, **common))
        else:
            metrics["mc_items"] = 0.0
    if cfg.stage == "dpo":
        if reference is None:
            raise ValueError("dpo evaluation needs the reference (SFT) model")
        rows = _encode_rows("dpo", read_jsonl(data), tokenizer, cfg.max_seq_len, cfg.max_samples)
        emit(log, f"eval dpo: scoring {len(rows)} held-out preference pairs from {data}")
        if not rows:
            raise ValueError(f"{data}: no preference pairs to score")
        metrics.update(score_preferences(model, reference, rows, beta=cfg.dpo_beta or 0.1,
                                         **common))

    chat = cfg.stage != "pretrain"
    prompts = list(cfg.prompts) + [p for p in cfg.identity_probes if p not in cfg.prompts] \
        if chat else list(cfg.continuation_prompts)
    samples = generate_samples(model, tokenizer, prompts, chat=chat,
                               max_new_tokens=cfg.max_new_tokens, max_seq_len=cfg.max_seq_len,
                               device=device, dtype=dtype)
    if chat:
        metrics.update(identity_scores(samples, cfg.identity_probes, cfg.model_name,
                                       cfg.model_author, cfg.foreign_identities))
    return metrics, samples


def finish(cfg: EvalConfig, metrics: dict[str, float], samples: list[dict[str, Any]], *,
           checkpoint_sha256: str, step: int, extra: Mapping[str, Any] | None = None,
           elapsed_s: float = 0.0, log: LogFn | None = None, out: TextIO | None = None
           ) -> EvalReport:
    """Print the table, append the results line, write TensorBoard; build the report."""
    table = metrics_table(metrics)
    stream = out or sys.stdout
    print(f"\n== eval {cfg.stage}: {cfg.checkpoint} (step {step}) ==\n{table}", file=stream)
    for s in samples:
        print(f"  {s['prompt']} -> {str(s['completion'])[:120]!r}", file=stream)
    stream.flush()
    line = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stage": cfg.stage,
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "step": step,
        "config": cfg.model_dump(mode="json"),
        "metrics": metrics,
        "samples": samples,
        "elapsed_s": round(elapsed_s, 3),
        **dict(extra or {}),
    }
    # Non-finite numbers are not JSON: store them as null in the file (the check reports them).
    line["metrics"] = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
    append_jsonl(cfg.results_file, line)
    emit(log, f"eval {cfg.stage}: appended to {cfg.results_file}")
    if cfg.tensorboard_dir is not None:
        try:
            write_tensorboard(cfg.tensorboard_dir, cfg.stage, metrics, step)
        except Exception as exc:  # the numbers are already safe in the results file
            emit(log, f"eval {cfg.stage}: TensorBoard not written ({exc})")
    metadata: dict[str, Any] = {
        **{k: float(v) for k, v in metrics.items()},
        "table_md": table,
        "samples_md": samples_markdown(samples),
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "step": step,
        "data_path": str(cfg.data_path),
        "results_file": str(cfg.results_file),
        "elapsed_s": round(elapsed_s, 3),
    }
    return EvalReport(stage=cfg.stage, metrics=metrics, samples=samples, table_markdown=table,
                      results_line=line, metadata=metadata)


def _checkpoint_hash(ckpt: Path) -> str:
    weights = ckpt / "model.safetensors"
    return sha256_file(weights) if weights.is_file() else sha256_tree(ckpt)


def evaluate(cfg: EvalConfig, log: LogFn | None = None) -> EvalReport:
    """Evaluate `cfg.checkpoint` on the held-out data; print, append, log. See module doc."""
    from minillm_core.checkpoint import load_checkpoint
    from minillm_core.tokenizer import load_tokenizer

    t0 = time.monotonic()
    require(cfg.data_path, f"held-out {cfg.stage} data")  # before loading any weights
    if "heldout" not in Path(cfg.data_path).name:
        emit(log, f"eval {cfg.stage}: warning: {cfg.data_path} is not a held-out split; "
                  "its scores are not comparable with the pipeline's")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    ckpt = require(cfg.checkpoint, f"{cfg.stage} checkpoint")
    tokenizer = load_tokenizer(require(cfg.tokenizer_dir, "tokenizer"))
    model, meta = load_checkpoint(ckpt, device)
    _same_tokenizer(meta, tokenizer, ckpt)
    model.eval()
    reference = None
    if cfg.stage == "dpo":
        if cfg.reference_checkpoint is None:
            raise ValueError("dpo evaluation needs reference_checkpoint (the SFT checkpoint)")
        ref_dir = require(cfg.reference_checkpoint, "reference (SFT) checkpoint")
        reference, ref_meta = load_checkpoint(ref_dir, device)
        _same_tokenizer(ref_meta, tokenizer, ref_dir)
        reference.eval()
    if cfg.stage == "dpo" and cfg.dpo_beta is None:
        # Rewards on the scale training optimised: the checkpoint's own beta.
        trained = (meta.get("train") or {}).get("beta")
        cfg = cfg.model_copy(update={"dpo_beta": float(trained) if trained else 0.1})
    trained_len = (meta.get("train") or {}).get("max_seq_len")
    if isinstance(trained_len, int) and cfg.max_seq_len > trained_len:
        # Not clipped: a fixed eval length keeps runs comparable. But positions the model never
        # trained on raise its loss, so say so.
        emit(log, f"eval {cfg.stage}: note: scoring rows up to {cfg.max_seq_len} tokens, the "
                  f"checkpoint trained on rows up to {trained_len}")
    max_pos = _max_positions(meta)
    if max_pos is not None and cfg.max_seq_len > max_pos:
        emit(log, f"eval {cfg.stage}: max_seq_len {cfg.max_seq_len} > model context {max_pos}; "
                  f"using {max_pos}")
        cfg = cfg.model_copy(update={"max_seq_len": max_pos})
    metrics, samples = run_eval(cfg, model, tokenizer, reference=reference, device=device,
                                dtype=dtype, log=log)
    extra = {"data_sha256": sha256_file(cfg.data_path),
             "tokenizer_hash": getattr(tokenizer, "hash", None),
             "model": meta.get("model") or meta.get("model_config"),
             "device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    if reference is not None and cfg.reference_checkpoint is not None:
        extra["reference_checkpoint_sha256"] = _checkpoint_hash(Path(cfg.reference_checkpoint))
    return finish(cfg, metrics, samples, checkpoint_sha256=_checkpoint_hash(ckpt),
                  step=int(meta.get("step") or 0), extra=extra,
                  elapsed_s=time.monotonic() - t0, log=log)


def _same_tokenizer(meta: Mapping[str, Any], tokenizer: Any, ckpt: Path) -> None:
    want, have = meta.get("tokenizer_hash"), getattr(tokenizer, "hash", None)
    if want and have and want != have:
        raise ValueError(f"{ckpt} was trained with tokenizer {str(want)[:12]}, but the tokenizer "
                         f"given has hash {str(have)[:12]}; pass the matching --tokenizer-dir")


def _max_positions(meta: Mapping[str, Any]) -> int | None:
    model = meta.get("model") or meta.get("model_config") or {}
    for key in ("max_seq_len", "max_position_embeddings", "sequence_len", "block_size"):
        if isinstance(model, Mapping) and isinstance(model.get(key), int):
            return int(model[key])
    return None


# ------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minillm eval", description="Evaluate a checkpoint on its stage's held-out data; "
        "print the scores and append one JSON line to eval_results.jsonl.")
    # Each flag also answers to the seed's underscore spelling (--data_path, --batch_size, ...).
    def flag(name: str, **kw: Any) -> None:
        names = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else [])
        p.add_argument(*names, dest=name.replace("-", "_"), **kw)

    flag("stage", choices=["pretrain", "sft", "dpo"], help="which checkpoint kind")
    flag("checkpoint", type=Path, help="checkpoint dir (default out/<stage>)")
    flag("reference-checkpoint", type=Path, help="dpo: the SFT checkpoint (default out/sft)")
    flag("data-path", type=Path, help="held-out JSONL (default "
         "data/processed/<stage>_chinese_heldout.jsonl)")
    flag("tokenizer-dir", type=Path, help="tokenizer dir (default out/tokenizer)")
    flag("max-seq-len", type=int)
    flag("max-samples", type=int)
    flag("batch-size", type=int)
    flag("max-new-tokens", type=int)
    flag("results-file", type=Path, help="default $TF_DIR/eval_results.jsonl")
    flag("tensorboard-dir", type=str, help="default $TF_DIR/eval; '' disables")
    flag("device", help="cpu, cuda, cuda:0, auto")
    flag("dtype", choices=["auto", "float32", "bfloat16", "float16"])
    flag("model-name", help="name the identity probe expects")
    flag("model-author", help="author the identity probe expects")
    flag("seed", type=int)
    flag("profile", help="layer a profile preset (smoke, gpu) under the flags and apply its "
         "thresholds; exit 1 when a check fails")
    flag("summary", type=int, nargs="?", const=3, default=None,
         help="print the last N results (default 3) and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.summary is not None:
        print_latest(args.results_file, n=args.summary)
        return 0
    if not args.stage:
        build_parser().error("--stage is required (or --summary)")
    from minillm_core.profiles import preset

    from minillm_core.artifacts import ArtifactError
    from minillm_core.config import ConfigError

    values = {k: v for k, v in vars(args).items() if k not in ("profile", "summary")}
    try:
        layers = [preset(args.profile, "eval")] if args.profile else []
        cfg = EvalConfig.resolve(*layers, values)
        report = evaluate(cfg)
    except (ConfigError, ArtifactError, ValueError, FileNotFoundError) as exc:
        # What a user can fix (a missing checkpoint, a bad flag) is one line, not a traceback.
        print(f"minillm eval: {exc}", file=sys.stderr)
        return 2
    if args.profile:
        problems = check_eval(report, eval_thresholds(args.profile, cfg.stage))
        for p in problems:
            print(f"check failed: {p}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
