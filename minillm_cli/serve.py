"""`minillm serve`: an OpenAI-compatible server over a checkpoint (FastAPI + uvicorn).

Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (non-streaming, and streaming
as server-sent events in OpenAI's chunk format ending with `data: [DONE]`), `GET /v1/models`,
`GET /v1/models/{id}`, `GET /health`, `GET /metrics` (Prometheus). Any OpenAI client works
against it (`base_url="http://127.0.0.1:8000/v1"`); errors come back in OpenAI's
`{"error": {...}}` shape. docs/serve.md is the user's guide.

The pieces: this module loads the checkpoint and runs uvicorn; `serve_app` is the FastAPI app
(routes, gate, cancellation, streaming); `serve_request` validates requests; `serve_openai`
turns them into jobs and the engine's events into OpenAI's response shapes; `serve_engine` is
the generation side (the project's one sampler and generate loop); `serve_metrics` the
Prometheus counters.

Generation is the project's own: the conversation is rendered with `render_for_completion` (what
SFT trained on) and decoded with `minillm_core.inference.generate`, the KV-cached loop and the one
sampler `minillm chat` and the evaluation use; text is released to the client only up to the
last whole character (a byte-level token can be half a Chinese character) and, with `stop`
strings, only once it cannot be the start of one. Control tokens (`<|python_start|>`,
`<|output_start|>`, ...) count as completion tokens but never reach `content`; generation stops
on any end-of-turn token (`<|assistant_end|>`, `<|bos|>`). 127.0.0.1 by default; `--api-key`
(or `MINILLM_API_KEY`) requires `Authorization: Bearer ...` before binding to another interface.
"""

import argparse
import os
import socket
import sys
from pathlib import Path

import torch

from minillm_cli.common import add_model_arguments, model_paths
from minillm_cli.serve_app import ServeConfig, create_app
from minillm_cli.serve_engine import Engine
from minillm_core.artifacts import require
from minillm_core.errors import ArtifactError, ConfigError
from minillm_core.inference import load_model, resolve_device, resolve_dtype
from minillm_core.tokenizer import TokenizerError

# ---------------------------------------------------------------------------------------- loading


def load_engine(
    checkpoint_dir: Path | str, tokenizer_dir: Path | str, cfg: ServeConfig | None = None
) -> Engine:
    """Load a checkpoint and its tokenizer for serving; refuses a mismatched tokenizer."""
    from minillm_core.artifacts import sha256_file
    from minillm_core.train.checkpointer import WEIGHTS

    cfg = cfg or ServeConfig()
    ckpt = require(checkpoint_dir, "checkpoint directory")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, tokenizer, _ = load_model(ckpt, tokenizer_dir, device)
    if dtype != torch.float32:
        # Cast the weights rather than autocast: autocast is per thread, and generation runs in
        # worker threads. RMSNorm still normalises in float32.
        model.to(dtype)
    context = cfg.max_context or model.config.max_position_embeddings
    weights = Path(ckpt) / WEIGHTS
    return Engine(
        model,
        tokenizer,
        model_id=cfg.model_id,
        max_context=context,
        max_batch=cfg.max_concurrency,
        created=int(weights.stat().st_mtime),
        fingerprint=f"fp_{sha256_file(weights)[:12]}",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minillm serve",
        description="Serve a checkpoint with an OpenAI-compatible API "
        "(/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics).",
    )
    add_model_arguments(p)
    p.add_argument("--host", default=None, help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument(
        "--model-id",
        "--model_id",
        "--served-model-name",
        dest="model_id",
        default=None,
        help="name clients pass as `model` (default minillm)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:0, auto")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-context", "--max_context", dest="max_context", type=int, default=None)
    p.add_argument(
        "--max-tokens",
        "--max_tokens",
        dest="default_max_tokens",
        type=int,
        default=None,
        help="default completion length (256)",
    )
    p.add_argument(
        "--max-concurrency",
        "--max_concurrency",
        "--max-batch",
        dest="max_concurrency",
        type=int,
        default=None,
        help="requests decoded together as one batch (8)",
    )
    p.add_argument(
        "--max-queue",
        "--max_queue",
        dest="max_queue",
        type=int,
        default=None,
        help="requests waiting beyond those (16); more get 429",
    )
    p.add_argument("--temperature", type=float, default=None, help="default temperature (0.6)")
    p.add_argument(
        "--top-k",
        "--top_k",
        dest="top_k",
        type=int,
        default=None,
        help="default top-k (50; 0 = all)",
    )
    p.add_argument(
        "--api-key",
        "--api_key",
        dest="api_key",
        default=None,
        help="require this bearer token (default: $MINILLM_API_KEY, else none)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print(
            "minillm serve: needs fastapi and uvicorn (pip install 'minillm[serve]')",
            file=sys.stderr,
        )
        return 2
    layer = {
        k: getattr(args, k)
        for k in (
            "host",
            "port",
            "model_id",
            "device",
            "dtype",
            "max_context",
            "default_max_tokens",
            "max_concurrency",
            "max_queue",
            "temperature",
            "top_k",
            "api_key",
        )
    }
    layer["api_key"] = layer["api_key"] or os.environ.get("MINILLM_API_KEY") or None
    try:
        cfg = ServeConfig.resolve(layer)
        engine = load_engine(*model_paths(args), cfg)
        app = create_app(engine, cfg)
    except (ConfigError, ArtifactError, TokenizerError) as exc:
        print(f"minillm serve: {exc}", file=sys.stderr)
        return 2
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        print(
            f"minillm serve: WARNING: listening on {cfg.host} without --api-key: anyone who can "
            "reach this port can use the model",
            file=sys.stderr,
        )
    try:
        sock = bind(cfg.host, cfg.port)
    except OSError as exc:
        print(f"minillm serve: cannot listen on {cfg.host}:{cfg.port}: {exc}", file=sys.stderr)
        return 2
    # The bound port, not the asked one: with --port 0 the system picks it.
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"minillm serve: model {engine.model_id!r}, context {engine.max_context} tokens, "
        f"http://{shown}:{port}/v1",
        file=sys.stderr,
        flush=True,
    )
    with sock:
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` (port 0 = any free one); uvicorn listens on it."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


if __name__ == "__main__":
    sys.exit(main())
