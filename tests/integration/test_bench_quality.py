"""The quality benchmarks run end to end at a tiny size: bench_quality trains both trainers on the
same corpus for the same wall-clock budget and scores both on the held-out documents the same way;
bench_bf16 trains bf16 and float32 from the same weights on the same batches."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

BENCH = REPO / "bench" / "bench_quality.py"
ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}


def make_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # Real Chinese text from the shipped samples, many short documents as the real corpus has.
    texts = [
        line.strip()
        for f in sorted((REPO / "dataset").glob("*.json*"))
        for line in f.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    with (corpus / "corpus_zh.jsonl").open("w", encoding="utf-8") as f:
        for i in range(400):
            f.write(json.dumps({"text": texts[i % len(texts)][:200]}, ensure_ascii=False) + "\n")
    return corpus


def test_tiny_budget_scores_both_trainers_on_held_out_documents(tmp_path):
    corpus = make_corpus(tmp_path)
    out = tmp_path / "quality.json"
    args = ["--budgets", "0.05", "--hidden", "32", "--layers", "1", "--heads", "2", "--seq", "32"]
    args += ["--vocab", "512", "--batch", "4", "--heldout-docs", "8", "--corpus", str(corpus)]
    args += ["--impls", "minimind,ours,ours-adamw-nomask"]  # and one ablation of ours' recipe
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["heldout_docs"] == 8 and result["train_docs"] == 392  # every 50th held out
    runs = {r["impl"]: r for r in result["runs"]}
    assert set(runs) == {"ours", "minimind", "ours-adamw-nomask"}
    for r in runs.values():
        assert r["steps"] >= 1 and 0 < r["real_tokens"] <= r["positions"]
        # The same held-out bytes for both, and a loss a briefly trained model can have.
        assert r["utf8_bytes"] == runs["ours"]["utf8_bytes"] > 0
        assert r["bytes"] == r["utf8_bytes"]  # every byte scored, each exactly once
        assert math.isfinite(r["bits_per_byte"]) and 0 < r["bits_per_byte"] < 20
    share = {impl: r["real_tokens"] / r["positions"] for impl, r in runs.items()}
    # Packed rows are full: only the tail of the stream's last row (once per epoch) is padding.
    assert share["ours"] > 0.99
    assert share["minimind"] < share["ours"]  # one padded row per document
    assert "| 0.05 min | ours |" in proc.stdout and "ratio ours/minimind" in proc.stdout


def test_bf16_curve_starts_where_float32_does_on_the_same_batches(tmp_path):
    out = tmp_path / "curve.json"
    args = ["--steps", "12", "--docs", "400", "--hidden", "32", "--layers", "1", "--heads", "2"]
    args += ["--seq", "32", "--vocab", "512", "--corpus", str(make_corpus(tmp_path))]
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_bf16.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [(r["dtype"], r["seed"]) for r in runs] == [
        ("float32", 1),
        ("bfloat16", 1),
        ("float32", 2),
    ]
    fp_a, bf_a, fp_b = (r["losses"] for r in runs)
    assert len(fp_a) == len(bf_a) == len(fp_b) == 12
    # Same weights, same first batch: only rounding separates bf16 from float32 at step 1.
    assert abs(bf_a[0] - fp_a[0]) < 0.05
    assert bf_a[0] != fp_a[0]  # bf16 autocast really ran
    assert "within noise" in proc.stdout
