"""Fault injection across the whole graph: SIGKILL at random points in every stage, and a full
disk. Nothing under a final name is ever partial, the re-materialized artifacts equal an
uninterrupted run's, and a stage that cannot write fails naming the path and leaves the
previous artifact whole.

Kill trials run `dagster asset materialize --select '*'` as a subprocess in its own process
group (artifact roots and DAGSTER_HOME under a temporary folder). A trial picks a target step
(seeded), waits for the run's own "Started execution of step" line for it, sleeps a seeded
fraction of that step's duration in the uninterrupted reference run, and SIGKILLs the whole
group; then every final-named file under the roots is opened the way its reader opens it. The
next trial's run is the re-materialization (it resumes an interrupted training stage from its
resume state); after the last trial one run goes to completion and its mixes, tokenizer, token
tensors (bytes) and checkpoints (tensors, bitwise) are compared with the reference run.

Default run (`-m "not slow"`): 3 kill trials (`test_kill_trials_quick`). The slow test adds one
kill in every asset step of the graph (14 with hf_export) plus a late kill in each training step
(`test_kill_trials_every_stage`, 17), so a full run has 20.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from minillm_core.artifacts import sha256_tree
from tests.faults_helpers import (
    Run,
    compare_weights,
    count,
    materialize,
    normalized_digest,
    reference_run,
    roots,
    scan_artifacts,
    weights,
)

pytestmark = pytest.mark.faults

ASSET_STEPS = [
    "pretrain_mix",
    "sft_mix",
    "dpo_mix",
    "tokenizer",
    "pretrain_tokens",
    "sft_tokens",
    "dpo_tokens",
    "pretrain_checkpoint",
    "sft_checkpoint",
    "dpo_checkpoint",
    "pretrain_eval",
    "sft_eval",
    "dpo_eval",
]
TRAINING_STEPS = ["pretrain_checkpoint", "sft_checkpoint", "dpo_checkpoint"]


def graph_steps() -> list[str]:
    """Every materializable asset of the graph (a step each): the 13 above plus any added since."""
    from minillm_assets.definitions import all_assets

    keys = [
        k.path[-1] for a in all_assets if hasattr(a, "keys") and a.is_executable for k in a.keys
    ]
    assert set(ASSET_STEPS) <= set(keys), set(ASSET_STEPS) - set(keys)
    return ASSET_STEPS + sorted(set(keys) - set(ASSET_STEPS))


STAGES = ("pretrain", "sft", "dpo")


def _last_eval_metrics(base: Path) -> dict[str, dict]:
    out = {}
    path = roots(base)["tf"] / "eval_results.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        out[rec["stage"]] = rec["metrics"]
    return out


def _scan(base: Path, context: str) -> None:
    r = roots(base)
    checked, problems = scan_artifacts(r["processed"], r["out"], r["tf"])
    count("files_scanned", checked)
    assert not problems, f"after {context}: files under final names are unreadable:\n" + "\n".join(
        problems[:10]
    )


def _unfinished(base: Path, stage: str) -> bool:
    import torch

    path = roots(base)["out"] / stage / "resume.pt"
    return path.exists() and not torch.load(path, weights_only=True).get("finished", True)


def _kill_trials(
    tmp_path: Path, tmp_path_factory, seed: int, targets: list[tuple[str, float, float]]
) -> None:
    """Each target is (step, lo, hi): kill at a seeded uniform fraction in [lo, hi] of the step's
    duration in the reference run, counted from the moment this run starts the step."""
    ref, times = reference_run(tmp_path_factory)
    base = tmp_path / "interrupted"
    rng = random.Random(seed)
    log = []
    for i, (step, lo, hi) in enumerate(targets):
        run = Run(base, "*")
        t_start = None
        deadline = time.monotonic() + 300
        while t_start is None and run.proc.poll() is None and time.monotonic() < deadline:
            t_start = run.step_started(step)
            time.sleep(0.005)
        start, end = times.get(step, (0.0, 0.2))
        delay = rng.uniform(lo, hi) * max(end - start, 0.05)
        time.sleep(delay)
        finished = run.proc.poll() is not None
        run.kill()
        if t_start is None:
            # The run ended before the step: a previous kill made it fail? Show why.
            pytest.fail(f"trial {i}: step {step} never started:\n{run.output[-3000:]}")
        count("kill_trials")
        if not finished:
            count("kills_survived")
        unfinished = [s for s in STAGES if _unfinished(base, s)]
        if unfinished:
            count("kills_leaving_a_resume_state")
        log.append(
            f"trial {i}: SIGKILL {delay:.2f}s into {step}"
            f"{' (run had already finished)' if finished else ''}"
            f"{'; unfinished resume state: ' + ', '.join(unfinished) if unfinished else ''}"
        )
        _scan(base, log[-1])
    materialize(base, "*")
    count("rematerializations")
    _scan(base, "the final run")
    assert normalized_digest(base) == normalized_digest(ref), "\n".join(log)
    for stage in STAGES:
        bitwise, worst = compare_weights(weights(ref, stage), weights(base, stage), atol=0.0)
        assert bitwise, f"{stage} weights differ by {worst} after {log}"
        count("checkpoints_bitwise_equal")
    # Greedy evaluation of equal weights gives equal scores.
    assert _last_eval_metrics(base) == _last_eval_metrics(ref)
    print("\n".join(log))


def test_kill_trials_quick(tmp_path, tmp_path_factory):
    """Three seeded kills: one in the data steps, one late in training (so an unfinished resume
    state is left for the next run to continue from), one anywhere."""
    rng = random.Random(10)
    targets = [
        (rng.choice(ASSET_STEPS[:7]), 0.0, 1.0),
        (rng.choice(TRAINING_STEPS), 0.5, 0.95),
        (rng.choice(ASSET_STEPS), 0.0, 1.0),
    ]
    _kill_trials(tmp_path, tmp_path_factory, seed=10, targets=targets)


@pytest.mark.slow
def test_kill_trials_every_stage(tmp_path, tmp_path_factory):
    """One seeded kill anywhere in every asset step of the graph, plus one late in each training
    step, in a seeded order."""
    targets = [(s, 0.0, 1.0) for s in graph_steps()] + [(s, 0.5, 0.95) for s in TRAINING_STEPS]
    random.Random(11).shuffle(targets)
    _kill_trials(tmp_path, tmp_path_factory, seed=11, targets=targets)


# ------------------------------------------------------------------------------ disk full


def _mount_tiny(path: Path, size: str) -> bool:
    """A tmpfs of `size` at `path` (root only); False when mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0


