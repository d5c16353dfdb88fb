"""`minillm tokenizer`: train the byte-level BPE tokenizer from pretrain, SFT or DPO JSONL.

The output defaults to the layout's `<root>/out/tokenizer` (`MINILLM_ROOT`, else the checkout);
paths typed on the command line are relative to the current directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from minillm_core.errors import ArtifactError, ConfigError
from minillm_core.layout import Layout, user_path
from minillm_core.profiles import PROFILES, preset
from minillm_core.tokenizer import (
    TokenizerConfig,
    TokenizerError,
    check_tokenizer,
    train_tokenizer,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minillm tokenizer",
        description="Train the byte-level BPE tokenizer from pretrain, SFT or DPO JSONL.",
    )
    p.add_argument(
        "--data_path",
        "--data-path",
        nargs="+",
        required=True,
        type=user_path,
        help="JSONL mix files ({'text'}, {'conversations'|'messages'}, {'chosen','rejected'})",
    )
    p.add_argument(
        "--out_dir",
        "--out-dir",
        "--tokenizer_dir",
        type=user_path,
        default=None,
        help="output directory (default: <root>/out/tokenizer)",
    )
    p.add_argument(
        "--vocab_size",
        "--vocab-size",
        type=int,
        default=None,
        help="vocabulary size incl. special tokens (default 6400)",
    )
    p.add_argument("--max_chars_per_doc", "--doc-cap", "--doc_cap", type=int, default=None)
    p.add_argument("--max_chars_total", "--max-chars", "--max_chars", type=int, default=None)
    p.add_argument("--num_threads", "--num-threads", type=int, default=None)
    p.add_argument("--trainer", choices=["auto", "rust", "python"], default=None)
    p.add_argument("--pattern", default=None, help="split regex (default: the GPT-4-style variant)")
    p.add_argument(
        "--profile", default=None, choices=sorted(PROFILES), help="preset to layer under the flags"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    layers: list[dict[str, Any]] = []
    if args.profile:
        layers.append(preset(args.profile, "tokenizer"))
    layers.append(
        {
            "vocab_size": args.vocab_size,
            "max_chars_per_doc": args.max_chars_per_doc,
            "max_chars_total": args.max_chars_total,
            "num_threads": args.num_threads,
            "trainer": args.trainer,
            "pattern": args.pattern,
        }
    )
    try:
        cfg = TokenizerConfig.resolve(*layers)
        report = train_tokenizer(cfg, args.data_path, args.out_dir or Layout.at().tokenizer_dir)
    except (ConfigError, TokenizerError, ArtifactError) as exc:
        print(f"minillm tokenizer: {exc}", file=sys.stderr)
        return 2
    md = report.metadata
    print(
        json.dumps(
            {
                k: md[k]
                for k in (
                    "vocab_size",
                    "trainer",
                    "training_seconds",
                    "chars_used",
                    "roundtrip_ok",
                    "compression_heldout_zh",
                    "compression_heldout_en",
                    "hash",
                )
            },
            ensure_ascii=False,
            indent=2,
        )
    )
    problems = check_tokenizer(report.path)
    for problem in problems:
        print(f"check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
