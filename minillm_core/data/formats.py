"""Record schemas: which format one parsed value is in, and its canonical fields per output.

Each value's keys choose its schema (per record, so a file mixing ShareGPT and messages rows still
reads), unless config forces one. Every schema converts to one of three shapes: a text, a
conversation (role/content messages), or a preference pair (two conversations sharing the
prompt); `convert` then returns the fields the requested output needs (`CANONICAL_KEYS`).
A bad record raises `RecordError(kind, detail)`; a valid one with no form for the output (plain
text has no SFT form) raises `NotApplicable`.
"""

from __future__ import annotations

import re
from typing import Any

from minillm_core.data.readers import MixError, NotApplicable, RecordError, strict_loads
from minillm_core.schema import ROLE_ALIASES, ROLES

FORMATS: tuple[str, ...] = (
    "text",
    "messages",
    "sharegpt",
    "alpaca",
    "belle_multiturn",
    "firefly",
    "mcq",
    "math",
    "dpo_messages",
    "dpo_conversation",
    "dpo_prompt",
)

_ROLE_SET = frozenset(ROLES)
# ShareGPT and its variants (Belle 3.5M uses "assistant" where ShareGPT uses "gpt").
SHAREGPT_ROLES = {
    **{r: r for r in ROLES},
    **ROLE_ALIASES,
    "chatgpt": "assistant",
    "bot": "assistant",
    "function_call": "assistant",
}
# Which role may follow which: an optional leading system, then user/assistant alternation, with
# tool results allowed only after an assistant turn (which made the call) or another result.
_NEXT = {
    None: ("system", "user"),
    "system": ("user",),
    "user": ("assistant",),
    "assistant": ("user", "tool"),
    "tool": ("assistant", "tool"),
}
_TOOL_STRING_FIELDS = ("tools", "tool_calls")
_BELLE = re.compile(r"(?:^|\n)[ \t]*(Human|Assistant)[ \t]*[:：]")
_BELLE_START = re.compile(r"\s*Human[ \t]*[:：]")
_CALC = re.compile(r"<<[^<>]*>>")
# `{{name}}` or `{name}` (published persona files use both; double braces are tried first).
_PLACEHOLDER = re.compile(
    r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}"
    r"|\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}"
)


def detect_format(value: Any) -> str:
    """The record schema of one parsed value, from its keys."""
    if isinstance(value, list):
        return "messages"
    if not isinstance(value, dict):
        raise RecordError("not an object", f"got a JSON {type(value).__name__}")
    if "chosen" in value and "rejected" in value:
        if isinstance(value["chosen"], list):
            return "dpo_messages"
        if "conversations" in value or "messages" in value:
            return "dpo_conversation"
        return "dpo_prompt"
    if "response_chosen" in value:
        return "dpo_prompt"
    conv = value.get("conversations", value.get("messages"))
    if isinstance(conv, list):
        if conv and isinstance(conv[0], dict) and "from" in conv[0]:
            return "sharegpt"
        return "messages"
    if "instruction" in value and "output" in value:
        ins = value["instruction"]
        if isinstance(ins, str) and _BELLE_START.match(ins):
            return "belle_multiturn"
        return "alpaca"
    if "target" in value and "input" in value:
        return "firefly"
    keys = {k.lower() if isinstance(k, str) else k for k in value}
    if {"question", "a", "b", "c", "d", "answer"} <= keys:
        return "mcq"
    if {"question", "answer"} <= keys or {"question_zh", "answer_zh"} <= keys:
        return "math"
    if "text" in value:
        return "text"
    shown = ", ".join(sorted(map(str, value))[:8])
    raise RecordError("unrecognised record", f"keys {{{shown}}} match no known format")


def _str_field(d: dict, key: str, *, required: bool = True, empty_ok: bool = False) -> str:
    if key not in d or d[key] is None:
        if required:
            raise RecordError("missing field", key)
        return ""
    v = d[key]
    if not isinstance(v, str):
        raise RecordError("non-string content", f"{key} is a {type(v).__name__}")
    if required and not empty_ok and (not v or v.isspace()):
        raise RecordError("empty content", key)
    return v


