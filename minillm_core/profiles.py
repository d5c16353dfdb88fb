"""The run profiles as data: `smoke` (CPU, float32, trimmed data, a few steps: plumbing only),
`cpu` (a model that talks, trained on a 2-core CPU within the hour) and `gpu` (cuda, bfloat16,
full data, the seed's defaults).

The `cpu` sizes come from measured bf16 step times (bench/bench_train.py, README "The cpu
profile"): a 6.1M-parameter model at context 256 trains at a few thousand tokens/s on two cores,
so the pretrain budget of 900 steps of 16 x 256 packed tokens (3.7M positions, most of the hour)
covers the real corpus about once; SFT repeats the small identity and chat sets for enough steps
that the identity probe passes.

A profile is a preset of field values per concern, layered over the config models' defaults by
`CoreConfig.resolve`. Only the Dagster resource and the command-line front ends read this module;
stage functions take explicit config objects and never ask which profile is active.
"""

from __future__ import annotations

from typing import Any

from minillm_core.data.config import MixConfig
from minillm_core.errors import ConfigError

Preset = dict[str, dict[str, Any]]

_SMOKE_TRAIN = {
    "device": "cpu",
    "dtype": "float32",
    "batch_size": 4,
    "accumulation_steps": 1,
    "compile": False,
    "log_interval": 5,
    "save_interval": 10,
}

_GPU_CONTEXT = 2048

# dtype auto: bf16 autocast (fp32 master weights) where the CPU has native bf16, else float32.
_CPU_TRAIN = {
    "device": "cpu",
    "dtype": "auto",
    "compile": False,
    "accumulation_steps": 1,
    "log_interval": 20,
    "save_interval": 200,
    "warmup_ratio": 0.02,
}

# The seed's quotas (460K general records, 100K knowledge, ...) oversample whatever is there to
# reach them: on a small corpus the mixes would be mostly copies of the shipped samples. The cpu
# profile's quotas: about as many pretrain documents as its pretrain budget reads, and an SFT mix
# in which the identity conversations are about a seventh of the rows, so the name is learnt.
_CPU_QUOTAS = {"general": 60_000, "knowledge": 2_000, "math": 500, "identity": 5_000}


def _cpu_categories() -> dict[str, dict[str, Any]]:
    return {
        name: {**cat.model_dump(), "target": _CPU_QUOTAS.get(name, 2_000)}
        for name, cat in MixConfig.model_validate({}).categories.items()
    }


PROFILES: dict[str, Preset] = {
    "smoke": {
        # Exact dedup and decontamination stay on; near-duplicates (MinHash LSH) are off: the
        # samples have none and the index costs memory and time.
        "mix": {"max_records": {"pretrain": 64, "sft": 16, "dpo": 8}, "near_dedup": False},
        "tokenizer": {"vocab_size": 1024},
        "model": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
        },
        # A 0.16M-parameter model takes milliseconds a step: enough steps for a falling curve.
        "pretrain": {**_SMOKE_TRAIN, "epochs": 3, "max_steps": 40, "learning_rate": 3e-3},
        "sft": {**_SMOKE_TRAIN, "epochs": 5, "max_steps": 20, "learning_rate": 1e-3},
        "dpo": {**_SMOKE_TRAIN, "epochs": 3, "max_steps": 6, "learning_rate": 1e-4},
        "eval": {
            "device": "cpu",
            "dtype": "float32",
            "max_samples": 8,
            "max_new_tokens": 16,
            "batch_size": 4,
        },
        # A few CPU steps teach nothing: smoke checks only that scores are finite and in range.
        "eval_checks": {"pretrain": {}, "sft": {}, "dpo": {}},
    },
    "gpu": {
        # The record size cap follows the model's context (16 characters a position).
        "mix": {"near_dedup": True, "max_record_chars": 16 * _GPU_CONTEXT},
        "tokenizer": {},
        "model": {"max_position_embeddings": _GPU_CONTEXT},
        # The document mask is off: with a [B, 1, T, T] mask SDPA leaves the flash kernel for the
        # memory-efficient one, a cost not yet measured on a GPU (on the CPU it costs nothing).
        "pretrain": {
            "device": "cuda",
            "dtype": "bfloat16",
            "compile": True,
            "epochs": 2,
            "document_mask": False,
        },
        "sft": {"device": "cuda", "dtype": "bfloat16", "compile": True},
        "dpo": {"device": "cuda", "dtype": "bfloat16", "compile": True},
        "eval": {"device": "cuda", "dtype": "bfloat16"},
        # stage -> metric -> (min, max): what a full run reaches with a wide margin.
        "eval_checks": {
            "pretrain": {"bits_per_byte": (None, 2.0)},
            "sft": {"identity_score": (1.0, None), "identity_foreign": (None, 0.0)},
            "dpo": {"preference_accuracy": (0.5, None), "identity_score": (1.0, None)},
        },
    },
    "cpu": {
        "mix": {
            "categories": _cpu_categories(),
            "max_records": {"sft": 8_000, "dpo": 2_000},
            "near_dedup": True,
        },
        "tokenizer": {},
        "model": {
            "hidden_size": 256,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
        },
        "pretrain": {
            **_CPU_TRAIN,
            "epochs": 1,
            "max_steps": 900,
            "batch_size": 16,
            "learning_rate": 2e-3,
        },
        "sft": {
            **_CPU_TRAIN,
            "epochs": 100,
            "max_steps": 240,
            "batch_size": 16,
            "learning_rate": 5e-4,
        },
        "dpo": {
            **_CPU_TRAIN,
            "epochs": 2,
            "max_steps": 20,
            "batch_size": 4,
            "learning_rate": 1e-6,
            "save_interval": 20,
        },
        "eval": {
            "device": "cpu",
            "dtype": "auto",
            "max_samples": 100,
            "max_new_tokens": 32,
            "batch_size": 8,
        },
        # The identity probe must pass as on the gpu profile; bits per byte is reported only.
        "eval_checks": {
            "pretrain": {},
            "sft": {"identity_score": (1.0, None), "identity_foreign": (None, 0.0)},
            "dpo": {"identity_score": (1.0, None)},
        },
    },
}


def preset(profile: str, concern: str) -> dict[str, Any]:
    """The profile's field values for one concern (a copy; empty when it sets none)."""
    if profile not in PROFILES:
        raise ConfigError(f"profile: unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    return dict(PROFILES[profile].get(concern, {}))
