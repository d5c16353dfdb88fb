"""Settings reach the stages: PRETRAIN_ARGS-style flags become run config, the profile preset
applies under it, and bad values fail naming the field and the rule."""

from __future__ import annotations

import dagster as dg
import pytest

from minillm_assets.pipeline import run_config
from tests.conftest import smoke_resource


def test_stage_args_become_run_config():
    cfg = run_config(
        "smoke",
        {
            "pretrain": "--batch_size 8 --learning_rate 3e-4 --hidden_size 96",
            "sft": "",
            "dpo": "--beta 0.2",
        },
    )
    assert cfg["resources"] == {"minillm": {"config": {"profile": "smoke"}}}
    assert cfg["ops"] == {
        "pretrain_checkpoint": {
            "config": {"batch_size": 8, "learning_rate": 3e-4, "model": {"hidden_size": 96}}
        },
        "dpo_checkpoint": {"config": {"beta": 0.2}},
    }


def test_model_shape_flags_are_refused_after_pretrain():
    with pytest.raises(SystemExit, match="SFT_ARGS: hidden_size"):
        run_config("gpu", {"sft": "--hidden_size 1024"})


def test_unknown_flag_is_refused_by_the_stage_parser():
    with pytest.raises(SystemExit):
        run_config("smoke", {"pretrain": "--batch-sise 8"})


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures, "the step failed"
    return failures[0].step_failure_data.error.message


def test_bad_run_config_value_names_field_and_rule(tmp_path):
    from minillm_assets.data import pretrain_mix

    result = dg.materialize(
        [pretrain_mix],
        resources={"minillm": smoke_resource(tmp_path)},
        run_config={"ops": {"pretrain_mix": {"config": {"heldout_fraction": 2.0}}}},
        raise_on_error=False,
    )
    assert not result.success
    msg = _failure_message(result)
    assert "heldout_fraction" in msg and "less than 1" in msg
    assert not (tmp_path / "processed" / "pretrain_chinese.jsonl").exists()


def test_profile_preset_layers_under_run_config(tmp_path):
    from minillm_core.data import MixConfig

    res = smoke_resource(tmp_path)
    cfg = res.settings(MixConfig, "mix", {"max_records": {"sft": 10}})
    assert cfg.max_records == {"sft": 10}  # run config replaces the preset's value
    cfg = res.settings(MixConfig, "mix", None)
    assert cfg.max_records == {"pretrain": 64, "sft": 16, "dpo": 8}  # the smoke preset
