"""The whole smoke graph, materialized in-process: every artifact exists and loads."""

from __future__ import annotations

import json

import dagster as dg
import torch

from minillm_core.tokenizer import load_tokenizer
from minillm_core.tokens import TokenDataset
from minillm_core.train.checkpointer import load_checkpoint

STAGES = ("pretrain", "sft", "dpo")


def test_every_asset_materialized_and_checks_passed(smoke_graph):
    from minillm_assets import defs

    result = smoke_graph.result
    assert result.success
    keys = {
        m.asset_key.to_user_string()
        for m in result.get_asset_materialization_events()
        for m in [m.event_specific_data.materialization]
    }
    graph = defs.resolve_asset_graph()
    expected = {
        k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_materializable
    }
    assert keys == expected
    checks = result.get_asset_check_evaluations()
    assert checks, "asset checks ran"
    failed = [
        c.check_name for c in checks if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR
    ]
    assert not failed, failed


def test_mixes_are_jsonl_with_sources(smoke_graph):
    res = smoke_graph.resource
    for stage in STAGES:
        lines = res.mix_path(stage).read_text(encoding="utf-8").splitlines()
        assert lines, stage
        for line in lines:
            assert json.loads(line)["source"]
        assert res.mix_path(stage, heldout=True).exists()


def test_tokenizer_tensors_and_checkpoints_load(smoke_graph):
    res = smoke_graph.resource
    tok = load_tokenizer(res.tokenizer_dir)
    text = "你好，世界！Hello 123"
    assert tok.decode(tok.encode(text)) == text
    for stage in STAGES:
        ds = TokenDataset(res.tokens_dir(stage), expected_tokenizer_hash=tok.hash)
        assert len(ds) > 0
        model, meta = load_checkpoint(res.checkpoint_dir(stage))
        ids = torch.tensor([tok.encode(text, prepend=tok.get_bos_token_id())])
        logits = model(ids)
        assert logits.shape[-1] == tok.get_vocab_size()
        assert torch.isfinite(logits).all()


def test_three_eval_lines(smoke_graph):
    lines = smoke_graph.resource.results_file.read_text(encoding="utf-8").splitlines()
    stages = [json.loads(line)["stage"] for line in lines]
    assert stages == ["pretrain", "sft", "dpo"]


def test_eval_numbers_shown_on_eval_assets(smoke_graph):
    for stage in STAGES:
        mats = smoke_graph.result.asset_materializations_for_node(f"{stage}_eval")
        assert mats
        numbers = {
            k: v.value for k, v in mats[-1].metadata.items() if isinstance(v.value, (int, float))
        }
        assert numbers, f"{stage}_eval shows numbers"
