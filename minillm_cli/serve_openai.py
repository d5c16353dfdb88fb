"""OpenAI's shapes on the server's side, free of HTTP: a validated request becomes a `Job` (prompt
ids, budget, sampling), and the engine's events become `chat.completion` / `text_completion`
bodies and their streamed chunks, with logprobs in OpenAI's layout (chat:
`logprobs.content[{token, logprob, bytes, top_logprobs}]`; completions: `tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal

from minillm_cli.serve_engine import APIError, Engine
from minillm_cli.serve_request import ChatRequest, CompletionRequest
from minillm_core.inference import SEED_MAX, SamplingParams

# JSON has no -inf; vLLM reports an impossible token's logprob as this.
MIN_LOGPROB = -9999.0


@dataclass
class Job:
    """A validated request, ready to generate: `n` choices per prompt, decoded together as rows of the batch."""

    kind: Literal["chat", "text"]
    prompts: list[list[int]]
    n: int
    max_new: int
    params: SamplingParams
    stops: list[str]
    logprobs: int | None  # alternatives per token; None = no logprobs
    stream: bool
    include_usage: bool
    model: str
    fingerprint: str | None
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def events(
        self, engine: Engine, cancel: threading.Event
    ) -> Generator[tuple[Any, ...], None, None]:
        """(choice index, *event) for every choice (index = prompt * n + j, OpenAI's order): the
        n choices of a prompt are decoded together as rows of the batch, prompts one after
        another. With a seed, choice j of a prompt samples with seed + j (reproducible, and the
        choices differ)."""
        rows = []
        for j in range(self.n):
            seed = self.params.seed
            if seed is not None:
                seed = seed + j if seed + j <= SEED_MAX else seed - j
            rows.append(dataclasses.replace(self.params, seed=seed))
        for p, prompt in enumerate(self.prompts):
            for j, *event in engine.choices(
                prompt,
                self.max_new,
                rows,
                stops=self.stops,
                cancel=cancel,
                logprobs=self.logprobs,
            ):
                yield (p * self.n + j, *event)
            if cancel.is_set():
                return


# ---------------------------------------------------------------------------- request -> job


def _budget(engine: Engine, prompt: list[int], asked: int | None, param: str) -> int:
    """What is left of the context after `prompt`; 400 context_length_exceeded when the prompt
    or the asked completion does not fit (OpenAI's status and code)."""
    room = engine.max_context - len(prompt)
    if room < 1:
        raise APIError(
            400,
            f"this model's maximum context length is {engine.max_context} "
            f"tokens; the {param} are {len(prompt)} tokens",
            param=param,
            code="context_length_exceeded",
        )
    if asked is not None and asked > room:
        raise APIError(
            400,
            f"this model's maximum context length is {engine.max_context} "
            f"tokens; you requested {len(prompt) + asked} ({len(prompt)} in "
            f"the {param}, {asked} in the completion)",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return room


def _sampling(req: ChatRequest | CompletionRequest, temperature: float, top_k: int | None) -> Any:
    k = top_k if req.top_k is None else req.top_k
    return SamplingParams(
        temperature=temperature if req.temperature is None else req.temperature,
        top_k=k if k else None,
        top_p=1.0 if req.top_p is None else req.top_p,
        min_p=req.min_p or 0.0,
        repetition_penalty=req.repetition_penalty or 1.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        seed=req.seed,
    )


def unknown_model(engine: Engine, model_id: str) -> APIError:
    return APIError(
        404,
        f"the model {model_id!r} does not exist; this server serves {engine.model_id!r}",
        param="model",
        code="model_not_found",
    )


def _job(
    engine: Engine,
    req: ChatRequest | CompletionRequest,
    prompts: list[list[int]],
    param: str,
    defaults: tuple[float, int | None, int],
) -> Job:
    """The job of `prompts`: the budget is the asked one, else the default cut to the room."""
    temperature, top_k, default_max = defaults
    rooms = [_budget(engine, p, req.budget, param) for p in prompts]
    return Job(
        kind="chat" if isinstance(req, ChatRequest) else "text",
        prompts=prompts,
        n=req.n,
        max_new=req.budget if req.budget is not None else min([default_max, *rooms]),
        params=_sampling(req, temperature, top_k),
        stops=list(req.stop or []),
        logprobs=req.logprobs_k,
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        model=engine.model_id,
        fingerprint=engine.fingerprint,
    )


def chat_job(engine: Engine, req: ChatRequest, defaults: tuple[float, int | None, int]) -> Job:
    """Render the messages (and tools) with the chat template and fit the budget."""
    if req.model != engine.model_id:
        raise unknown_model(engine, req.model)
    messages = [m.model_dump(exclude_none=True, exclude={"name"}) for m in req.messages]
    for m in messages:
        if m["role"] == "developer":  # OpenAI's newer name for the system message
            m["role"] = "system"
    conversation: dict[str, Any] = {"messages": messages}
    if req.tools:
        conversation["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
    prompt = engine.prompt_ids(conversation)
    return _job(engine, req, [prompt], "messages", defaults)


def text_job(
    engine: Engine, req: CompletionRequest, defaults: tuple[float, int | None, int]
) -> Job:
    """Each prompt as plain text after `<|bos|>`, as pretraining saw documents."""
    if req.model != engine.model_id:
        raise unknown_model(engine, req.model)
    tok = engine.tokenizer
    prompts = [tok.encode(text, prepend=tok.bos_token_id) for text in req.prompts]
    return _job(engine, req, prompts, "prompt", defaults)


# ---------------------------------------------------------------------------------- logprobs


def _lp(x: float) -> float:
    return max(float(x), MIN_LOGPROB)


def _token(tokenizer: Any, tok: int) -> tuple[str, bytes]:
    raw = tokenizer.token_bytes(tok)
    return raw.decode("utf-8", errors="replace"), raw


def chat_logprobs(tokenizer: Any, infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Chat's `logprobs` of some tokens: `{"content": [...], "refusal": None}`."""

    def entry(tok: int, lp: float) -> dict[str, Any]:
        text, raw = _token(tokenizer, tok)
        return {"token": text, "logprob": _lp(lp), "bytes": list(raw)}

    content = [
        {**entry(i["id"], i["logprob"]), "top_logprobs": [entry(t, lp) for t, lp in i["top"]]}
        for i in infos
    ]
    return {"content": content, "refusal": None}


def text_logprobs(tokenizer: Any, infos: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Completions' `logprobs` of some tokens, the first at character `offset` of the text."""
    tokens, offsets = [], []
    for i in infos:
        tokens.append(_token(tokenizer, i["id"])[0])
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [_lp(i["logprob"]) for i in infos],
        "top_logprobs": [{_token(tokenizer, t)[0]: _lp(lp) for t, lp in i["top"]} for i in infos],
        "text_offset": offsets,
    }


# ---------------------------------------------------------------------------------- responses


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Choice:
    """One choice being built from the engine's events."""

    index: int
    text: str = ""
    infos: list[dict[str, Any]] = field(default_factory=list)
    finish: str | None = None
    tokens: int = 0


def _head(job: Job, chunk: bool) -> dict[str, Any]:
    kind = {"chat": "chat.completion", "text": "text_completion"}[job.kind]
    return {
        "id": job.id,
        "object": kind + (".chunk" if chunk and job.kind == "chat" else ""),
        "created": job.created,
        "model": job.model,
        "system_fingerprint": job.fingerprint,
    }


def _logprobs(job: Job, tokenizer: Any, infos: list[dict[str, Any]], offset: int) -> Any:
    if job.logprobs is None:
        return None
    if job.kind == "chat":
        return chat_logprobs(tokenizer, infos)
    return text_logprobs(tokenizer, infos, offset)


def body(job: Job, tokenizer: Any, choices: list[Choice]) -> dict[str, Any]:
    """The whole answer: a `chat.completion` or a `text_completion`."""
    out = []
    for c in choices:
        one: dict[str, Any] = {"index": c.index, "finish_reason": c.finish}
        one["logprobs"] = _logprobs(job, tokenizer, c.infos, 0)
        if job.kind == "chat":
            one["message"] = {"role": "assistant", "content": c.text}
        else:
            one["text"] = c.text
        out.append(one)
    return {
        **_head(job, chunk=False),
        "choices": out,
        "usage": usage(job.prompt_tokens, sum(c.tokens for c in choices)),
    }


def collect(job: Job, events: list[tuple[Any, ...]]) -> list[Choice]:
    """The choices of a finished job from all its (index, *event) events."""
    choices = [Choice(i) for i in range(job.choices)]
    for index, kind, *rest in events:
        c = choices[index]
        if kind == "text":
            c.text += rest[0]
        elif kind == "token":
            c.infos.append(rest[0])
        else:
            c.finish, c.tokens = rest
    return choices


class Chunker:
    """The engine's events of a streamed job as server-sent `data:` lines. Token logprobs ride
    on the next chunk with text (a token can end mid-character, or be held back for a possible
    stop string), the rest on the choice's last chunk."""

    def __init__(self, job: Job, tokenizer: Any):
        self.job, self.tokenizer = job, tokenizer
        self.choice = Choice(-1)
        self.offset = 0
        self.completion_tokens = 0

    def _line(self, delta: Any, finish: str | None, infos: list[dict[str, Any]]) -> str:
        one: dict[str, Any] = {"index": self.choice.index}
        if self.job.kind == "chat":
            one["delta"] = delta
        else:
            one["text"] = delta
        one["logprobs"] = _logprobs(self.job, self.tokenizer, infos, self.offset)
        one["finish_reason"] = finish
        return sse({**_head(self.job, chunk=True), "choices": [one]})

    def open(self, index: int) -> list[str]:
        self.choice, self.offset = Choice(index), 0
        if self.job.kind == "chat":  # each chat choice opens with the role
            return [self._line({"role": "assistant", "content": ""}, None, [])]
        return []

    def event(self, index: int, kind: str, *rest: Any) -> list[str]:
        lines = self.open(index) if index != self.choice.index else []
        c = self.choice
        if kind == "token":
            c.infos.append(rest[0])
        elif kind == "text":
            delta = {"content": rest[0]} if self.job.kind == "chat" else rest[0]
            lines.append(self._line(delta, None, c.infos))
            self.offset += sum(len(_token(self.tokenizer, i["id"])[0]) for i in c.infos)
            c.infos = []
        else:
            self.completion_tokens += rest[1]
            lines.append(self._line({} if self.job.kind == "chat" else "", rest[0], c.infos))
            c.infos = []
        return lines

    def usage(self) -> str:
        return sse(
            {
                **_head(self.job, chunk=True),
                "choices": [],
                "usage": usage(self.job.prompt_tokens, self.completion_tokens),
            }
        )


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
