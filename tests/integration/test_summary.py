"""The run summary on a real smoke run's artifacts (the session's smoke graph): a row per stage
with the final loss, the latest scores, the recorded step times and the artifact paths; and
`minillm summary` printing it."""

from __future__ import annotations

import json

from minillm_core.layout import Layout
from minillm_core.summary import save_step_times, summary_rows, summary_table, write_summary


def _layout(smoke_graph) -> Layout:
    root = smoke_graph.root
    return Layout.at(root, processed_dir="processed", out_dir="out", tf_dir="tf_dir")


def test_summary_of_a_smoke_run(smoke_graph):
    layout = _layout(smoke_graph)
    rows = {r[0]: r[1:] for r in summary_rows(layout)}
    assert list(rows) == ["mix", "tokenizer", "tokens", "pretrain", "sft", "dpo", "hf export"]
    meta = json.loads((layout.checkpoint_dir("sft") / "model.json").read_text())
    loss, scores, took, artifact = rows["sft"]
    assert loss == f"{meta['final_loss']:.4g} ({meta['step']} steps)"
    assert "identity_score" in scores and took == "-" and artifact == "out/sft"
    assert rows["tokenizer"][1] == "vocab 1024"
    save_step_times(layout, {"sft_checkpoint": 2.5, "sft_eval": 1.0, "tokenizer": 0.25})
    rows = {r[0]: r[1:] for r in summary_rows(layout)}
    assert rows["sft"][2] == "3.5 s" and rows["tokenizer"][2] == "0.2 s"
    table = write_summary(layout)
    assert layout.summary_file.read_text() == table + "\n"
    assert "total step time 3.8 s" in table and str(layout.results_file) in table


def test_summary_command_prints_the_table(smoke_graph, capsys):
    from minillm_cli.main import main

    assert main(["summary", "--root", str(smoke_graph.root / "nowhere")]) == 0
    assert "nothing built under" in capsys.readouterr().out
    layout = _layout(smoke_graph)
    assert summary_table(layout).startswith("| stage")
