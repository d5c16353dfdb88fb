"""Serving throughput: aggregate completion tokens/s of `minillm serve` at 1, 4 and 8 concurrent
streaming clients, beside transformers' `generate` on the exported model, in one run.

    .venv/bin/python bench/bench_serve.py [--clients 1,4,8] [--max-tokens 128] [--requests 2]
        [--dtype bfloat16|float32] [--threads N] [--quick]

What runs: a model of the project's default shape (hidden 512, 8 layers, 8 heads, vocab 6400,
context 512) with RANDOM weights (throughput does not depend on what the weights say) and a
synthetic byte-level BPE tokenizer of 6400 ids, saved as a checkpoint and exported with
`minillm_core.export.export_hf`. The real server (`scripts/serve.py`, a separate process) serves
the checkpoint on a loopback port; each client is a thread sending `--requests` streaming chat
requests one after another (greedy, `max_tokens` fixed, usage taken from the stream's last
chunk). Aggregate rate = all completion tokens / wall time from the first request to the last
answer. Greedy rows of random weights rarely meet an end token, so nearly every request runs its
full budget; the table shows the mean completion length so an early stop is visible.

The peer: `transformers` `LlamaForCausalLM.generate` on the exported folder, one prompt, greedy,
`min_new_tokens` = `max_new_tokens` (no early end), in this process while the server is idle, in
the same dtype and with the same thread count. One torch thread by default (`--threads`): on a
shared, loaded 2-core machine, two OpenMP threads wait on each other at every operation (a small
model ran 20 times slower with two than with one at load 8). The load average (1 min) is printed beside every
figure: other jobs on the machine distort timings.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from minillm_core.model import MiniLLM, ModelConfig  # noqa: E402
from minillm_core.tokenizer import Tokenizer  # noqa: E402

# Chat prompts of different lengths (the rendered prompt adds the chat markup).
PROMPTS = [
    "你好，请介绍一下你自己。",
    "What is the capital of France, and why is it famous?",
    "请写一首关于秋天的短诗。",
    "Explain how a transformer language model generates text, step by step.",
    "给我讲一个关于月亮的故事。",
    "List three uses of a paper clip.",
    "为什么天空是蓝色的？",
    "Summarise the plot of a detective novel in two sentences.",
]


def synthetic_tokenizer(vocab: int) -> Tokenizer:
    """A valid byte-level BPE of `vocab` ids (special tokens included): the 256 bytes, then
    pairs of printable ASCII bytes, each a merge of two lower-ranked tokens."""
    ranks = {bytes([b]): b for b in range(256)}
    n = vocab - len(Tokenizer(dict(ranks)).special_tokens)
    pairs = (bytes([a, b]) for a in range(32, 127) for b in range(32, 127))
    while len(ranks) < n:
        ranks[next(pairs)] = len(ranks)
    return Tokenizer(ranks)


def build_artifacts(root: Path, quick: bool) -> tuple[Path, Path, Path, ModelConfig]:
    """Tokenizer, random-weight checkpoint and its HF export under `root`."""
    from minillm_core.export import ExportConfig, export_hf
    from minillm_core.train.checkpointer import save_checkpoint

    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4) if quick else {}
    tok = synthetic_tokenizer(512 if quick else 6400)
    tok.save(root / "tokenizer")
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=512, **shape)
    torch.manual_seed(0)
    model = MiniLLM(cfg)
    meta = {"stage": "bench", "step": 0, "tokenizer_hash": tok.hash}
    save_checkpoint(root / "ckpt", model, meta)
    export_hf(root / "ckpt", root / "tokenizer", root / "hf", ExportConfig(verify="never"))
    return root / "ckpt", root / "tokenizer", root / "hf", cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(ckpt: Path, tok_dir: Path, args: argparse.Namespace) -> Iterator[str]:
    """`scripts/serve.py` in its own process; yields its base URL once /health answers."""
    import httpx

    port = _free_port()
    cmd = [sys.executable, str(REPO / "scripts" / "serve.py"), "--checkpoint", str(ckpt)]
    cmd += ["--tokenizer", str(tok_dir), "--port", str(port), "--device", "cpu"]
    cmd += ["--dtype", args.dtype, "--max-concurrency", str(max(args.clients))]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def stream_one(client: Any, url: str, prompt: str, max_tokens: int) -> int:
    """One streaming greedy chat request; its completion tokens (the usage chunk's)."""
    body = {
        "model": "minillm",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = None
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if tokens is None:
        raise RuntimeError("the stream carried no usage chunk")
    return tokens


def run_clients(url: str, clients: int, args: argparse.Namespace) -> dict[str, float]:
    """`clients` threads, each sending `args.requests` requests in turn; aggregate figures."""
    import httpx

    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client() as c:
            for j in range(args.requests):
                prompt = PROMPTS[(k + j * clients) % len(PROMPTS)] + f" ({k}.{j})"
                try:
                    got = stream_one(c, url, prompt, args.max_tokens)
                except BaseException as exc:  # reported below, not swallowed
                    with lock:
                        errors.append(exc)
                    return
                with lock:
                    results.append(got)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed: {errors[0]!r}")
    tokens = sum(results)
    return {"tok_s": tokens / wall, "mean_len": tokens / len(results), "load": os.getloadavg()[0]}


class HFPeer:
    """transformers' greedy `generate` on the export, one prompt, the full budget."""

    def __init__(self, hf_dir: Path, args: argparse.Namespace):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(hf_dir)
        dtype = getattr(torch, args.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
        text = tok.apply_chat_template(
            [{"role": "user", "content": PROMPTS[0]}], tokenize=False, add_generation_prompt=True
        )
        self.ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        self.n = args.max_tokens
        self.run(4)  # warm-up

    def run(self, n: int) -> int:
        with torch.inference_mode():
            out = self.model.generate(
                self.ids,
                attention_mask=torch.ones_like(self.ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
            )
        return out.shape[1] - self.ids.shape[1]

    def rate(self) -> dict[str, float]:
        t0 = time.perf_counter()
        made = self.run(self.n)
        wall = time.perf_counter() - t0
        return {"tok_s": made / wall, "mean_len": made, "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,4,8", help="concurrent client counts (1,4,8)")
    p.add_argument("--max-tokens", type=int, default=128, help="completion tokens per request")
    p.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    p.add_argument("--rounds", type=int, default=3, help="rounds (each runs every row once)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: see the docstring)")
    p.add_argument("--quick", action="store_true", help="a tiny model: checks the script only")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    torch.set_num_threads(args.threads)
    rows: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, tok_dir, hf_dir, cfg = build_artifacts(Path(tmp), args.quick)
        print(
            f"model: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
            f"{cfg.num_attention_heads} heads, vocab {cfg.vocab_size}, random weights; "
            f"{args.dtype}, {args.threads} torch thread(s), CPU; {args.max_tokens} tokens x "
            f"{args.requests} request(s) per client; {args.rounds} round(s)",
            flush=True,
        )
        peer = HFPeer(hf_dir, args)
        with server(ckpt, tok_dir, args) as url:
            run_clients(url, 1, argparse.Namespace(**{**vars(args), "requests": 1}))  # warm-up
            for r in range(args.rounds):
                # Interleaved (ABAB): load from other jobs hits every row alike.
                rows.setdefault(PEER, []).append(peer.rate())  # the server is idle meanwhile
                for c in args.clients:
                    rows.setdefault(f"minillm serve, {c} client(s)", []).append(
                        run_clients(url, c, args)
                    )
                print(
                    f"  round {r + 1}: "
                    + ", ".join(f"{k}: {v[-1]['tok_s']:.1f}" for k, v in rows.items()),
                    flush=True,
                )
    print_table(rows)
    return 0


PEER = "transformers generate, 1 sequence"


def print_table(rows: dict[str, list[dict[str, float]]]) -> None:
    """Best round (the least disturbed) and median per row, ratios of the best."""
    best = {k: max(v, key=lambda r: r["tok_s"]) for k, v in rows.items()}
    single = best.get("minillm serve, 1 client(s)", {}).get("tok_s")
    hf = best[PEER]["tok_s"]
    print()
    print(
        "| run | tok/s (best) | tok/s (median) | x 1 client | x transformers | "
        "tokens/request | load (best round) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in [*[k for k in rows if k != PEER], PEER]:
        b = best[name]
        median = statistics.median(r["tok_s"] for r in rows[name])
        vs1 = f"{b['tok_s'] / single:.2f}" if single else "-"
        print(
            f"| {name} | {b['tok_s']:.1f} | {median:.1f} | {vs1} | {b['tok_s'] / hf:.2f} | "
            f"{b['mean_len']:.0f} | {b['load']:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