def _fill(path: Path, leave: int = 4096) -> None:
    free = shutil.disk_usage(path).free
    with open(path / "ballast", "wb") as f:
        try:
            f.write(b"\0" * max(free - leave, 0))
        except OSError:
            pass


def _failure_text(result) -> str:
    return "\n".join(str(e.event_specific_data) for e in result.all_events if e.is_step_failure)


def _materialize(resource, names: list[str]):
    import dagster as dg

    from minillm_assets.definitions import all_assets

    selected = [a for a in all_assets if any(k.path[-1] in names for k in getattr(a, "keys", []))]
    with dg.instance_for_test() as instance:
        return dg.materialize(
            selected, resources={"minillm": resource}, instance=instance, raise_on_error=False
        )


@pytest.mark.parametrize("mode", ["tmpfs", "injected"])
def test_disk_full_fails_naming_the_path_and_keeps_the_previous_artifact(
    tmp_path, monkeypatch, mode
):
    """`tmpfs`: the outputs live on an 8 MiB tmpfs this test mounts, filled to 4 KiB free before
    the second materialization (falls back to `injected` where mounting is not permitted);
    `injected`: every atomic write fails with ENOSPC when it is flushed."""
    from minillm_assets.resources import MiniLLMResource
    from tests.conftest import REPO

    tiny = tmp_path / "tiny"
    mounted = mode == "tmpfs" and _mount_tiny(tiny, "8m")
    tiny.mkdir(exist_ok=True)
    if mode == "tmpfs" and not mounted:
        print("tmpfs mount not permitted here: ENOSPC injected instead")
    count("disk_full_tmpfs" if mounted else "disk_full_injected_enospc")
    try:
        (tmp_path / "sources").mkdir()
        res = MiniLLMResource(
            profile="smoke",
            sources_dir=str(tmp_path / "sources"),
            samples_dir=str(REPO / "dataset"),
            processed_dir=str(tiny / "processed"),
            out_dir=str(tiny / "out"),
            tf_dir=str(tmp_path / "tf"),
        )
        first = _materialize(
            res,
            [
                "pretrain_mix",
                "sft_mix",
                "dpo_mix",
                "tokenizer",
                "pretrain_tokens",
                "pretrain_checkpoint",
            ],
        )
        assert first.success, _failure_text(first)
        targets = {  # asset -> (the artifact that must stay untouched, the path the error names)
            "pretrain_mix": (res.mix_path("pretrain"), res.mix_path("pretrain")),
            "pretrain_tokens": (res.tokens_dir("pretrain"), res.tokens_dir("pretrain")),
            "pretrain_checkpoint": (
                res.checkpoint_dir("pretrain"),
                res.checkpoint_dir("pretrain") / "model.safetensors",
            ),
        }
        before = {k: sha256_tree(v[0]) for k, v in targets.items()}
        if mounted:
            _fill(tiny)
        else:
            import minillm_core.artifacts as artifacts

            def enospc(path):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))

            monkeypatch.setattr(artifacts, "_fsync_path", enospc)
        for asset, (artifact, named) in targets.items():
            result = _materialize(res, [asset])
            assert not result.success, f"{asset} succeeded on a full disk"
            msg = _failure_text(result)
            assert f"no space left on device while writing {named}" in msg, msg[-2000:]
            assert "bytes (written before the disk filled)" in msg and "bytes free there" in msg
            assert sha256_tree(artifact) == before[asset], f"{asset}: previous artifact changed"
            leftovers = [p for p in tiny.rglob("*") if ".tmp-" in p.name or ".mix-spool" in p.name]
            assert not leftovers, leftovers
            count("disk_full_failures_reported")
        # With space again, the same stage succeeds.
        if mounted:
            (tiny / "ballast").unlink()
        else:
            monkeypatch.undo()
        again = _materialize(res, ["pretrain_tokens"])
        assert again.success, _failure_text(again)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(tiny)], check=False)
