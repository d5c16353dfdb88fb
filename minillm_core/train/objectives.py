"""The three training objectives, each `loss(model, batch) -> (loss, metrics)`.

The training loop (`minillm_core.train.loop`) is the same for every stage; a stage differs only in
the rows it reads and the objective below (`make_objective`). Batches come from
`minillm_core.tokens.collate.training_batch`: `input_ids` and `labels` [B, T] padded to the
batch's longest row (labels IGNORE_INDEX where no loss), and for DPO the chosen rows first, then
the rejected rows, in one [2P, T] batch so the policy runs once per step.

Losses are sums over target tokens divided by their count (at least 1), not `mean` reductions:
an SFT batch whose assistant turns were all truncated away has no target and must give 0, not
0/0 = NaN (which the loop would rightly stop on).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from minillm_core.errors import ConfigError
from minillm_core.schema import IGNORE_INDEX

if TYPE_CHECKING:
    from minillm_core.model import ModelConfig
    from minillm_core.train.config import TrainConfig

Batch = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]
Objective = Callable[[nn.Module, Batch], tuple[torch.Tensor, Metrics]]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position [B, T] (0 where label is IGNORE_INDEX), computed in float32.

    `cross_entropy(reduction="none")` is -log_softmax gathered at the label, fused in one kernel,
    without materialising the [B, T, V] log-probabilities that log_softmax + gather would.
    """
    b, t, v = logits.shape
    nll = F.cross_entropy(
        logits.reshape(b * t, v).float(),
        labels.reshape(b * t),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return -nll.view(b, t)


def next_token_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Metrics]:
    """Pretrain and SFT: mean cross-entropy over target tokens (labels != IGNORE_INDEX)."""
    labels = batch["labels"]
    logits = model(batch["input_ids"], doc_ids=batch.get("doc_ids"))
    v = logits.shape[-1]
    total = F.cross_entropy(
        logits.reshape(-1, v).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = (labels != IGNORE_INDEX).sum().clamp(min=1)
    loss = total / count
    return loss, {"loss": loss.detach(), "target_tokens": count.detach().float()}


def pretrain_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Metrics]:
    return next_token_loss(model, batch)


def sft_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Metrics]:
    """Cross-entropy on assistant tokens only.

    Rows carry labels (IGNORE_INDEX outside assistant turns) and a `loss_mask`; the mask is applied again
    here so that a row whose labels were filled in everywhere still trains on assistant tokens only.
    """
    if "loss_mask" in batch:
        batch = {
            **batch,
            "labels": batch["labels"].masked_fill(batch["loss_mask"] == 0, IGNORE_INDEX),
        }
    return next_token_loss(model, batch)


class DPOLoss:
    """Direct preference optimisation against a frozen reference model.

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), with pi/ref the summed
    log-probabilities of the chosen (c) and rejected (r) responses' target tokens. At step 0 the
    policy equals the reference, every term is 0 and the loss is ln 2 exactly.

    The reference runs under `inference_mode` (no autograd graph, no saved activations). With
    `cache=True` its log-probabilities are kept per pair (two floats each) and reused in later
    epochs, so a second epoch costs one forward less per pair.
    """

    def __init__(self, reference: nn.Module, beta: float, cache: bool = False):
        frozen = [n for n, p in reference.named_parameters() if p.requires_grad]
        if frozen:
            raise ConfigError(
                f"DPO reference model is not frozen: {len(frozen)} parameters require "
                f"grad (first: {frozen[0]}); call reference.requires_grad_(False)"
            )
        if reference.training:
            raise ConfigError(
                "DPO reference model is in training mode (dropout would make its "
                "log-probabilities random); call reference.eval()"
            )
        self.reference, self.beta, self.use_cache = reference, beta, cache
        self.cache: dict[int, tuple[float, float]] = {}

    def reference_logps(self, batch: Batch) -> torch.Tensor:
        """Summed reference log-probs [2P] (chosen then rejected), from the cache when complete."""
        idx = batch["indices"].tolist()
        p = len(idx)
        if self.use_cache and all(i in self.cache for i in idx):
            c = [self.cache[i][0] for i in idx]
            r = [self.cache[i][1] for i in idx]
            return torch.tensor(c + r, dtype=torch.float32, device=batch["labels"].device)
        with torch.inference_mode():
            logps = token_logprobs(self.reference(batch["input_ids"]), batch["labels"]).sum(-1)
        logps = logps.clone()  # leave inference mode: a normal tensor can enter the loss graph
        if self.use_cache:
            vals = logps.tolist()
            for k, i in enumerate(idx):
                self.cache[i] = (vals[k], vals[p + k])
        return logps

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        ref = self.reference_logps(batch)
        pi = token_logprobs(model(batch["input_ids"]), batch["labels"]).sum(-1)
        p = pi.shape[0] // 2
        chosen_reward = self.beta * (pi[:p] - ref[:p])
        rejected_reward = self.beta * (pi[p:] - ref[p:])
        margin = chosen_reward - rejected_reward
        loss = -F.logsigmoid(margin).mean()
        return loss, {
            "loss": loss.detach(),
            "reward_margin": margin.detach().mean(),
            "accuracy": (margin.detach() > 0).float().mean(),
            "chosen_reward": chosen_reward.detach().mean(),
            "rejected_reward": rejected_reward.detach().mean(),
            "chosen_logp": pi[:p].detach().mean(),
            "rejected_logp": pi[p:].detach().mean(),
        }

    # The cache is part of the resume state: a resumed run must reuse the very same numbers.
    def state_dict(self) -> dict[str, torch.Tensor]:
        keys = sorted(self.cache)
        return {
            "indices": torch.tensor(keys, dtype=torch.long),
            "values": torch.tensor([self.cache[k] for k in keys], dtype=torch.float64).reshape(
                -1, 2
            ),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.cache = {
            int(i): (float(c), float(r))
            for i, (c, r) in zip(state["indices"].tolist(), state["values"].tolist())
        }


def make_objective(cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device) -> Objective:
    """The stage's `loss(model, batch) -> (loss, metrics)`; for DPO with its frozen reference
    (`ref_path`, else the initial weights) loaded on `device`."""
    if cfg.stage == "pretrain":
        return pretrain_loss
    if cfg.stage == "sft":
        return sft_loss
    from minillm_core.artifacts import require
    from minillm_core.train.checkpointer import load_checkpoint, require_same_model

    ref_dir = Path(cfg.ref_path or cfg.required_path("pretrained_path"))
    reference, ref_meta = load_checkpoint(require(ref_dir, "DPO reference checkpoint"), device)
    require_same_model(model_cfg, ref_dir, ref_meta)
    reference.requires_grad_(False)
    return DPOLoss(reference, cfg.beta, cache=cfg.cache_reference and cfg.epochs > 1)
