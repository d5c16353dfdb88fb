"""The code location loads the way users load it, and the graph has the documented shape."""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))

GROUPS = {
    "data": {"chinese_sources", "pretrain_mix", "sft_mix", "dpo_mix"},
    "tokenizer": {"tokenizer", "pretrain_tokens", "sft_tokens", "dpo_tokens"},
    "training": {"pretrain_checkpoint", "sft_checkpoint", "dpo_checkpoint"},
    "eval": {"pretrain_eval", "sft_eval", "dpo_eval"},
    "export": {"hf_export"},
}
EDGES = {
    **{f"{o}_mix": {"chinese_sources"} for o in ("pretrain", "sft", "dpo")},
    "tokenizer": {"pretrain_mix", "sft_mix", "dpo_mix"},
    "pretrain_tokens": {"pretrain_mix", "tokenizer"},
    "sft_tokens": {"sft_mix", "tokenizer"},
    "dpo_tokens": {"dpo_mix", "tokenizer"},
    "pretrain_checkpoint": {"pretrain_tokens", "tokenizer"},
    "sft_checkpoint": {"sft_tokens", "tokenizer", "pretrain_checkpoint"},
    "dpo_checkpoint": {"dpo_tokens", "tokenizer", "sft_checkpoint"},
    "pretrain_eval": {"pretrain_checkpoint", "pretrain_mix", "tokenizer"},
    "sft_eval": {"sft_checkpoint", "sft_mix", "tokenizer"},
    "dpo_eval": {"dpo_checkpoint", "sft_checkpoint", "dpo_mix", "tokenizer"},
    "hf_export": {"dpo_checkpoint", "tokenizer"},
}


def test_graph_groups_edges_and_descriptions():
    from minillm_assets import defs

    graph = defs.resolve_asset_graph()
    groups: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        groups.setdefault(node.group_name, set()).add(key.to_user_string())
        assert node.description, f"{key.to_user_string()} has a description"
        parents = {p.to_user_string() for p in node.parent_keys}
        assert parents == EDGES.get(key.to_user_string(), set()), key
    assert groups == GROUPS


def test_unknown_profile_is_refused_with_allowed_values():
    from minillm_assets.resources import MiniLLMResource

    try:
        MiniLLMResource(profile="tpu")
    except Exception as exc:  # pydantic ValidationError or Dagster's wrapper
        assert "tpu" in str(exc) and "smoke" in str(exc) and "gpu" in str(exc)
    else:
        raise AssertionError("unknown profile accepted")


def test_smoke_profile_uses_in_process_executor():
    from minillm_assets import defs

    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def is dg.in_process_executor
