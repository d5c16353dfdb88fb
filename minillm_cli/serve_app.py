"""The server's FastAPI application: routes, the OpenAI error shape, authentication, the
concurrency gate, cancellation and streaming. Request and response shapes live in
`serve_request` / `serve_openai`, the generation loop in `serve_engine`, the metrics in
`serve_metrics`; `minillm serve` (serve.py) loads a checkpoint and runs this app in uvicorn.

- Batched, bounded concurrency: up to `max_concurrency` requests (default 8) are decoded
  together, one forward per step for all of them (`minillm_core.batching`); at most
  `max_queue` more wait; beyond that a request gets 429 at once instead of piling up. Generation
  runs in worker threads, so the event loop keeps answering `/v1/models`, `/health`, `/metrics`
  and 429s meanwhile.
- A request whose client disconnects stops generating at the next token and frees its slot:
  a stream is closed when the send fails; a non-streaming request polls for the disconnect every
  `DISCONNECT_POLL_S` while it generates. Either counts in `minillm_cancelled_requests_total`.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime,
# and `Request` is imported inside the route builders (fastapi is an optional extra).
import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, Literal

from pydantic import Field, ValidationError

from minillm_cli.serve_engine import APIError, Engine, Gate
from minillm_cli.serve_metrics import Metrics
from minillm_cli.serve_openai import (
    Chunker,
    Job,
    body,
    chat_job,
    collect,
    text_job,
    unknown_model,
)
from minillm_cli.serve_request import ChatRequest, CompletionRequest, validation_message
from minillm_core.config import CoreConfig


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
        description="chat completion length when the request sets none (cut to what the "
        "context leaves); /v1/completions defaults to 16, as OpenAI's",
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


def create_app(engine: Engine, cfg: ServeConfig | None = None):
    """The FastAPI application serving `engine` (separate from `main` so tests and other
    programs can mount or drive it)."""
    from fastapi import FastAPI

    cfg = cfg or ServeConfig()
    app = FastAPI(title="MiniLLM", description="OpenAI-compatible completions", version="1")
    gate = Gate(cfg.max_concurrency, cfg.max_queue)
    metrics = Metrics(lambda: _queue(engine, gate))
    app.state.engine, app.state.gate, app.state.metrics = engine, gate, metrics
    _add_error_handlers(app)
    if cfg.api_key:  # only then: the middleware layer costs every request, streams included
        app.middleware("http")(_auth_middleware(cfg.api_key))
    app.add_middleware(metrics.middleware)
    _add_info_routes(app, engine, gate, metrics)
    _add_generation_routes(app, engine, gate, cfg, metrics)
    return app


def _queue(engine: Engine, gate: Gate) -> dict[str, int]:
    """Generations running, and waiting: for a slot at the gate, or inside the engine."""
    stats = engine.stats()
    at_gate = max(gate.inside - gate.running, 0)
    return {"running": stats["running"], "waiting": stats["waiting"] + at_gate}


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


def _add_info_routes(app: Any, engine: Engine, gate: Gate, metrics: Metrics) -> None:
    from fastapi import Response

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
        return {"status": "ok", "model": engine.model_id, **_queue(engine, gate)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != engine.model_id:
            raise unknown_model(engine, model_id)
        return model_card()


async def _read_request(request: Any, schema: Any, max_body_bytes: int) -> Any:
    """The body as a `schema` object: 413 when too large, 400 when not JSON or not valid."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body_bytes:
        raise APIError(
            413,
            f"request body of {declared} bytes exceeds {max_body_bytes}",
            code="request_too_large",
        )
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_body_bytes:
            raise APIError(
                413, f"request body exceeds {max_body_bytes} bytes", code="request_too_large"
            )
    try:
        obj = json.loads(bytes(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(obj)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise APIError(400, message, param=param) from None


def _add_generation_routes(
    app: Any, engine: Engine, gate: Gate, cfg: ServeConfig, metrics: Metrics
) -> None:
    from fastapi import Request
    from starlette.concurrency import run_in_threadpool

    async def serve(request: Any, schema: Any, make_job: Callable[..., Job], default_max: int):
        req = await _read_request(request, schema, cfg.max_body_bytes)
        defaults = (cfg.temperature, cfg.top_k, default_max)
        job = await run_in_threadpool(make_job, engine, req, defaults)  # tokenising is CPU work
        run = _Run(job, engine, metrics)
        await gate.enter()  # 429 here, before any byte of the answer is sent
        if not job.stream:
            try:
                return await run.complete(request)
            finally:
                gate.leave()
        return _gated_stream(run.stream(), gate.leave)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await serve(request, ChatRequest, chat_job, cfg.default_max_tokens)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await serve(request, CompletionRequest, text_job, cfg.default_max_tokens)


class _Run:
    """One job's generation in a worker thread, counted in the metrics, stopped by `cancel`."""

    def __init__(self, job: Job, engine: Engine, metrics: Metrics):
        self.job, self.engine, self.metrics = job, engine, metrics
        self.cancel = threading.Event()
        self.first = True

    def _events(self) -> Generator[tuple[Any, ...], None, None]:
        self.metrics.prompt_tokens.inc(self.job.prompt_tokens)
        for event in self.job.events(self.engine, self.cancel):
            if self.first:
                self.first = False
                self.metrics.ttft.observe(time.monotonic() - self.job.started)
            if event[1] == "done":
                self.metrics.completion_tokens.inc(event[3])
            yield event

    async def complete(self, request: Any) -> dict[str, Any]:
        """The whole answer. A client that goes away meanwhile stops the generation within a
        decode step (checked every DISCONNECT_POLL_S)."""
        from starlette.concurrency import run_in_threadpool

        work = asyncio.ensure_future(run_in_threadpool(lambda: list(self._events())))
        try:
            while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL_S))[0]:
                if await request.is_disconnected() and not self.cancel.is_set():
                    self.cancel.set()
                    self.metrics.cancelled.inc()
            events = work.result()
        finally:
            if not work.done():  # this handler was cancelled: the thread still stops at `cancel`
                if not self.cancel.is_set():
                    self.metrics.cancelled.inc()
                self.cancel.set()
                await asyncio.shield(asyncio.wait({work}))
            self.cancel.set()
        return body(self.job, self.engine.tokenizer, collect(self.job, events))

    async def stream(self) -> AsyncIterator[str]:
        """The answer as server-sent chunks, ending with `data: [DONE]`."""
        from starlette.concurrency import run_in_threadpool

        it, chunker, finished = self._events(), Chunker(self.job, self.engine.tokenizer), False
        try:
            for line in chunker.open(0):
                yield line
            while (event := await run_in_threadpool(next, it, None)) is not None:
                for line in chunker.event(*event):
                    yield line
            if self.job.include_usage:
                yield chunker.usage()
            finished = True
            yield "data: [DONE]\n\n"
        except Exception as exc:  # headers are sent: report in-band, as OpenAI does
            finished = True
            err = APIError(500, f"generation failed: {exc}", type="server_error")
            yield f"data: {json.dumps(err.body())}\n\n"
        finally:
            # Stream done or client gone: stop at the next token, free the KV cache now.
            # (No await here: a cancelled task could not run it.)
            if not finished:
                self.metrics.cancelled.inc()
            self.cancel.set()
            try:
                it.close()
            except ValueError:
                pass  # a worker thread is inside `next`: it returns at `cancel`, the loop is over


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
