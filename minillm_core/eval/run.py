"""The evaluation of one checkpoint: load, score the stage's held-out split, sample, record.

`run_eval` measures an already loaded model (tests call it with tiny hand-built models);
`evaluate` loads the checkpoint (and, for DPO, the reference), calls it and records the result
(`finish`). Everything is deterministic: greedy decoding, the first `max_samples` records in file
order, and seeded torch state.
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import torch

from minillm_core.artifacts import require, sha256_file, sha256_tree
from minillm_core.errors import ConfigError
from minillm_core.eval.config import EvalConfig, EvalReport
from minillm_core.eval.data import category, encode_rows, heldout_records, mc_items
from minillm_core.eval.metrics import identity_scores, token_byte_lengths
from minillm_core.eval.results import (
    append_jsonl,
    metrics_table,
    samples_markdown,
    write_tensorboard,
)
from minillm_core.eval.scoring import (
    generate_samples,
    score_loss,
    score_multiple_choice,
    score_preferences,
)
from minillm_core.inference import model_context, resolve_device, resolve_dtype
from minillm_core.progress import LogFn, emit
from minillm_core.schema import DEFAULT_CONTEXT

# A hand-built module without a config gets the context a default ModelConfig has.


def eval_length(requested: int | None, model: Any) -> int:
    """The scored length: `requested`, else the model's context; never beyond that context
    (positions the model has no embedding for cannot be scored)."""
    context = model_context(model)
    if requested is None:
        return context if context is not None else DEFAULT_CONTEXT
    if context is not None and requested > context:
        raise ConfigError(
            f"max_seq_len {requested} exceeds the model's context {context} "
            f"(max_position_embeddings in the checkpoint); pass --max-seq-len "
            f"{context} or less"
        )
    return requested


def _scores(
    cfg: EvalConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    reference: Any,
    length: int,
    common: dict[str, Any],
    log: LogFn | None,
) -> dict[str, float]:
    data = Path(cfg.data_path)
    metrics: dict[str, float] = {}
    held, left_out = heldout_records(data, cfg.stage, log)
    # A metric, not only a log line: a rising count says the held-out scores cover less.
    metrics["heldout_left_out"] = float(left_out)
    if cfg.stage in ("pretrain", "sft"):
        rows = encode_rows(cfg.stage, iter(held), tokenizer, length, cfg.max_samples)
        emit(log, f"eval {cfg.stage}: scoring {len(rows)} held-out rows from {data}")
        metrics.update(score_loss(model, rows, token_bytes=token_byte_lengths(tokenizer), **common))
    if cfg.stage == "sft":
        knowledge = (r for r in held if category(r) == "knowledge")
        items = mc_items(knowledge, tokenizer, length, cfg.max_samples)
        emit(log, f"eval sft: {len(items)} multiple-choice knowledge items")
        if items:
            metrics.update(score_multiple_choice(model, items, **common))
        else:
            metrics["mc_items"] = 0.0
    if cfg.stage == "dpo":
        if reference is None:
            raise ValueError("dpo evaluation needs the reference (SFT) model")
        rows = encode_rows("dpo", iter(held), tokenizer, length, cfg.max_samples)
        emit(log, f"eval dpo: scoring {len(rows)} held-out preference pairs from {data}")
        if not rows:
            raise ValueError(f"{data}: no preference pairs to score")
        metrics.update(
            score_preferences(model, reference, rows, beta=cfg.dpo_beta or 0.1, **common)
        )
    return metrics


def run_eval(
    cfg: EvalConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    reference: torch.nn.Module | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    log: LogFn | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics and samples of an already loaded model. Reads only `cfg.data_path`."""
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    require(cfg.data_path, f"held-out {cfg.stage} data")
    length = eval_length(cfg.max_seq_len, model)
    # Any pad id works: padded positions carry label IGNORE_INDEX.
    common = dict(
        pad_id=tokenizer.get_bos_token_id(), batch_size=cfg.batch_size, device=device, dtype=dtype
    )
    metrics = _scores(cfg, model, tokenizer, reference, length, common, log)
    chat = cfg.stage != "pretrain"
    prompts = (
        list(cfg.prompts) + [p for p in cfg.identity_probes if p not in cfg.prompts]
        if chat
        else list(cfg.continuation_prompts)
    )
    samples = generate_samples(
        model,
        tokenizer,
        prompts,
        chat=chat,
        max_new_tokens=cfg.max_new_tokens,
        max_seq_len=length,
        device=device,
        dtype=dtype,
    )
    if chat:
        metrics.update(
            identity_scores(
                samples,
                cfg.identity_probes,
                cfg.model_name,
                cfg.model_author,
                cfg.foreign_identities,
            )
        )
    return metrics, samples


