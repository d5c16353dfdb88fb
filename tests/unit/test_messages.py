"""The messages a user acts on: out-of-memory advice as one line naming the flags (the command
line prints it without a traceback, Dagster gets it as the Failure's description without a
cause), and the vocabulary-mismatch advice per stage (SFT and DPO cannot resize their parent)."""

from __future__ import annotations

import dagster as dg
import pytest
import torch

from minillm_assets._util import user_errors
from minillm_core.errors import ConfigError
from minillm_core.model import ModelConfig
from minillm_core.train.config import STAGE_DEFAULTS, TrainConfig
from minillm_core.train.data import check_data
from minillm_core.train.step import out_of_memory


def _oom(stage: str = "pretrain", **over):
    cfg = TrainConfig(stage=stage, batch_size=8, accumulation_steps=2, **over)
    return out_of_memory(cfg, 512, torch.device("cpu"))


def test_oom_advice_names_the_flags_in_one_line():
    advice = _oom().advice
    assert "\n" not in advice
    for flag in ("--batch_size", "--accumulation_steps", "--max_seq_len", "--dtype bfloat16"):
        assert flag in advice, advice
    assert "global batch of 16" in advice
    assert "--dtype" not in _oom(dtype="bfloat16").advice  # already half precision


def test_train_command_prints_oom_as_one_line(monkeypatch, tmp_path, capsys):
    import minillm_cli.train as cli

    def run_in_group(cfg, model_cfg, *a):
        raise _oom()

    monkeypatch.setattr(cli, "run_in_group", run_in_group)
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    rc = cli.main_pretrain(["--data_path", str(tmp_path), "--out_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("minillm pretrain: out of memory on cpu at batch_size=8")
    assert "lower --batch_size" in err and "Traceback" not in err


def test_asset_failure_carries_the_line_without_a_traceback():
    with pytest.raises(dg.Failure) as err:
        with user_errors("pretrain_checkpoint"):
            raise _oom()
    failure = err.value
    assert failure.description.startswith("pretrain_checkpoint: out of memory on cpu")
    assert "--accumulation_steps" in failure.description
    assert failure.__cause__ is None and failure.__suppress_context__
    assert "lower --batch_size" in failure.metadata["advice"].text


def test_vocabulary_mismatch_advice_per_stage(tmp_path):
    model = ModelConfig(vocab_size=6400)
    meta = {"vocab_size": 1024}
    pre = TrainConfig(stage="pretrain", data_path=str(tmp_path / "tokens"))
    with pytest.raises(ConfigError, match=r"set --vocab_size 1024"):
        check_data(pre, model, meta, 10)
    sft = TrainConfig(
        stage="sft", data_path=str(tmp_path / "sft.jsonl"), pretrained_path=str(tmp_path / "pre")
    )
    with pytest.raises(ConfigError) as err:
        check_data(sft, model, meta, 10)
    msg = str(err.value)
    assert "was trained with a 6400-token tokenizer" in msg and "--tokenizer_dir" in msg
    assert "--pretrained_path" in msg and "--vocab_size" not in msg  # the parent cannot resize


def test_every_stage_has_an_accumulation_default():
    for stage in ("pretrain", "sft", "dpo"):
        assert STAGE_DEFAULTS[stage]["accumulation_steps"] >= 1
        assert (
            TrainConfig(stage=stage).accumulation_steps
            == STAGE_DEFAULTS[stage]["accumulation_steps"]
        )
