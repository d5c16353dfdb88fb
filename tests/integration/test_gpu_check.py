"""`bench/gpu_check.sh` gets one short run on a borrowed GPU node, so its plumbing is checked here:
without a GPU it says so and exits 0; `--cpu-logic-check` runs every step tiny on the CPU (the
three stages through the core CLI, the two-rank torchrun run, the throughput benchmark)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"


def run_check(*args: str, out=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": ""}
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env, cwd=REPO
    )


def test_without_a_gpu_it_says_so_and_exits_cleanly():
    res = run_check()
    assert res.returncode == 0, res.stderr
    assert "no NVIDIA GPU visible to torch" in res.stdout + res.stderr


def test_cpu_logic_check_runs_every_step(tmp_path):
    res = run_check("--cpu-logic-check", out=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = {r["name"]: r for r in results if r["kind"] == "stage"}
    assert set(stages) == {"pretrain", "sft", "dpo", "pretrain_ddp2"}
    assert stages["pretrain_ddp2"]["world_size"] == 2
    assert abs(stages["dpo"]["final_loss"] - math.log(2)) < 1e-3  # policy still at the reference
    assert all(math.isfinite(r["final_loss"]) and r["steps"] == 2 for r in stages.values())
    bench = [r for r in results if r["kind"] == "bench"]
    assert bench and bench[0]["tokens_per_s"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "CPU LOGIC CHECK, NOT A MEASUREMENT" in table and "| pretrain_ddp2 | 2 | 2 |" in table
