"""The server's generation side, free of HTTP: an `Engine` (a loaded model and tokenizer, and the
rows of every request decoded together by `minillm_core.batching.BatchDecoder`), the stop-string
release rule, and the `Gate` bounding how many requests run and wait."""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from collections.abc import Generator, Sequence
from typing import Any

import torch

from minillm_core.batching import BatchDecoder
from minillm_core.inference import SamplingParams, TextStreamer, pack_linears, stop_ids

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
    """A loaded model and tokenizer plus the batch decoder every request's rows share.

    `events`/`choices` are synchronous generators, safe to run from many worker threads at once:
    each submits its rows to the one `BatchDecoder` (one background decode loop per engine) and
    turns the tokens that come back into text events. A bfloat16 model on CPU has its linear
    layers packed in place for oneDNN (`inference.pack_linears`): the engine owns it for serving."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        model_id: str = "minillm",
        max_context: int = 2048,
        max_batch: int = 8,
        created: int | None = None,
        fingerprint: str | None = None,
    ):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        cfg = getattr(model, "config", None)
        limit = getattr(cfg, "max_position_embeddings", max_context)
        self.max_context = min(max_context, limit)
        self.max_batch = max_batch
        self.created = created if created is not None else int(time.time())
        self.fingerprint = fingerprint
        self.stop_ids = stop_ids(tokenizer)
        # Control tokens (<|output_start|>, <|python_start|>, ...) are markup, never content.
        specials = getattr(tokenizer, "special_tokens", {})
        self.control_ids = set(specials.values()) - set(self.stop_ids)
        model.eval()
        pack_linears(model)  # bfloat16 on CPU: oneDNN's weight layout, much faster in a batch
        self.decoder = BatchDecoder(model, max_batch, self.max_context)

    def prompt_ids(self, conversation: Sequence[dict[str, Any]] | dict[str, Any]) -> list[int]:
        """The prompt of a conversation: messages, or `{"messages": [...], "tools": [...]}`."""
        if not isinstance(conversation, dict):
            conversation = list(conversation)
        try:
            return list(self.tokenizer.render_for_completion(conversation))
        except (ValueError, AttributeError, TypeError) as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from None

    def stats(self) -> dict[str, int]:
        """Rows decoding in the batch ("running") and rows waiting for a slot ("waiting")."""
        return self.decoder.stats()

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

        finish_reason: "stop" (end token or a stop string), "length" (max_new_tokens reached, or
        cancelled). `params` without stop ids gets the engine's (the end of the turn, BOS). With
        `logprobs` k (0..20), each generated token other than a stop id is announced first by
        ("token", {"id", "logprob", "top": k (id, logprob) pairs}), from the raw logits' log-softmax.
        Closing the generator or setting `cancel` frees the row's slot within one decode step."""
        it = self.choices(
            prompt, max_new_tokens, [params], stops=stops, cancel=cancel, logprobs=logprobs
        )
        try:
            for _, *event in it:
                yield tuple(event)
        finally:
            it.close()

    def choices(
        self,
        prompt: list[int],
        max_new_tokens: int,
        params: Sequence[SamplingParams],
        *,
        stops: Sequence[str] = (),
        cancel: threading.Event | None = None,
        logprobs: int | None = None,
    ) -> Generator[tuple[Any, ...], None, None]:
        """`events` for several choices of one prompt decoded as rows of the batch together
        (choice i samples with params[i]): yields (i, *event), interleaved."""
        out: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        rows, texts = [], []
        for i, p in enumerate(params):
            if not p.stop_ids:
                p = dataclasses.replace(p, stop_ids=tuple(self.stop_ids))
            texts.append(_RowText(self, p.stop_ids, stops))
            rows.append(
                self.decoder.submit(
                    prompt, max_new_tokens, p, out, i, logprobs=logprobs, cancel=cancel
                )
            )
        try:
            live = len(rows)
            while live:
                i, kind, *rest = out.get()
                text = texts[i]
                if text.done:
                    continue  # events of a row already ended by a stop string
                if kind == "error":
                    raise rest[0]
                events = text.token(*rest) if kind == "token" else text.finish()
                for event in events:
                    yield (i, *event)
                if text.done:
                    rows[i].leave()
                    live -= 1
        finally:
            for row in rows:
                row.leave()


class _RowText:
    """One row's tokens to text events: control tokens dropped, whole characters only, text
    held back while it could be the start of a stop string (`_release`)."""

    def __init__(self, engine: Engine, stop_ids: Sequence[int], stops: Sequence[str]):
        self.control_ids, self.stop_ids, self.stops = engine.control_ids, set(stop_ids), stops
        self.streamer = TextStreamer(engine.tokenizer)
        self.held, self.n, self.finish_reason, self.done = "", 0, "length", False

    def token(self, tok: int, info: dict[str, Any] | None) -> list[tuple[Any, ...]]:
        self.n += 1
        if tok in self.stop_ids:
            self.finish_reason = "stop"
            return []  # the "end" event follows
        events: list[tuple[Any, ...]] = [("token", info)] if info is not None else []
        if tok in self.control_ids:
            return events
        self.held += self.streamer.push(tok)
        text, self.held, hit = _release(self.held, self.stops, final=False)
        if text:
            events.append(("text", text))
        if hit:
            self.done = True
            events.append(("done", "stop", self.n))
        return events

    def finish(self) -> list[tuple[Any, ...]]:
        """What is left (text held back for a possible stop string, the bytes of a character
        the last token did not complete), then "done"."""
        self.held += self.streamer.flush()
        text, _, hit = _release(self.held, self.stops, final=True)
        self.done = True
        events: list[tuple[Any, ...]] = [("text", text)] if text else []
        return [*events, ("done", "stop" if hit else self.finish_reason, self.n)]


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
