"""A minimal copy of minimind's model and training steps, the baseline of bench_train.py.

Written from minimind's public description (model/model_minimind.py, trainer/train_pretrain.py,
train_full_sft.py, train_dpo.py), reduced to the dense model and one process, keeping what decides
its speed and numerics:

- model: RMSNorm computed in float32; RoPE from precomputed cos/sin tables applied in [B, T, H, D]
  layout with rotate_half; `repeat_kv` copies the key/value heads for GQA; attention through
  `F.scaled_dot_product_attention(is_causal=True)`; SwiGLU MLP; tied embedding / head; the model
  itself computes the shifted cross-entropy when given labels. Parameter names equal ours (both
  follow Llama), so the same initial weights load into both.
- data: every row padded to `max_seq_len` by its Dataset (pretrain / SFT with a loss mask over the
  padding, DPO chosen and rejected padded to max length each).
- pretrain / SFT step: logits -> CrossEntropyLoss(reduction="none") -> times the loss mask, summed,
  divided by the mask's sum -> / accumulation_steps -> GradScaler(disabled on CPU).backward();
  clip_grad_norm_(1.0); AdamW(default betas/weight decay, foreach); lr set per step by
  `lr/10 + 0.5 lr (1 + cos(pi step / total))`.
- DPO step: chosen and rejected concatenated, the reference forward under `torch.no_grad()`, then
  log_softmax over the vocabulary + gather for both models, masked sums, -logsigmoid(beta x
  (policy log-ratio - reference log-ratio)).

Not a dependency of the project: only the benchmark imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MiniMindConfig:
    vocab_size: int = 6400
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    intermediate_size: int | None = None
    max_position_embeddings: int = 32768
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-5
    dropout: float = 0.0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (
            x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        ).type_as(x)


def precompute_freqs(dim: int, end: int, theta: float):
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(end, device=freqs.device)
    freqs = torch.outer(t, freqs).float()
    cos = torch.cat([torch.cos(freqs), torch.cos(freqs)], dim=-1)
    sin = torch.cat([torch.sin(freqs), torch.sin(freqs)], dim=-1)
    return cos, sin


def apply_rotary(q, k, cos, sin):
    def rotate_half(x):
        return torch.cat((-x[..., x.shape[-1] // 2 :], x[..., : x.shape[-1] // 2]), dim=-1)

    q_embed = (q * cos.unsqueeze(1)) + (rotate_half(q) * sin.unsqueeze(1))
    k_embed = (k * cos.unsqueeze(1)) + (rotate_half(k) * sin.unsqueeze(1))
    return q_embed, k_embed


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    bs, slen, n_kv, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(bs, slen, n_kv, n_rep, hd).reshape(bs, slen, n_kv * n_rep, hd)


class Attention(nn.Module):
    def __init__(self, c: MiniMindConfig):
        super().__init__()
        self.n_heads, self.n_kv = c.num_attention_heads, c.num_key_value_heads
        self.n_rep = self.n_heads // self.n_kv
        self.head_dim = c.hidden_size // c.num_attention_heads
        self.q_proj = nn.Linear(c.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, c.hidden_size, bias=False)
        self.attn_dropout = nn.Dropout(c.dropout)
        self.resid_dropout = nn.Dropout(c.dropout)
        self.dropout = c.dropout

    def forward(self, x, cos, sin):
        bsz, seq_len, _ = x.shape
        xq = self.q_proj(x).view(bsz, seq_len, self.n_heads, self.head_dim)
        xk = self.k_proj(x).view(bsz, seq_len, self.n_kv, self.head_dim)
        xv = self.v_proj(x).view(bsz, seq_len, self.n_kv, self.head_dim)
        xq, xk = apply_rotary(xq, xk, cos[:seq_len], sin[:seq_len])
        xq, xk, xv = (
            xq.transpose(1, 2),
            repeat_kv(xk, self.n_rep).transpose(1, 2),
            repeat_kv(xv, self.n_rep).transpose(1, 2),
        )
        out = F.scaled_dot_product_attention(
            xq, xk, xv, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        out = out.transpose(1, 2).reshape(bsz, seq_len, -1)
        return self.resid_dropout(self.o_proj(out))


class FeedForward(nn.Module):
    def __init__(self, c: MiniMindConfig):
        super().__init__()
        inter = c.intermediate_size or 64 * ((int(c.hidden_size * 8 / 3) + 64 - 1) // 64)
        self.gate_proj = nn.Linear(c.hidden_size, inter, bias=False)
        self.down_proj = nn.Linear(inter, c.hidden_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, inter, bias=False)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, c: MiniMindConfig):
        super().__init__()
        self.self_attn = Attention(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = FeedForward(c)

    def forward(self, x, cos, sin):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Inner(nn.Module):
    def __init__(self, c: MiniMindConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        cos, sin = precompute_freqs(
            c.hidden_size // c.num_attention_heads, c.max_position_embeddings, c.rope_theta
        )
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

    def forward(self, ids):
        h = self.dropout(self.embed_tokens(ids))
        for layer in self.layers:
            h = layer(h, self.freqs_cos, self.freqs_sin)
        return self.norm(h)


class MiniMindForCausalLM(nn.Module):
    def __init__(self, c: MiniMindConfig):
        super().__init__()
        self.model = Inner(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.model.embed_tokens.weight = self.lm_head.weight

    def forward(self, ids):
        return self.lm_head(self.model(ids))


def minimind_lr(step: int, total: int, lr: float) -> float:
    return lr / 10 + 0.5 * lr * (1 + math.cos(math.pi * step / total))


def pad_lm_rows(rows, max_len: int, pad_id: int = 0):
    """minimind's Pretrain/SFT datasets: X, Y, loss_mask, every row padded to max_len."""
    X = torch.full((len(rows), max_len), pad_id, dtype=torch.long)
    Y = torch.full((len(rows), max_len), pad_id, dtype=torch.long)
    M = torch.zeros((len(rows), max_len), dtype=torch.long)
    for i, r in enumerate(rows):
        n = min(len(r["input_ids"]), max_len)
        X[i, :n] = r["input_ids"][:n]
        lab = r["labels"][:n]
        Y[i, :n] = lab.clamp(min=0)
        M[i, :n] = (lab != -100).long()
    return X, Y, M


