"""Checkpoints on disk, and the exact resume of an interrupted run.

A checkpoint directory holds

- `model.safetensors`: the weights (float32, Llama names; the tied `lm_head.weight` is left out
  and re-tied on load, as HuggingFace does with `tie_word_embeddings`);
- `model.json`: the model config, stage, step, tokens seen, tokenizer and data hashes, the loss
  curve; enough to rebuild the model and to refuse a mismatched one;
- `resume.pt`: what an interrupted run needs to continue to the step: the weights, AdamW moments,
  grad-scaler state, step, stream position, RNG states (every rank's), the loss history and (DPO)
  the cached reference log-probabilities; a dict of tensors and plain values read back with
  `torch.load(weights_only=True)`.

Nothing here unpickles arbitrary objects, and every file is written under a temporary name and
renamed into place, so a kill at any instant leaves the previous file whole. The resume state is
written every `save_interval` steps, at the end and on SIGTERM; on CPU in float32 a run killed at
any instant and resumed ends with bitwise the same weights as an uninterrupted run
(tests/test_resume.py kills a real subprocess). A resume state from other settings is refused,
each differing field named (`fingerprint`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from minillm_core.artifacts import atomic_path, read_json, require, write_json
from minillm_core.errors import ArtifactError, ConfigError
from minillm_core.model import MiniLLM, ModelConfig
from minillm_core.train.objectives import DPOLoss

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
        raise ArtifactError(
            f"{source}: weights do not fit the model config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def save_checkpoint(out_dir: Path | str, model: MiniLLM, meta: dict[str, Any]) -> Path:
    """Write model.safetensors then model.json (both atomically) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(weights_state(model), str(tmp), metadata={"format": "pt"})
    write_json(
        out / META, {"format_version": FORMAT_VERSION, "model": model.config.model_dump(), **meta}
    )
    return out


def read_meta(ckpt_dir: Path | str) -> dict[str, Any]:
    d = require(ckpt_dir, "checkpoint directory")
    meta: dict[str, Any] = read_json(require(Path(d) / META, f"checkpoint sidecar {META}"))
    return meta


