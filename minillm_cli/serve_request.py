"""The requests the server accepts: OpenAI's chat-completions and completions fields, each
validated with a message that names it (`validation_message` turns pydantic's errors into one
line with OpenAI's `param`).

As in OpenAI's API, `null` means "not given" for every optional field, and fields this server
does not know are ignored (logged once per name, so a client's typo is visible in the log) rather
than refused: clients and SDKs send fields of newer API versions. Fields it knows but cannot honour
(`echo`, a `response_format` other than text, `tool_choice: "required"`, a non-empty
`logit_bias`) are refused by name: ignoring them would answer something other than what was asked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from minillm_cli.serve_engine import MAX_TOP_LOGPROBS
from minillm_core.inference import SEED_MAX, SEED_MIN

log = logging.getLogger("minillm.serve")

# Choices per request (`n`); they are decoded together as rows of the batch.
MAX_CHOICES = 8
# Prompts per /v1/completions request (each gets `n` choices; prompts are decoded one after another).
MAX_PROMPTS = 16
# OpenAI's default completion length on /v1/completions (chat has the server's own default).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

_ignored: set[str] = set()
_ignored_lock = threading.Lock()


def _log_ignored(name: str) -> None:
    with _ignored_lock:
        if name in _ignored:
            return
        _ignored.add(name)
    log.warning("ignoring the request field %r, which this server does not use", name)


class _Lenient(BaseModel):
    """`null` is "not given"; unknown fields are dropped and logged once per name."""

    model_config = ConfigDict(extra="ignore")
    where: ClassVar[str] = ""  # how a field of this object is named in the log

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        given = {k: v for k, v in data.items() if v is not None}
        for k in given.keys() - cls.model_fields.keys():
            _log_ignored(cls.where + str(k))
        return given


# Content parts the model cannot read: refused, not silently dropped from the prompt.
NON_TEXT_PARTS = frozenset(
    {"image_url", "input_image", "image", "input_audio", "audio", "file", "input_file", "video_url"}
)


class FunctionCall(_Lenient):
    where = "messages[].tool_calls[].function."
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Lenient):
    where = "messages[].tool_calls[]."
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    where = "messages[]."
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None  # accepted (OpenAI clients send it); the model has no use for it
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, v: str | list[dict[str, Any]] | None) -> Any:
        for part in v if isinstance(v, list) else []:
            if part.get("type") in NON_TEXT_PARTS:
                raise ValueError(
                    f"this model reads text only; a {part['type']!r} content part cannot be used"
                )
        return v

    @model_validator(mode="after")
    def _roles(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self


class ToolFunction(_Lenient):
    where = "tools[].function."
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Lenient):
    where = "tools[]."
    type: Literal["function"]
    function: ToolFunction


class StreamOptions(_Lenient):
    where = "stream_options."
    include_usage: bool = False


class _Sampling(_Lenient):
    """What both endpoints share: the model, the budget, sampling and streaming."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # Extensions, as vLLM accepts them.
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    user: str | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v:
            raise ValueError("logit_bias is not supported (send {} or null)")
        return v


class ChatRequest(_Sampling):
    """OpenAI's chat-completions request. `max_completion_tokens` is the newer name of
    `max_tokens`; when both are given, `max_completion_tokens` wins (as in vLLM)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if v is not None and v not in ("auto", "none"):
            raise ValueError(
                "only 'auto' and 'none' are supported: the server does not parse tool calls "
                "out of the model's text, so it cannot force one"
            )
        return v

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v.get("type") != "text":
            raise ValueError("only {'type': 'text'} is supported (no JSON mode or schema)")
        return v

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def logprobs_k(self) -> int | None:
        """The engine's `logprobs` argument: None = none, else the alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    """OpenAI's (legacy) completions request: a plain prompt, or several (`n` choices each)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(COMPLETIONS_DEFAULT_MAX_TOKENS, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not 1 <= len(v) <= MAX_PROMPTS:
            raise ValueError(f"1 to {MAX_PROMPTS} prompts")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported (send false or null)")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (insertion) is not supported")
        return v

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def budget(self) -> int | None:
        return self.max_tokens

    @property
    def logprobs_k(self) -> int | None:
        return self.logprobs


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One line naming every bad field (OpenAI-style `param` = the first), from pydantic errors."""
    parts, first = [], None
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"])
        first = first or loc
        parts.append(f"{loc or 'body'}: {err['msg']}")
    return "; ".join(parts), first
