"""Evaluation results written by several processes at once, and the smoke graph's held-out split:
split from tests/unit/test_evaluate.py (these fork processes or run the Dagster graph)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp

from minillm_core.eval import config, data, results, run
from tests.unit.test_evaluate import _stream_text


def _appender(path: str, who: int, n: int) -> None:
    for i in range(n):
        # Lines well above PIPE_BUF (4 KiB), where unlocked appends can interleave.
        results.append_jsonl(path, {"who": who, "i": i, "pad": "评" * 40_000})


def test_concurrent_appends_never_interleave(tmp_path):
    f = tmp_path / "eval_results.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_appender, args=(str(f), w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = f.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 45
    parsed = [json.loads(x) for x in lines]  # every line is whole, valid JSON
    assert sorted((r["who"], r["i"]) for r in parsed) == [
        (w, i) for w in range(3) for i in range(15)
    ]


def _finish(cfg_json: str) -> None:
    cfg = config.EvalConfig.model_validate_json(cfg_json)
    run.finish(
        cfg,
        {"loss": 1.0, "perplexity": math.e},
        [{"prompt": "p", "completion": "c"}],
        checkpoint_sha256="ab" * 32,
        step=7,
        out=open("/dev/null", "w"),
    )


def test_two_evaluations_at_once_give_two_lines(tmp_path):
    cfg = config.EvalConfig(
        stage="pretrain",
        checkpoint=tmp_path / "ckpt",
        results_file=tmp_path / "eval_results.jsonl",
        tensorboard_dir="",
    )
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_finish, args=(cfg.model_dump_json(),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = cfg.results_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    for line in map(json.loads, lines):
        assert line["stage"] == "pretrain" and line["step"] == 7
        assert line["checkpoint"] == str(tmp_path / "ckpt")
        assert line["checkpoint_sha256"] == "ab" * 32
        assert line["metrics"] == {"loss": 1.0, "perplexity": math.e}
        assert line["config"]["stage"] == "pretrain"
        assert line["samples"] == [{"prompt": "p", "completion": "c"}]
        assert "timestamp" in line


def test_smoke_pipeline_heldout_is_disjoint_from_its_tensors(smoke_graph):
    """The same property on what the smoke graph built from the shipped samples."""
    from minillm_core.tokenizer import load_tokenizer
    from minillm_core.tokens import TensorConfig, TokenDataset, encode_record

    res = smoke_graph.resource
    tok = load_tokenizer(res.tokenizer_dir)
    for stage in ("pretrain", "sft", "dpo"):
        ds = TokenDataset(res.tokens_dir(stage), expected_tokenizer_hash=tok.hash)
        heldout = list(data.read_jsonl(res.mix_path(stage, heldout=True)))
        assert heldout and len(ds)
        if stage == "pretrain":
            stream = _stream_text(ds, tok)
            assert not [r["source"] for r in heldout if r["text"] in stream]
            continue
        key = "input_ids" if stage == "sft" else "chosen_input_ids"
        tcfg = TensorConfig(max_length=ds.max_length)
        trained = {tuple(ds[i][key].tolist()) for i in range(len(ds))}
        rows = [encode_record(stage, r, tok, tcfg) for r in heldout]
        assert not [
            r["source"]
            for r, row in zip(heldout, rows)
            if row is not None and tuple(row[key].tolist()) in trained
        ]
