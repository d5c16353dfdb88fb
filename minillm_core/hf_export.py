"""Export a checkpoint and its tokenizer as a standard HuggingFace Llama folder.

The model already uses Llama's parameter names and Llama's rotate-half RoPE (see
`minillm_core.model`), so the weights are copied unchanged; what this module writes is the
translation around them:

- `config.json`: `LlamaForCausalLM`, every shape field mapped explicitly (hidden size, the SwiGLU
  `intermediate_size` as the model computes it, query and key/value heads, `head_dim`, `rope_theta`,
  `rms_norm_eps`, `tie_word_embeddings`). Both the `rope_theta` key (transformers 4.x) and
  `rope_parameters` (5.x) are written, so neither falls back to its own default theta (10,000
  instead of our 1,000,000 would still load, and silently give other logits).
- `model.safetensors`: the checkpoint's tensors, `lm_head.weight` left out when the embeddings are
  tied (transformers re-ties it from `tie_word_embeddings`, as it does for its own tied models).
  Writing the file ourselves, rather than through `save_pretrained`, avoids the shared-tensor
  refusals users of other small-LLM projects report for tied embeddings.
- `tokenizer.json`: our tiktoken BPE rewritten for HuggingFace `tokenizers`: token bytes through
  GPT-2's bytes-to-unicode table, the merges recovered from the ranks (below), a `Split`
  pre-tokenizer with the stored pattern, `ignore_merges` (tiktoken returns a chunk that is itself a
  token without merging, and so must HF), a ByteLevel decoder, the special tokens as added tokens.
- `tokenizer_config.json`: `PreTrainedTokenizerFast`, BOS/EOS, and a Jinja chat template that
  renders a conversation to the same ids as `Tokenizer.render_conversation` (BOS, the system
  message folded into the first user turn, tool output, python parts), with
  `add_generation_prompt` equal to `render_for_completion`.
- `generation_config.json`: stop on `<|assistant_end|>` or `<|bos|>` (as `minillm chat` does) and
  the chat command's sampling defaults.
- `minillm_export.json`: provenance (source checkpoint, tokenizer hash, weights hash) and what the
  verification measured; `README.md`: a short model card.

Merges from ranks: tiktoken stores only `bytes -> rank`; HF's BPE needs the pair list. For each
multi-byte token in rank order, running tiktoken's own BPE on its bytes while allowing only lower
ranks ends in exactly two parts: the pair that builds it (the conversion transformers and
llama.cpp use for tiktoken vocabularies). Ordered by the rank of the result, the pair priorities
are tiktoken's. The export then re-encodes text with both tokenizers and refuses to finish if one
id differs.

Verification (when transformers is installed, `verify="auto"`): before the folder gets its final
name it is loaded with `AutoModelForCausalLM` / `AutoTokenizer` (no `trust_remote_code`) and
compared with the native model in float32: logits on a fixed batch (max |difference| must stay
under `atol`), greedy generation token by token, tokenizer ids on tricky text and on every
decodable vocabulary entry, and chat-template ids on fixed conversations. A failed check leaves the
previous export untouched. The one known difference is documented rather than hidden: HF's
tokenizer turns a literal `<|assistant_end|>` typed in text into the control token (its standard
behaviour for added tokens, needed for the chat template to work), where our `encode` keeps it as
plain text; pass `split_special_tokens=True` to a plain (non-template) HF encode to get ours.

Trade-offs: the exported folder is a plain Llama, so anything that reads Llama reads it; the cost
is that training-only settings do not carry over (our residual dropout has no Llama field, so
fine-tuning the export in transformers runs without it). Export in bfloat16/float16 halves the
file; the verification then compares against the native model rounded to the same dtype, which
checks the conversion, not the precision loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from safetensors.torch import save_file

from minillm_core.artifacts import ArtifactError, atomic_path, require, sha256_file
from minillm_core.checkpoint import WEIGHTS, load_checkpoint, weights_state
from minillm_core.config import ConfigError, CoreConfig, add_model_arguments, model_paths
from minillm_core.layout import Layout
from minillm_core.model import MiniLLM
from minillm_core.progress import LogFn, emit
from minillm_core.tokenizer import (BOS, HELDOUT_EN, HELDOUT_ZH, TRICKY_TEXT, Tokenizer,
                                    TokenizerError, load_tokenizer)

EXPORT_META = "minillm_export.json"
FORMAT_VERSION = 1
END = "<|assistant_end|>"


class ExportError(RuntimeError):
    """The export could not be built or failed its verification; the message says what differs."""


class ExportConfig(CoreConfig):
    """Settings of the HuggingFace export."""

    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the exported weights (checkpoints are float32)")
    verify: Literal["auto", "always", "never"] = Field(
        "auto", description="load the export with transformers and compare with the native model: "
                            "auto = when transformers is installed, always = fail without it")
    atol: float = Field(1e-4, gt=0, description="largest allowed |logit difference| (float32)")
    verify_new_tokens: int = Field(16, ge=1, description="greedy tokens compared in verification")
    model_max_length: int | None = Field(
        None, ge=1, description="tokenizer_config's model_max_length; None = the training sequence "
                                "length recorded in the checkpoint, else max_position_embeddings")


class ExportReport(BaseModel):
    path: Path
    metadata: dict[str, Any]


# ------------------------------------------------------------------------------------ tokenizer

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE in HF.

    Printable Latin-1 bytes map to themselves; the other 68 map to U+0100 onwards, so every byte
    string becomes a string with no whitespace or control characters (a merge line `a b` stays
    unambiguous)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's merge rule on `token` (lowest-rank adjacent pair first, leftmost on ties),
    using only ranks below `max_rank`."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            return parts
        parts[best:best + 2] = [parts[best] + parts[best + 1]]


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list HF's BPE needs, in priority order, from tiktoken's `bytes -> rank` table."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            # Cannot happen for ranks a BPE trainer produced: every token was made from two
            # lower-ranked ones. A hand-edited table would get here.
            raise ExportError(f"token {token!r} (rank {rank}) is not the merge of two lower-ranked "
                              f"tokens (BPE splits it into {len(parts)} parts): not a BPE vocabulary")
        merges.append((parts[0], parts[1]))
    return merges


def tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """A `tokenizers` JSON document equivalent to our tiktoken encoding."""
    b2u = bytes_to_unicode()

    def show(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {show(b): r for b, r in tok.mergeable_ranks.items()}
    merges = [f"{show(a)} {show(b)}" for a, b in recover_merges(tok.mergeable_ranks)]
    added = [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for name, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            # Isolated: every regex match is its own chunk, as tiktoken's `findall` makes them.
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated",
             "invert": False},
            # Only the bytes -> characters mapping; the splitting was done above.
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False},
        ]},
        # No BOS added by default: our `encode` adds none either (pass it explicitly, as the
        # chat template does).
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  # tiktoken looks a whole chunk up before merging; without this, a chunk that is
                  # a token but that BPE would reach through other pairs could encode differently.
                  "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def _jinja_lines() -> list[str]:
    # Every line sits inside `{%- -%}` / `{{- -}}` tags, so the template emits no whitespace of its
    # own whatever the Jinja trimming options; special tokens are written as string literals.
    return [
        "{%- macro text_of(c) -%}",
        "{%- if c is none -%}",
        "{%- elif c is string -%}{{- c -}}",
        "{%- else -%}{%- for p in c -%}",
        "{%- if p is mapping -%}{{- p.get('text', '') -}}{%- else -%}{{- p -}}{%- endif -%}",
        "{%- endfor -%}{%- endif -%}",
        "{%- endmacro -%}",
        "{%- macro role_of(m) -%}",
        "{%- set r = m.get('role', m.get('from')) -%}",
        "{%- if r == 'human' -%}user{%- elif r == 'gpt' -%}assistant",
        "{%- elif r == 'observation' -%}tool{%- else -%}{{- r -}}{%- endif -%}",
        "{%- endmacro -%}",
        "{%- if messages is not sequence or messages | length == 0 -%}",
        "{{- raise_exception('a conversation is a non-empty list of messages') -}}",
        "{%- endif -%}",
        "{%- set ns = namespace(start=0, end=messages | length, system=none) -%}",
        "{%- for m in messages -%}",
        "{%- if role_of(m) not in ['system', 'user', 'assistant', 'tool'] -%}",
        "{{- raise_exception('message ' ~ loop.index0 ~ ': unknown role ' ~ role_of(m)) -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        # A leading system message is folded into the first user message.
        "{%- if role_of(messages[0]) == 'system' -%}",
        "{%- if messages | length < 2 or role_of(messages[1]) != 'user' -%}",
        "{{- raise_exception('a system message must be followed by a user message') -}}",
        "{%- endif -%}",
        "{%- set ns.system = text_of(messages[0].get('content', messages[0].get('value'))) -%}",
        "{%- set ns.start = 1 -%}",
        "{%- endif -%}",
        "{%- for m in messages[ns.start:] -%}",
        "{%- if role_of(m) == 'system' -%}",
        "{{- raise_exception('message ' ~ loop.index0 ~ ': a system message is only allowed "
        "first') -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        # add_generation_prompt = render_for_completion: a final assistant message is dropped.
        "{%- if add_generation_prompt and role_of(messages[-1]) == 'assistant' -%}",
        "{%- set ns.end = ns.end - 1 -%}",
        "{%- endif -%}",
        "{%- if ns.end <= ns.start -%}",
        "{{- raise_exception('nothing to complete: the conversation has only an assistant "
        "message') -}}",
        "{%- endif -%}",
        f"{{{{- '{BOS}' -}}}}",
        "{%- for m in messages[ns.start:ns.end] -%}",
        "{%- set role = role_of(m) -%}",
        "{%- set c = m.get('content', m.get('value')) -%}",
        "{%- if role == 'user' -%}",
        "{{- '<|user_start|>' -}}",
        "{%- if loop.first and ns.system is not none -%}{{- ns.system ~ '\\n\\n' -}}{%- endif -%}",
        "{{- text_of(c) -}}{{- '<|user_end|>' -}}",
        "{%- elif role == 'tool' -%}",
        "{{- '<|output_start|>' -}}{{- text_of(c) -}}{{- '<|output_end|>' -}}",
        "{%- else -%}",
        "{{- '<|assistant_start|>' -}}",
        "{%- if c is none or c is string -%}{{- c if c is not none else '' -}}",
        "{%- elif c is sequence and c is not mapping -%}",
        "{%- for part in c -%}",
        "{%- set kind = part.get('type', 'text') -%}{%- set t = part.get('text', '') -%}",
        "{%- if kind == 'text' -%}{{- t -}}",
        "{%- elif kind == 'python' -%}{{- '<|python_start|>' ~ t ~ '<|python_end|>' -}}",
        "{%- elif kind == 'python_output' -%}{{- '<|output_start|>' ~ t ~ '<|output_end|>' -}}",
        "{%- else -%}{{- raise_exception('unknown assistant content part type ' ~ kind) -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- else -%}{{- raise_exception('assistant content must be str or list') -}}",
        "{%- endif -%}",
        f"{{{{- '{END}' -}}}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}",
    ]


def chat_template() -> str:
    """The Jinja chat template equal to `render_conversation` / `render_for_completion`."""
    return "".join(_jinja_lines())


def tokenizer_config(tok: Tokenizer, model_max_length: int) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": END,
        # No pad token: the vocabulary has none, and borrowing BOS or the end token would make
        # HF's collators mask those ids out of the labels.
        "pad_token": None,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        # Decoding must give back exactly the bytes (transformers 4.x would otherwise remove the
        # space before punctuation).
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": chat_template(),
        "added_tokens_decoder": {str(i): {"content": name, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                                 for name, i in tok.special_tokens.items()},
    }


# ---------------------------------------------------------------------------------------- model

def hf_config(model: MiniLLM, tok: Tokenizer, dtype: str) -> dict[str, Any]:
    c = model.config
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.ffn_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "initializer_range": c.initializer_range,
        "tie_word_embeddings": c.tie_word_embeddings,
        "use_cache": True,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.encode_special(END),
        "pad_token_id": None,
        "torch_dtype": dtype,
    }


def stop_ids(tok: Tokenizer) -> list[int]:
    """Ids that end an answer: the end token, and BOS (a new document means the answer ended)."""
    return [tok.encode_special(END), tok.bos_token_id]


def generation_config(tok: Tokenizer) -> dict[str, Any]:
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": stop_ids(tok),
        # Only used to fill finished rows of a batch; never a training label.
        "pad_token_id": tok.bos_token_id,
        # `minillm chat`'s defaults; pass do_sample=False for greedy.
        "do_sample": True,
        "temperature": 0.6,
        "top_k": 50,
        "top_p": 1.0,
    }


def _model_card(meta: dict[str, Any], hf_meta: dict[str, Any]) -> str:
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\nlanguage:\n- zh\n---\n"
        "# MiniLLM\n\n"
        f"A small Chinese chat model trained with MiniLLM (stage `{meta.get('stage', '?')}`, "
        f"step {meta.get('step', '?')}), exported as a plain Llama: no custom code.\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        "ids = tok.apply_chat_template([{\"role\": \"user\", \"content\": \"你好\"}],\n"
        "                              add_generation_prompt=True, return_tensors=\"pt\")\n"
        "```\n\n"
        "Chat format: `<|bos|><|user_start|>...<|user_end|><|assistant_start|>...<|assistant_end|>`;"
        " a system message is folded into the first user message. Raw text: prepend `<|bos|>` "
        "yourself (the tokenizer adds no special token).\n\n"
        f"Parameters: {hf_meta['parameters']:,}. Verification at export: "
        f"`{json.dumps(hf_meta.get('verification', {}), ensure_ascii=False)}`.\n"
    )


# ---------------------------------------------------------------------------------- verification

# Conversations for the chat-template check: plain, system folding, multi-turn, a tool message,
# nanochat-style python parts, content given as a list of parts, whitespace at the edges.
CHECK_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "你是一个乐于助人的助手。"},
     {"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "等于 2。"},
     {"role": "user", "content": "  再见\n"}],
    [{"role": "user", "content": [{"type": "text", "text": "算一下 "},
                                   {"type": "text", "text": "2**10"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "我来算："},
                                        {"type": "python", "text": "print(2**10)"},
                                        {"type": "python_output", "text": "1024"},
                                        {"type": "text", "text": "结果是 1024。"}]},
     {"role": "tool", "content": "ok"}, {"role": "user", "content": "谢谢 😀"},
     {"role": "assistant", "content": "不客气！"}],
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


def verify_export(path: Path, model: MiniLLM, tok: Tokenizer, atol: float, new_tokens: int
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

    # Tokenizer ids.
    texts = _check_texts(tok)
    ours = tok.encode(texts)
    theirs = hf_tok(texts, add_special_tokens=False)["input_ids"]
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    out["tokenizer_texts_checked"] = len(texts)
    if bad:
        i = bad[0]
        raise ExportError(f"the HF tokenizer encodes {len(bad)} of {len(texts)} check texts "
                          f"differently, e.g. {texts[i][:60]!r}: ours {ours[i][:20]} vs HF "
                          f"{theirs[i][:20]}")
    if hf_tok.decode(ours[0]) != texts[0]:
        raise ExportError("the HF tokenizer does not decode the tricky text back to itself")

    # Chat template ids.
    for conv in CHECK_CONVERSATIONS:
        for gen in (False, True):
            want = tok.render_for_completion(conv) if gen else tok.render_conversation(
                conv, max_tokens=sys.maxsize)[0]
            rendered = hf_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            got = hf_tok(rendered, add_special_tokens=False)["input_ids"]
            if got != want:
                raise ExportError(f"the chat template renders {conv!r:.80} (generation prompt "
                                  f"{gen}) to other ids: {got[:24]} vs ours {want[:24]}")
    out["chat_template_conversations_checked"] = len(CHECK_CONVERSATIONS) * 2

    # Logits on a fixed batch: a chat prompt and seeded random ids, same length.
    prompt = tok.render_for_completion(CHECK_CONVERSATIONS[1])
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
        raise ExportError(f"exported logits differ from the native model's by up to {diff:.3g} "
                          f"(tolerance {atol:g}): the config or weights do not map")

    # Greedy generation, with the same stop ids on both sides.
    stops = stop_ids(tok)
    budget = max(0, min(new_tokens, model.config.max_position_embeddings - len(prompt)))
    native_ids = model.generate(prompt, budget, temperature=0.0, stop_ids=stops)
    with torch.inference_mode():
        hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=budget, do_sample=False,
                             eos_token_id=stops, pad_token_id=tok.bos_token_id,
                             temperature=None, top_k=None, top_p=None)
    hf_ids = hf_out[0, len(prompt):].tolist()
    out["greedy_tokens_compared"] = len(native_ids)
    out["greedy_equal"] = hf_ids == native_ids
    if hf_ids != native_ids:
        # A flip between two near-tied logits is float noise, not a mapping error: accept it only
        # when the native model's top two at the first difference are within the logit tolerance.
        k = next((i for i, (a, b) in enumerate(zip(native_ids, hf_ids)) if a != b),
                 min(len(native_ids), len(hf_ids)))
        with torch.inference_mode():
            step = model(torch.tensor([prompt + native_ids[:k]]))[0, -1].float()
        top2 = step.topk(2).values
        gap = float(top2[0] - top2[1])
        if gap > 2 * atol:
            raise ExportError(f"greedy generation differs at token {k}: native {native_ids} vs HF "
                              f"{hf_ids} (top-2 logit gap {gap:.3g}, not a tie)")
        out["greedy_near_tie_at"] = k
    out["verify_seconds"] = round(time.perf_counter() - t0, 2)
    return out


# ----------------------------------------------------------------------------------------- export

def _model_max_length(cfg: ExportConfig, meta: dict[str, Any], model: MiniLLM) -> int:
    if cfg.model_max_length is not None:
        return cfg.model_max_length
    train = meta.get("train") or {}
    for key in ("max_seq_len", "max_length"):
        if isinstance(train.get(key), int) and train[key] > 0:
            return min(int(train[key]), model.config.max_position_embeddings)
    return model.config.max_position_embeddings


def export_hf(checkpoint_dir: Path | str, tokenizer_dir: Path | str, out_dir: Path | str,
              cfg: ExportConfig | None = None, log: LogFn | None = None) -> ExportReport:
    """Write a HuggingFace Llama folder for the checkpoint into `out_dir` (atomically: built and
    verified under a temporary name, then swapped in whole)."""
    cfg = cfg or ExportConfig()
    t0 = time.perf_counter()
    ckpt, out = Path(checkpoint_dir), Path(out_dir)
    tok = load_tokenizer(tokenizer_dir)
    model, meta = load_checkpoint(require(ckpt, "checkpoint directory"), "cpu")
    want = meta.get("tokenizer_hash")
    if want and want != tok.hash:
        raise ExportError(f"{ckpt} was trained with another tokenizer ({str(want)[:12]} != "
                          f"{tok.hash[:12]} in {tokenizer_dir}); pass the matching tokenizer")
    if model.config.vocab_size < tok.get_vocab_size():
        raise ExportError(f"the model's vocab_size {model.config.vocab_size} is smaller than the "
                          f"tokenizer's {tok.get_vocab_size()}")
    verify = cfg.verify == "always" or (cfg.verify == "auto" and _transformers() is not None)
    if cfg.verify == "auto" and not verify:
        emit(log, "export-hf: transformers not installed; the export is not verified "
                  "(pip install 'minillm[hf]' to compare logits)")
    dtype = getattr(torch, cfg.dtype)
    if cfg.dtype != "float32":
        # Compare against what was exported: the native model rounded to the same dtype.
        for p in model.parameters():
            p.data = p.data.to(dtype).float()
    state = {k: v.to(dtype).contiguous() for k, v in weights_state(model).items()}
    n_params = model.num_parameters()
    max_len = _model_max_length(cfg, meta, model)

    with atomic_path(out, directory=True) as tmp:
        # {"format": "pt"} is what transformers checks before reading a safetensors file.
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        files = {
            "config.json": hf_config(model, tok, cfg.dtype),
            "generation_config.json": generation_config(tok),
            "tokenizer.json": tokenizer_json(tok),
            "tokenizer_config.json": tokenizer_config(tok, max_len),
            "special_tokens_map.json": {"bos_token": BOS, "eos_token": END},
        }
        for name, obj in files.items():
            (tmp / name).write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n",
                                    encoding="utf-8")
        verification: dict[str, Any] = {"verified": False}
        if verify:
            emit(log, "export-hf: loading the export with transformers to compare with the "
                      "native model")
            verification = {"verified": True, **verify_export(tmp, model, tok, cfg.atol,
                                                              cfg.verify_new_tokens)}
        hf_meta = {
            "format_version": FORMAT_VERSION,
            "source_checkpoint": str(ckpt.resolve()),
            "source_weights_sha256": sha256_file(ckpt / WEIGHTS),
            "stage": meta.get("stage"),
            "step": meta.get("step"),
            "tokenizer_hash": tok.hash,
            "dtype": cfg.dtype,
            "parameters": n_params,
            "model_max_length": max_len,
            "verification": verification,
            "config": cfg.model_dump(),
        }
        (tmp / EXPORT_META).write_text(json.dumps(hf_meta, ensure_ascii=False, indent=2) + "\n",
                                       encoding="utf-8")
        (tmp / "README.md").write_text(_model_card(meta, hf_meta), encoding="utf-8")
        written = sorted(p.name for p in tmp.iterdir())
        size = sum(p.stat().st_size for p in tmp.iterdir())
    seconds = time.perf_counter() - t0
    emit(log, f"export-hf: {n_params:,} parameters ({cfg.dtype}) -> {out} in {seconds:.1f}s"
              + (f"; max |logit diff| {verification['max_abs_logit_diff']:.2e}"
                 if verification.get("verified") else "; not verified"))
    metadata: dict[str, Any] = {
        "path": str(out),
        "parameters": n_params,
        "dtype": cfg.dtype,
        "files": written,
        "bytes": size,
        "stage": meta.get("stage"),
        "step": meta.get("step"),
        "vocab_size": tok.get_vocab_size(),
        "model_max_length": max_len,
        "verified": bool(verification.get("verified")),
        "export_seconds": round(seconds, 2),
    }
    for key in ("max_abs_logit_diff", "greedy_equal", "greedy_tokens_compared",
                "tokenizer_texts_checked", "chat_template_conversations_checked",
                "transformers_version"):
        if key in verification:
            metadata[key] = verification[key]
    return ExportReport(path=out, metadata=metadata)


# ---------------------------------------------------------------------------------------- command

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minillm export-hf",
        description="Export a checkpoint as a HuggingFace Llama folder (config.json, safetensors, "
                    "tokenizer.json, chat template) that AutoModelForCausalLM loads.")
    add_model_arguments(p)
    p.add_argument("--out", "--out-dir", "--out_dir", dest="out", type=Path, default=None,
                   help="output folder (default out/hf)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--verify", choices=["auto", "always", "never"], default=None,
                   help="compare the export with the native model using transformers "
                        "(auto: when installed)")
    p.add_argument("--atol", type=float, default=None, help="logit tolerance (default 1e-4)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ckpt, tok_dir = model_paths(args)
    try:
        cfg = ExportConfig.resolve({"dtype": args.dtype, "verify": args.verify, "atol": args.atol})
        report = export_hf(ckpt, tok_dir, args.out or Layout.at().hf_dir, cfg,
                           log=lambda m: print(m, file=sys.stderr))
    except (ConfigError, ExportError, ArtifactError, TokenizerError) as exc:
        print(f"minillm export-hf: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.metadata, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
