"""Conversations as token ids and a loss mask: the chat layout every stage and front end uses.

Layout: `<|bos|>` then per turn `<|user_start|> text <|user_end|>` (mask 0) or
`<|assistant_start|>` (mask 0) `text <|assistant_end|>` (mask 1). A system message is folded into
the first user message (`schema.normalize_conversation`); a `tool` message becomes
`<|output_start|> text <|output_end|>` (mask 0: the model does not write tool output). Assistant
content may be a list of parts `{"type": "text"|"python"|"python_output", "text": ...}` as in
nanochat.

Function calling (OpenAI's shapes): an assistant message's `tool_calls` follow its content, each
as `<|python_start|>{"name": ..., "arguments": ...}<|python_end|>` (mask 1: the model writes its
calls); `tools` given beside the messages (`{"messages": [...], "tools": [...]}`) become a block
at the start of the first user message, before any system text: `TOOLS_HEADER` then each tool as
one line of JSON. The export's chat template renders both the same way.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from minillm_core.schema import BOS, normalize_conversation, text_of

# The first line of the tools block; no special-token text in it (HF would parse that as one).
TOOLS_HEADER = "# Tools\nYou can call these functions:"

if TYPE_CHECKING:
    from minillm_core.tokenizer.core import Tokenizer


class _Rendered:
    """Ids and mask being built, one span at a time."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.sp = tok, tok.special_tokens
        self.ids: list[int] = []
        self.mask: list[int] = []

    def add(self, tokens: int | list[int], m: int) -> None:
        if isinstance(tokens, int):
            tokens = [tokens]
        self.ids.extend(tokens)
        self.mask.extend([m] * len(tokens))

    def span(self, start: str, text: str, end: str, m: int) -> None:
        """`start text end`, all with mask m."""
        self.add(self.sp[start], m)
        self.add(self.tok.enc.encode_ordinary(text), m)
        self.add(self.sp[end], m)

    def assistant(self, content: Any, tool_calls: Any = ()) -> None:
        self.add(self.sp["<|assistant_start|>"], 0)
        if isinstance(content, str):
            self.add(self.tok.enc.encode_ordinary(content), 1)
        elif isinstance(content, list):
            for part in content:
                kind, text = part.get("type", "text"), part.get("text", "")
                if kind == "text":
                    self.add(self.tok.enc.encode_ordinary(text), 1)
                elif kind == "python":
                    self.span("<|python_start|>", text, "<|python_end|>", 1)
                elif kind == "python_output":
                    # Produced by the interpreter at inference time: not learned.
                    self.span("<|output_start|>", text, "<|output_end|>", 0)
                else:
                    raise ValueError(f"unknown assistant content part type {kind!r}")
        else:
            raise ValueError(f"assistant content must be str or list, got {type(content)}")
        for call in tool_calls:
            self.span("<|python_start|>", tool_call_json(call), "<|python_end|>", 1)
        self.add(self.sp["<|assistant_end|>"], 1)


def tool_call_json(call: Any) -> str:
    """One call as the model writes it: `{"name": ..., "arguments": ...}` (OpenAI nests these
    under `function`; `arguments` stays as given, a JSON string in OpenAI's API)."""
    if not isinstance(call, dict):
        raise ValueError(f"a tool call is an object, got {type(call).__name__}")
    f = call.get("function", call)
    return json.dumps({"name": f.get("name"), "arguments": f.get("arguments")}, ensure_ascii=False)


def tools_block(tools: Any) -> str:
    """The tool definitions as the prompt shows them: TOOLS_HEADER, then one JSON line each."""
    if not isinstance(tools, list):
        raise ValueError(f"tools must be a list, got {type(tools).__name__}")
    return TOOLS_HEADER + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)


def _messages(conversation: Any) -> list[dict[str, Any]]:
    """The normalised messages, the tools block (if any) at the head of the first user message."""
    messages = normalize_conversation(conversation)
    tools = conversation.get("tools") if isinstance(conversation, dict) else None
    if tools:
        if messages[0]["role"] != "user":
            raise ValueError("with tools, the conversation must start with a user message")
        first = text_of(messages[0]["content"])
        messages[0] = {"role": "user", "content": tools_block(tools) + "\n\n" + first}
    return messages


def render_conversation(
    tok: Tokenizer, conversation: Any, max_tokens: int = 2048
) -> tuple[list[int], list[int]]:
    """Token ids and a mask (1 = the model is trained to predict this token) for a chat,
    truncated to `max_tokens` (layout: the module docstring)."""
    r = _Rendered(tok)
    r.add(r.sp[BOS], 0)
    for msg in _messages(conversation):
        role, content = msg["role"], msg["content"]
        if role == "user":
            r.span("<|user_start|>", text_of(content), "<|user_end|>", 0)
        elif role == "tool":
            r.span("<|output_start|>", text_of(content), "<|output_end|>", 0)
        else:
            r.assistant(content, msg.get("tool_calls") or ())
    return r.ids[:max_tokens], r.mask[:max_tokens]


def render_for_completion(tok: Tokenizer, conversation: Any) -> list[int]:
    """Ids that prime the model to answer: the conversation without its final assistant
    message (if any), then `<|assistant_start|>`."""
    messages = _messages(conversation)
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise ValueError("nothing to complete: the conversation has only an assistant message")
    ids, _ = render_conversation(tok, messages, max_tokens=sys.maxsize)
    ids.append(tok.special_tokens["<|assistant_start|>"])
    return ids
