"""The server's generation side, free of HTTP: an `Engine` (a loaded model and tokenizer, and the
event loop one request runs in a worker thread, over `minillm_core.inference.generate`), the
stop-string release rule, and the `Gate` bounding how many generations run and wait."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Generator, Sequence
from typing import Any

import torch

from minillm_core.inference import SamplingParams, TextStreamer, generate, logits_of, stop_ids

# OpenAI's bound on `top_logprobs` (and vLLM's default bound on `logprobs`).
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """An error answered in OpenAI's shape: status, message, type, param, code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code = param, code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class Engine:
    """A loaded model and tokenizer plus the generation loop the server runs in worker threads."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        model_id: str = "minillm",
        max_context: int = 2048,
        created: int | None = None,
        fingerprint: str | None = None,
    ):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        cfg = getattr(model, "config", None)
        limit = getattr(cfg, "max_position_embeddings", max_context)
        self.max_context = min(max_context, limit)
        self.created = created if created is not None else int(time.time())
        self.fingerprint = fingerprint
        self.stop_ids = stop_ids(tokenizer)
        # Control tokens (<|output_start|>, <|python_start|>, ...) are markup, never content.
        specials = getattr(tokenizer, "special_tokens", {})
        self.control_ids = set(specials.values()) - set(self.stop_ids)
        rope_for = getattr(model, "_rope_for", None)
        if callable(rope_for):
            # Build the RoPE tables for the whole context once, before any request: concurrent
            # generations then only read them.
            rope_for(0, self.max_context, next(model.parameters()).device)
        self._running = 0
        self._lock = threading.Lock()

    def stats(self) -> dict[str, int]:
        """Generations decoding now and waiting inside the engine (this engine runs each
        request's generation in its caller's thread: nothing waits inside it)."""
        return {"running": self._running, "waiting": 0}

    def prompt_ids(self, conversation: Sequence[dict[str, Any]] | dict[str, Any]) -> list[int]:
        """The prompt of a conversation: messages, or `{"messages": [...], "tools": [...]}`."""
        if not isinstance(conversation, dict):
            conversation = list(conversation)
        try:
            return list(self.tokenizer.render_for_completion(conversation))
        except (ValueError, AttributeError, TypeError) as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from None

    def events(
        self,
        prompt: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        *,
        stops: Sequence[str] = (),
        cancel: threading.Event | None = None,
        logprobs: int | None = None,
    ) -> Generator[tuple[Any, ...], None, None]:
        """Yield ("text", piece) as text becomes final, then ("done", finish_reason, n_tokens).

        finish_reason: "stop" (end token or a stop string), "length" (max_new_tokens reached).
        `params` without stop ids gets the engine's (the end of the turn, BOS). With `logprobs`
        = k (0..20), each generated token other than a stop token is first announced as
        ("token", {"id", "logprob", "top": [(id, logprob)] * k}): log-softmax of the model's raw
        logits, before penalties and temperature (what vLLM reports by default)."""
        with self._lock:
            self._running += 1
        try:
            yield from self._events(prompt, max_new_tokens, params, stops, cancel, logprobs)
        finally:
            with self._lock:
                self._running -= 1

    def _events(
        self,
        prompt: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        stops: Sequence[str],
        cancel: threading.Event | None,
        logprobs: int | None,
    ) -> Generator[tuple[Any, ...], None, None]:
        if not params.stop_ids:
            params = dataclasses.replace(params, stop_ids=tuple(self.stop_ids))
        streamer = TextStreamer(self.tokenizer)
        held, n, finish, stopped_by_string = "", 0, "length", False
        tap = _LogitTap(self.model) if logprobs is not None else None
        it = generate(tap or self.model, prompt, max_new_tokens, params, include_stop=True)
        try:
            for tok in it:
                n += 1
                if tok in params.stop_ids:
                    finish = "stop"
                    break
                if tap is not None:
                    yield ("token", tap.logprobs(tok, logprobs or 0))
                if tok in self.control_ids:
                    continue
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


class _LogitTap(torch.nn.Module):
    """The model, remembering the last position's raw logits of its latest forward pass: those
    the token `generate` yields next was sampled from (the sampler applies penalties,
    temperature and filters to its own copy). Wrapping keeps `generate` the one decode loop."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model
        self.last: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:  # new_cache, config, ...: the model's own, when it has them
            return getattr(self._modules["inner"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        self.last = logits_of(out)[0, -1].float()
        return out

    def logprobs(self, tok: int, k: int) -> dict[str, Any]:
        assert self.last is not None
        lp = torch.log_softmax(self.last, dim=-1)
        top = torch.topk(lp, min(k, lp.shape[-1])) if k else None
        return {
            "id": tok,
            "logprob": float(lp[tok]),
            "top": [] if top is None else list(zip(top.indices.tolist(), top.values.tolist())),
        }


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
    return held[: len(held) - keep], held[len(held) - keep :], False


class Gate:
    """At most `running` holders at once and `waiting` more queued; anyone else is refused."""

    def __init__(self, running: int, waiting: int):
        self.running, self.limit = running, running + waiting
        self.inside = 0
        self._sem: asyncio.Semaphore | None = None

    async def enter(self) -> None:
        if self.inside >= self.limit:
            raise APIError(
                429,
                f"server busy: {self.running} generation(s) running and "
                f"{self.limit - self.running} waiting; retry later",
                type="rate_limit_error",
                code="server_busy",
            )
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
