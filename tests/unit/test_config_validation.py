"""Config validation: a bad value fails with a message naming the field and the rule, and the
config models never fail any other way (hypothesis fuzzes every model with random values)."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm_core.config import ConfigError, CoreConfig, check_within_roots, validate_device
from minillm_core.data import MixConfig
from minillm_core.eval import EvalConfig
from minillm_core.model import ModelConfig
from minillm_core.profiles import preset
from minillm_core.tokenizer import TokenizerConfig
from minillm_core.tokens import TensorConfig
from minillm_core.train.config import TrainConfig
from tests.faults_helpers import count

# (model, base fields, the bad setting, what the message must say: field and rule)
CASES = [
    (
        TrainConfig,
        {"stage": "pretrain"},
        {"batch_size": -4},
        r"batch_size: Input should be greater than or equal to 1 \(got -4\)",
    ),
    (
        TrainConfig,
        {"stage": "sft"},
        {"accumulation_steps": 0},
        r"accumulation_steps: Input should be greater than or equal to 1",
    ),
    (
        EvalConfig,
        {"stage": "sft"},
        {"batch_size": -1},
        r"batch_size: Input should be greater than or equal to 1",
    ),
    (
        TokenizerConfig,
        {},
        {"vocab_size": 264},
        r"vocab_size: .*264 is too small: the 256 byte tokens and 9 special tokens need at least 265",
    ),
    # max_length counts input positions: a row holds max_length + 1 tokens, so >= 1 means a
    # sequence of at least 2 tokens (one input, one target); the model's context (the one
    # sequence length, the trainer's too) says the same in tokens.
    (
        TensorConfig,
        {},
        {"max_length": 0},
        r"max_length: Input should be greater than or equal to 1 \(got 0\)",
    ),
    (
        TensorConfig,
        {},
        {"max_length": -5},
        r"max_length: Input should be greater than or equal to 1",
    ),
    (
        ModelConfig,
        {},
        {"max_position_embeddings": 1},
        r"max_position_embeddings: Input should be greater than or equal to 2",
    ),
    (
        EvalConfig,
        {"stage": "dpo"},
        {"device": "gpu"},
        r"device: Value error, unknown device 'gpu'; allowed: cpu, cuda, cuda:N, mps, auto",
    ),
    (
        TrainConfig,
        {"stage": "pretrain"},
        {"dtype": "float8"},
        r"dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16'",
    ),
    (MixConfig, {}, {"heldout_fraction": 1.5}, r"heldout_fraction: Input should be less than 1"),
    (
        ModelConfig,
        {},
        {"hidden_size": 66, "num_attention_heads": 4},
        r"hidden_size 66 is not divisible by num_attention_heads 4",
    ),
    (TensorConfig, {}, {"max_lenght": 128}, r"max_lenght: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(
    "model,base,bad,message", CASES, ids=[f"{c[0].__name__}-{'-'.join(c[2])}" for c in CASES]
)
def test_bad_values_name_the_field_and_the_rule(model, base, bad, message):
    with pytest.raises(ConfigError) as err:
        model.resolve(base, bad)
    assert re.search(message, str(err.value)), str(err.value)
    assert str(err.value).startswith(f"invalid {model.__name__}:")
    count("config_rules_checked")


def test_unknown_profile_is_refused_by_core_and_resource():
    with pytest.raises(ConfigError, match=r"profile: unknown profile 'fast'; allowed: smoke, gpu"):
        preset("fast", "mix")
    from minillm_assets.resources import MiniLLMResource

    with pytest.raises(Exception, match=r"unknown profile 'fast'; allowed: smoke, gpu"):
        MiniLLMResource(profile="fast")
    count("config_rules_checked", 2)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_known_devices_pass(device):
    assert validate_device(device) == device
    assert EvalConfig(stage="pretrain", device=device).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "", "tpu", "cuda:0 "])
def test_unknown_devices_are_refused(device):
    with pytest.raises(ValueError, match="unknown device"):
        validate_device(device)
    count("config_rules_checked")


def test_train_config_refuses_an_unknown_device():
    with pytest.raises(ConfigError, match="device: .*unknown device 'gpu'"):
        TrainConfig.resolve({"stage": "pretrain", "device": "gpu"})


def test_output_paths_escaping_the_roots_are_named(tmp_path):
    root = tmp_path / "out"
    (root / "pretrain").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    ok = {"out_dir": str(root / "pretrain"), "tensorboard_dir": str(root)}
    check_within_roots(ok, [root], ["out_dir", "tensorboard_dir"])
    for bad in (
        str(root / ".." / "elsewhere"),
        str(root / "link" / "x"),
        "/etc/cron.d/x",
        str(outside),
    ):
        with pytest.raises(ConfigError) as err:
            check_within_roots({"out_dir": bad}, [root], ["out_dir", "tensorboard_dir"])
        assert f"out_dir: {bad!r} resolves to" in str(err.value)
        assert "outside the configured roots" in str(err.value)
        count("config_rules_checked")


def test_resource_refuses_run_config_outputs_outside_the_roots(tmp_path):
    import dagster as dg

    from tests.conftest import smoke_resource

    res = smoke_resource(tmp_path)
    base = {"stage": "pretrain", "out_dir": str(res.checkpoint_dir("pretrain"))}
    with pytest.raises((ConfigError, dg.Failure), match="outside"):
        res.settings(TrainConfig, "pretrain", {"out_dir": "/tmp/not-a-root/pretrain"}, base)


# ------------------------------------------------------------------------------ hypothesis fuzz

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(
        ["cpu", "cuda", "auto", "float32", "packed", "sft", "", "../../etc", "-1", "1e400"]
    ),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(-3, 3), max_size=2),
)
MODELS: list[tuple[type[CoreConfig], dict]] = [
    (TokenizerConfig, {}),
    (TensorConfig, {}),
    (ModelConfig, {}),
    (MixConfig, {}),
    (TrainConfig, {"stage": "pretrain"}),
    (TrainConfig, {"stage": "dpo"}),
    (EvalConfig, {"stage": "sft"}),
]


def _settings(model: type[CoreConfig]):
    keys = st.sampled_from(sorted(model.model_fields) + ["unknown_field", "Batch_Size"])
    return st.dictionaries(keys, _VALUES, max_size=6)


@pytest.mark.parametrize("model,base", MODELS, ids=[f"{m.__name__}-{b}" for m, b in MODELS])
def test_config_models_fail_only_with_a_config_error_naming_a_field(model, base):
    """Random values for random fields: either a valid config that survives a dump and reload,
    or a ConfigError naming at least one of the fields that was set. Never another exception."""

    @settings(
        max_examples=int(os.environ.get("MINILLM_FUZZ_EXAMPLES", "150")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
    )
    @given(_settings(model))
    def run(values: dict) -> None:
        count("configs_fuzzed")
        try:
            cfg = model.resolve(base, values)
        except ConfigError as exc:
            msg = str(exc)
            assert msg.startswith(f"invalid {model.__name__}:"), msg
            assert any(f"  {k}" in msg or "(model)" in msg for k in values), msg
            return
        again = model.resolve(cfg.model_dump())
        assert again == cfg

    run()
