"""`minillm chat`: talk to a checkpoint in the terminal, like nanochat's chat CLI.

Multi-turn: the whole conversation is re-rendered with the tokenizer's chat template every turn
(`render_for_completion`, which ends with `<|assistant_start|>`), so what the model sees is
exactly what SFT trained on. When the conversation outgrows the context, the oldest turns are
dropped first; only a single turn that is itself too long is cut from the left.

Tokens stream to stdout as `minillm_core.inference.generate` yields them, printed only up to the
last complete character (`TextStreamer`).

Input is read line by line from stdin, so a conversation can be piped in (`printf '你好\\n/quit\\n'
| minillm chat ...`); `/clear` starts a new conversation, `/quit` (or end of input) leaves.
Sampling is seeded (`--seed`, plus the turn number), so a session replays exactly; temperature 0
is greedy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import torch

from minillm_cli.common import add_model_arguments, model_paths
from minillm_core.inference import SamplingParams, TextStreamer, generate, stop_ids


def fit_conversation(tokenizer: Any, conv: list[dict[str, str]], budget: int) -> list[int]:
    """Prompt ids for `conv`, dropping the oldest turns until it fits in `budget` tokens."""
    conv = list(conv)
    ids = list(tokenizer.render_for_completion(conv))
    while len(ids) > budget and len(conv) > 1:
        # Drop the oldest exchange (user + assistant) so roles still alternate from a user turn.
        conv = conv[2:] if len(conv) > 2 else conv[1:]
        ids = list(tokenizer.render_for_completion(conv))
    return ids[-budget:] if len(ids) > budget else ids


def _lines(stdin: TextIO, stdout: TextIO, interactive: bool) -> Iterator[str]:
    while True:
        if interactive:
            print("you: ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            return
        yield line


def _answer(model: torch.nn.Module, tokenizer: Any, ids: list[int], params: SamplingParams,
            max_new_tokens: int, max_context: int, stdout: TextIO) -> str:
    """Stream one answer to `stdout`; returns its text."""
    streamer = TextStreamer(tokenizer)
    for tok in generate(model, ids, max_new_tokens, params, max_context=max_context):
        piece = streamer.push(tok)
        if piece:
            print(piece, end="", file=stdout, flush=True)
    print(streamer.flush(), file=stdout, flush=True)
    return streamer.text


def chat_loop(model: torch.nn.Module, tokenizer: Any, *, temperature: float = 0.6,
              top_k: int | None = 50, max_new_tokens: int = 256, max_context: int = 2048,
              seed: int = 42, stdin: TextIO | None = None, stdout: TextIO | None = None,
              prompt: str | None = None) -> list[dict[str, str]]:
    """Read user lines, stream answers; returns the final conversation (for tests).

    With `prompt`, answers that one prompt (only the answer is printed) and returns.
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    stops = tuple(stop_ids(tokenizer))
    interactive = prompt is None and hasattr(stdin, "isatty") and stdin.isatty()
    if interactive:
        print("MiniLLM chat. /clear starts over, /quit leaves.", file=stdout, flush=True)
    conv: list[dict[str, str]] = []
    lines = iter([prompt]) if prompt is not None else _lines(stdin, stdout, interactive)
    for turn, raw in enumerate(lines):
        text = raw.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/clear":
            conv = []
            print("(conversation cleared)", file=stdout, flush=True)
            continue
        conv.append({"role": "user", "content": text})
        ids = fit_conversation(tokenizer, conv, max(1, max_context - max_new_tokens))
        if prompt is None:
            print("assistant: ", end="", file=stdout, flush=True)
        params = SamplingParams(temperature=temperature, top_k=top_k, stop_ids=stops,
                                seed=seed + turn)
        answer = _answer(model, tokenizer, ids, params, max_new_tokens, max_context, stdout)
        conv.append({"role": "assistant", "content": answer})
    return conv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minillm chat",
                                description="Talk to a checkpoint in the terminal.")
    add_model_arguments(p)
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=50,
                   help="sample among the k likeliest tokens; 0 = all")
    p.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int,
                   default=256)
    p.add_argument("--max-context", dest="max_context", type=int, default=None,
                   help="tokens of conversation kept (default: the model's context, "
                        "max_position_embeddings in the checkpoint)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:0, auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from minillm_core.errors import ArtifactError
    from minillm_core.inference import autocast, load_model, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    try:
        model, tokenizer, _ = load_model(*model_paths(args), device)
    except ArtifactError as exc:
        print(f"minillm chat: {exc}", file=sys.stderr)
        return 2
    with autocast(device, dtype):
        chat_loop(model, tokenizer, temperature=args.temperature,
                  top_k=args.top_k if args.top_k and args.top_k > 0 else None,
                  max_new_tokens=args.max_new_tokens,
                  max_context=args.max_context or model.config.max_position_embeddings,
                  seed=args.seed, prompt=args.prompt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
