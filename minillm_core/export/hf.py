"""Writing the HuggingFace Llama folder: config, weights, tokenizer files, generation config,
provenance and a model card, built and verified under a temporary name and swapped in whole (see
the package docstring for what each file holds and why)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from safetensors.torch import save_file

from minillm_core.artifacts import atomic_path, require, sha256_file
from minillm_core.config import CoreConfig
from minillm_core.export import verify as checks
from minillm_core.export.tokenizer_files import END, ExportError, tokenizer_config, tokenizer_json
from minillm_core.inference import stop_ids
from minillm_core.model import MiniLLM
from minillm_core.progress import LogFn, emit
from minillm_core.tokenizer import BOS, Tokenizer, load_tokenizer
from minillm_core.train import WEIGHTS, load_checkpoint, weights_state

EXPORT_META = "minillm_export.json"
FORMAT_VERSION = 1


class ExportConfig(CoreConfig):
    """Settings of the HuggingFace export."""

    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the exported weights (checkpoints are float32)"
    )
    verify: Literal["auto", "always", "never"] = Field(
        "auto",
        description="load the export with transformers and compare with the native model: "
        "auto = when transformers is installed, always = fail without it",
    )
    atol: float = Field(1e-4, gt=0, description="largest allowed |logit difference| (float32)")
    verify_new_tokens: int = Field(16, ge=1, description="greedy tokens compared in verification")
    model_max_length: int | None = Field(
        None,
        ge=1,
        description="tokenizer_config's model_max_length; None = the training sequence "
        "length recorded in the checkpoint, else max_position_embeddings",
    )


class ExportReport(BaseModel):
    path: Path
    metadata: dict[str, Any]


def hf_config(model: MiniLLM, tok: Tokenizer, dtype: str) -> dict[str, Any]:
    c = model.config
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.ffn_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "initializer_range": c.initializer_range,
        "tie_word_embeddings": c.tie_word_embeddings,
        "use_cache": True,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.encode_special(END),
        "pad_token_id": None,
        "torch_dtype": dtype,
    }


def generation_config(tok: Tokenizer) -> dict[str, Any]:
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": stop_ids(tok),
        # Only used to fill finished rows of a batch; never a training label.
        "pad_token_id": tok.bos_token_id,
        # `minillm chat`'s defaults; pass do_sample=False for greedy.
        "do_sample": True,
        "temperature": 0.6,
        "top_k": 50,
        "top_p": 1.0,
    }


def _model_card(meta: dict[str, Any], hf_meta: dict[str, Any]) -> str:
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\nlanguage:\n- zh\n---\n"
        "# MiniLLM\n\n"
        f"A small Chinese chat model trained with MiniLLM (stage `{meta.get('stage', '?')}`, "
        f"step {meta.get('step', '?')}), exported as a plain Llama: no custom code.\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        'ids = tok.apply_chat_template([{"role": "user", "content": "你好"}],\n'
        '                              add_generation_prompt=True, return_tensors="pt")\n'
        "```\n\n"
        "Chat format: `<|bos|><|user_start|>...<|user_end|><|assistant_start|>...<|assistant_end|>`;"
        " a system message is folded into the first user message. Raw text: prepend `<|bos|>` "
        "yourself (the tokenizer adds no special token).\n\n"
        f"Parameters: {hf_meta['parameters']:,}. Verification at export: "
        f"`{json.dumps(hf_meta.get('verification', {}), ensure_ascii=False)}`.\n"
    )


def _model_max_length(cfg: ExportConfig, meta: dict[str, Any], model: MiniLLM) -> int:
    if cfg.model_max_length is not None:
        return cfg.model_max_length
    train = meta.get("train") or {}
    for key in ("max_seq_len", "max_length"):
        if isinstance(train.get(key), int) and train[key] > 0:
            return min(int(train[key]), model.config.max_position_embeddings)
    return model.config.max_position_embeddings


def _load(ckpt: Path, tokenizer_dir: Path | str) -> tuple[MiniLLM, dict[str, Any], Tokenizer]:
    tok = load_tokenizer(tokenizer_dir)
    model, meta = load_checkpoint(require(ckpt, "checkpoint directory"), "cpu")
    want = meta.get("tokenizer_hash")
    if want and want != tok.hash:
        raise ExportError(
            f"{ckpt} was trained with another tokenizer ({str(want)[:12]} != "
            f"{tok.hash[:12]} in {tokenizer_dir}); pass the matching tokenizer"
        )
    if model.config.vocab_size < tok.get_vocab_size():
        raise ExportError(
            f"the model's vocab_size {model.config.vocab_size} is smaller than the "
            f"tokenizer's {tok.get_vocab_size()}"
        )
    return model, meta, tok


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _write_files(
    tmp: Path,
    model: MiniLLM,
    tok: Tokenizer,
    state: dict[str, torch.Tensor],
    cfg: ExportConfig,
    max_len: int,
) -> None:
    # {"format": "pt"} is what transformers checks before reading a safetensors file.
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    files = {
        "config.json": hf_config(model, tok, cfg.dtype),
        "generation_config.json": generation_config(tok),
        "tokenizer.json": tokenizer_json(tok),
        "tokenizer_config.json": tokenizer_config(tok, max_len),
        "special_tokens_map.json": {"bos_token": BOS, "eos_token": END},
    }
    for name, obj in files.items():
        _write_json(tmp / name, obj)


def _report(
    out: Path,
    cfg: ExportConfig,
    meta: dict[str, Any],
    tok: Tokenizer,
    n_params: int,
    max_len: int,
    verification: dict[str, Any],
    tmp: Path,
    seconds: float,
) -> ExportReport:
    metadata: dict[str, Any] = {
        "path": str(out),
        "parameters": n_params,
        "dtype": cfg.dtype,
        "files": sorted(p.name for p in tmp.iterdir()),
        "bytes": sum(p.stat().st_size for p in tmp.iterdir()),
        "stage": meta.get("stage"),
        "step": meta.get("step"),
        "vocab_size": tok.get_vocab_size(),
        "model_max_length": max_len,
        "verified": bool(verification.get("verified")),
        "export_seconds": round(seconds, 2),
    }
    for key in (
        "max_abs_logit_diff",
        "greedy_equal",
        "greedy_tokens_compared",
        "tokenizer_texts_checked",
        "chat_template_conversations_checked",
        "transformers_version",
    ):
        if key in verification:
            metadata[key] = verification[key]
    return ExportReport(path=out, metadata=metadata)


def export_hf(
    checkpoint_dir: Path | str,
    tokenizer_dir: Path | str,
    out_dir: Path | str,
    cfg: ExportConfig | None = None,
    log: LogFn | None = None,
) -> ExportReport:
    """Write a HuggingFace Llama folder for the checkpoint into `out_dir` (atomically: built and
    verified under a temporary name, then swapped in whole)."""
    cfg = cfg or ExportConfig()
    t0 = time.perf_counter()
    ckpt, out = Path(checkpoint_dir), Path(out_dir)
    model, meta, tok = _load(ckpt, tokenizer_dir)
    verify = cfg.verify == "always" or (cfg.verify == "auto" and checks._transformers() is not None)
    if cfg.verify == "auto" and not verify:
        emit(
            log,
            "export-hf: transformers not installed; the export is not verified "
            "(pip install 'minillm[hf]' to compare logits)",
        )
    dtype = getattr(torch, cfg.dtype)
    if cfg.dtype != "float32":
        # Compare against what was exported: the native model rounded to the same dtype.
        for p in model.parameters():
            p.data = p.data.to(dtype).float()
    state = {k: v.to(dtype).contiguous() for k, v in weights_state(model).items()}
    n_params = model.num_parameters()
    max_len = _model_max_length(cfg, meta, model)
    with atomic_path(out, directory=True) as tmp:
        _write_files(tmp, model, tok, state, cfg, max_len)
        verification: dict[str, Any] = {"verified": False}
        if verify:
            emit(
                log,
                "export-hf: loading the export with transformers to compare with the native model",
            )
            verification = {
                "verified": True,
                **checks.verify_export(tmp, model, tok, cfg.atol, cfg.verify_new_tokens),
            }
        hf_meta = {
            "format_version": FORMAT_VERSION,
            "source_checkpoint": str(ckpt.resolve()),
            "source_weights_sha256": sha256_file(ckpt / WEIGHTS),
            "stage": meta.get("stage"),
            "step": meta.get("step"),
            "tokenizer_hash": tok.hash,
            "dtype": cfg.dtype,
            "parameters": n_params,
            "model_max_length": max_len,
            "verification": verification,
            "config": cfg.model_dump(),
        }
        _write_json(tmp / EXPORT_META, hf_meta)
        (tmp / "README.md").write_text(_model_card(meta, hf_meta), encoding="utf-8")
        report = _report(
            out, cfg, meta, tok, n_params, max_len, verification, tmp, time.perf_counter() - t0
        )
    emit(
        log,
        f"export-hf: {n_params:,} parameters ({cfg.dtype}) -> {out} in "
        f"{report.metadata['export_seconds']:.1f}s"
        + (
            f"; max |logit diff| {verification['max_abs_logit_diff']:.2e}"
            if verification.get("verified")
            else "; not verified"
        ),
    )
    return report
