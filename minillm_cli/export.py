"""`minillm export-hf`: export a checkpoint as a HuggingFace Llama folder (minillm_core.export)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minillm_cli.common import add_model_arguments, model_paths
from minillm_core.errors import ArtifactError, ConfigError
from minillm_core.export import ExportConfig, ExportError, export_hf
from minillm_core.layout import Layout
from minillm_core.tokenizer import TokenizerError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minillm export-hf",
        description="Export a checkpoint as a HuggingFace Llama folder (config.json, safetensors, "
        "tokenizer.json, chat template) that AutoModelForCausalLM loads.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--out",
        "--out-dir",
        "--out_dir",
        dest="out",
        type=Path,
        default=None,
        help="output folder (default out/hf)",
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument(
        "--verify",
        choices=["auto", "always", "never"],
        default=None,
        help="compare the export with the native model using transformers (auto: when installed)",
    )
    p.add_argument("--atol", type=float, default=None, help="logit tolerance (default 1e-4)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ckpt, tok_dir = model_paths(args)
    try:
        cfg = ExportConfig.resolve({"dtype": args.dtype, "verify": args.verify, "atol": args.atol})
        report = export_hf(
            ckpt,
            tok_dir,
            args.out or Layout.at().hf_dir,
            cfg,
            log=lambda m: print(m, file=sys.stderr),
        )
    except (ConfigError, ExportError, ArtifactError, TokenizerError) as exc:
        print(f"minillm export-hf: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.metadata, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
