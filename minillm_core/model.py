"""MiniLLM: a small decoder-only transformer, readable top to bottom.

Architecture choices (the seed's, kept in `ModelConfig` rather than scattered defaults):

- Pre-norm residual blocks with RMSNorm (no mean subtraction, no bias): cheaper than LayerNorm and
  what Llama-family models use, so an export needs no norm conversion.
- Rotary position embeddings in the "rotate half" layout (the first and second halves of each head
  form the complex pairs). This is HuggingFace Llama's in-memory layout, so `q_proj`/`k_proj`
  weights export without the row permutation Meta's interleaved layout would need.
- Grouped-query attention is optional (`num_key_value_heads` < `num_attention_heads`); keys and
  values are shared across head groups by `scaled_dot_product_attention(enable_gqa=True)` instead
  of being copied, so GQA saves memory and the KV cache shrinks by the group factor.
- Attention is `torch.nn.functional.scaled_dot_product_attention` with `is_causal`, which picks the
  flash / memory-efficient kernel for the device; no explicit T x T mask is built in training,
  unless the rows are packed documents given with `doc_ids`: then each position sees only the
  earlier positions of its own document (`document_mask`), as it will at inference, where every
  prompt starts from a fresh context. RoPE is relative, so positions need no reset per document.
  On the CPU at 384-512 positions, causal attention runs as two calls over the query halves
  (`split_causal_attention`): PyTorch's CPU kernel skips no masked keys at that length.
- SwiGLU MLP (`down(silu(gate(x)) * up(x))`), hidden size 8/3 of the model width rounded up to a
  multiple of 64 (1408 at width 512), which keeps matmul shapes kernel-friendly.
- No biases anywhere; input and output embeddings are tied by default (at vocab 6400 and width
  512, the untied head would add 3.3M parameters, 11% of the model, for little gain at this size).
- Parameter names follow HuggingFace `LlamaForCausalLM` exactly (`model.embed_tokens`,
  `model.layers.N.self_attn.{q,k,v,o}_proj`, `model.layers.N.mlp.{gate,up,down}_proj`,
  `model.layers.N.{input,post_attention}_layernorm`, `model.norm`, `lm_head`), so exporting is a
  config translation plus a file rename.
- A preallocated KV cache per layer (`new_cache`): the prompt is processed once (prefill), then
  each new token costs one position. A `SlotKVCache` holds the rows of several requests decoded
  together, each at its own length (per-row positions and an attention mask; the server's
  batch). Sampling and the generation loops live in `minillm_core.inference` and
  `minillm_core.batching`; this file is only the network and its caches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from minillm_core.config import CoreConfig
from minillm_core.schema import DEFAULT_CONTEXT


class ModelConfig(CoreConfig):
    """Shape of the network. Defaults are the seed's (about 29M parameters, MHA)."""

    vocab_size: int = Field(6400, ge=2, description="tokenizer vocabulary size")
    hidden_size: int = Field(512, ge=8, description="model width")
    num_hidden_layers: int = Field(8, ge=1, description="transformer blocks")
    num_attention_heads: int = Field(8, ge=1, description="query heads")
    num_key_value_heads: int | None = Field(
        None,
        ge=1,
        description="key/value heads for grouped-query attention; None = one per query head",
    )
    intermediate_size: int | None = Field(
        None,
        ge=1,
        description="SwiGLU hidden size; None = 8/3 x hidden rounded up to a multiple of 64",
    )
    max_position_embeddings: int = Field(
        DEFAULT_CONTEXT,
        ge=2,
        description="the model's context: the one sequence length. Token tensors pack "
        "rows of this many positions and every stage trains at it (the seed's --max_seq_len)",
    )
    rope_theta: float = Field(
        1e6, gt=0, description="RoPE base; large so long contexts stay distinct"
    )
    rms_norm_eps: float = Field(1e-5, gt=0)
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="dropout on attention and residual outputs"
    )
    tie_word_embeddings: bool = Field(True, description="share the input embedding and output head")
    initializer_range: float = Field(0.02, gt=0, description="std of the normal weight init")

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        return 64 * math.ceil(self.hidden_size * 8 / 3 / 64)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 even under autocast: the mean of squares loses precision in bf16.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.type_as(x)


