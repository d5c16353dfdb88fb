"""`python -m minillm_assets.pipeline`: materialize the graph with the Dagster CLI, then print
where the checkpoints and eval results are. scripts/run.sh calls this after setting up.

Extra training options use the manual commands' flags (`--batch_size 8 --learning_rate 3e-4`);
they are parsed by the same parser as `minillm pretrain` and turned into run config, so a typo
fails here with the parser's message instead of deep inside a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from minillm_assets.resources import STAGES, MiniLLMResource
from minillm_cli.train import train_overrides
from minillm_core.devices import require_profile
from minillm_core.errors import DeviceUnavailableError
from minillm_core.eval import print_latest
from minillm_core.profiles import PROFILES
from minillm_core.train.checkpointer import load_checkpoint


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


def summary(res: MiniLLMResource) -> None:
    print("\n== MiniLLM pipeline finished")
    for stage in STAGES:
        ckpt = res.checkpoint_dir(stage)
        if (ckpt / "model.json").exists():
            model, meta = load_checkpoint(ckpt)
            print(
                f"  {stage:<8} checkpoint: {ckpt}  (step {meta.get('step')}, "
                f"{model.num_parameters():,} parameters)"
            )
    print(f"  tokenizer:          {res.tokenizer_dir}")
    print(f"  eval results:       {res.results_file}")
    print(f"  TensorBoard:        tensorboard --logdir {res.tf}")
    if res.results_file.exists():
        print()
        print_latest(res.results_file, n=3)


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
    print("+ " + shlex.join(["dagster", *cmd[1:]]), flush=True)
    t0 = time.monotonic()
    rc = subprocess.call(cmd, env={**os.environ, "MINILLM_PROFILE": args.profile})
    if rc != 0:
        print(
            f"\nMiniLLM pipeline failed (exit {rc}); the failing step's message is above.",
            file=sys.stderr,
        )
        return rc
    summary(MiniLLMResource(profile=args.profile))
    print(f"\n  wall time: {time.monotonic() - t0:.0f} s (profile {args.profile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
