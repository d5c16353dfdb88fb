"""`python -m minillm_assets.pipeline`: materialize the graph with the Dagster CLI, then print
a summary table of stages, losses, scores, times and artifacts (`minillm_core.summary`).
scripts/run.sh calls this after setting up. The terminal shows the INFO lines; the full log
(Dagster's DEBUG events included) goes to out/logs/run-<time>.log, or `MINILLM_LOG`.

Extra training options use the manual commands' flags (`--batch_size 8 --learning_rate 3e-4`);
they are parsed by the same parser as `minillm pretrain` and turned into run config, so a typo
fails here with the parser's message instead of deep inside a run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from minillm_assets.resources import STAGES
from minillm_cli.train import train_overrides
from minillm_core.devices import require_profile
from minillm_core.errors import DeviceUnavailableError
from minillm_core.layout import Layout
from minillm_core.profiles import PROFILES
from minillm_core.summary import save_step_times, write_summary


def run_config(profile: str, stage_args: dict[str, str]) -> dict[str, Any]:
    """Dagster run config selecting `profile`, with each stage's extra training options."""
    ops: dict[str, Any] = {}
    for stage, argstr in stage_args.items():
        if not argstr.strip():
            continue
        train, model = train_overrides(stage, shlex.split(argstr))
        if model and stage != "pretrain":
            raise SystemExit(
                f"{stage.upper()}_ARGS: {', '.join(model)} set the model shape, "
                "which only pretraining chooses (SFT and DPO inherit it)"
            )
        ops[f"{stage}_checkpoint"] = {"config": {**train, **({"model": model} if model else {})}}
    return {"resources": {"minillm": {"config": {"profile": profile}}}, "ops": ops}


# A Dagster console line: "<date> <time> <tz> - dagster - <LEVEL> - <job> - <run id> - ..."; the
# lines that follow one without this head (a traceback) belong to it.
_HEAD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} - \S+ - ([A-Z]+) - ")
_RUN_ID = re.compile(r" - ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) - ")


def run_logged(cmd: list[str], env: dict[str, str], log_file: Path) -> tuple[int, str | None]:
    """Run `cmd`; every line goes to `log_file`, the terminal gets all but Dagster's DEBUG
    events. Returns the exit code and the Dagster run id (None when no line named one)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    run_id, show = None, True
    with (
        open(log_file, "w", encoding="utf-8") as log,
        subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            head = _HEAD.match(line)
            if head:
                show = head.group(1) != "DEBUG"
                run_id = run_id or (m.group(1) if (m := _RUN_ID.search(line)) else None)
            if show:
                sys.stdout.write(line)
                sys.stdout.flush()
    return proc.returncode, run_id


def step_seconds(run_id: str | None) -> dict[str, float]:
    """Seconds per step of a run, from the Dagster instance's event log (empty without a
    persistent instance, i.e. DAGSTER_HOME unset: the run lived in a temporary one)."""
    if not run_id or not os.environ.get("DAGSTER_HOME"):
        return {}
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        stats = instance.get_run_step_stats(run_id)
    return {s.step_key: s.end_time - s.start_time for s in stats if s.start_time and s.end_time}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minillm_assets.pipeline", description=__doc__)
    p.add_argument(
        "--profile", default=os.environ.get("MINILLM_PROFILE", "smoke"), choices=sorted(PROFILES)
    )
    p.add_argument("--select", default="*", help="Dagster asset selection (default: everything)")
    for stage in STAGES:
        p.add_argument(
            f"--{stage}-args",
            default="",
            metavar="ARGS",
            help=f"extra options for {stage} training, as one string",
        )
    args = p.parse_args(argv)
    try:
        # Before the mix: a profile that needs CUDA stops here in seconds, in one line.
        require_profile(args.profile)
    except DeviceUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = run_config(args.profile, {s: getattr(args, f"{s}_args") for s in STAGES})
    dagster = str(Path(sys.executable).with_name("dagster"))
    cmd = [
        dagster,
        "asset",
        "materialize",
        "-m",
        "minillm_assets",
        "--select",
        args.select,
        "--config-json",
        json.dumps(config),
    ]
    layout = Layout.at()  # the resource's folders: MINILLM_ROOT, else the checkout
    log_file = Path(
        os.environ.get("MINILLM_LOG")
        or layout.logs_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    )
    print("+ " + shlex.join(["dagster", *cmd[1:]]), flush=True)
    print(f"  (INFO lines here; the full log, Dagster DEBUG included: {log_file})", flush=True)
    t0 = time.monotonic()
    rc, run_id = run_logged(cmd, {**os.environ, "MINILLM_PROFILE": args.profile}, log_file)
    if rc != 0:
        print(
            f"\nMiniLLM pipeline failed (exit {rc}); the failing step's message is above "
            f"(full log: {log_file}).",
            file=sys.stderr,
        )
        return rc
    save_step_times(layout, step_seconds(run_id))
    print("\n== MiniLLM pipeline finished\n")
    print(write_summary(layout))
    print(f"\n  wall time: {time.monotonic() - t0:.0f} s (profile {args.profile}); log: {log_file}")
    print(f"  this table: {layout.summary_file} (`minillm summary` prints it again)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