def lm_step(model, optimizer, X, Y, M, lr, accumulation_steps=1, grad_clip=1.0):
    for g in optimizer.param_groups:
        g["lr"] = lr
    logits = model(X)
    loss_fct = nn.CrossEntropyLoss(reduction="none")
    loss = loss_fct(logits.view(-1, logits.size(-1)), Y.view(-1)).view(Y.size())
    loss = (loss * M).sum() / M.sum()
    (loss / accumulation_steps).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def pad_dpo_rows(rows, max_len: int, pad_id: int = 0):
    """minimind's DPODataset: chosen and rejected each padded to max_len, with a loss mask."""

    def side(key):
        return pad_lm_rows(
            [{"input_ids": r[f"{key}_input_ids"], "labels": r[f"{key}_labels"]} for r in rows],
            max_len,
            pad_id,
        )

    xc, yc, mc = side("chosen")
    xr, yr, mr = side("rejected")
    return torch.cat([xc, xr]), torch.cat([yc, yr]), torch.cat([mc, mr])


def logits_to_log_probs(logits, labels):
    log_probs = F.log_softmax(logits, dim=2)
    return torch.gather(log_probs, dim=2, index=labels.unsqueeze(2)).squeeze(-1)


def dpo_step(model, ref_model, optimizer, x, y, mask, lr, beta=0.1, grad_clip=1.0):
    for g in optimizer.param_groups:
        g["lr"] = lr
    with torch.no_grad():
        ref_logits = ref_model(x)
    ref_log_probs = logits_to_log_probs(ref_logits, y)
    policy_log_probs = logits_to_log_probs(model(x), y)
    ref = (ref_log_probs * mask).sum(dim=1)
    pol = (policy_log_probs * mask).sum(dim=1)
    b = ref.shape[0] // 2
    logits = (pol[:b] - pol[b:]) - (ref[:b] - ref[b:])
    loss = -F.logsigmoid(beta * logits).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()
