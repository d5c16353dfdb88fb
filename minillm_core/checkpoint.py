"""Checkpoints on disk: weights in safetensors, a JSON sidecar, and the resume state.

A checkpoint directory holds

- `model.safetensors`: the weights (float32, Llama names; the tied `lm_head.weight` is left out
  and re-tied on load, as HuggingFace does with `tie_word_embeddings`);
- `model.json`: the model config, stage, step, tokens seen, tokenizer and data hashes, the loss
  curve; enough to rebuild the model and to refuse a mismatched one;
- `resume.pt`: what an interrupted run needs to continue to the step (see `minillm_core.train`),
  a dict of tensors and plain values read back with `torch.load(weights_only=True)`.

Nothing here unpickles arbitrary objects, and every file is written under a temporary name and
renamed into place, so a kill at any instant leaves the previous file whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from minillm_core.artifacts import ArtifactError, atomic_path, read_json, require, write_json
from minillm_core.config import ConfigError
from minillm_core.model import MiniLLM, ModelConfig

WEIGHTS = "model.safetensors"
META = "model.json"
RESUME = "resume.pt"
FORMAT_VERSION = 1


def weights_state(model: MiniLLM) -> dict[str, torch.Tensor]:
    """State dict to store: contiguous CPU float32 tensors, the tied head left out."""
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        sd[k] = v.detach().to("cpu", torch.float32).contiguous()
    return sd


def load_weights_into(model: MiniLLM, state: dict[str, torch.Tensor], source: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if model.config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ArtifactError(f"{source}: weights do not fit the model config "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")


def save_checkpoint(out_dir: Path | str, model: MiniLLM, meta: dict[str, Any]) -> Path:
    """Write model.safetensors then model.json (both atomically) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(weights_state(model), str(tmp), metadata={"format": "pt"})
    write_json(out / META, {"format_version": FORMAT_VERSION,
                            "model": model.config.model_dump(), **meta})
    return out


def read_meta(ckpt_dir: Path | str) -> dict[str, Any]:
    d = require(ckpt_dir, "checkpoint directory")
    return read_json(require(Path(d) / META, f"checkpoint sidecar {META}"))


def load_weights_file(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or foreign file is an ArtifactError naming it
    (safetensors itself says only "incomplete metadata" or "header too small")."""
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError is not exported under a stable name
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise ArtifactError(f"{path}: not a readable safetensors file ({size} bytes: truncated, "
                            f"corrupt or not safetensors at all): {exc}; copy or train it "
                            "again") from None


def load_checkpoint(ckpt_dir: Path | str, device: str | torch.device = "cpu"
                    ) -> tuple[MiniLLM, dict[str, Any]]:
    """Rebuild the model from `ckpt_dir` (config from model.json) on `device`, in eval mode."""
    d = Path(ckpt_dir)
    meta = read_meta(d)
    try:
        cfg = ModelConfig(**meta["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{d / META}: no valid model config ({exc})") from exc
    model = MiniLLM(cfg)
    state = load_weights_file(require(d / WEIGHTS, f"checkpoint weights {WEIGHTS}"))
    load_weights_into(model, state, str(d / WEIGHTS))
    model.to(device).eval()
    return model, meta


def config_diff(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Human lines `name: a != b` for keys whose values differ (missing counts as None)."""
    lines = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if a != b:
            lines.append(f"{key}: {b!r} there, {a!r} now")
    return lines


def require_same_model(cfg: ModelConfig, ckpt_dir: Path | str, meta: dict[str, Any]) -> None:
    """Refuse a checkpoint whose model config differs from `cfg`, naming each difference."""
    diff = config_diff(cfg.model_dump(), meta.get("model", {}))
    if diff:
        raise ConfigError(f"checkpoint {ckpt_dir} was trained with another model config:\n  "
                          + "\n  ".join(diff))


def save_resume(path: Path | str, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_resume(path: Path | str) -> dict[str, Any]:
    # weights_only: tensors, dicts, lists and numbers only; nothing in the file can run code.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # UnpicklingError (a foreign object), RuntimeError (a cut zip), ...
        raise ArtifactError(f"{path}: unreadable resume state, refused ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to train "
                            "from the start") from None

