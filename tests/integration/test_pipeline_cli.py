"""The one-shot pipeline as scripts/run.sh runs it: `dagster asset materialize --select '*'` in a
subprocess with the smoke profile, extra training flags passed through, INFO lines on the terminal
and the full log in a file, a summary table at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_pipeline_command_materializes_everything_and_passes_stage_args(tmp_path):
    env = {
        **os.environ,
        "MINILLM_ROOT": str(tmp_path),
        "TF_DIR": str(tmp_path / "tf"),
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    (tmp_path / "home").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "minillm_assets.pipeline",
            "--profile",
            "smoke",
            "--pretrain-args",
            "--batch_size 2 --learning_rate 0.002",
            "--dpo-args",
            "--beta 0.2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "dagster asset materialize -m minillm_assets --select '*'" in out
    assert "MiniLLM pipeline finished" in out
    # INFO on the terminal, everything in the log file under out/logs.
    assert " - DEBUG - " not in out and " - INFO - " in out
    logs = list((tmp_path / "out" / "logs").glob("run-*.log"))
    assert len(logs) == 1 and " - DEBUG - " in logs[0].read_text()
    assert str(logs[0]) in out
    pretrain = json.loads((tmp_path / "out" / "pretrain" / "model.json").read_text())
    assert pretrain["train"]["batch_size"] == 2
    assert pretrain["train"]["learning_rate"] == 0.002
    dpo = json.loads((tmp_path / "out" / "dpo" / "model.json").read_text())
    assert dpo["train"]["beta"] == 0.2
    lines = (tmp_path / "tf" / "eval_results.jsonl").read_text().splitlines()
    assert [json.loads(x)["stage"] for x in lines] == ["pretrain", "sft", "dpo"]
    # The summary table: a row per stage, with times from the Dagster event log.
    table = out[out.index("| stage") :]
    rows = {r.split("|")[1].strip(): r.split("|")[2:-1] for r in table.splitlines() if "|" in r}
    assert {"mix", "tokenizer", "tokens", "pretrain", "sft", "dpo"} <= set(rows)
    loss, scores, took, artifact = (c.strip() for c in rows["pretrain"])
    assert loss.endswith("(40 steps)") and "bits_per_byte" in scores
    assert took.endswith(" s") and artifact == "out/pretrain"
    assert "preference_accuracy" in rows["dpo"][1] and rows["dpo"][2].strip() != "-"
    assert (tmp_path / "out" / "run_summary.md").read_text().startswith("| stage")