def load_weights_file(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or foreign file is an ArtifactError naming it
    (safetensors itself says only "incomplete metadata" or "header too small")."""
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 (SafetensorError is not exported under a stable name)
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise ArtifactError(
            f"{path}: not a readable safetensors file ({size} bytes: truncated, "
            f"corrupt or not safetensors at all): {exc}; copy or train it "
            "again"
        ) from None


def load_checkpoint(
    ckpt_dir: Path | str, device: str | torch.device = "cpu"
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
        raise ConfigError(
            f"checkpoint {ckpt_dir} was trained with another model config:\n  " + "\n  ".join(diff)
        )


def save_resume(path: Path | str, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_resume(path: Path | str) -> dict[str, Any]:
    # weights_only: tensors, dicts, lists and numbers only; nothing in the file can run code.
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return state
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 (UnpicklingError: a foreign object, RuntimeError: a cut zip)
        raise ArtifactError(
            f"{path}: unreadable resume state, refused ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to train "
            "from the start"
        ) from None


# ---------------------------------------------------------------------------------------------
# The run's checkpointer: periodic saves and the resume
# ---------------------------------------------------------------------------------------------

# Fields that may change between an interrupted run and its resumption without changing what
# it computes (where and how fast, not what). Every other field must match.
RESUME_FREE = {
    "data_path",
    "tokenizer_dir",
    "out_dir",
    "device",
    "num_workers",
    "log_interval",
    "save_interval",
    "tensorboard_dir",
    "pretrained_path",
    "ref_path",
    "resume",
    "compile",
    "tokenizer_hash",
}


def fingerprint(
    train: dict[str, Any],
    model: dict[str, Any],
    data_meta: dict[str, Any],
    n_samples: int,
    init_hash: str | None,
) -> dict[str, Any]:
    """What must be equal for a resume state to continue this run (see RESUME_FREE)."""
    fp = {f"train.{k}": v for k, v in train.items() if k not in RESUME_FREE}
    fp.update({f"model.{k}": v for k, v in model.items()})
    fp.update(
        {
            "data.tokenizer_hash": data_meta.get("tokenizer_hash"),
            "data.data_hash": data_meta.get("data_hash"),
            "data.vocab_size": data_meta.get("vocab_size"),
            "data.samples": n_samples,
            "init.weights_sha256": init_hash,
        }
    )
    return fp


def downsample(xs: Sequence[float], n: int = 200) -> list[float]:
    if len(xs) <= n:
        return [float(x) for x in xs]
    stride = len(xs) / n
    return [float(xs[int(i * stride)]) for i in range(n)] + [float(xs[-1])]


class Checkpointer:
    """Writes the checkpoint and resume state of one run into `out`, and resumes from it.

    `sidecar` is what every model.json of the run carries besides the per-save counters. With
    several ranks, `save` and `resume` are collective (every rank calls them at the same step):
    the RNG states and the DPO cache are gathered, and rank 0 alone writes."""

    def __init__(
        self,
        out: Path,
        fingerprint: dict[str, Any],
        sidecar: dict[str, Any],
        n_samples: int,
        comm: Any,
    ):
        self.out, self.path = out, out / RESUME
        self.fingerprint, self.sidecar, self.n = fingerprint, sidecar, n_samples
        self.comm = comm
        self.last_saved: int | None = None

    def resume(self, state: Any, objective: Any, enabled: bool) -> str | None:
        """Continue an unfinished run found in `out` (refusing one of other settings); returns
        the line to log, if any."""
        if not (enabled and self.path.exists()):
            return None
        saved = load_resume(self.path)
        if saved.get("finished"):
            return f"{self.path}: the previous run finished; training anew"
        diff = config_diff(self.fingerprint, saved.get("fingerprint", {}))
        if diff:
            raise ConfigError(
                f"{self.path} is from a run with other settings, refusing to resume:\n  "
                + "\n  ".join(diff)
                + "\nrestore those settings, or delete the file "
                "(or pass --resume false) to start over"
            )
        load_weights_into(state.model, saved["model"], str(self.path))
        state.load(saved)
        self.comm.restore_rng(saved, state.step)
        if isinstance(objective, DPOLoss) and "dpo_cache" in saved:
            objective.load_state_dict(saved["dpo_cache"])
        self.last_saved = state.step if state.step > 0 else None
        return None

    def save(self, state: Any, objective: Any, finished: bool) -> None:
        from minillm_core.train.state import rng_state

        rng_ranks = self.comm.gather_rng()
        if self.comm.world > 1 and isinstance(objective, DPOLoss) and objective.use_cache:
            self.comm.merge_dpo_cache(objective)
        if self.comm.rank != 0:
            return
        resume = {
            "format_version": 1,
            "stage": self.sidecar["stage"],
            "finished": finished,
            "step": state.step,
            "position": state.position,
            "tokens_seen": state.tokens_seen,
            "fingerprint": self.fingerprint,
            "model": weights_state(state.model),
            "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict(),
            "rng": rng_state(),
            "lr_schedule": state.schedule.state_dict(),
            "losses": torch.tensor(state.losses, dtype=torch.float64),
        }
        if rng_ranks:
            resume["rng_ranks"] = rng_ranks
        if isinstance(objective, DPOLoss):
            resume["dpo_cache"] = objective.state_dict()
        # Weights + sidecar first, then the resume state: the resume state carries its own copy
        # of the weights, so a kill between the two files leaves a consistent pair either way.
        save_checkpoint(self.out, state.model, self._meta(state, finished))
        save_resume(self.path, resume)
        self.last_saved = state.step

    def _meta(self, state: Any, finished: bool) -> dict[str, Any]:
        s = self.sidecar
        return {
            "stage": s["stage"],
            "step": state.step,
            "total_steps": state.schedule.total_steps,
            "finished": finished,
            "epoch": state.position / self.n,
            "samples_seen": state.position,
            "tokens_seen": state.tokens_seen,
            "world_size": self.comm.world,
            "tokenizer_hash": s["tokenizer_hash"],
            "data_hash": s["data_hash"],
            "data_path": s["data_path"],
            "init_from": s["init_from"],
            "train": s["train"],
            "final_loss": state.losses[-1] if state.losses else None,
            "losses": downsample(state.losses),
        }


def sidecar_base(cfg: Any, data_meta: dict[str, Any], init_dir: Path | None) -> dict[str, Any]:
    """The part of model.json that stays the same through a run."""
    return {
        "stage": cfg.stage,
        "tokenizer_hash": data_meta.get("tokenizer_hash"),
        "data_hash": data_meta.get("data_hash"),
        "data_path": str(cfg.data_path),
        "init_from": str(init_dir) if init_dir else None,
        "train": json.loads(cfg.model_dump_json()),
    }