def normalize_message(m: Any, where: str) -> dict:
    """A role/content or from/value message as a role/content dict (other fields kept)."""
    if not isinstance(m, dict):
        raise RecordError("bad message", f"{where} is not an object")
    if "role" in m:
        if m["role"] not in _ROLE_SET:
            raise RecordError("unknown role", f"{where}.role = {m['role']!r}")
        if "content" not in m:
            raise RecordError("missing field", f"{where}.content")
        return m  # already canonical; shared, never mutated
    if "from" in m:
        role = SHAREGPT_ROLES.get(m["from"]) if isinstance(m["from"], str) else None
        if role is None:
            raise RecordError("unknown role", f"{where}.from = {m['from']!r}")
        if "value" not in m:
            raise RecordError("missing field", f"{where}.value")
        out = {"role": role, "content": m["value"]}
        if len(m) > 2:
            for k, v in m.items():
                if k != "from" and k != "value":
                    out[k] = v
        return out
    raise RecordError("missing field", f"{where}.role")


def validate_conversation(msgs: list[dict], where: str) -> list[dict]:
    """Check roles, order and contents; the list must end with an assistant turn."""
    if not msgs:
        raise RecordError("missing field", f"{where} is empty")
    prev = None
    for i, m in enumerate(msgs):
        role, content = m["role"], m["content"]
        if content.__class__ is not str:
            raise RecordError(
                "non-string content", f"{where}[{i}].content is a {type(content).__name__}"
            )
        # isspace() instead of strip(): no copy of a long string on the hot path.
        if (not content or content.isspace()) and not (role == "assistant" and m.get("tool_calls")):
            raise RecordError("empty content", f"{where}[{i}] ({role})")
        if len(m) > 2:
            for key in _TOOL_STRING_FIELDS:
                if isinstance(m.get(key), str):
                    try:
                        strict_loads(m[key])
                    except (ValueError, RecursionError):
                        raise RecordError("invalid tool JSON", f"{where}[{i}].{key}") from None
        if role not in _NEXT[prev]:
            raise RecordError("bad role order", f"{where}[{i}]: {role} after {prev or 'the start'}")
        prev = role
    if prev != "assistant":
        raise RecordError(
            "bad role order", f"{where} must end with an assistant turn (ends with {prev})"
        )
    return msgs


def _messages(value: Any, where: str, system: Any = None) -> list[dict]:
    if not isinstance(value, list):
        raise RecordError("missing field", f"{where} is not a list")
    msgs = [normalize_message(m, f"{where}[{i}]") for i, m in enumerate(value)]
    if isinstance(system, str) and system.strip() and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def _history(d: dict) -> list[dict]:
    hist = d.get("history") or []
    if not isinstance(hist, list):
        raise RecordError("bad history", "history is not a list of [query, response] pairs")
    out: list[dict] = []
    for i, pair in enumerate(hist):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError("bad history", f"history[{i}] is not a [query, response] pair")
        q, a = pair
        if not isinstance(q, str) or not isinstance(a, str):
            raise RecordError("non-string content", f"history[{i}]")
        if not q.strip() and not a.strip():
            continue  # deepctrl data pads history with ['', ''] pairs: no turn, not an error
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


def _system(d: dict) -> list[dict]:
    s = d.get("system")
    return [{"role": "system", "content": s}] if isinstance(s, str) and s.strip() else []


def _alpaca(d: dict) -> list[dict]:
    ins = _str_field(d, "instruction")
    inp = _str_field(d, "input", required=False)
    user = f"{ins}\n{inp}" if inp.strip() else ins
    return [
        *_system(d),
        *_history(d),
        {"role": "user", "content": user},
        {"role": "assistant", "content": _str_field(d, "output")},
    ]


def _belle_multiturn(d: dict) -> list[dict]:
    ins = _str_field(d, "instruction")
    parts = _BELLE.split(ins)
    # split() gives [before, role, text, role, text, ...]; text before the first marker is noise.
    if parts[0].strip():
        raise RecordError("bad role order", "instruction has text before the first Human:")
    msgs = []
    for role, text in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": text.strip()})
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()  # the trailing open "Assistant:" the output answers
    msgs.append({"role": "assistant", "content": _str_field(d, "output")})
    return msgs


