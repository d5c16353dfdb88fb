"""The whole smoke graph run twice from scratch gives the same artifacts.

Run A: `dagster asset materialize --select '*'` in a subprocess, one torch thread (the reference
run the kill trials also use). Run B: the in-process `smoke_graph` of tests/conftest.py, with
torch's default thread count, in another root. Mixes, tokenizer (ranks, hash, pickle) and token
tensors must be byte-identical (index.json too: it records `mix_path` relative to itself);
checkpoint weights must agree within 1e-5 (they are bitwise equal when both runs
use the same thread count: the kill trials check that with atol 0); eval metrics within 1e-4.
Files that carry timings or wall-clock stamps are listed, not compared: the mix and tokenizer
sidecars, model.json, eval_results.jsonl and TensorBoard event files.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from tests.faults_helpers import (
    compare_weights,
    count,
    normalized_digest,
    reference_run,
    roots,
    weights,
)

STAGES = ("pretrain", "sft", "dpo")
# Wall-clock content: the only files allowed to differ between two runs (docs/reliability.md).
TIMED = (
    ".meta.json",
    "tokenizer_meta.json",
    "model.json",
    "eval_results.jsonl",
    "events.out.tfevents",
    "hf/README.md",
    "hf/minillm_export.json",
)  # the last two: hf_export's verify_seconds


def _files(base: Path) -> dict[str, str]:
    out = {}
    for key in ("processed", "out"):
        root = roots(base)[key]
        for p in sorted(root.rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
                data = p.read_bytes().replace(str(base).encode(), b"<ROOT>")
                out[f"{key}/{p.relative_to(root)}"] = hashlib.sha256(data).hexdigest()
    return out


def _metrics(path: Path) -> dict[str, dict]:
    return {r["stage"]: r["metrics"] for r in map(json.loads, path.read_text().splitlines())}


def test_two_runs_from_scratch_give_the_same_artifacts(tmp_path_factory, smoke_graph):
    a, _ = reference_run(tmp_path_factory)
    b = smoke_graph.root
    da, db = normalized_digest(a), normalized_digest(b)
    assert len(da) >= 20, da
    assert da == db, {
        k: (da.get(k), db.get(k)) for k in set(da) | set(db) if da.get(k) != db.get(k)
    }
    count("artifacts_byte_identical", len(da))

    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys()
    differ = sorted(k for k in fa if fa[k] != fb[k])
    unexpected = [
        k
        for k in differ
        if not k.endswith(TIMED) and not k.endswith((".safetensors", "resume.pt", "loss.png"))
    ]
    assert not unexpected, unexpected
    print("files differing between the two runs (timings, or float weights):", differ)

    for stage in STAGES:
        bitwise, worst = compare_weights(weights(a, stage), weights(b, stage), atol=1e-5)
        print(f"{stage} weights: {'bitwise equal' if bitwise else f'max |diff| {worst:.2e}'}")
        count("checkpoints_bitwise_equal" if bitwise else "checkpoints_within_tolerance")

    ma = _metrics(roots(a)["tf"] / "eval_results.jsonl")
    mb = _metrics(b / "tf_dir" / "eval_results.jsonl")
    assert ma.keys() == mb.keys() == set(STAGES)
    for stage in STAGES:
        assert ma[stage].keys() == mb[stage].keys()
        for k, v in ma[stage].items():
            w = mb[stage][k]
            if isinstance(v, float) and isinstance(w, float) and math.isfinite(v):
                assert w == pytest.approx(v, rel=1e-4, abs=1e-4), (stage, k, v, w)
            else:
                assert v == w, (stage, k, v, w)
