"""Mixed precision has one owner (`minillm_core.inference`): native-bf16 detection, `auto`
resolution (training's autocast: bf16 where the CPU has it; inference weights and evaluation:
float32 on every CPU), and the trainer's autocast with float32 master weights."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from minillm_core import inference
from minillm_core import model as model_mod
from minillm_core.inference import autocast, autocast_dtype, flags_in, resolve_dtype
from minillm_core.model import ModelConfig
from minillm_core.train import TrainConfig, train
from minillm_core.train.checkpointer import load_checkpoint
from tests.unit.test_train import V, pretrain_rows

ROOT = Path(__file__).resolve().parents[2]
XEON = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve bf16\n"
OLD_X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to run on a CPU whose /proc/cpuinfo is the given text."""

    def use(text: str) -> None:
        monkeypatch.setattr(inference, "cpu_flags", lambda: flags_in(text))

    return use


def test_flags_are_read_from_x86_and_arm_cpuinfo():
    assert {"avx512_bf16", "amx_tile"} <= flags_in(XEON)
    assert "bf16" in flags_in(ARM)
    assert flags_in("") == frozenset()


@pytest.mark.parametrize(
    "text, expected",
    [(XEON, torch.bfloat16), (ARM, torch.bfloat16), (OLD_X86, torch.float32), ("", torch.float32)],
)
def test_training_auto_is_bf16_only_on_a_cpu_with_native_bf16(cpu, text, expected):
    cpu(text)
    assert autocast_dtype("auto", torch.device("cpu")) == expected
    assert autocast_dtype("auto", "cpu") == expected
    # Inference weights and evaluation stay float32 on every CPU (same greedy outputs, same
    # scores everywhere).
    assert resolve_dtype("auto", "cpu") == torch.float32


def test_auto_on_cuda_and_explicit_names_ignore_the_cpu(cpu):
    cpu(OLD_X86)
    for resolve in (autocast_dtype, resolve_dtype):
        assert resolve("auto", torch.device("cuda")) == torch.bfloat16
        assert resolve("bfloat16", "cpu") == torch.bfloat16
        assert resolve("float32", "cpu") == torch.float32


def test_this_machine_is_detected_as_its_cpuinfo_says():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = bool(inference.BF16_CPU_FLAGS & flags_in(text))
    assert inference.cpu_has_native_bf16() == native


@pytest.mark.parametrize("text, active", [(XEON, True), (OLD_X86, False)])
def test_autocast_auto_follows_the_detection(cpu, text, active):
    cpu(text)
    with autocast("cpu", "auto"):
        assert torch.is_autocast_enabled("cpu") == active
        if active:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def _seen_precision(monkeypatch, tmp_path, text: str) -> tuple[set, set, dict]:
    """Train a few steps at dtype auto on a CPU with `text` as cpuinfo; returns the autocast
    states the forward ran under, the dtypes of the weights after training, and the report."""
    monkeypatch.setattr(inference, "cpu_flags", lambda: flags_in(text))
    seen: set = set()

    forward = model_mod.MiniLLM.forward

    def spy(self, *a, **kw):
        on = torch.is_autocast_enabled("cpu")
        seen.add((on, torch.get_autocast_dtype("cpu") if on else None))
        return forward(self, *a, **kw)

    monkeypatch.setattr(model_mod.MiniLLM, "forward", spy)
    model_cfg = ModelConfig(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    cfg = TrainConfig(
        stage="pretrain",
        out_dir=str(tmp_path),
        data_path="mem",
        batch_size=4,
        accumulation_steps=1,
        max_steps=3,
        dtype="auto",
        learning_rate=1e-2,
    )
    rep = train(cfg, model_cfg, dataset=pretrain_rows())
    weights = {p.dtype for p in load_checkpoint(tmp_path)[0].parameters()}
    return seen, weights, rep.metadata


def test_trainer_autocasts_bf16_with_fp32_master_weights_on_native_bf16(monkeypatch, tmp_path):
    seen, weights, meta = _seen_precision(monkeypatch, tmp_path, XEON)
    assert seen == {(True, torch.bfloat16)}
    assert weights == {torch.float32}
    assert meta["dtype"] == "bfloat16"


def test_trainer_stays_fp32_without_native_bf16(monkeypatch, tmp_path):
    seen, weights, meta = _seen_precision(monkeypatch, tmp_path, OLD_X86)
    assert seen == {(False, None)}
    assert weights == {torch.float32} and meta["dtype"] == "float32"


def test_only_the_inference_module_opens_torch_autocast():
    """One owner: every other module of the core asks `inference.autocast`."""
    owners = []
    for path in sorted((ROOT / "minillm_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "autocast"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                owners.append(path.relative_to(ROOT).as_posix())
    assert owners == ["minillm_core/inference.py"]
