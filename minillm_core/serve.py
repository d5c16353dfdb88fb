"""`minillm serve`: an OpenAI-compatible chat server over a checkpoint (FastAPI + uvicorn).

Endpoints: `POST /v1/chat/completions` (non-streaming, and streaming as server-sent events in
OpenAI's `chat.completion.chunk` format ending with `data: [DONE]`), `GET /v1/models`,
`GET /v1/models/{id}`, `GET /health`. Any OpenAI client works against it (`base_url=
"http://127.0.0.1:8000/v1"`); errors come back in OpenAI's `{"error": {...}}` shape.

Generation is the project's own: the conversation is rendered with `render_for_completion` (what
SFT trained on) and decoded with `MiniLLM.stream`, the KV-cached loop `minillm chat` uses; text
is released to the client only up to the last whole character (a byte-level token can be half a
Chinese character) and, with `stop` strings, only once it cannot be the start of one.

Choices and trade-offs:

- Bounded concurrency: at most `max_concurrency` generations run at once (default 1: one model on
  one device; on a CPU a second generation only splits the same cores) and at most `max_queue`
  more wait; beyond that a request gets 429 at once instead of piling up. Generation runs in
  worker threads, so the event loop keeps answering `/v1/models`, `/health` and 429s meanwhile.
- A streaming request whose client disconnects stops generating at the next token (the stream is
  closed and its slot released). A non-streaming request runs to its `max_tokens` (bounded by the
  context) even if the client has gone: HTTP gives no disconnect signal before the answer.
- Validation follows OpenAI: malformed JSON or fields, and unknown fields, are 400 with the field
  named; an unknown model is 404; a prompt that does not fit the context, or `max_tokens` beyond
  what is left, is 400 `context_length_exceeded` (OpenAI's status, so clients raise their usual
  BadRequestError); a body over `max_body_bytes` is 413. Features the model does not have
  (`n` > 1, `top_p` < 1, penalties, logprobs, tools) are refused with 400 rather than ignored.
- Sampling defaults are `minillm chat`'s (temperature 0.6, top-k 50); `temperature: 0` is greedy
  and equals `model.generate`. `seed` makes a sample reproducible. `top_k` is accepted as an
  extension (as vLLM does).
- 127.0.0.1 by default; `--api-key` (or `MINILLM_API_KEY`) requires `Authorization: Bearer ...`
  before binding to another interface.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime,
# and `Request` is imported inside `create_app` (fastapi is an optional extra).
import argparse
import asyncio
import json
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from minillm_core.artifacts import ArtifactError, require
from minillm_core.chat import TextStreamer, _context_from_meta
from minillm_core.config import ConfigError, CoreConfig, add_model_arguments, model_paths
from minillm_core.tokenizer import TokenizerError

END = "<|assistant_end|>"


class ServeConfig(CoreConfig):
    """Settings of the chat server."""

    host: str = Field("127.0.0.1", description="interface to bind; loopback by default")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port)")
    model_id: str = Field("minillm", min_length=1, description="the name clients pass as `model`")
    device: str = Field("auto", description="cpu, cuda, cuda:N, auto")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype for serving; auto = bfloat16 on CUDA, float32 on CPU")
    max_context: int | None = Field(
        None, ge=2, description="prompt + completion tokens; None = the training length recorded in "
                                "the checkpoint (else 2048), capped by max_position_embeddings")
    default_max_tokens: int = Field(
        256, ge=1, description="completion length when the request sets none (cut to what the "
                               "context leaves)")
    max_concurrency: int = Field(1, ge=1, description="generations running at once")
    max_queue: int = Field(16, ge=0, description="requests waiting for a slot; beyond: 429")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    temperature: float = Field(0.6, ge=0, le=2, description="default sampling temperature")
    top_k: int | None = Field(50, ge=0, description="default top-k; 0 or None = all tokens")
    api_key: str | None = Field(None, description="require `Authorization: Bearer <key>`")


# ----------------------------------------------------------------------------------- the request

class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None  # accepted (OpenAI clients send it); the model has no use for it


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat-completions request this model can honour; other fields are
    refused by name (OpenAI does the same with unrecognized arguments)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    user: str | None = None

    # Accepted at the value that means "off", refused otherwise: silently ignoring them would
    # return something other than what the client asked for.
    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float | None) -> float | None:
        if v is not None and v < 1:
            raise ValueError("top_p < 1 (nucleus sampling) is not supported; use top_k")
        return v

    @field_validator("n")
    @classmethod
    def _n(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported (one choice per request)")
        return v

    @field_validator("presence_penalty", "frequency_penalty", "logprobs")
    @classmethod
    def _unsupported(cls, v: float | bool | None, info: ValidationInfo) -> float | bool | None:
        if v:  # accepted only at their neutral value (0, False, null)
            what = "penalties are" if info.field_name.endswith("penalty") else "logprobs are"
            raise ValueError(f"{what} not supported ({info.field_name} must be 0, false or null)")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops


class APIError(Exception):
    """An error answered in OpenAI's shape: status, message, type, param, code."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code = param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def _validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One line naming every bad field (OpenAI-style `param` = the first), from pydantic errors."""
    parts, first = [], None
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"])
        first = first or loc
        if err["type"] == "extra_forbidden":
            parts.append(f"unrecognized request argument: {loc}")
        else:
            parts.append(f"{loc or 'body'}: {err['msg']}")
    return "; ".join(parts), first


