"""A training asset stopped mid-run is retried by Dagster and continues from its saved step."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import dagster as dg

from tests.conftest import smoke_resource


def test_sigterm_then_retry_resumes_from_the_saved_step(smoke_graph, tmp_path):
    from minillm_assets.training import pretrain_checkpoint

    src = smoke_graph.root
    shutil.copytree(src / "out" / "tokenizer", tmp_path / "out" / "tokenizer")
    shutil.copytree(src / "out" / "tokens" / "pretrain", tmp_path / "out" / "tokens" / "pretrain")
    res = smoke_resource(tmp_path)
    resume_file = res.checkpoint_dir("pretrain") / "resume.pt"

    def stop_after_first_save() -> None:
        deadline = time.monotonic() + 120
        while not resume_file.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)  # what a preempted node or `kill` sends

    stopper = threading.Thread(target=stop_after_first_save, daemon=True)
    stopper.start()
    config = {
        "ops": {
            "pretrain_checkpoint": {
                "config": {"epochs": 40, "max_steps": 400, "save_interval": 5, "log_interval": 50}
            }
        }
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [pretrain_checkpoint], resources={"minillm": res}, run_config=config, instance=instance
        )
        stopper.join(timeout=5)
        assert result.success
        retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        assert len(retries) == 1
        logs = [r.user_message for r in instance.all_logs(result.run_id)]
    resumed = [m for m in logs if "resuming at step" in m]
    assert resumed, "the retry continued from the resume state"
    step = int(resumed[0].split("resuming at step ")[1].split("/")[0])
    assert 5 <= step < 400
    meta = res.checkpoint_dir("pretrain") / "model.json"
    assert '"step": 400' in meta.read_text()
