"""`minillm serve`: an OpenAI-compatible chat server over a checkpoint (FastAPI + uvicorn).

Endpoints: `POST /v1/chat/completions` (non-streaming, and streaming as server-sent events in
OpenAI's `chat.completion.chunk` format ending with `data: [DONE]`), `GET /v1/models`,
`GET /v1/models/{id}`, `GET /health`. Any OpenAI client works against it (`base_url=
"http://127.0.0.1:8000/v1"`); errors come back in OpenAI's `{"error": {...}}` shape.

Generation is the project's own: the conversation is rendered with `render_for_completion` (what
SFT trained on) and decoded by `minillm_core.batching` (concurrent requests share each forward)
with the one sampler `minillm chat` and the evaluation use; text is released to the client only up to the
last whole character (a byte-level token can be half a Chinese character) and, with `stop`
strings, only once it cannot be the start of one. Control tokens (`<|python_start|>`,
`<|output_start|>`, ...) count as completion tokens but never reach `content`; generation stops
on any end-of-turn token (`<|assistant_end|>`, `<|bos|>`).

Choices and trade-offs:

- Batched decoding: up to `max_concurrency` requests (default 8) are decoded together, one
  forward per step for all of them (`minillm_core.batching`); at most `max_queue` more wait;
  beyond that a request gets 429 at once instead of piling up. Requests are read in
  worker threads, so the event loop keeps answering `/v1/models`, `/health` and 429s meanwhile.
- A request whose client disconnects stops generating at the next token and frees its slot:
  a stream is closed when the send fails; a non-streaming request polls for the disconnect every
  `DISCONNECT_POLL_S` while it generates.
- Validation follows OpenAI: malformed JSON or fields, and unknown fields, are 400 with the field
  named; an unknown model is 404; a prompt that does not fit the context, or `max_tokens` beyond
  what is left, is 400 `context_length_exceeded` (OpenAI's status, so clients raise their usual
  BadRequestError); a body over `max_body_bytes` is 413. Features the model does not have
  (logprobs, tools) are refused with 400 rather than ignored. `n` choices (up to 8) are rows of the
  batch, decoded together.
- Sampling defaults are `minillm chat`'s (temperature 0.6, top-k 50, no nucleus cut); `top_p`,
  `presence_penalty`, `frequency_penalty` (and the extensions `min_p`, `repetition_penalty`) go to
  the project's one sampler; `temperature: 0` is greedy
  and equals `minillm_core.inference.complete`. `seed` makes a sample reproducible. `top_k` is
  accepted as an extension (as vLLM does).
- 127.0.0.1 by default; `--api-key` (or `MINILLM_API_KEY`) requires `Authorization: Bearer ...`
  before binding to another interface.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime,
# and `Request` is imported inside the route builders (fastapi is an optional extra).
import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError

from minillm_cli.common import add_model_arguments, model_paths
from minillm_cli.serve_engine import APIError, Engine, Gate
from minillm_cli.serve_request import ChatRequest, validation_message
from minillm_core.artifacts import require
from minillm_core.config import CoreConfig
from minillm_core.errors import ArtifactError, ConfigError
from minillm_core.inference import (
    SEED_MAX,
    SamplingParams,
    load_model,
    resolve_device,
    resolve_dtype,
)
from minillm_core.tokenizer import TokenizerError


class ServeConfig(CoreConfig):
    """Settings of the chat server."""

    host: str = Field("127.0.0.1", description="interface to bind; loopback by default")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port)")
    model_id: str = Field("minillm", min_length=1, description="the name clients pass as `model`")
    device: str = Field("auto", description="cpu, cuda, cuda:N, auto")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype for serving; auto = bfloat16 on CUDA, float32 on CPU"
    )
    max_context: int | None = Field(
        None,
        ge=2,
        description="prompt + completion tokens; None = the model's context "
        "(max_position_embeddings), which also caps it",
    )
    default_max_tokens: int = Field(
        256,
        ge=1,
        description="completion length when the request sets none (cut to what the context leaves)",
    )
    max_concurrency: int = Field(
        8, ge=1, description="requests decoded at once (the batch's rows; n > 1 takes n rows)"
    )
    max_queue: int = Field(16, ge=0, description="requests waiting for a slot; beyond: 429")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    temperature: float = Field(0.6, ge=0, le=2, description="default sampling temperature")
    top_k: int | None = Field(50, ge=0, description="default top-k; 0 or None = all tokens")
    api_key: str | None = Field(None, description="require `Authorization: Bearer <key>`")


# How often a non-streaming request checks whether its client is still there.
DISCONNECT_POLL_S = 0.1

# ------------------------------------------------------------------------------------------ app


@dataclass
class Completion:
    """A validated chat request, ready to generate: prompt ids, token budget, sampling."""

    req: ChatRequest
    prompt: list[int]
    max_new: int
    params: SamplingParams
    stops: list[str]
    id: str
    created: int

    def events(
        self, engine: Engine, cancel: threading.Event
    ) -> Generator[tuple[Any, ...], None, None]:
        """(choice index, *event) for the `n` choices, decoded together as rows of the batch;
        with a seed, choice i samples with seed + i (reproducible, and the choices differ)."""
        choices = []
        for i in range(self.req.n):
            seed = self.params.seed
            if seed is not None:
                seed = seed + i if seed + i <= SEED_MAX else seed - i
            choices.append(dataclasses.replace(self.params, seed=seed))
        yield from engine.choices(
            self.prompt, self.max_new, choices, stops=self.stops, cancel=cancel
        )


def create_app(engine: Engine, cfg: ServeConfig | None = None):
    """The FastAPI application serving `engine` (separate from `main` so tests and other
    programs can mount or drive it)."""
    from fastapi import FastAPI

    cfg = cfg or ServeConfig()
    app = FastAPI(title="MiniLLM", description="OpenAI-compatible chat completions", version="1")
    gate = Gate(cfg.max_concurrency, cfg.max_queue)
    app.state.engine, app.state.gate = engine, gate
    _add_error_handlers(app)
    if cfg.api_key:  # only then: the middleware layer costs every request, streams included
        app.middleware("http")(_auth_middleware(cfg.api_key))
    _add_info_routes(app, engine, gate)
    _add_chat_route(app, engine, gate, cfg)
    return app


def _add_error_handlers(app: Any) -> None:
    """Every error leaves in OpenAI's `{"error": {...}}` shape."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return JSONResponse(
            APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(_: Request, exc: Exception):
        return JSONResponse(
            APIError(
                500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"
            ).body(),
            status_code=500,
        )


