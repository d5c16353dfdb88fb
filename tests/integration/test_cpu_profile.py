"""The `cpu` profile: its resolved configs agree (tensors packed at the model's context, every
stage training at it, bf16 autocast exactly where this CPU has native bf16 (evaluation in
float32), the quotas that keep
the mixes real), and a real Dagster run of its first stages on a trimmed data set trains through
the trainer with the profile's settings (a tiny step count)."""

from __future__ import annotations

import json

import pytest
import torch

from minillm_core.data.config import MixConfig
from minillm_core.eval.config import EvalConfig
from minillm_core.inference import autocast_dtype, cpu_has_native_bf16, resolve_dtype
from minillm_core.model import ModelConfig
from minillm_core.profiles import PROFILES, preset
from minillm_core.train import TrainConfig
from tests.conftest import REPO

pytestmark = pytest.mark.integration  # the last test materializes assets with Dagster


def cpu_resource(root):
    from minillm_assets.resources import MiniLLMResource

    return MiniLLMResource(
        profile="cpu",
        sources_dir=str(root / "sources"),  # empty: every category falls back to the samples
        samples_dir=str(REPO / "dataset"),
        processed_dir=str(root / "processed"),
        out_dir=str(root / "out"),
        tf_dir=str(root / "tf"),
    )


def test_cpu_profile_configs_agree(tmp_path):
    res = cpu_resource(tmp_path)
    model = ModelConfig.resolve(preset("cpu", "model"))
    assert res.context_length == model.max_position_embeddings == 256
    native = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    for stage in ("pretrain", "sft", "dpo"):
        cfg = res.settings(TrainConfig, stage, None, {"stage": stage, "data_path": "x"})
        assert cfg.device == "cpu" and cfg.dtype == "auto" and not cfg.compile
        assert autocast_dtype(cfg.dtype, cfg.device) == native
        assert cfg.accumulation_steps == 1 and cfg.max_steps and cfg.global_batch >= 4
    ev = EvalConfig.model_validate(
        {**preset("cpu", "eval"), "stage": "sft", "checkpoint": "c", "data_path": "d"}
        | {"tokenizer_dir": "t", "results_file": "r"}
    )
    assert resolve_dtype(ev.dtype, ev.device) == torch.float32  # scores comparable across CPUs
    # The identity probe is held to the gpu profile's check.
    checks = PROFILES["cpu"]["eval_checks"]
    assert checks["sft"] == PROFILES["gpu"]["eval_checks"]["sft"]
    # Quotas sized to the run, identity a real share of SFT (the seed's would repeat samples).
    mix = MixConfig.resolve(preset("cpu", "mix"))
    quotas = {name: c.target * c.repeat for name, c in mix.categories.items()}
    sft_total = sum(q for name, q in quotas.items() if "sft" in mix.categories[name].outputs)
    assert quotas["identity"] / sft_total > 0.1
    assert mix.categories["general"].target < MixConfig().categories["general"].target
    # Near-duplicate removal: on for real data (cpu, gpu), off for the smoke samples.
    assert mix.near_dedup and preset("gpu", "mix")["near_dedup"]
    assert not MixConfig.resolve(preset("smoke", "mix")).near_dedup


def test_cpu_profile_trains_through_dagster_on_trimmed_data(tmp_path):
    import dagster as dg

    from minillm_assets.definitions import all_assets

    (tmp_path / "sources").mkdir()
    res = cpu_resource(tmp_path)
    select = ["pretrain_mix", "sft_mix", "dpo_mix", "tokenizer", "pretrain_tokens"]
    select += ["pretrain_checkpoint"]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            all_assets,
            resources={"minillm": res},
            instance=instance,
            selection=select,
            run_config={"ops": {"pretrain_checkpoint": {"config": {"max_steps": 2}}}},
            raise_on_error=True,
        )
    assert result.success
    index = json.loads((res.tokens_dir("pretrain") / "index.json").read_text())
    meta = json.loads((res.checkpoint_dir("pretrain") / "model.json").read_text())
    assert index["max_length"] == meta["model"]["max_position_embeddings"] == 256
    assert meta["model"]["hidden_size"] == 256 and meta["model"]["num_hidden_layers"] == 6
    assert meta["step"] == 2 and meta["finished"]
    assert meta["train"]["dtype"] == "auto" and meta["train"]["batch_size"] == 16
    mat = result.asset_materializations_for_node("pretrain_checkpoint")[0].metadata
    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert mat["dtype"].value == expected
    assert meta["tokens_seen"] == 2 * 16 * 256  # packed: every position a real token
