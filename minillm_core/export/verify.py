"""The export's verification: load the written folder with transformers (no
`trust_remote_code`) and compare it with the native model in float32: tokenizer ids on tricky
text and every decodable vocabulary entry, chat-template ids on fixed conversations, logits on a
fixed batch (max |difference| under `atol`), and greedy generation through the project's own
`generate` against transformers' `generate`. Any difference raises ExportError.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from minillm_core.export.tokenizer_files import ExportError
from minillm_core.inference import SamplingParams, generate, stop_ids
from minillm_core.model import MiniLLM
from minillm_core.tokenizer import HELDOUT_EN, HELDOUT_ZH, TRICKY_TEXT, Tokenizer

# Conversations for the chat-template check: plain, system folding, multi-turn, a tool message,
# nanochat-style python parts, content given as a list of parts, whitespace at the edges.
CHECK_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "你好"}],
    [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "1+1=?"},
        {"role": "assistant", "content": "等于 2。"},
        {"role": "user", "content": "  再见\n"},
    ],
    [
        {
            "role": "user",
            "content": [{"type": "text", "text": "算一下 "}, {"type": "text", "text": "2**10"}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "我来算："},
                {"type": "python", "text": "print(2**10)"},
                {"type": "python_output", "text": "1024"},
                {"type": "text", "text": "结果是 1024。"},
            ],
        },
        {"role": "tool", "content": "ok"},
        {"role": "user", "content": "谢谢 😀"},
        {"role": "assistant", "content": "不客气！"},
    ],
    [  # OpenAI's function calling: an assistant turn of calls only, then the tool's answer
        {"role": "user", "content": "现在几点？"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        {"role": "assistant", "content": "中午 12 点。"},
    ],
]


def _transformers():
    try:
        import transformers
    except ImportError:
        return None
    return transformers


def _check_texts(tok: Tokenizer) -> list[str]:
    """Texts both tokenizers must encode alike: the tricky text (without its literal special-token
    strings, see the module docstring), held-out prose, and every vocabulary entry that is whole
    UTF-8, alone and all run together."""
    tricky = TRICKY_TEXT
    for name in tok.special_tokens:
        tricky = tricky.replace(name, "")
    entries = []
    for b in tok.mergeable_ranks:
        try:
            entries.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return [tricky, HELDOUT_ZH, HELDOUT_EN, " 12345 67\t\t  \n\n 。", "".join(entries), *entries]


def _check_tokenizer(hf_tok: Any, tok: Tokenizer, out: dict[str, Any]) -> None:
    texts = _check_texts(tok)
    ours = tok.encode(texts)
    theirs = hf_tok(texts, add_special_tokens=False)["input_ids"]
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    out["tokenizer_texts_checked"] = len(texts)
    if bad:
        i = bad[0]
        raise ExportError(
            f"the HF tokenizer encodes {len(bad)} of {len(texts)} check texts "
            f"differently, e.g. {texts[i][:60]!r}: ours {ours[i][:20]} vs HF "
            f"{theirs[i][:20]}"
        )
    if hf_tok.decode(ours[0]) != texts[0]:
        raise ExportError("the HF tokenizer does not decode the tricky text back to itself")


def _check_chat_template(hf_tok: Any, tok: Tokenizer, out: dict[str, Any]) -> None:
    for conv in CHECK_CONVERSATIONS:
        for gen in (False, True):
            want = (
                tok.render_for_completion(conv)
                if gen
                else tok.render_conversation(conv, max_tokens=sys.maxsize)[0]
            )
            rendered = hf_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            got = hf_tok(rendered, add_special_tokens=False)["input_ids"]
            if got != want:
                raise ExportError(
                    f"the chat template renders {conv!r:.80} (generation prompt "
                    f"{gen}) to other ids: {got[:24]} vs ours {want[:24]}"
                )
    out["chat_template_conversations_checked"] = len(CHECK_CONVERSATIONS) * 2


def _check_logits(
    hf: Any, model: MiniLLM, prompt: list[int], atol: float, out: dict[str, Any]
) -> None:
    """Logits on a fixed batch: a chat prompt and seeded random ids, same length."""
    length = min(len(prompt), model.config.max_position_embeddings)
    gen = torch.Generator().manual_seed(0)
    rand = torch.randint(0, model.config.vocab_size, (2, length), generator=gen)
    batch = torch.cat([torch.tensor([prompt[:length]]), rand])
    with torch.inference_mode():
        native = model(batch).float()
        exported = hf(input_ids=batch).logits.float()
    diff = float((native - exported).abs().max())
    out["max_abs_logit_diff"] = diff
    out["logit_batch_shape"] = list(batch.shape)
    if not diff <= atol:  # also catches NaN
        raise ExportError(
            f"exported logits differ from the native model's by up to {diff:.3g} "
            f"(tolerance {atol:g}): the config or weights do not map"
        )


def _check_greedy(
    hf: Any,
    model: MiniLLM,
    tok: Tokenizer,
    prompt: list[int],
    atol: float,
    new_tokens: int,
    out: dict[str, Any],
) -> None:
    """Greedy generation, with the same stop ids on both sides."""
    stops = stop_ids(tok)
    budget = max(0, min(new_tokens, model.config.max_position_embeddings - len(prompt)))
    native_ids = list(
        generate(model, prompt, budget, SamplingParams(stop_ids=tuple(stops)), include_stop=True)
    )
    with torch.inference_mode():
        hf_out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=budget,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=tok.bos_token_id,
            temperature=None,
            top_k=None,
            top_p=None,
        )
    hf_ids = hf_out[0, len(prompt) :].tolist()
    out["greedy_tokens_compared"] = len(native_ids)
    out["greedy_equal"] = hf_ids == native_ids
    if hf_ids != native_ids:
        # A flip between two near-tied logits is float noise, not a mapping error: accept it only
        # when the native model's top two at the first difference are within the logit tolerance.
        k = next(
            (i for i, (a, b) in enumerate(zip(native_ids, hf_ids)) if a != b),
            min(len(native_ids), len(hf_ids)),
        )
        with torch.inference_mode():
            step = model(torch.tensor([prompt + native_ids[:k]]))[0, -1].float()
        top2 = step.topk(2).values
        gap = float(top2[0] - top2[1])
        if gap > 2 * atol:
            raise ExportError(
                f"greedy generation differs at token {k}: native {native_ids} vs HF "
                f"{hf_ids} (top-2 logit gap {gap:.3g}, not a tie)"
            )
        out["greedy_near_tie_at"] = k


def verify_export(
    path: Path, model: MiniLLM, tok: Tokenizer, atol: float, new_tokens: int
) -> dict[str, Any]:
    """Load `path` with transformers and compare it with `model`/`tok`; raise ExportError on a
    difference. Returns the measurements for the metadata."""
    transformers = _transformers()
    if transformers is None:
        raise ExportError("verification needs transformers (pip install 'minillm[hf]')")
    t0 = time.perf_counter()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path))
    hf_tok.model_max_length = sys.maxsize  # the vocabulary check text is long; no warning for it
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    hf.eval()
    out: dict[str, Any] = {"transformers_version": transformers.__version__}
    _check_tokenizer(hf_tok, tok, out)
    _check_chat_template(hf_tok, tok, out)
    prompt = tok.render_for_completion(CHECK_CONVERSATIONS[1])
    _check_logits(hf, model, prompt, atol, out)
    _check_greedy(hf, model, tok, prompt, atol, new_tokens, out)
    out["verify_seconds"] = round(time.perf_counter() - t0, 2)
    return out