# ------------------------------------------------------------------------------------ generation

class Engine:
    """A loaded model and tokenizer plus the generation loop the server runs in worker threads."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, model_id: str = "minillm",
                 max_context: int = 2048, created: int | None = None,
                 fingerprint: str | None = None):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        cfg = getattr(model, "config", None)
        limit = getattr(cfg, "max_position_embeddings", max_context)
        self.max_context = min(max_context, limit)
        self.created = created if created is not None else int(time.time())
        self.fingerprint = fingerprint
        self.stop_ids = [tokenizer.encode_special(END), tokenizer.get_bos_token_id()]
        if hasattr(model, "_rope_for"):
            # Build the RoPE tables for the whole context once, before any request: concurrent
            # generations then only read them.
            model._rope_for(0, self.max_context, next(model.parameters()).device)

    def prompt_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        try:
            return list(self.tokenizer.render_for_completion(list(messages)))
        except (ValueError, AttributeError, TypeError) as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from None

    def events(self, prompt: list[int], max_new_tokens: int, *, temperature: float,
               top_k: int | None, seed: int | None, stops: Sequence[str] = (),
               cancel: threading.Event | None = None) -> Iterator[tuple[str, Any]]:
        """Yield ("text", piece) as text becomes final, then ("done", finish_reason, n_tokens).

        finish_reason: "stop" (end token or a stop string), "length" (max_new_tokens reached)."""
        streamer = TextStreamer(self.tokenizer)
        held, n, finish, stopped_by_string = "", 0, "length", False
        it = self.model.stream(prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                               stop_ids=self.stop_ids, seed=seed)
        try:
            for nxt in it:
                tok = int(nxt.reshape(-1)[0])
                n += 1
                if tok in self.stop_ids:
                    finish = "stop"
                    break
                held += streamer.push(tok)
                text, held, stopped_by_string = _release(held, stops, final=False)
                if text:
                    yield ("text", text)
                if stopped_by_string:
                    finish = "stop"
                    break
                if cancel is not None and cancel.is_set():
                    break
        finally:
            it.close()  # frees the KV cache now, not at garbage collection
        if not stopped_by_string:
            # What is left: text held back for a possible stop string, and the bytes of a
            # character the last token did not complete.
            held += streamer.flush()
            text, _, hit = _release(held, stops, final=True)
            if text:
                yield ("text", text)
            finish = "stop" if hit else finish
        yield ("done", finish, n)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _release(held: str, stops: Sequence[str], final: bool) -> tuple[str, str, bool]:
    """Split `held` into (text safe to send, text to keep back, a stop string was found).

    Text is kept back while its end could be the beginning of a stop string."""
    if not stops:
        return held, "", False
    cut = _first_stop(held, stops)
    if cut is not None:
        return held[:cut], "", True
    if final:
        return held, "", False
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(held)), 0, -1):
            if held.endswith(s[:k]):
                keep = max(keep, k)
                break
    return held[:len(held) - keep], held[len(held) - keep:], False


class Gate:
    """At most `running` holders at once and `waiting` more queued; anyone else is refused."""

    def __init__(self, running: int, waiting: int):
        self.running, self.limit = running, running + waiting
        self.inside = 0
        self._sem: asyncio.Semaphore | None = None

    async def enter(self) -> None:
        if self.inside >= self.limit:
            raise APIError(429, f"server busy: {self.running} generation(s) running and "
                                f"{self.limit - self.running} waiting; retry later",
                           type="rate_limit_error", code="server_busy")
        if self._sem is None:  # created inside the server's event loop
            self._sem = asyncio.Semaphore(self.running)
        self.inside += 1
        try:
            await self._sem.acquire()
        except BaseException:
            self.inside -= 1
            raise

    def leave(self) -> None:
        assert self._sem is not None
        self._sem.release()
        self.inside -= 1


# ------------------------------------------------------------------------------------------ app

def create_app(engine: Engine, cfg: ServeConfig | None = None):
    """The FastAPI application serving `engine` (separate from `main` so tests and other
    programs can mount or drive it)."""
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.concurrency import run_in_threadpool

    class GatedStream(StreamingResponse):
        """A streaming response that gives its concurrency slot back however it ends: finished,
        client gone (even before the first chunk, when the body generator never started), or
        cancelled."""

        def __init__(self, content: Any, release: Any, **kw: Any):
            super().__init__(content, **kw)
            self._release = release

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.body_iterator.aclose()
                    except RuntimeError:
                        pass  # still running: its own finally closes it
                self._release()

    cfg = cfg or ServeConfig()
    app = FastAPI(title="MiniLLM", description="OpenAI-compatible chat completions",
                  version="1")
    gate = Gate(cfg.max_concurrency, cfg.max_queue)
    app.state.engine, app.state.gate = engine, gate

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        message, param = _validation_message(exc.errors())
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(_: Request, exc: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                                     type="server_error").body(), status_code=500)

    async def _auth(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
                return JSONResponse(APIError(401, "missing or wrong API key (Authorization: "
                                                  "Bearer ...)", type="authentication_error",
                                             code="invalid_api_key").body(), status_code=401)
        return await call_next(request)

    if cfg.api_key:  # only then: the middleware layer costs every request, streams included
        app.middleware("http")(_auth)

    def model_card() -> dict[str, Any]:
        return {"id": engine.model_id, "object": "model", "created": engine.created,
                "owned_by": "minillm", "max_context": engine.max_context}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.model_id, "running": min(gate.inside, gate.running),
                "waiting": max(gate.inside - gate.running, 0)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != engine.model_id:
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves "
                                f"{engine.model_id!r}", param="model", code="model_not_found")
        return model_card()

    async def read_request(request: Request) -> ChatRequest:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            raise APIError(413, f"request body of {declared} bytes exceeds {cfg.max_body_bytes}",
                           code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_body_bytes:
                raise APIError(413, f"request body exceeds {cfg.max_body_bytes} bytes",
                               code="request_too_large")
        try:
            obj = json.loads(bytes(body))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(obj, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        try:
            return ChatRequest.model_validate(obj)
        except ValidationError as exc:
            message, param = _validation_message(exc.errors())
            raise APIError(400, message, param=param) from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await read_request(request)
        if req.model != engine.model_id:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves "
                                f"{engine.model_id!r}", param="model", code="model_not_found")
        messages = [m.model_dump(exclude_none=True, exclude={"name"}) for m in req.messages]
        for m in messages:
            if m["role"] == "developer":  # OpenAI's newer name for the system message
                m["role"] = "system"
        prompt = await run_in_threadpool(engine.prompt_ids, messages)
        room = engine.max_context - len(prompt)
        if room < 1:
            raise APIError(400, f"this model's maximum context length is {engine.max_context} "
                                f"tokens; the messages are {len(prompt)} tokens",
                           param="messages", code="context_length_exceeded")
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > room:
            raise APIError(400, f"this model's maximum context length is {engine.max_context} "
                                f"tokens; you requested {len(prompt) + asked} ({len(prompt)} in "
                                f"the messages, {asked} in the completion)",
                           param="max_tokens", code="context_length_exceeded")
        max_new = asked if asked is not None else min(cfg.default_max_tokens, room)
        temperature = cfg.temperature if req.temperature is None else req.temperature
        top_k = cfg.top_k if req.top_k is None else req.top_k
        top_k = top_k if top_k else None
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        cancel = threading.Event()

        def run() -> Iterator[tuple[str, Any]]:
            return engine.events(prompt, max_new, temperature=temperature, top_k=top_k,
                                 seed=req.seed, stops=req.stop, cancel=cancel)

        await gate.enter()  # 429 here, before any byte of the answer is sent
        if not req.stream:
            try:
                events = await run_in_threadpool(lambda: list(run()))
            finally:
                gate.leave()
            text = "".join(e[1] for e in events if e[0] == "text")
            _, finish, n = events[-1]
            return {"id": cid, "object": "chat.completion", "created": created,
                    "model": engine.model_id, "system_fingerprint": engine.fingerprint,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": None, "finish_reason": finish}],
                    "usage": _usage(len(prompt), n)}

        def chunk(delta: dict[str, Any], finish: str | None) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": engine.model_id, "system_fingerprint": engine.fingerprint,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}]}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def sse() -> AsyncIterator[str]:
            it = run()
            try:
                yield chunk({"role": "assistant", "content": ""}, None)
                while True:
                    event = await run_in_threadpool(next, it, None)
                    if event is None:
                        break
                    if event[0] == "text":
                        yield chunk({"content": event[1]}, None)
                    else:
                        _, finish, n = event
                        yield chunk({}, finish)
                        if req.stream_options and req.stream_options.include_usage:
                            usage = {"id": cid, "object": "chat.completion.chunk",
                                     "created": created, "model": engine.model_id,
                                     "choices": [], "usage": _usage(len(prompt), n)}
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

        return GatedStream(sse(), gate.leave, media_type="text/event-stream",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# ---------------------------------------------------------------------------------------- loading

def load_engine(checkpoint_dir: Path | str, tokenizer_dir: Path | str,
                cfg: ServeConfig | None = None) -> Engine:
    """Load a checkpoint and its tokenizer for serving; refuses a mismatched tokenizer."""
    from minillm_core.artifacts import sha256_file
    from minillm_core.checkpoint import WEIGHTS, load_checkpoint
    from minillm_core.evaluate import resolve_device, resolve_dtype
    from minillm_core.tokenizer import load_tokenizer

    cfg = cfg or ServeConfig()
    ckpt = require(checkpoint_dir, "checkpoint directory")
    tokenizer = load_tokenizer(tokenizer_dir)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, meta = load_checkpoint(ckpt, device)
    want = meta.get("tokenizer_hash")
    if want and want != tokenizer.hash:
        raise ConfigError(f"{ckpt} was trained with another tokenizer ({str(want)[:12]} != "
                          f"{tokenizer.hash[:12]}); pass the matching --tokenizer")
    if dtype != torch.float32:
        # Cast the weights rather than autocast: autocast is per thread, and generation runs in
        # worker threads. RMSNorm still normalises in float32.
        model.to(dtype)
    model.eval()
    context = cfg.max_context or _context_from_meta(meta)
    weights = Path(ckpt) / WEIGHTS
    return Engine(model, tokenizer, model_id=cfg.model_id, max_context=context,
                  created=int(weights.stat().st_mtime),
                  fingerprint=f"fp_{sha256_file(weights)[:12]}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minillm serve",
                                description="Serve a checkpoint with an OpenAI-compatible API "
                                            "(/v1/chat/completions, /v1/models).")
    add_model_arguments(p)
    p.add_argument("--host", default=None, help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--model-id", "--model_id", "--served-model-name", dest="model_id",
                   default=None, help="name clients pass as `model` (default minillm)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:0, auto")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-context", "--max_context", dest="max_context", type=int, default=None)
    p.add_argument("--max-tokens", "--max_tokens", dest="default_max_tokens", type=int,
                   default=None, help="default completion length (256)")
    p.add_argument("--max-concurrency", "--max_concurrency", dest="max_concurrency", type=int,
                   default=None, help="generations at once (1)")
    p.add_argument("--max-queue", "--max_queue", dest="max_queue", type=int, default=None,
                   help="requests waiting beyond those (16); more get 429")
    p.add_argument("--temperature", type=float, default=None, help="default temperature (0.6)")
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=None,
                   help="default top-k (50; 0 = all)")
    p.add_argument("--api-key", "--api_key", dest="api_key", default=None,
                   help="require this bearer token (default: $MINILLM_API_KEY, else none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("minillm serve: needs fastapi and uvicorn (pip install 'minillm[serve]')",
              file=sys.stderr)
        return 2
    layer = {k: getattr(args, k) for k in ("host", "port", "model_id", "device", "dtype",
                                           "max_context", "default_max_tokens", "max_concurrency",
                                           "max_queue", "temperature", "top_k", "api_key")}
    layer["api_key"] = layer["api_key"] or os.environ.get("MINILLM_API_KEY") or None
    try:
        cfg = ServeConfig.resolve(layer)
        engine = load_engine(*model_paths(args), cfg)
        app = create_app(engine, cfg)
    except (ConfigError, ArtifactError, TokenizerError) as exc:
        print(f"minillm serve: {exc}", file=sys.stderr)
        return 2
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        print(f"minillm serve: WARNING: listening on {cfg.host} without --api-key: anyone who can "
              "reach this port can use the model", file=sys.stderr)
    print(f"minillm serve: model {engine.model_id!r}, context {engine.max_context} tokens, "
          f"http://{cfg.host}:{cfg.port}/v1", file=sys.stderr)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
