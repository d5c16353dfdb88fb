"""The tokenizer files of the HuggingFace export: `tokenizer.json` (our tiktoken BPE rewritten for
HuggingFace `tokenizers`) and `tokenizer_config.json` (with the chat template, kept as the Jinja
file `chat_template.jinja` beside this module).

Merges from ranks: tiktoken stores only `bytes -> rank`; HF's BPE needs the pair list. For each
multi-byte token in rank order, running tiktoken's own BPE on its bytes while allowing only lower
ranks ends in exactly two parts: the pair that builds it (the conversion transformers and
llama.cpp use for tiktoken vocabularies). Ordered by the rank of the result, the pair priorities
are tiktoken's.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

from minillm_core.errors import MiniLLMError
from minillm_core.tokenizer import BOS, Tokenizer

END = "<|assistant_end|>"


class ExportError(MiniLLMError, RuntimeError):
    """The export could not be built or failed its verification; the message says what differs."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE in HF.

    Printable Latin-1 bytes map to themselves; the other 68 map to U+0100 onwards, so every byte
    string becomes a string with no whitespace or control characters (a merge line `a b` stays
    unambiguous)."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
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
        parts[best : best + 2] = [parts[best] + parts[best + 1]]


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
            raise ExportError(
                f"token {token!r} (rank {rank}) is not the merge of two lower-ranked "
                f"tokens (BPE splits it into {len(parts)} parts): not a BPE vocabulary"
            )
        merges.append((parts[0], parts[1]))
    return merges


def tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """A `tokenizers` JSON document equivalent to our tiktoken encoding."""
    b2u = bytes_to_unicode()

    def show(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {show(b): r for b, r in tok.mergeable_ranks.items()}
    merges = [f"{show(a)} {show(b)}" for a, b in recover_merges(tok.mergeable_ranks)]
    added = [
        {
            "id": i,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for name, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                # Isolated: every regex match is its own chunk, as tiktoken's `findall` makes them.
                {
                    "type": "Split",
                    "pattern": {"Regex": tok.pattern},
                    "behavior": "Isolated",
                    "invert": False,
                },
                # Only the bytes -> characters mapping; the splitting was done above.
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        # No BOS added by default: our `encode` adds none either (pass it explicitly, as the
        # chat template does).
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            # tiktoken looks a whole chunk up before merging; without this, a chunk that is
            # a token but that BPE would reach through other pairs could encode differently.
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }


@cache
def chat_template() -> str:
    """The Jinja chat template equal to `render_conversation` / `render_for_completion`: the
    lines of `chat_template.jinja` joined without newlines, its comments dropped."""
    text = (
        resources.files("minillm_core.export")
        .joinpath("chat_template.jinja")
        .read_text(encoding="utf-8")
    )
    return "".join(re.sub(r"\{#.*?#\}\n?", "", text, flags=re.S).splitlines())


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
        "added_tokens_decoder": {
            str(i): {
                "content": name,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for name, i in tok.special_tokens.items()
        },
    }
