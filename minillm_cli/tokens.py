"""`minillm tokens` (and the seed's `scripts/export_embeddings.py`): export one stage's token tensors.

Default paths come from the project layout (`MINILLM_ROOT`, else the checkout), so the command
writes the same place from any folder; a path the user types is relative to where they typed it.
The row length defaults to the model's context (`ModelConfig.max_position_embeddings`, the
profile's when `--profile` is given): the tensors are packed at the length the model trains at.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minillm_core.errors import MiniLLMError
from minillm_core.layout import Layout, user_path
from minillm_core.model import ModelConfig
from minillm_core.profiles import PROFILES, preset
from minillm_core.schema import STAGES
from minillm_core.tokens import TensorConfig, export_tokens


def build_parser() -> argparse.ArgumentParser:
    summary = (export_tokens.__doc__ or "").split("\n")[0]
    p = argparse.ArgumentParser(prog="minillm tokens", description=summary)
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument(
        "--input",
        type=Path,
        help="the stage's JSONL mix (default data/processed/<stage>_chinese.jsonl "
        "under the project root)",
    )
    p.add_argument(
        "--output",
        type=Path,
        help="output directory (default out/tokens/<stage> under the project root)",
    )
    p.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer directory (default out/tokenizer under the project root)",
    )
    p.add_argument(
        "--profile", choices=sorted(PROFILES), help="layer a profile's preset under the flags"
    )
    p.add_argument(
        "--max-length",
        type=int,
        help="input positions per row (default the model's context, "
        f"{ModelConfig().max_position_embeddings}, or the --profile's)",
    )
    p.add_argument(
        "--layout", choices=("packed", "padded"), help="pretrain row layout (default packed)"
    )
    p.add_argument(
        "--bos-token", help="special token before every pretrain document (default <|bos|>)"
    )
    p.add_argument(
        "--append-eos",
        action="store_const",
        const=True,
        help="end every pretrain document with --eos-token",
    )
    p.add_argument("--eos-token", help="end token for --append-eos (default <|assistant_end|>)")
    p.add_argument(
        "--dtype", choices=("auto", "uint16", "int32", "int64"), help="on-disk dtype (default auto)"
    )
    p.add_argument("--shard-rows", type=int, help="rows per shard file")
    p.add_argument("--num-threads", type=int, help="encoding threads (default all CPUs)")
    return p


def _config(a: argparse.Namespace) -> TensorConfig:
    """The flags over the profile's preset; the row length is the (profile's) model context."""
    context = ModelConfig.resolve(
        preset(a.profile, "model") if a.profile else None
    ).max_position_embeddings
    flags = {
        "max_length": context if a.max_length is None else a.max_length,
        "layout": a.layout,
        "bos_token": a.bos_token,
        "append_eos": a.append_eos,
        "eos_token": a.eos_token,
        "dtype": a.dtype,
        "shard_rows": a.shard_rows,
        "num_threads": a.num_threads,
    }
    return TensorConfig.resolve(preset(a.profile, "tensors") if a.profile else None, flags)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    layout = Layout.at()
    try:
        report = export_tokens(
            _config(a),
            a.stage,
            user_path(a.input) if a.input else layout.mix_path(a.stage),
            user_path(a.tokenizer) if a.tokenizer else layout.tokenizer_dir,
            user_path(a.output) if a.output else layout.tokens_dir(a.stage),
        )
    except (MiniLLMError, ValueError) as exc:
        print(f"minillm tokens: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.model_dump(mode="json"), ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
