"""The chat-completions request the server accepts: OpenAI's fields this model can honour, each
validated with a message that names it (`validation_message` turns pydantic's errors into one
line with OpenAI's `param`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from minillm_core.inference import SEED_MAX, SEED_MIN

# Choices per request (`n`); they are generated one after another in the request's slot.
MAX_CHOICES = 8


class _Strict(BaseModel):
    """Unknown fields are refused by name, but `null` means "not given" for every field, known
    or not, as in OpenAI's API: clients send optional fields as null (`n`, `tools`,
    `response_format`, `logit_bias`, `stop`, ...), and a message dumped by the SDK
    (`message.model_dump()`) carries `refusal`, `audio`, `function_call` and `tool_calls` as
    nulls."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


# Content parts the model cannot read: refused, not silently dropped from the prompt.
NON_TEXT_PARTS = frozenset(
    {"image_url", "input_image", "image", "input_audio", "audio", "file", "input_file", "video_url"}
)


class ChatMessage(_Strict):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None  # accepted (OpenAI clients send it); the model has no use for it

    @field_validator("content")
    @classmethod
    def _text_only(cls, v: str | list[dict[str, Any]] | None) -> Any:
        for part in v if isinstance(v, list) else []:
            if part.get("type") in NON_TEXT_PARTS:
                raise ValueError(
                    f"this model reads text only; a {part['type']!r} content part cannot be used"
                )
        return v


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """The subset of OpenAI's chat-completions request this model can honour; other fields are
    refused by name (OpenAI does the same with unrecognized arguments)."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
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
    logprobs: bool | None = None
    user: str | None = None

    # Accepted at the value that means "off", refused otherwise: silently ignoring them would
    # return something other than what the client asked for.
    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        if v:  # accepted only at its neutral value (false, null)
            raise ValueError("logprobs are not supported (logprobs must be false or null)")
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


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
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
