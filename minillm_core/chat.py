"""`minillm chat`: talk to a checkpoint in the terminal, like nanochat's chat CLI.

Multi-turn: the whole conversation is re-rendered with the tokenizer's chat template every turn
(`render_for_completion`, which ends with `<|assistant_start|>`), so what the model sees is
exactly what SFT trained on. When the conversation outgrows the context, the oldest turns are
dropped first; only a single turn that is itself too long is cut from the left.

Tokens stream to stdout as they are generated. A byte-level BPE token can be half of a Chinese
character, so text is printed only up to the last complete character (a trailing U+FFFD from a
partial UTF-8 sequence is held back until the next token completes it).

Input is read line by line from stdin, so a conversation can be piped in (`printf '你好\n/quit\n'
| minillm chat ...`); `/clear` starts a new conversation, `/quit` (or end of input) leaves.
Sampling is seeded (`--seed`, plus the turn number), so a session replays exactly; temperature 0
is greedy.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from minillm_core.config import add_model_arguments, model_paths


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a parameter-free test module
        return torch.device("cpu")


def stream_tokens(model: torch.nn.Module, ids: Sequence[int], *, max_new_tokens: int,
                  temperature: float = 0.0, top_k: int | None = None,
                  stop_ids: Sequence[int] = (), seed: int | None = None,
                  max_context: int | None = None) -> Iterator[int]:
    """Yield generated token ids one at a time; stops before yielding a stop id.

    Uses the model's own KV-cached `stream` when it has one (MiniLLM does); otherwise runs the
    full context through `forward` each step (any module returning logits [B, T, V], which is
    what the tests use). Temperature <= 0 is greedy (argmax, first index on ties).
    """
    if max_new_tokens <= 0 or not ids:
        return
    ids = list(ids)
    if max_context is not None and len(ids) > max_context - 1:
        ids = ids[-(max_context - 1):]  # leave room for at least one new token
    budget = max_new_tokens if max_context is None else min(max_new_tokens, max_context - len(ids))
    stops = {int(s) for s in stop_ids}
    if hasattr(model, "stream"):
        for nxt in model.stream(ids, budget, temperature=temperature, top_k=top_k,
                                stop_ids=tuple(stops), seed=seed):
            tok = int(nxt.reshape(-1)[0])
            if tok in stops:
                return
            yield tok
        return
    device = _device_of(model)
    gen = None
    if temperature > 0:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed if seed is not None else torch.seed())
    x = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.inference_mode():
        for _ in range(budget):
            out = model(x)
            logits = (out if isinstance(out, torch.Tensor) else out[0])[0, -1].float()
            tok = int(sample_next(logits, temperature, top_k, gen))
            if tok in stops:
                return
            yield tok
            x = torch.cat([x, torch.tensor([[tok]], device=device)], dim=1)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                gen: torch.Generator | None) -> int:
    """One token from logits [V]: argmax at temperature <= 0, else top-k softmax sampling."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen))


class TextStreamer:
    """Turns a growing list of token ids into printable text pieces, whole characters only."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self.ids, self.printed = tokenizer, [], 0

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        text = self.tokenizer.decode(self.ids)
        end = len(text)
        while end > self.printed and text[end - 1] == "\ufffd":
            end -= 1  # possibly a partial UTF-8 sequence: wait for the next token
        piece, self.printed = text[self.printed:end], max(self.printed, end)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.printed = text[self.printed:], len(text)
        return piece

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids)


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


def chat_loop(model: torch.nn.Module, tokenizer: Any, *, temperature: float = 0.6,
              top_k: int | None = 50, max_new_tokens: int = 256, max_context: int = 2048,
              seed: int = 42, stdin: TextIO | None = None, stdout: TextIO | None = None,
              prompt: str | None = None) -> list[dict[str, str]]:
    """Read user lines, stream answers; returns the final conversation (for tests).

    With `prompt`, answers that one prompt (only the answer is printed) and returns.
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    stops = [tokenizer.encode_special("<|assistant_end|>")]
    with contextlib.suppress(KeyError):  # a tokenizer without <|bos|>
        stops.append(tokenizer.encode_special("<|bos|>"))  # a new document means the answer ended
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
        streamer = TextStreamer(tokenizer)
        for tok in stream_tokens(model, ids, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_k=top_k, stop_ids=stops,
                                 seed=seed + turn, max_context=max_context):
            piece = streamer.push(tok)
            if piece:
                print(piece, end="", file=stdout, flush=True)
        print(streamer.flush(), file=stdout, flush=True)
        conv.append({"role": "assistant", "content": streamer.text})
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
                   help="tokens of conversation kept (default: the training length in the "
                        "checkpoint's metadata, else 2048)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:0, auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
    return p


def _context_from_meta(meta: dict[str, Any]) -> int:
    for source in (meta, meta.get("train") or {}, meta.get("config") or {}):
        if isinstance(source, dict):
            for key in ("max_length", "max_seq_len", "seq_len"):
                if isinstance(source.get(key), int) and source[key] > 0:
                    return int(source[key])
    return 2048


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from minillm_core.artifacts import require
    from minillm_core.checkpoint import load_checkpoint
    from minillm_core.evaluate import autocast, resolve_device, resolve_dtype
    from minillm_core.tokenizer import load_tokenizer

    ckpt, tok_dir = model_paths(args)
    ckpt, tok_dir = require(ckpt, "checkpoint"), require(tok_dir, "tokenizer")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    tokenizer = load_tokenizer(tok_dir)
    model, meta = load_checkpoint(ckpt, device)
    want, have = meta.get("tokenizer_hash"), getattr(tokenizer, "hash", None)
    if want and have and want != have:
        print(f"minillm chat: {ckpt} was trained with another tokenizer ({str(want)[:12]} != "
              f"{str(have)[:12]}); pass the matching --tokenizer", file=sys.stderr)
        return 2
    model.eval()
    with autocast(device, dtype):
        chat_loop(model, tokenizer, temperature=args.temperature,
                  top_k=args.top_k if args.top_k and args.top_k > 0 else None,
                  max_new_tokens=args.max_new_tokens,
                  max_context=args.max_context or _context_from_meta(meta), seed=args.seed,
                  prompt=args.prompt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
