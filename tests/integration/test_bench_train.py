"""The training benchmark runs and compares like with like: at a tiny size (`--quick`), our loop
and the minimind reference train the same weights on the same batches, so their per-step losses
must agree; and `--breakdown` profiles the real loop into parts that add up to the step."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.conftest import REPO, require_tcmalloc

BENCH = REPO / "bench" / "bench_train.py"


def run_bench(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--steps", "2", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_quick_comparison_losses_match_minimind(tmp_path):
    result = tmp_path / "train.json"
    table = run_bench("--rounds", "1", "--out", str(result))
    trials = {(t["stage"], t["impl"]): t for t in json.loads(result.read_text())["trials"]}
    assert set(trials) == {(s, i) for s in ("pretrain", "sft", "dpo") for i in ("ours", "minimind")}
    for stage in ("pretrain", "sft"):  # same batches in the same order: the same losses
        ours, ref = trials[stage, "ours"]["losses"], trials[stage, "minimind"]["losses"]
        assert len(ours) == len(ref) == 3
        assert max(abs(a - b) for a, b in zip(ours, ref)) < 1e-4, (stage, ours, ref)
    # DPO's first loss is ln 2 in both (policy == reference), whatever the batch grouping.
    for impl in ("ours", "minimind"):
        assert abs(trials["dpo", impl]["losses"][0] - 0.693147) < 1e-4
    assert "| dpo, epoch 2 (cached reference) | ours |" in table
    # Counting the attention products too (PaLM's MFU) can only raise the figure.
    for stage in ("pretrain", "sft"):
        row = re.search(rf"^\| {stage} \| ours \|.*?\| ([\d.]+)% \| ([\d.]+)% \|", table, re.M)
        assert row and float(row[2]) > float(row[1]) > 0, table


def test_breakdown_parts_add_up_to_the_step():
    out = run_bench("--breakdown")
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([\d.]+) \| \d+% \|$", out, re.M))
    parts = {k: float(v) for k, v in rows.items() if k != "whole step (wall)"}
    assert len(parts) == 4, out
    assert (
        parts["matmuls (the work 6N counts)"] > 0
        and parts["attention kernel (SDPA, fwd + bwd)"] > 0
    )
    wall = float(rows["whole step (wall)"])
    # Profiler self times are of the profiled steps only; they cover the wall time (the last
    # part is the remainder), and do not exceed it by more than the profiler's own overhead.
    assert wall * 0.95 <= sum(parts.values()) <= wall * 1.5 + 2, out
    assert re.search(r"MFU of this step: \d+%\. The matmuls alone run at \d+ GFLOP/s", out)


def test_each_trial_runs_on_the_allocator_it_names(tmp_path):
    """`--allocators system,tcmalloc`: every trial's process reports (from its own memory map)
    the malloc it was asked for, and the table keeps them apart."""
    require_tcmalloc()
    result = tmp_path / "train.json"
    args = ("--stages", "pretrain", "--impls", "ours", "--allocators", "system,tcmalloc")
    table = run_bench(*args, "--rounds", "1", "--out", str(result))
    trials = json.loads(result.read_text())["trials"]
    assert [t["allocator"] for t in trials] == ["system", "tcmalloc"]
    assert "| pretrain | ours | system |" in table and "| pretrain | ours | tcmalloc |" in table
