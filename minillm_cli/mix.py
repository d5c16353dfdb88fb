"""`minillm mix`: build the pretrain / SFT / DPO JSONL mixes from data/chinese.

Defaults come from the project layout (`MINILLM_ROOT`, else the checkout): sources under
`<root>/data/chinese`, shipped samples in the checkout's `dataset/`, output in
`<root>/data/processed`. Paths typed on the command line are relative to the current directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from minillm_core.data import OUTPUTS, MixConfig, MixError, build_mix, dry_run
from minillm_core.errors import ConfigError
from minillm_core.layout import Layout, user_path
from minillm_core.profiles import PROFILES, preset


def _kv(text: str) -> tuple[str, int]:
    k, sep, v = text.partition("=")
    if not sep or k not in OUTPUTS or not v.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected OUTPUT=N with OUTPUT in {'/'.join(OUTPUTS)} (got {text!r})"
        )
    return k, int(v)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="minillm mix", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--output-dir", "--output_dir", type=user_path, help="default: <root>/data/processed"
    )
    ap.add_argument("--outputs", nargs="+", choices=OUTPUTS, default=list(OUTPUTS))
    ap.add_argument("--config", type=user_path, help="JSON or YAML file of MixConfig fields")
    ap.add_argument("--profile", choices=sorted(PROFILES), help="apply a profile's mix preset")
    ap.add_argument(
        "--sources-dir",
        "--data_path",
        dest="sources_dir",
        type=user_path,
        help="default: <root>/data/chinese",
    )
    ap.add_argument("--samples-dir", type=user_path, help="default: the checkout's dataset/")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--max-records", nargs="+", type=_kv, metavar="OUTPUT=N")
    ap.add_argument("--model-name")
    ap.add_argument("--model-author")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="print detected formats, counts, every skipped line and samples of every file; "
        "write nothing; exit 1 if any file or category would fail",
    )
    ap.add_argument("--show", type=int, default=2, help="samples per file in --dry-run")
    return ap


def _config(args: argparse.Namespace, layout: Layout) -> MixConfig:
    """Layers, lowest first: the layout's folders, the profile, the config file, the flags."""
    layers: list[dict[str, Any] | None] = [
        {"sources_dir": str(layout.sources), "samples_dir": str(layout.samples)},
        preset(args.profile, "mix") if args.profile else None,
    ]
    if args.config:
        layers.append(MixConfig.load_layer(args.config))
    layers.append(
        {
            "sources_dir": args.sources_dir,
            "samples_dir": args.samples_dir,
            "seed": args.seed,
            "model_name": args.model_name,
            "model_author": args.model_author,
            "max_records": dict(args.max_records) if args.max_records else None,
        }
    )
    return MixConfig.resolve(*layers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    layout = Layout.at()
    try:
        cfg = _config(args, layout)
        if args.dry_run:
            failures = dry_run(cfg, args.outputs, args.show)
            return 1 if failures else 0
        out_dir: Path = args.output_dir or layout.processed
        for output in args.outputs:
            r = build_mix(cfg, output, out_dir)
            print(
                f"{output}: {r.records} records -> {r.path}; {r.heldout_records} held out "
                f"-> {r.heldout_path}"
            )
    except (MixError, ConfigError) as exc:
        print(f"minillm mix: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