def _auth_middleware(api_key: str):
    from fastapi import Request
    from fastapi.responses import JSONResponse

    async def _auth(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return JSONResponse(
                    APIError(
                        401,
                        "missing or wrong API key (Authorization: Bearer ...)",
                        type="authentication_error",
                        code="invalid_api_key",
                    ).body(),
                    status_code=401,
                )
        return await call_next(request)

    return _auth


def _unknown_model(engine: Engine, model_id: str) -> APIError:
    return APIError(
        404,
        f"the model {model_id!r} does not exist; this server serves {engine.model_id!r}",
        param="model",
        code="model_not_found",
    )


def _add_info_routes(app: Any, engine: Engine, gate: Gate) -> None:
    def model_card() -> dict[str, Any]:
        return {
            "id": engine.model_id,
            "object": "model",
            "created": engine.created,
            "owned_by": "minillm",
            "max_context": engine.max_context,
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": engine.model_id,
            "running": min(gate.inside, gate.running),
            "waiting": max(gate.inside - gate.running, 0),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != engine.model_id:
            raise _unknown_model(engine, model_id)
        return model_card()


async def _read_request(request: Any, max_body_bytes: int) -> ChatRequest:
    """The body as a ChatRequest: 413 when too large, 400 when not JSON or not valid."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body_bytes:
        raise APIError(
            413,
            f"request body of {declared} bytes exceeds {max_body_bytes}",
            code="request_too_large",
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise APIError(
                413, f"request body exceeds {max_body_bytes} bytes", code="request_too_large"
            )
    try:
        obj = json.loads(bytes(body))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return ChatRequest.model_validate(obj)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise APIError(400, message, param=param) from None


async def _prepare(engine: Engine, cfg: ServeConfig, req: ChatRequest) -> Completion:
    """Render the prompt and fit the budget to the context (400 context_length_exceeded)."""
    from starlette.concurrency import run_in_threadpool

    if req.model != engine.model_id:
        raise _unknown_model(engine, req.model)
    messages = [m.model_dump(exclude_none=True, exclude={"name"}) for m in req.messages]
    for m in messages:
        if m["role"] == "developer":  # OpenAI's newer name for the system message
            m["role"] = "system"
    prompt = await run_in_threadpool(engine.prompt_ids, messages)
    room = engine.max_context - len(prompt)
    if room < 1:
        raise APIError(
            400,
            f"this model's maximum context length is {engine.max_context} "
            f"tokens; the messages are {len(prompt)} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    asked = req.max_completion_tokens or req.max_tokens
    if asked is not None and asked > room:
        raise APIError(
            400,
            f"this model's maximum context length is {engine.max_context} "
            f"tokens; you requested {len(prompt) + asked} ({len(prompt)} in "
            f"the messages, {asked} in the completion)",
            param="max_tokens",
            code="context_length_exceeded",
        )
    top_k = cfg.top_k if req.top_k is None else req.top_k
    params = SamplingParams(
        temperature=cfg.temperature if req.temperature is None else req.temperature,
        top_k=top_k if top_k else None,
        top_p=1.0 if req.top_p is None else req.top_p,
        min_p=req.min_p or 0.0,
        repetition_penalty=req.repetition_penalty or 1.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        seed=req.seed,
        stop_ids=tuple(engine.stop_ids),
    )
    return Completion(
        req=req,
        prompt=prompt,
        max_new=asked if asked is not None else min(cfg.default_max_tokens, room),
        params=params,
        stops=list(req.stop or []),
        id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
        created=int(time.time()),
    )


def _add_chat_route(app: Any, engine: Engine, gate: Gate, cfg: ServeConfig) -> None:
    from fastapi import Request

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        job = await _prepare(engine, cfg, await _read_request(request, cfg.max_body_bytes))
        cancel = threading.Event()
        await gate.enter()  # 429 here, before any byte of the answer is sent
        if not job.req.stream:
            return await _complete(engine, gate, job, cancel, request)
        return _gated_stream(_sse(engine, job, cancel), gate.leave)


async def _complete(
    engine: Engine, gate: Gate, job: Completion, cancel: threading.Event, request: Any
) -> dict[str, Any]:
    """The whole answer as one `chat.completion`. A client that goes away meanwhile stops the
    generation within a decode step (checked every DISCONNECT_POLL_S) and frees the slot."""
    from starlette.concurrency import run_in_threadpool

    work = asyncio.ensure_future(run_in_threadpool(lambda: list(job.events(engine, cancel))))
    try:
        while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL_S))[0]:
            if await request.is_disconnected():
                cancel.set()
        events = work.result()
    finally:
        cancel.set()
        if not work.done():  # this handler was cancelled: the thread still stops at `cancel`
            await asyncio.shield(asyncio.wait({work}))
        gate.leave()
    choices = []
    for i in range(job.req.n):
        mine = [e[1:] for e in events if e[0] == i]
        _, finish, count = mine[-1]
        choices.append(
            {
                "index": i,
                "logprobs": None,
                "finish_reason": finish,
                "tokens": count,
                "message": {
                    "role": "assistant",
                    "content": "".join(e[1] for e in mine if e[0] == "text"),
                },
            }
        )
    tokens = sum(c.pop("tokens") for c in choices)
    return {
        "id": job.id,
        "object": "chat.completion",
        "created": job.created,
        "model": engine.model_id,
        "system_fingerprint": engine.fingerprint,
        "choices": choices,
        "usage": _usage(len(job.prompt), tokens),
    }


def _chunk(
    engine: Engine, job: Completion, index: int, delta: dict[str, Any], finish: str | None
) -> str:
    body = {
        "id": job.id,
        "object": "chat.completion.chunk",
        "created": job.created,
        "model": engine.model_id,
        "system_fingerprint": engine.fingerprint,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(engine: Engine, job: Completion, cancel: threading.Event) -> AsyncIterator[str]:
    """The answer as server-sent `chat.completion.chunk`s, ending with `data: [DONE]`."""
    from starlette.concurrency import run_in_threadpool

    it = job.events(engine, cancel)
    started, tokens = 0, 0
    try:
        yield _chunk(engine, job, 0, {"role": "assistant", "content": ""}, None)
        while True:
            event = await run_in_threadpool(next, it, None)
            if event is None:
                break
            index, kind, *rest = event
            if index > started:  # each choice opens with the role
                started = index
                yield _chunk(engine, job, index, {"role": "assistant", "content": ""}, None)
            if kind == "text":
                yield _chunk(engine, job, index, {"content": rest[0]}, None)
                continue
            tokens += rest[1]
            yield _chunk(engine, job, index, {}, rest[0])
        if job.req.stream_options and job.req.stream_options.include_usage:
            usage = {
                "id": job.id,
                "object": "chat.completion.chunk",
                "created": job.created,
                "model": engine.model_id,
                "choices": [],
                "usage": _usage(len(job.prompt), tokens),
            }
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as exc:  # headers are sent: report in-band, as OpenAI does
        err = APIError(500, f"generation failed: {exc}", type="server_error")
        yield f"data: {json.dumps(err.body())}\n\n"
    finally:
        # Stream done or client gone: stop at the next token, free the KV cache now.
        # (No await here: a cancelled task could not run it.)
        cancel.set()
        it.close()


def _gated_stream(content: Any, release: Any) -> Any:
    """A streaming response that gives its concurrency slot back however it ends: finished,
    client gone (even before the first chunk, when the body generator never started), or
    cancelled."""
    import anyio
    from fastapi.responses import StreamingResponse

    class GatedStream(StreamingResponse):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.body_iterator.aclose()  # type: ignore[attr-defined]
                    except RuntimeError:
                        pass  # still running: its own finally closes it
                release()

    return GatedStream(
        content,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


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
        "(/v1/chat/completions, /v1/models).",
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
        help="requests decoded together in one batch (8)",
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
