"""Arguments shared by the commands that load a trained model (chat, serve, export-hf)."""

from __future__ import annotations

import argparse
from pathlib import Path

from minillm_core.layout import Layout


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--checkpoint` and `--tokenizer`, shared by the commands that load a trained model."""
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint dir (default out/dpo under the project)",
    )
    parser.add_argument(
        "--tokenizer",
        "--tokenizer-dir",
        "--tokenizer_dir",
        dest="tokenizer",
        type=Path,
        default=None,
        help="tokenizer dir (default out/tokenizer)",
    )


def model_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The checkpoint and tokenizer dirs those arguments name (the latest DPO model by default)."""
    layout = Layout.at()
    return (args.checkpoint or layout.checkpoint_dir("dpo"), args.tokenizer or layout.tokenizer_dir)
