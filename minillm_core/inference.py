"""Inference, once for every caller: device and dtype choice, the one sampler, the one generate.

Chat, evaluation, the server and the export's check all turn logits into tokens through
`Sampler` (`sample_rows` for a batch of requests, each row with its own sampler) and produce
tokens through `generate` / `generate_rows` (one request) or `minillm_core.batching` (the
server's batch of requests); nothing else samples.

- Sampling order (vLLM's and HF's): penalties on the raw logits, then temperature, then top-k,
  top-p (nucleus) and min-p filtering, then one draw from the softmax with a seeded
  `torch.Generator` (so a sample can be reproduced). Temperature 0 is greedy: the argmax of the
  (penalised) logits, first index on ties. With every filter at its neutral value the operations
  are exactly the ones the seed ran, so seeded samples and greedy outputs do not change.
- Penalties: `repetition_penalty` (HF/CTRL: a seen token's logit divided by it when positive,
  multiplied when negative) counts the prompt and the output; `presence_penalty` and
  `frequency_penalty` (OpenAI: minus a constant once seen, minus a constant per occurrence)
  count the output only.
- Generation keeps a KV cache when the model offers one (`model.new_cache`, as `MiniLLM` does):
  the prompt is processed once, then each token costs one position. Any other module returning
  logits [B, T, V] is run over the whole context each step (the tests' hand-built models).
  Stop ids end a row; in a batch a finished row repeats its stop id until every row is done.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from minillm_core.errors import ConfigError, TokenizerMismatchError

if TYPE_CHECKING:
    from minillm_core.model import MiniLLM

# ------------------------------------------------------------------------ device, dtype, autocast


def resolve_device(device: str) -> torch.device:
    """`auto` = cuda when available, else cpu; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# CPU flags (Linux /proc/cpuinfo names) of native bf16 arithmetic: x86 AVX512-BF16 or AMX-BF16,
# Arm FEAT_BF16. Without them torch emulates bf16 matmuls, slower than float32.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def flags_in(cpuinfo: str) -> frozenset[str]:
    """The feature flags a /proc/cpuinfo text lists (x86 `flags`, Arm `Features` lines)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (empty where there is no /proc/cpuinfo, e.g. macOS: float32)."""
    try:
        return flags_in(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (so bf16 autocast pays off)."""
    return bool(BF16_CPU_FLAGS & cpu_flags())


def resolve_dtype(dtype: str, device: torch.device | str) -> torch.dtype:
    """The dtype of inference weights (serve, chat) and of evaluation: `auto` = bfloat16 on cuda,
    float32 elsewhere (bf16 weights on a CPU change greedy outputs, and evaluation scores stay
    comparable across CPUs); else the named torch dtype."""
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return cast(torch.dtype, getattr(torch, dtype))


def autocast_dtype(dtype: str, device: torch.device | str) -> torch.dtype:
    """The dtype of training's autocast: `auto` = bfloat16 on cuda and on a CPU with native bf16
    (mixed precision with float32 master weights: faster matmuls, the loss curve within
    float32's seed-to-seed noise, see bench/bench_bf16.py), float32 elsewhere; else the named
    torch dtype."""
    if dtype == "auto" and torch.device(device).type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return resolve_dtype(dtype, device)


def autocast(
    device: torch.device | str, dtype: torch.dtype | str
) -> contextlib.AbstractContextManager[Any]:
    """Autocast to `dtype` (a torch dtype, or a name resolved by `autocast_dtype`) on `device`;
    nothing at float32. Weights stay as they are (training: the float32 master copy)."""
    device = torch.device(device)
    if isinstance(dtype, str):
        dtype = autocast_dtype(dtype, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class PackedLinear(torch.nn.Module):
    """A bias-free `nn.Linear` for bfloat16 inference on CPU, its weight laid out once for
    oneDNN's GEMM (what torch.compile's CPU backend does). Several rows at once (a decoding
    batch) run 1.5 to 4 times faster than with the plain layout; one row runs as fast."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = linear.weight  # kept: tied weights, and what `.weight` readers expect
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x, self.packed, None, "none", [None], ""
        )
        return y