def _firefly(d: dict) -> list[dict]:
    return [
        {"role": "user", "content": _str_field(d, "input")},
        {"role": "assistant", "content": _str_field(d, "target")},
    ]


def _ci(d: dict) -> dict:
    return {k.lower() if isinstance(k, str) else k: v for k, v in d.items()}


def _mcq(d: dict) -> list[dict]:
    c = _ci(d)
    q = _str_field(c, "question")
    opts = {k: _str_field(c, k.lower()).strip() for k in "ABCD"}
    ans = _str_field(c, "answer", empty_ok=True).strip().upper().rstrip(".")
    if not ans:
        raise RecordError("empty content", "answer is empty (a test split with withheld labels?)")
    if ans not in opts:
        raise RecordError("bad answer", f"answer must be one of A, B, C, D (got {ans!r})")
    choices = "\n".join(f"{k}. {v}" for k, v in opts.items())
    user = f"{q.strip()}\n{choices}\n请选出正确答案。"
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": f"答案是 {ans}：{opts[ans]}"},
    ]


def _zh_first(c: dict, key: str) -> str:
    """`key_zh` when the record has a non-empty one: MetaMath's GSM8K_zh layout keeps the
    English `question`/`answer` beside the Chinese `question_zh`/`answer_zh`."""
    v = c.get(f"{key}_zh")
    if v is None or (isinstance(v, str) and not v.strip()):
        return key
    return f"{key}_zh"


def _math(d: dict) -> list[dict]:
    c = _ci(d)
    q = _str_field(c, _zh_first(c, "question"))
    answer_key = _zh_first(c, "answer")
    a = c.get(answer_key)
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        a = str(a)
    if not isinstance(a, str):
        raise RecordError("non-string content" if a is not None else "missing field", answer_key)
    steps, sep, final = a.rpartition("####")
    if sep:
        # GSM8K: "<<48/2=24>>" calculator annotations are stripped (not turned into tool calls)
        # so every math record is plain text; the "#### N" line becomes an explicit answer.
        steps, final = _CALC.sub("", steps).strip(), final.strip()
        if not final:
            raise RecordError("empty content", f"{answer_key} after ####")
        a = f"{steps}\n答案：{final}" if steps else f"答案：{final}"
    if not a.strip():
        raise RecordError("empty content", answer_key)
    return [{"role": "user", "content": q.strip()}, {"role": "assistant", "content": a.strip()}]


def _reply(value: Any, where: str) -> dict:
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    m = normalize_message(value, where)
    if m["role"] != "assistant":
        raise RecordError("bad role order", f"{where} must be an assistant message")
    return m


def check_pair(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict]]:
    """A preference pair: two valid conversations sharing every turn but differing last ones."""
    validate_conversation(chosen, "chosen")
    validate_conversation(rejected, "rejected")
    if len(chosen) != len(rejected) or any(
        (a["role"], a["content"]) != (b["role"], b["content"])
        for a, b in zip(chosen[:-1], rejected[:-1])
    ):
        raise RecordError(
            "prompt differs", "chosen and rejected must share every turn but the last"
        )
    if chosen[-1]["content"].strip() == rejected[-1]["content"].strip():
        raise RecordError("chosen equals rejected", "the final assistant turns are identical")
    return chosen, rejected


def _dpo_messages(d: dict) -> tuple[list[dict], list[dict]]:
    sys_ = d.get("system")
    return check_pair(
        _messages(d["chosen"], "chosen", sys_), _messages(d["rejected"], "rejected", sys_)
    )


def _dpo_conversation(d: dict) -> tuple[list[dict], list[dict]]:
    key = "conversations" if "conversations" in d else "messages"
    conv = _messages(d[key], key, d.get("system"))
    return check_pair(
        conv + [_reply(d["chosen"], "chosen")], conv + [_reply(d["rejected"], "rejected")]
    )


def _dpo_prompt(d: dict) -> tuple[list[dict], list[dict]]:
    for key in ("prompt", "question", "instruction"):
        if key in d:
            prompt = _str_field(d, key)
            break
    else:
        raise RecordError("missing field", "prompt (or question / instruction)")
    inp = _str_field(d, "input", required=False) if "instruction" in d else ""
    if inp.strip():
        prompt = f"{prompt}\n{inp}"
    if "chosen" in d:
        c, r = _reply(d["chosen"], "chosen"), _reply(d["rejected"], "rejected")
    else:
        c = _reply(d.get("response_chosen"), "response_chosen")
        r = _reply(d.get("response_rejected"), "response_rejected")
    head = [*_system(d), *_history(d), {"role": "user", "content": prompt}]
    return check_pair(head + [c], head + [r])


