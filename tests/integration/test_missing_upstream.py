"""Materializing a stage on a fresh checkout fails with one line naming what to build first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def test_sft_checkpoint_alone_names_missing_upstream_and_command(tmp_path):
    config = {
        "resources": {
            "minillm": {
                "config": {
                    "processed_dir": str(tmp_path / "processed"),
                    "out_dir": str(tmp_path / "out"),
                    "tf_dir": str(tmp_path / "tf"),
                }
            }
        }
    }
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    proc = subprocess.run(
        [
            DAGSTER,
            "asset",
            "materialize",
            "-m",
            "minillm_assets",
            "--select",
            "sft_checkpoint",
            "--config-json",
            json.dumps(config),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    expected = (
        "sft_checkpoint: upstream asset 'sft_tokens' has not been materialized "
        f"({tmp_path / 'out' / 'tokens' / 'sft'} is missing). Build it and everything it "
        "needs with: dagster asset materialize -m minillm_assets --select '*sft_checkpoint'"
    )
    assert expected in out
    assert "FileNotFoundError" not in out
