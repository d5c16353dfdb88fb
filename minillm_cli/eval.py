"""`minillm eval`: evaluate a checkpoint on its stage's held-out data (see minillm_core.eval)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from minillm_core.devices import require_device
from minillm_core.errors import ArtifactError, ConfigError
from minillm_core.eval import EvalConfig, check_eval, eval_thresholds, evaluate, print_latest
from minillm_core.profiles import preset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minillm eval",
        description="Evaluate a checkpoint on its stage's held-out data; "
        "print the scores and append one JSON line to eval_results.jsonl.",
    )

    # Each flag also answers to the seed's underscore spelling (--data_path, --batch_size, ...).
    def flag(name: str, **kw: Any) -> None:
        names = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else [])
        p.add_argument(*names, dest=name.replace("-", "_"), **kw)

    flag("stage", choices=["pretrain", "sft", "dpo"], help="which checkpoint kind")
    flag("checkpoint", type=Path, help="checkpoint dir (default out/<stage>)")
    flag("reference-checkpoint", type=Path, help="dpo: the SFT checkpoint (default out/sft)")
    flag(
        "data-path",
        type=Path,
        help="held-out JSONL (default data/processed/<stage>_chinese_heldout.jsonl)",
    )
    flag("tokenizer-dir", type=Path, help="tokenizer dir (default out/tokenizer)")
    flag("max-seq-len", type=int, help="longest row scored (default: the checkpoint's context)")
    flag("max-samples", type=int)
    flag("batch-size", type=int)
    flag("max-new-tokens", type=int)
    flag("results-file", type=Path, help="default $TF_DIR/eval_results.jsonl")
    flag("tensorboard-dir", type=str, help="default $TF_DIR/eval; '' disables")
    flag("device", help="cpu, cuda, cuda:0, auto")
    flag("dtype", choices=["auto", "float32", "bfloat16", "float16"])
    flag("model-name", help="name the identity probe expects")
    flag("model-author", help="author the identity probe expects")
    flag("seed", type=int)
    flag(
        "profile",
        help="layer a profile preset (smoke, gpu) under the flags and apply its "
        "thresholds; exit 1 when a check fails",
    )
    flag(
        "summary",
        type=int,
        nargs="?",
        const=3,
        default=None,
        help="print the last N results (default 3) and exit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.summary is not None:
        print_latest(args.results_file, n=args.summary)
        return 0
    if not args.stage:
        build_parser().error("--stage is required (or --summary)")
    values = {k: v for k, v in vars(args).items() if k not in ("profile", "summary")}
    try:
        layers = [preset(args.profile, "eval")] if args.profile else []
        cfg = EvalConfig.resolve(*layers, values)
        what = None if args.device else f"--profile {args.profile} (device {cfg.device})"
        require_device(cfg.device, what, "Use --device cpu (or auto)")
        report = evaluate(cfg)
    except (ConfigError, ArtifactError, ValueError, FileNotFoundError) as exc:
        # What a user can fix (a missing checkpoint, a bad flag) is one line, not a traceback.
        print(f"minillm eval: {exc}", file=sys.stderr)
        return 2
    if args.profile:
        problems = check_eval(report, eval_thresholds(args.profile, cfg.stage))
        for p in problems:
            print(f"check failed: {p}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