def _text(d: dict) -> str:
    return _str_field(d, "text")


def _conversation(value: Any, fmt: str) -> list[dict]:
    if fmt == "messages":
        if isinstance(value, list):
            return validate_conversation(_messages(value, "messages"), "messages")
        key = "conversations" if "conversations" in value else "messages"
        if key not in value:
            raise RecordError("missing field", "conversations (or messages)")
        return validate_conversation(_messages(value[key], key, value.get("system")), key)
    if fmt == "sharegpt":
        if "conversations" not in value:
            raise RecordError("missing field", "conversations")
        return validate_conversation(
            _messages(value["conversations"], "conversations", value.get("system")), "conversations"
        )
    return validate_conversation(_BUILDERS[fmt](value), fmt)


_BUILDERS: dict[str, Any] = {
    "alpaca": _alpaca,
    "belle_multiturn": _belle_multiturn,
    "firefly": _firefly,
    "mcq": _mcq,
    "math": _math,
    "dpo_messages": _dpo_messages,
    "dpo_conversation": _dpo_conversation,
    "dpo_prompt": _dpo_prompt,
}
_FORMAT_SET = frozenset(FORMATS)


def conversation_text(msgs: list[dict]) -> str:
    """Pretrain text of a conversation: the user and assistant turns, one per paragraph."""
    return "\n".join(m["content"].strip() for m in msgs if m["role"] in ("user", "assistant"))


CANONICAL_KEYS = {"pretrain": ("text",), "sft": ("conversations",), "dpo": ("chosen", "rejected")}


def convert(value: Any, fmt: str, output: str, check_only: bool = False) -> dict:
    """The canonical fields of one record for `output`; RecordError or NotApplicable if none.

    check_only: validate the same way, but the pretrain text of a conversation (which cannot
    fail once the conversation is valid) is not built; for the mix's counting pass.
    """
    if fmt not in _FORMAT_SET:
        raise MixError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}", field="format")
    if not isinstance(value, (dict, list)) or (isinstance(value, list) and fmt != "messages"):
        raise RecordError("not an object", f"got a JSON {type(value).__name__}")
    if fmt.startswith("dpo_"):
        if output != "dpo":
            raise NotApplicable
        for key in ("chosen", "rejected") if fmt != "dpo_prompt" else ():
            if key not in value:
                raise RecordError("missing field", key)
        chosen, rejected = _BUILDERS[fmt](value)
        return {"chosen": chosen, "rejected": rejected}
    if output == "dpo":
        raise NotApplicable
    if fmt == "text":
        if not isinstance(value, dict):
            raise RecordError("not an object", "a text record must be an object")
        if output == "sft":
            raise NotApplicable
        return {"text": _text(value)}
    conv = _conversation(value, fmt)
    if output == "sft":
        return {"conversations": conv}
    if check_only:
        return {}
    return {"text": conversation_text(conv)}


def fill_placeholders(value: Any, names: dict[str, str]) -> Any:
    """Substitute the `{{name}}` and `{name}` placeholders (any key of `names`) in every string;
    a brace placeholder of another name is refused (RecordError, counted at its file:line)."""
    if isinstance(value, str):
        if "{" not in value:
            return value
        unknown: list[str] = []

        def fill(m: re.Match[str]) -> str:
            key = m.group(1) or m.group(2)
            if key in names:
                return names[key]
            unknown.append(m.group(0))
            return m.group(0)

        value = _PLACEHOLDER.sub(fill, value)
        if unknown:
            raise RecordError(
                "unfilled placeholder",
                f"{unknown[0]} has no value in the mix config (model_name / model_author)",
            )
        return value
    if isinstance(value, list):
        return [fill_placeholders(v, names) for v in value]
    if isinstance(value, dict):
        return {k: fill_placeholders(v, names) for k, v in value.items()}
    return value
