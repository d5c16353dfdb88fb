"""Muon for the hidden matrices, AdamW for everything else, as one `torch.optim.Optimizer`.

Muon (Keller Jordan, 2024; nanochat's and modded-nanogpt's matrix optimiser) keeps SGD momentum
per matrix and replaces each update by its nearest semi-orthogonal matrix: all singular values
pushed to about 1, so rare directions of the gradient move as far as the dominant ones. The
orthogonalisation is five Newton-Schulz iterations of a quintic tuned to converge fast from
any spectrum in (0, 1], run in bfloat16 where the device multiplies it natively. Embeddings, the
(tied) output head and the norms stay on AdamW: they are lookups and gains, not linear maps
whose singular directions mean anything.

One optimiser class, so the loop, the grad scaler, DDP and resume states see the usual
`param_groups` and `state_dict`: a group with `muon=True` takes the Muon update, the others
AdamW's. Each group's `lr_ratio` scales the schedule's learning rate (Muon's peak differs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

# The quintic's coefficients (a, b, c) from Muon's reference: they maximise the slope at 0, so
# small singular values grow fastest, at the cost of settling in about [0.7, 1.2] rather than 1.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to `g` (U V^T of its SVD), approximately."""
    a, b, c = NS_COEFFS
    x = g.to(dtype)
    wide = x.shape[0] <= x.shape[1]
    if not wide:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    out: torch.Tensor = x if wide else x.T
    return out


class Muon(torch.optim.Optimizer):
    """Groups: `muon` (bool), `lr`, `lr_ratio`, `weight_decay` (decoupled, both kinds);
    `momentum`, `ns_steps`, `ns_dtype` for Muon groups; `betas`, `eps` for AdamW groups."""

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, **defaults: Any):
        super().__init__(list(groups), {"lr": lr, "lr_ratio": 1.0, "weight_decay": 0.0, **defaults})
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups take matrices only")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("Muon takes no closure")
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                (self._muon if group["muon"] else self._adamw)(p, grad, group)
        return None

    def _muon(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["momentum"] = torch.zeros_like(p)
        buf, beta = state["momentum"], group["momentum"]
        buf.mul_(beta).add_(grad)
        update = orthogonalize(grad.add(buf, alpha=beta), group["ns_steps"], group["ns_dtype"])
        # Unit-RMS-ish steps whatever the shape: a tall matrix's update is scaled up.
        scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
        p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)

    def _adamw(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        (b1, b2), t = group["betas"], state["step"]
        state["exp_avg"].lerp_(grad, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - b1**t))
