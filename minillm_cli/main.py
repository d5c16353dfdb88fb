"""`minillm <command> [options]`: one entry point for the manual per-stage commands.

Each command is the `main(argv)` of a front-end module, imported only when called, so `minillm --help`
stays fast and a GPU node without some optional package can still run the stages it has.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function, summary)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "mix": ("minillm_cli.mix", "main", "build pretrain/SFT/DPO JSONL mixes from data/chinese"),
    "tokenizer": ("minillm_cli.tokenizer", "main", "train the byte-level BPE tokenizer"),
    "tokens": ("minillm_cli.tokens", "main", "export token tensors for one stage"),
    "pretrain": ("minillm_cli.train", "main_pretrain", "pretrain from token tensors or JSONL"),
    "sft": ("minillm_cli.train", "main_sft", "supervised fine-tuning from the pretrain weights"),
    "dpo": ("minillm_cli.train", "main_dpo", "DPO from the latest SFT weights"),
    "eval": ("minillm_cli.eval", "main", "evaluate a checkpoint; append to eval_results.jsonl"),
    "chat": ("minillm_cli.chat", "main", "talk to a checkpoint in the terminal"),
    "export-hf": (
        "minillm_cli.export",
        "main",
        "export a checkpoint as a HuggingFace Llama folder",
    ),
    "serve": ("minillm_cli.serve", "main", "OpenAI-compatible chat server for a checkpoint"),
    "summary": (
        "minillm_cli.summary",
        "main",
        "the last run's table: stages, losses, scores, times, artifacts",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, _, summary) in COMMANDS.items())
    return (
        f"usage: minillm <command> [options]\n\ncommands:\n{rows}\n\n"
        "`minillm <command> --help` shows a command's options."
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"minillm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    result = getattr(importlib.import_module(module), func)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