def rope_tables(
    head_dim: int, length: int, theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [length, head_dim] for positions 0..length-1 (rotate-half layout)."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim
    )
    angles = torch.outer(torch.arange(length, dtype=torch.float64, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    # Computed in float64 then rounded once, so the tables do not depend on how long they are.
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by the angles of its positions (cos/sin [T, D])."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    # In x's dtype, as HF Llama does: float32 tables would promote a bf16 x to float32 and back,
    # two extra passes over q and k in every layer for no gain in bf16's own rounding.
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class KVCache:
    """Preallocated keys and values for every layer, filled left to right during generation."""

    def __init__(
        self, cfg: ModelConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ):
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)
        ]
        self.v = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)
        ]
        self.length = 0  # positions already stored (same for every layer once a forward finishes)
        self.max_len = max_len

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > {self.max_len}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class SlotKVCache:
    """Keys and values for rows decoded together, one token per row per step, each row at its
    own length (the server's batch). Rows 0..rows-1 are live; a row's prompt is written through
    `row_view` (an ordinary `KVCache` over that row's storage) and each `MiniLLM.forward` with
    this cache then appends one position to every live row, masking the positions a shorter row
    has not reached."""

    def __init__(
        self, cfg: ModelConfig, slots: int, max_len: int, device: torch.device, dtype: torch.dtype
    ):
        whole = KVCache(cfg, slots, max_len, device, dtype)  # the storage, [slots, H, L, D]
        self.k, self.v = whole.k, whole.v
        self.lengths: list[int] = [0] * slots  # positions stored per row
        self.rows = 0  # live rows: 0..rows-1
        self.max_len, self.device = max_len, device
        self.bias = torch.zeros(0)  # additive attention mask of the step, [rows, 1, 1, span]
        self._pos = self._rows = torch.zeros(0, dtype=torch.long)

    @property
    def length(self) -> int:
        """The longest live row's length (what a plain `KVCache.length` would say)."""
        return max(self.lengths[: self.rows], default=0)

    def row_view(self, row: int) -> KVCache:
        """An empty single-row `KVCache` writing into row `row` (for the prompt's forward)."""
        view = KVCache.__new__(KVCache)
        view.k = [k[row : row + 1] for k in self.k]
        view.v = [v[row : row + 1] for v in self.v]
        view.length, view.max_len = 0, self.max_len
        return view

    def move(self, src: int, dst: int) -> None:
        """Row `src` takes row `dst`'s place (keeps live rows contiguous when one leaves)."""
        n = self.lengths[src]
        for k, v in zip(self.k, self.v, strict=True):
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]
        self.lengths[dst] = n

    def positions(self) -> torch.Tensor:
        """Prepare a step: the new token's position per live row [rows], and the mask."""
        lengths = self.lengths[: self.rows]
        if max(lengths) + 1 > self.max_len:
            raise ValueError(f"KV cache full: {max(lengths) + 1} positions > {self.max_len}")
        self._pos = torch.tensor(lengths, dtype=torch.long, device=self.device)
        self._rows = torch.arange(self.rows, device=self.device)
        span = torch.arange(max(lengths) + 1, device=self.device)
        seen = (span <= self._pos[:, None])[:, None, None, :]  # [rows, 1, 1, span]
        self.bias = torch.zeros(seen.shape, device=self.device).masked_fill(~seen, float("-inf"))
        return self._pos

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, span = self.rows, self.bias.shape[-1]
        self.k[layer][self._rows, :, self._pos] = k[:, :, 0]
        self.v[layer][self._rows, :, self._pos] = v[:, :, 0]
        return self.k[layer][:rows, :, :span], self.v[layer][:rows, :, :span]

    def advance(self) -> None:
        for r in range(self.rows):
            self.lengths[r] += 1


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """One query per row [B, H, 1, D] over its cached keys and values [B, Hkv, S, D], with an
    additive mask `bias` [B, 1, 1, S] (-inf where a row has no key). Plain matmuls: for a single
    query, CPU's fused attention kernels are several times slower (bfloat16 most of all).
    Query head i reads key head i // (H / Hkv), as `scaled_dot_product_attention(enable_gqa)`."""
    b, h, _, d = q.shape
    n_kv = k.shape[1]
    q = q.reshape(b, n_kv, h // n_kv, d)  # the query heads of each key head, side by side
    scores = (q @ k.transpose(-1, -2)).float() * d**-0.5 + bias  # [B, Hkv, H / Hkv, S]
    y = torch.softmax(scores, dim=-1).to(v.dtype) @ v
    return y.reshape(b, h, 1, d)


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """The attention mask [B, 1, T, T] of packed rows: query i sees key j when j <= i and both
    are in the same document. Every query sees at least itself, so no row is all masked."""
    t = doc_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


# PyTorch's CPU flash-attention kernel walks the keys in blocks of this many positions
# (aten FlashAttentionKernel's kvSplitSize), and queries in blocks of 64 from 192 queries on
# (32 below). So at a context of up to 512, `is_causal` skips no work: every query block scores
# every key and masks half of them away afterwards.
_CPU_KEY_BLOCK, _CPU_MIN_QUERIES = 512, 192


def split_queries(q: torch.Tensor) -> bool:
    """Whether causal attention over `q` [B, H, T, D] runs faster in two query halves: on the CPU,
    when the keys fit one kernel block and each half keeps the kernel's large query blocks."""
    t = q.shape[2]
    return q.device.type == "cpu" and 2 * _CPU_MIN_QUERIES <= t <= _CPU_KEY_BLOCK


def split_causal_attention(
    attend: Callable[..., torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Causal attention (with `mask` [B, 1, T, T] when given) as two calls: the first half of the
    queries reads only the first half of the keys, so the upper-right quarter of the scores,
    all masked, is never computed. The same result as one call, for 3/4 of the work."""
    t = q.shape[2]
    h = t // 2
    if mask is None:
        top = attend(q[:, :, :h], k[:, :, :h], v[:, :, :h], is_causal=True)
        # Query h + i sees keys 0..h + i: the causal mask aligned to the bottom right.
        below = torch.ones(t - h, t, dtype=torch.bool, device=q.device).tril(diagonal=h)
    else:
        top = attend(q[:, :, :h], k[:, :, :h], v[:, :, :h], attn_mask=mask[..., :h, :h])
        below = mask[..., h:, :]
    return torch.cat([top, attend(q[:, :, h:], k, v, attn_mask=below)], dim=2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | SlotKVCache | None = None,
        layer: int = 0,
        doc_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(cache, SlotKVCache):
            k, v = cache.update(layer, k, v)
            y = decode_attention(q, k, v, cache.bias)
            return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        if doc_mask is not None:
            mask, causal = doc_mask, False
        elif past == 0:
            # Training and prefill: plain causal attention over the block.
            mask, causal = None, True
        elif t == 1:
            # One new token attends to every cached position: no mask needed.
            mask, causal = None, False
        else:
            # Several new tokens after a cached prefix: query i sees keys 0..past+i.
            s = k.shape[2]
            mask = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=past)
            causal = False
        attend = partial(
            F.scaled_dot_product_attention,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv != self.n_heads,
        )
        if past == 0 and split_queries(q):  # a block from position 0: causal, maybe documents
            y = split_causal_attention(attend, q, k, v, mask)
        else:
            y = attend(q, k, v, attn_mask=mask, is_causal=causal)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | SlotKVCache | None,
        layer: int,
        doc_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, doc_mask)
        x = x + self.resid_dropout(h)
        return x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x)))


class Backbone(nn.Module):
    """The `model.` prefix of Llama's names: embeddings, blocks and the final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class MiniLLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's output projection gets std / sqrt(2 L), so
        # the residual stream's variance does not grow with depth at initialisation.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(
                    p, mean=0.0, std=cfg.initializer_range / math.sqrt(2 * cfg.num_hidden_layers)
                )
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # RoPE tables are derived, not learned: kept out of the state dict and grown on demand.
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.config.initializer_range)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Distinct parameters (a tied embedding counts once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def _rope_for(
        self, start: int, length: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + length
        if end > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {end} positions exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        if self._rope is None or self._rope[0].shape[0] < end or self._rope[0].device != device:
            size = min(
                max(end, 2 * (self._rope[0].shape[0] if self._rope else 0), 256),
                self.config.max_position_embeddings,
            )
            # Built outside inference mode: tables made during generation are reused in training.
            with torch.inference_mode(False):
                self._rope = rope_tables(self.config.head_dim, size, self.config.rope_theta, device)
        cos, sin = self._rope
        return cos[start:end], sin[start:end]

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | SlotKVCache | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] for input_ids [B, T]; with `cache`, positions continue after it
        (a `SlotKVCache`: one token per live row, each at its own position). `doc_ids` [B, T]
        (training on packed rows, no cache): the document of each position, non-decreasing
        along a row; attention then stays within each document."""
        if isinstance(cache, SlotKVCache):
            return self._forward_slots(input_ids, cache)
        if doc_ids is not None and cache is not None:
            raise ValueError("doc_ids is for training on packed rows, not with a KV cache")
        start = cache.length if cache is not None else 0
        cos, sin = self._rope_for(start, input_ids.shape[1], input_ids.device)
        mask = None if doc_ids is None else document_mask(doc_ids)
        x = self.model.dropout(self.model.embed_tokens(input_ids))
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, cache, i, mask)
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.lm_head(self.model.norm(x))

    def _forward_slots(self, input_ids: torch.Tensor, cache: SlotKVCache) -> torch.Tensor:
        pos = cache.positions()
        full_cos, full_sin = self._rope_for(0, cache.max_len, input_ids.device)
        x = self.model.embed_tokens(input_ids)
        # Per-row angles [rows, 1, 1, D] broadcast over heads like the [T, D] tables do.
        cos, sin = (t[pos][:, None, None, :] for t in (full_cos, full_sin))
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, cache, i)
        cache.advance()
        return self.lm_head(self.model.norm(x))

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` positions, on the model's device
        and in its weights' dtype (what `minillm_core.inference.generate` fills)."""
        w = self.lm_head.weight
        return KVCache(self.config, batch, max_len, w.device, w.dtype)
