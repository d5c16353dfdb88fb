"""The shared vocabulary, defined once: stages, the loss-mask ignore index, the special tokens,
and the one conversation normaliser every stage and front end uses.

Record shapes of the three mixes (one JSON object per line; `source` is metadata):
    pretrain  {"text": str, "source": str}
    sft       {"conversations": [{"role", "content"}, ...], "source": str}
    dpo       {"chosen": [msgs], "rejected": [msgs], "source": str}
"""

from __future__ import annotations

from typing import Any, Literal

Stage = Literal["pretrain", "sft", "dpo"]
STAGES: tuple[Stage, ...] = ("pretrain", "sft", "dpo")

# Labels at this index contribute no loss (PyTorch's cross_entropy default ignore_index).
IGNORE_INDEX = -100

# The model's context when nothing sets it: the default of ModelConfig.max_position_embeddings, the
# one sequence length. Here (torch-free) so the mix can size its record cap without importing torch.
DEFAULT_CONTEXT = 512

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",  # every document / conversation starts with it (also the document delimiter)
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",  # a tool call written by the assistant
    "<|output_start|>",
    "<|output_end|>",  # the tool's output (not written by the assistant)
)
BOS = "<|bos|>"
# Generation stops at any of these: the end of the assistant's turn, or the start of a new document.
END_OF_TURN: tuple[str, ...] = ("<|assistant_end|>", "<|bos|>")

ROLES = ("system", "user", "assistant", "tool")
# Other datasets' role names (ShareGPT `from`, LLaMA-Factory) in ours.
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "observation": "tool"}


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or OpenAI-style parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def raw_messages(record: Any) -> list[Any]:
    """The message list of a conversation record: `{"conversations": [...]}`,
    `{"messages": [...]}` or a bare list (nanochat's identity lines). ValueError otherwise."""
    if isinstance(record, dict):
        for key in ("conversations", "messages"):
            if key in record:
                record = record[key]
                break
        else:
            raise ValueError("conversation dict needs a 'conversations' or 'messages' list")
    if not isinstance(record, list) or not record:
        raise ValueError("a conversation is a non-empty list of messages")
    return record


def normalize_conversation(record: Any) -> list[dict[str, Any]]:
    """A conversation as role/content messages in our roles, the system message folded into the
    first user message (the model has no system role). ValueError naming the message otherwise."""
    out = []
    for i, m in enumerate(raw_messages(record)):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} is not an object: {m!r:.80}")
        role = m.get("role", m.get("from"))
        if isinstance(role, str):  # anything else is refused just below
            role = ROLE_ALIASES.get(role, role)
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r}")
        content = m.get("content", m.get("value"))
        out.append({"role": role, "content": "" if content is None else content})
        if m.get("tool_calls"):  # OpenAI's function calls of an assistant turn
            if role != "assistant":
                raise ValueError(f"message {i}: only an assistant message carries tool_calls")
            out[-1]["tool_calls"] = m["tool_calls"]
    if out[0]["role"] == "system":
        system = out.pop(0)
        if not out or out[0]["role"] != "user":
            raise ValueError("a system message must be followed by a user message")
        out[0] = {
            "role": "user",
            "content": text_of(system["content"]) + "\n\n" + text_of(out[0]["content"]),
        }
    for i, m in enumerate(out):
        if m["role"] == "system":
            raise ValueError(f"message {i}: a system message is only allowed first")
    return out