def pack_linears(model: torch.nn.Module) -> int:
    """For serving a bfloat16 model on CPU: every bias-free `nn.Linear` becomes a `PackedLinear`
    (inference only: the packed copy gets no gradient). Elsewhere (CUDA, float32, no oneDNN
    bfloat16) nothing changes. Returns how many layers were packed."""
    params = list(model.parameters())
    if not params or params[0].device.type != "cpu" or params[0].dtype != torch.bfloat16:
        return 0
    if not torch.backends.mkldnn.is_available():
        return 0
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return 0
    targets: list[tuple[torch.nn.Module, str, torch.nn.Linear]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear and child.bias is None:
                targets.append((parent, name, child))
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    return len(targets)


def device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a parameter-free test module
        return torch.device("cpu")


def model_context(model: Any) -> int | None:
    """The model's context (`config.max_position_embeddings`), None when it has no config."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


# ---------------------------------------------------------------------------------- the sampler


# What torch.Generator.manual_seed takes (a negative seed wraps around 2**64).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen; every default is the neutral value (greedy, no filter)."""

    temperature: float = 0.0
    top_k: int | None = None  # None or 0 = every token
    top_p: float = 1.0  # nucleus: the smallest set whose probability reaches top_p
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None  # None = a fresh random seed (temperature > 0 only)

    def __post_init__(self) -> None:
        problems = []
        if not self.temperature >= 0:
            problems.append(f"temperature {self.temperature} must be >= 0")
        if self.top_k is not None and self.top_k < 0:
            problems.append(f"top_k {self.top_k} must be >= 0")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p {self.top_p} must be in (0, 1]")
        if not 0 <= self.min_p <= 1:
            problems.append(f"min_p {self.min_p} must be in [0, 1]")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty {self.repetition_penalty} must be > 0")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            problems.append(f"seed {self.seed} is outside [{SEED_MIN}, {SEED_MAX}]")
        if problems:
            raise ConfigError("invalid sampling: " + "; ".join(problems))
        object.__setattr__(self, "stop_ids", tuple(int(s) for s in self.stop_ids))

    @property
    def penalised(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


class Sampler:
    """Chooses the next token of each row from logits [B, V]; holds the seeded generator and,
    when penalties are on, what each row has seen."""

    def __init__(
        self,
        params: SamplingParams,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ):
        self.params = params
        self.generator = generator
        if generator is None and params.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        self._seen: torch.Tensor | None = None  # [B, V] bool: prompt or output (repetition)
        self._counts: torch.Tensor | None = None  # [B, V] output occurrences (presence/frequency)

    def observe_prompt(self, prompt: torch.Tensor, vocab: int) -> None:
        """Record the prompt rows [B, T] (only the repetition penalty reads them)."""
        if not self.params.penalised:
            return
        b = prompt.shape[0]
        self._counts = torch.zeros(b, vocab, dtype=torch.float32, device=prompt.device)
        self._seen = torch.zeros(b, vocab, dtype=torch.bool, device=prompt.device)
        self._seen.scatter_(1, prompt.clamp(0, vocab - 1), True)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token per row [B] from logits [B, V] (float32); updates the penalty state."""
        p = self.params
        if p.penalised and self._counts is not None:
            logits = self._penalise(logits)
        if p.temperature <= 0:
            nxt = logits.argmax(dim=-1)
        else:
            nxt = torch.multinomial(
                torch.softmax(_filtered(logits / p.temperature, p), dim=-1),
                1,
                generator=self.generator,
            ).squeeze(1)
        if self._counts is not None and self._seen is not None:
            col = nxt.unsqueeze(1)
            self._counts.scatter_add_(1, col, torch.ones(col.shape, device=col.device))
            self._seen.scatter_(1, col, True)
        return nxt

    def _penalise(self, logits: torch.Tensor) -> torch.Tensor:
        p, seen, counts = self.params, self._seen, self._counts
        assert seen is not None and counts is not None
        if p.repetition_penalty != 1.0:
            hit = torch.where(
                logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty
            )
            logits = torch.where(seen, hit, logits)
        return logits - p.presence_penalty * (counts > 0) - p.frequency_penalty * counts


def _filtered(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Top-k, then top-p, then min-p: excluded tokens get -inf. Neutral settings change nothing."""
    if p.top_k is not None and 0 < p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Drop a token when the tokens before it already reach top_p (the top one always stays).
        drop = probs.cumsum(dim=-1) - probs >= p.top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    if p.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        floor = p.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def sample_rows(samplers: Sequence[Sampler], logits: torch.Tensor) -> list[int]:
    """Next token of each row of logits [B, V] (float32), row i chosen by `samplers[i]` with its
    own params, seeded generator and penalty state (a batch of different requests). Plain greedy
    rows share one argmax; the others draw one by one, so a row's draw never depends on which
    rows it shares the batch with."""
    plain = [not s.params.penalised and s.params.temperature <= 0 for s in samplers]
    if all(plain):
        return logits.argmax(dim=-1).tolist()
    out = logits.argmax(dim=-1).tolist() if any(plain) else [0] * len(samplers)
    for i, s in enumerate(samplers):
        if not plain[i]:
            out[i] = int(s.sample(logits[i : i + 1])[0])
    return out


def sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> int:
    """One token from logits [V]. For one-off draws (penalties need a history, so they do not
    apply here); a generation keeps a `Sampler`."""
    sampler = Sampler(params, logits.device, generator)
    return int(sampler.sample(logits.float().unsqueeze(0))[0])


# ------------------------------------------------------------------------------------ generation


def logits_of(out: Any) -> torch.Tensor:
    """Model output -> logits [B, T, V] (a tensor, an object with `.logits`, or a tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return cast(torch.Tensor, out.logits)
    if isinstance(out, (tuple, list)):
        return cast(torch.Tensor, out[0])
    raise TypeError(f"model returned {type(out).__name__}, expected logits")


class _Stepper:
    """Next-token logits [B, V] step by step: a KV cache when the model has one, else the whole
    context again each step."""

    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor, total: int):
        self.model, self.cache, self.context = model, None, prompt
        new_cache = getattr(model, "new_cache", None)
        if callable(new_cache):
            self.cache = new_cache(prompt.shape[0], total)

    def first(self) -> torch.Tensor:
        if self.cache is not None:
            return logits_of(self.model(self.context, self.cache))[:, -1].float()
        return logits_of(self.model(self.context))[:, -1].float()

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return logits_of(self.model(tokens.unsqueeze(1), self.cache))[:, -1].float()
        self.context = torch.cat([self.context, tokens.unsqueeze(1)], dim=1)
        return logits_of(self.model(self.context))[:, -1].float()


@torch.inference_mode()
def generate_rows(
    model: torch.nn.Module,
    prompts: torch.Tensor | Sequence[int],
    max_new_tokens: int,
    params: SamplingParams | None = None,
) -> Generator[torch.Tensor, None, None]:
    """Yield the next token of every row ([B] long tensor) until every row stopped.

    `prompts` is one prompt (ints or a 1-D tensor) or a batch [B, T] of equal-length prompts.
    The model's context bounds prompt + output; a longer prompt is the caller's to cut.
    """
    params = params or SamplingParams()
    prompt = torch.as_tensor(prompts, dtype=torch.long, device=device_of(model))
    prompt = prompt.unsqueeze(0) if prompt.dim() == 1 else prompt
    b, t = prompt.shape
    if t == 0:
        raise ValueError("generate needs a non-empty prompt")
    total = t + max_new_tokens
    limit = model_context(model)
    if limit is not None and getattr(model, "new_cache", None) is not None:
        total = min(total, limit)  # the cache holds the model's context at most
    was_training = model.training
    model.eval()
    try:
        stepper = _Stepper(model, prompt, total)
        sampler = Sampler(params, prompt.device)
        stops = torch.tensor(params.stop_ids, dtype=torch.long, device=prompt.device)
        done = torch.zeros(b, dtype=torch.bool, device=prompt.device)
        logits = stepper.first()
        sampler.observe_prompt(prompt, logits.shape[-1])
        for step in range(total - t):
            nxt = sampler.sample(logits)
            if len(stops):
                # Finished rows repeat their stop id, so callers can cut at the first one.
                nxt = torch.where(done, stops[0], nxt)
                done |= torch.isin(nxt, stops)
            yield nxt
            if bool(done.all()) or step == total - t - 1:
                break
            logits = stepper.next(nxt)
    finally:
        model.train(was_training)


def generate(
    model: torch.nn.Module,
    ids: Sequence[int],
    max_new_tokens: int,
    params: SamplingParams | None = None,
    *,
    max_context: int | None = None,
    include_stop: bool = False,
) -> Generator[int, None, None]:
    """Stream the new token ids of one prompt, token by token.

    With `max_context`, the prompt keeps its last `max_context - 1` tokens and prompt + output
    stay within it. A stop id ends the stream; it is yielded last only with `include_stop`.
    """
    if max_new_tokens <= 0 or not ids:
        return
    params = params or SamplingParams()
    ids = list(ids)
    budget = max_new_tokens
    if max_context is not None:
        if len(ids) > max_context - 1:
            ids = ids[-(max_context - 1) :]  # leave room for at least one new token
        budget = min(max_new_tokens, max_context - len(ids))
    stops = set(params.stop_ids)
    rows = generate_rows(model, ids, budget, params)
    try:
        for nxt in rows:
            tok = int(nxt[0])
            if tok in stops:
                if include_stop:
                    yield tok
                return
            yield tok
    finally:
        rows.close()  # frees the KV cache now, not at garbage collection


def complete(
    model: torch.nn.Module,
    ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams | None = None,
) -> list[int] | list[list[int]]:
    """Every new token id after the prompt, the stop id included when one was produced.

    One prompt gives a list of ints; a batch [B, T] gives one list per row.
    """
    params = params or SamplingParams()
    batched = torch.is_tensor(ids) and ids.dim() == 2
    rows: list[list[int]] = []
    finished: list[bool] = []
    for nxt in generate_rows(model, ids, max_new_tokens, params):
        if not rows:
            rows, finished = [[] for _ in range(nxt.shape[0])], [False] * nxt.shape[0]
        for r, tok in enumerate(nxt.tolist()):
            if not finished[r]:
                rows[r].append(tok)
                finished[r] = tok in params.stop_ids
    rows = rows or [[]]
    return rows if batched else rows[0]


# ----------------------------------------------------------------------------------- text out


class TextStreamer:
    """Turns a growing list of token ids into printable text pieces, whole characters only.

    A byte-level BPE token can be half of a Chinese character: a trailing U+FFFD (a partial UTF-8
    sequence) is held back until the next token completes it."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self.printed = tokenizer, 0
        self.ids: list[int] = []

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        text: str = self.tokenizer.decode(self.ids)
        end = len(text)
        while end > self.printed and text[end - 1] == "\ufffd":
            end -= 1  # possibly a partial UTF-8 sequence: wait for the next token
        piece, self.printed = text[self.printed : end], max(self.printed, end)
        return piece

    def flush(self) -> str:
        text: str = self.tokenizer.decode(self.ids)
        piece, self.printed = text[self.printed :], len(text)
        return piece

    @property
    def text(self) -> str:
        return str(self.tokenizer.decode(self.ids))


def stop_ids(tokenizer: Any) -> list[int]:
    """Ids that end an answer: the end of the assistant's turn, and BOS (a new document means the
    answer ended) when the tokenizer has one."""
    out = []
    for name in ("<|assistant_end|>", "<|bos|>"):
        with contextlib.suppress(KeyError):
            out.append(int(tokenizer.encode_special(name)))
    return out


# ------------------------------------------------------------------------------------ loading


def check_tokenizer(meta: dict[str, Any], tokenizer: Any, checkpoint: Any) -> None:
    """TokenizerMismatchError when the checkpoint was trained with another tokenizer."""
    want, have = meta.get("tokenizer_hash"), getattr(tokenizer, "hash", None)
    if want and have and want != have:
        raise TokenizerMismatchError(
            f"{checkpoint} was trained with another tokenizer ({str(want)[:12]} != "
            f"{str(have)[:12]}); pass the matching --tokenizer"
        )


def load_model(
    checkpoint: Path | str, tokenizer_dir: Path | str, device: torch.device
) -> tuple[MiniLLM, Any, dict[str, Any]]:
    """A checkpoint in eval mode, its tokenizer and its metadata; refuses a tokenizer other than
    the one it was trained with (MissingArtifactError for a missing folder)."""
    from minillm_core.artifacts import require
    from minillm_core.tokenizer import load_tokenizer
    from minillm_core.train.checkpointer import load_checkpoint

    ckpt = require(checkpoint, "checkpoint")
    tokenizer = load_tokenizer(require(tokenizer_dir, "tokenizer"))
    model, meta = load_checkpoint(ckpt, device)
    check_tokenizer(meta, tokenizer, ckpt)
    model.eval()
    return model, tokenizer, meta
