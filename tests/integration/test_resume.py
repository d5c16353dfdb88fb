"""Kill a real training process and resume it: the weights must equal an uninterrupted run's, bitwise.

Each run is a subprocess (one CPU thread, deterministic algorithms, dropout on so the RNG state
matters) training on tiny in-memory rows. A run is SIGKILLed at a random moment after its first
resume state appears, started again with the same settings, and its final weights, loss history
and DPO reference cache are compared with those of a run that was never interrupted. SIGTERM is
checked too: the loop saves a resume state at the end of the current step and exits.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent('''
    import sys, time, torch
    torch.set_num_threads(1)
    from minillm_core.errors import TrainingInterrupted
    from minillm_core.model import MiniLLM, ModelConfig
    from minillm_core.train import TrainConfig, train
    from minillm_core.train.checkpointer import save_checkpoint

    stage, out, pre = sys.argv[1], sys.argv[2], sys.argv[3]
    V = 64
    model_cfg = ModelConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            dropout=0.1)

    class Slow(torch.utils.data.Dataset):
        """Deterministic rows; each read sleeps so a kill can land between any two steps."""
        meta = {"stage": stage, "vocab_size": V, "pad_id": 0, "tokenizer_hash": "t", "data_hash": "d"}
        def __len__(self): return 10
        def __getitem__(self, i):
            time.sleep(0.01)
            g = torch.Generator().manual_seed(i)
            a = torch.randint(1, V, (8 + i,), generator=g)
            b = torch.randint(1, V, (8 + i,), generator=g)
            lab = lambda s: torch.cat([torch.full((3,), -100), s[4:]])
            if stage == "dpo":
                return {"chosen_input_ids": a[:-1], "chosen_labels": lab(a),
                        "rejected_input_ids": b[:-1], "rejected_labels": lab(b)}
            return {"input_ids": a[:-1], "labels": a[1:]}

    if sys.argv[4:] == ["make-pretrained"]:
        torch.manual_seed(1)
        save_checkpoint(pre, MiniLLM(model_cfg), {"stage": "sft", "tokenizer_hash": "t"})
        sys.exit(0)
    cfg = TrainConfig(stage=stage, out_dir=out, data_path="mem", batch_size=2, accumulation_steps=2,
                      epochs=8, learning_rate=3e-3, warmup_steps=2, save_interval=2, log_interval=5,
                      deterministic=True, pretrained_path=pre if stage == "dpo" else None, seed=7)
    try:
        train(cfg, model_cfg, dataset=Slow())
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        sys.exit(3)
''')


def _run(script: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kw,
    )


def _finish(p: subprocess.Popen) -> None:
    _, err = p.communicate(timeout=240)
    assert p.returncode == 0, err.decode()[-2000:]


def _wait_for(
    path: Path, p: subprocess.Popen, newer_than: float = 0.0, timeout: float = 120
) -> None:
    """Until `path` exists and was written after `newer_than` (a time.time())."""
    t0 = time.monotonic()
    while not (path.exists() and path.stat().st_mtime > newer_than):
        assert p.poll() is None, (
            f"run ended before {path} appeared: {p.stderr.read().decode()[-2000:]}"
        )
        assert time.monotonic() - t0 < timeout
        time.sleep(0.01)


def _same_run(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"
    ra = torch.load(a / "resume.pt", weights_only=True)
    rb = torch.load(b / "resume.pt", weights_only=True)
    assert ra["step"] == rb["step"] == 20 and ra["finished"] and rb["finished"]
    assert torch.equal(ra["losses"], rb["losses"])
    if "dpo_cache" in ra:
        assert torch.equal(ra["dpo_cache"]["values"], rb["dpo_cache"]["values"])
        assert len(ra["dpo_cache"]["indices"]) == 10


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The script, a DPO starting checkpoint, and one uninterrupted run per stage (shared)."""
    root = tmp_path_factory.mktemp("resume")
    script = root / "run.py"
    script.write_text(SCRIPT)
    _finish(_run(script, "dpo", "-", str(root / "pre"), "make-pretrained"))
    return root, script, {}


def _whole(runs, stage: str) -> Path:
    root, script, done = runs
    if stage not in done:
        _finish(_run(script, stage, str(root / f"whole-{stage}"), str(root / "pre")))
        done[stage] = root / f"whole-{stage}"
    return done[stage]


@pytest.mark.parametrize("stage,kills", [("pretrain", 2), ("dpo", 1)])
def test_sigkill_then_resume_gives_bitwise_identical_weights(runs, tmp_path, stage, kills):
    root, script, _ = runs
    pre = str(root / "pre")
    whole = _whole(runs, stage)
    cut = tmp_path / "cut"
    rng = random.Random(stage)
    for _ in range(kills):  # at a random moment after this run saved a resume state
        started = time.time()
        p = _run(script, stage, str(cut), pre)
        _wait_for(cut / "resume.pt", p, newer_than=started)
        time.sleep(rng.uniform(0.0, 0.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL
    state = torch.load(cut / "resume.pt", weights_only=True)
    assert not state["finished"] and 0 < state["step"] < 20
    _finish(_run(script, stage, str(cut), pre))
    _same_run(whole, cut)


def test_sigterm_saves_and_the_next_run_continues(runs, tmp_path):
    root, script, _ = runs
    whole, cut = _whole(runs, "pretrain"), tmp_path / "cut"
    p = _run(script, "pretrain", str(cut), "-")
    _wait_for(cut / "resume.pt", p)
    time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 3, err.decode()[-2000:]
    assert b"SIGTERM at step" in err
    state = torch.load(cut / "resume.pt", weights_only=True)
    assert not state["finished"]
    _finish(_run(script, "pretrain", str(cut), "-"))
    _same_run(whole, cut)