def _results_line(
    cfg: EvalConfig,
    metrics: dict[str, float],
    samples: list[dict[str, Any]],
    checkpoint_sha256: str,
    step: int,
    elapsed_s: float,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stage": cfg.stage,
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "step": step,
        "config": cfg.model_dump(mode="json"),
        # Non-finite numbers are not JSON: stored as null (the check reports them).
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in metrics.items()},
        "samples": samples,
        "elapsed_s": round(elapsed_s, 3),
        **dict(extra or {}),
    }


def finish(
    cfg: EvalConfig,
    metrics: dict[str, float],
    samples: list[dict[str, Any]],
    *,
    checkpoint_sha256: str,
    step: int,
    extra: Mapping[str, Any] | None = None,
    elapsed_s: float = 0.0,
    log: LogFn | None = None,
    out: TextIO | None = None,
) -> EvalReport:
    """Print the table, append the results line, write TensorBoard; build the report."""
    table = metrics_table(metrics)
    stream = out or sys.stdout
    print(f"\n== eval {cfg.stage}: {cfg.checkpoint} (step {step}) ==\n{table}", file=stream)
    for s in samples:
        print(f"  {s['prompt']} -> {str(s['completion'])[:120]!r}", file=stream)
    stream.flush()
    line = _results_line(cfg, metrics, samples, checkpoint_sha256, step, elapsed_s, extra)
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
    return EvalReport(
        stage=cfg.stage,
        metrics=metrics,
        samples=samples,
        table_markdown=table,
        results_line=line,
        metadata=metadata,
    )


def _checkpoint_hash(ckpt: Path) -> str:
    weights = ckpt / "model.safetensors"
    return sha256_file(weights) if weights.is_file() else sha256_tree(ckpt)


def _with_checkpoint_settings(cfg: EvalConfig, meta: Mapping[str, Any], model: Any) -> EvalConfig:
    """The length the checkpoint allows, and for DPO the beta it trained with (rewards on the
    scale training optimised)."""
    update: dict[str, Any] = {"max_seq_len": eval_length(cfg.max_seq_len, model)}
    if cfg.stage == "dpo" and cfg.dpo_beta is None:
        trained = (meta.get("train") or {}).get("beta")
        update["dpo_beta"] = float(trained) if trained else 0.1
    return cfg.model_copy(update=update)


def evaluate(cfg: EvalConfig, log: LogFn | None = None) -> EvalReport:
    """Evaluate `cfg.checkpoint` on the held-out data; print, append, log. See the package doc."""
    from minillm_core.inference import load_model

    t0 = time.monotonic()
    require(cfg.data_path, f"held-out {cfg.stage} data")  # before loading any weights
    if "heldout" not in Path(cfg.data_path).name:
        emit(
            log,
            f"eval {cfg.stage}: warning: {cfg.data_path} is not a held-out split; "
            "its scores are not comparable with the pipeline's",
        )
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    ckpt = require(cfg.checkpoint, f"{cfg.stage} checkpoint")
    model, tokenizer, meta = load_model(ckpt, cfg.tokenizer_dir, device)
    reference = None
    if cfg.stage == "dpo":
        if cfg.reference_checkpoint is None:
            raise ValueError("dpo evaluation needs reference_checkpoint (the SFT checkpoint)")
        ref_dir = require(cfg.reference_checkpoint, "reference (SFT) checkpoint")
        reference, _, _ = load_model(ref_dir, cfg.tokenizer_dir, device)
    cfg = _with_checkpoint_settings(cfg, meta, model)
    metrics, samples = run_eval(
        cfg, model, tokenizer, reference=reference, device=device, dtype=dtype, log=log
    )
    extra = {
        "data_sha256": sha256_file(cfg.data_path),
        "tokenizer_hash": getattr(tokenizer, "hash", None),
        "model": meta.get("model") or meta.get("model_config"),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }
    if reference is not None and cfg.reference_checkpoint is not None:
        extra["reference_checkpoint_sha256"] = _checkpoint_hash(Path(cfg.reference_checkpoint))
    return finish(
        cfg,
        metrics,
        samples,
        checkpoint_sha256=_checkpoint_hash(ckpt),
        step=int(meta.get("step") or 0),
        extra=extra,
        elapsed_s=time.monotonic() - t0,
        log=log,
    )
