"""`minillm chat`: talk to a checkpoint in the terminal, like nanochat's chat CLI.

Multi-turn: the whole conversation is re-rendered with the tokenizer's chat template every turn
(`render_for_completion`, which ends with `<|assistant_start|>`), so what the model sees is
exactly what SFT trained on. When the conversation outgrows the context, the oldest turns are
dropped first; only a single turn that is itself too long is cut from the left.

Tokens stream to stdout as `minillm_core.inference.generate` yields them, printed only up to the
last complete character (`TextStreamer`).

Input is read line by line from stdin, so a conversation can be piped in (`printf '你好\\n/quit\\n'
| minillm chat ...`); at a terminal, lines are read with readline (editing, history). `/clear` or
`/reset` starts a new conversation, `/system TEXT` sets the system message (and starts over),
`/quit` (or end of input, Ctrl-D) leaves. Ctrl-C stops the answer being written (what was
written stays in the conversation); Ctrl-C at the prompt leaves, without a traceback.
Sampling is seeded (`--seed`, plus the turn number), so a session replays exactly; temperature 0
is greedy.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch

from minillm_cli.common import add_model_arguments, model_paths
from minillm_core.inference import SamplingParams, TextStreamer, generate, stop_ids


def fit_conversation(
    tokenizer: Any, conv: list[dict[str, str]], budget: int, system: str | None = None
) -> list[int]:
    """Prompt ids for `conv` (after the `system` message, which always stays), dropping the
    oldest turns until it fits in `budget` tokens."""
    head = [{"role": "system", "content": system}] if system else []
    conv = list(conv)
    ids = list(tokenizer.render_for_completion(head + conv))
    while len(ids) > budget and len(conv) > 1:
        # Drop the oldest exchange (user + assistant) so roles still alternate from a user turn.
        conv = conv[2:] if len(conv) > 2 else conv[1:]
        ids = list(tokenizer.render_for_completion(head + conv))
    return ids[-budget:] if len(ids) > budget else ids


def _lines(stdin: TextIO, stdout: TextIO, interactive: bool) -> Iterator[str]:
    if interactive:
        # Line editing and history for input() (a terminal only; piped input reads plainly).
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401
    while True:
        if interactive:
            try:
                yield input("you: ") + "\n"
            except EOFError:  # Ctrl-D
                print(file=stdout)
                return
            continue
        line = stdin.readline()
        if not line:
            return
        yield line


def _answer(
    model: torch.nn.Module,
    tokenizer: Any,
    ids: list[int],
    params: SamplingParams,
    max_new_tokens: int,
    max_context: int,
    stdout: TextIO,
) -> str:
    """Stream one answer to `stdout`; returns its text. Ctrl-C stops the answer, not the chat."""
    streamer = TextStreamer(tokenizer)
    try:
        for tok in generate(model, ids, max_new_tokens, params, max_context=max_context):
            piece = streamer.push(tok)
            if piece:
                print(piece, end="", file=stdout, flush=True)
    except KeyboardInterrupt:
        print(streamer.flush() + " (stopped)", file=stdout, flush=True)
        return streamer.text
    print(streamer.flush(), file=stdout, flush=True)
    return streamer.text


HELP = (
    "MiniLLM chat. /clear (or /reset) starts over, /system TEXT sets the system message, "
    "/quit leaves; Ctrl-C stops an answer."
)


@dataclass
class Chat:
    """The conversation so far: an optional system message and the user/assistant turns."""

    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)


def _command(text: str, chat: Chat, stdout: TextIO) -> bool:
    """Run a slash command; False when `text` is not one (it is then a user message)."""
    if text in ("/clear", "/reset"):
        chat.turns = []
        print("(conversation cleared)", file=stdout, flush=True)
    elif text == "/system" or text.startswith("/system "):
        chat.system, chat.turns = text[len("/system") :].strip() or None, []
        print(
            f"(system message {'set' if chat.system else 'removed'}; conversation cleared)",
            file=stdout,
            flush=True,
        )
    else:
        return False
    return True


def chat_loop(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    temperature: float = 0.6,
    top_k: int | None = 50,
    max_new_tokens: int = 256,
    max_context: int = 2048,
    seed: int = 42,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    prompt: str | None = None,
    system: str | None = None,
) -> list[dict[str, str]]:
    """Read user lines, stream answers; returns the final conversation (for tests).

    With `prompt`, answers that one prompt (only the answer is printed) and returns.
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    stops = tuple(stop_ids(tokenizer))
    interactive = prompt is None and hasattr(stdin, "isatty") and stdin.isatty()
    if interactive:
        print(HELP, file=stdout, flush=True)
    chat = Chat(system=system)
    lines = iter([prompt]) if prompt is not None else _lines(stdin, stdout, interactive)
    for turn, raw in enumerate(lines):
        text = raw.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text.startswith("/") and _command(text, chat, stdout):
            continue
        chat.turns.append({"role": "user", "content": text})
        ids = fit_conversation(
            tokenizer, chat.turns, max(1, max_context - max_new_tokens), system=chat.system
        )
        if prompt is None:
            print("assistant: ", end="", file=stdout, flush=True)
        params = SamplingParams(
            temperature=temperature, top_k=top_k, stop_ids=stops, seed=seed + turn
        )
        answer = _answer(model, tokenizer, ids, params, max_new_tokens, max_context, stdout)
        chat.turns.append({"role": "assistant", "content": answer})
    return chat.turns


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minillm chat", description="Talk to a checkpoint in the terminal."
    )
    add_model_arguments(p)
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    p.add_argument(
        "--top-k",
        "--top_k",
        dest="top_k",
        type=int,
        default=50,
        help="sample among the k likeliest tokens; 0 = all",
    )
    p.add_argument(
        "--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=256
    )
    p.add_argument(
        "--max-context",
        dest="max_context",
        type=int,
        default=None,
        help="tokens of conversation kept (default: the model's context, "
        "max_position_embeddings in the checkpoint)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:0, auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
    p.add_argument("--system", default=None, help="a system message for the conversation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if sys.stdin.isatty():
        # Started from a script's background job, Python inherits SIGINT ignored and Ctrl-C would
        # neither stop an answer nor leave: at a terminal, Ctrl-C is the user's.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    from minillm_core.errors import ArtifactError
    from minillm_core.inference import autocast, load_model, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    try:
        model, tokenizer, _ = load_model(*model_paths(args), device)
    except ArtifactError as exc:
        print(f"minillm chat: {exc}", file=sys.stderr)
        return 2
    try:
        with autocast(device, dtype):
            chat_loop(
                model,
                tokenizer,
                temperature=args.temperature,
                top_k=args.top_k if args.top_k and args.top_k > 0 else None,
                max_new_tokens=args.max_new_tokens,
                max_context=args.max_context or model.config.max_position_embeddings,
                seed=args.seed,
                prompt=args.prompt,
                system=args.system,
            )
    except KeyboardInterrupt:  # Ctrl-C at the prompt leaves, without a traceback
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
