"""The byte-level BPE tokenizer: trained by `minillm_rustbpe` (Rust), served by tiktoken.

Training and serving are split on purpose:

- Training uses the Rust extension `minillm_rustbpe` (crate `rustbpe/`): it splits and counts the
  corpus in parallel with the GIL released and merges with incremental pair counts. When the
  extension is not built, training falls back to the pure-Python reference trainer
  (`minillm_core.bpe_reference`, same merges exactly, one log line says so); that is fine for the
  smoke profile and tests, far too slow for a real corpus.
- Serving (encode/decode) always goes through tiktoken, built from the trained `bytes -> rank`
  table and the *same* pattern string, which is stored with the tokenizer. The pattern used in
  training and in inference therefore cannot drift apart: both read it from one file, and the
  tokenizer hash (ranks + pattern + special tokens) is recorded by the token tensors and
  checkpoints, which refuse a mismatch.

Evidence (bench/bench_tokenizer.py, 20 MB of real Chinese, 2 shared CPUs; table in
docs/tokenizer.md): at vocab 6,400 the Rust trainer takes 1.9 s wall / 1.9 s CPU / 267 MB
peak against 7.0 s / 8.5 s / 683 MB for nanochat's `rustbpe` and 18.7 s / 21.1 s / 1262 MB for
HuggingFace `tokenizers`; at 32,768, 3.1 s / 2.6 s / 349 MB against 13.2 s / 9.9 s / 781 MB.

Artifacts (one directory, swapped in atomically): `tokenizer.tiktoken` (tiktoken's format: one
`base64(bytes) rank` line per token, what the project loads), `tokenizer_meta.json` (pattern,
special tokens and ids, sizes, corpus stats, timing, compression, hash), `tokenizer.pkl` (a
pickled `tiktoken.Encoding` for the seed's tools; the project never unpickles anything).

Vocabulary: `vocab_size` counts the 9 special tokens, which take the ids after the BPE ranks.
On a tiny corpus the trainer may run out of pairs before the vocabulary is full; it then stops,
logs a warning and writes a smaller, valid tokenizer whose `get_vocab_size()` tells the truth.

Literal special-token strings inside text (a user typing `<|assistant_end|>`) are encoded as
ordinary text (`encode_ordinary`); only `encode_special` and the conversation renderer emit
control tokens.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import pickle
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import regex
import tiktoken
from pydantic import BaseModel, Field, field_validator

from minillm_core import bpe_reference
from minillm_core.artifacts import ArtifactError, atomic_path, require
from minillm_core.config import ConfigError, CoreConfig
from minillm_core.profiles import PROFILES
from minillm_core.progress import LogFn, Progress, emit

DEFAULT_PATTERN = bpe_reference.DEFAULT_PATTERN

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",  # every document / conversation starts with it (also the document delimiter)
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",  # a tool call written by the assistant
    "<|output_start|>", "<|output_end|>",  # the tool's output (not written by the assistant)
)
BOS = "<|bos|>"

RANKS_FILE = "tokenizer.tiktoken"
META_FILE = "tokenizer_meta.json"
PICKLE_FILE = "tokenizer.pkl"
FORMAT_VERSION = 1

# A fixed text that exercises what breaks tokenizers: Chinese, full-width punctuation, emoji
# (multi-codepoint, with ZWJ and skin tone), digit runs, mixed scripts and whitespace runs.
TRICKY_TEXT = (
    "你好，世界！今天是2024年12月31日，气温-3.5℃。「引号」『书名』（括号）【方括号】……——\n"
    "Hello,   world!\t\tTabs\tand  spaces   \n\n\n  leading and trailing   \r\n"
    "Emoji: 😀👍🏽👨‍👩‍👧‍👦🇨🇳 ❤️ 数字1234567890 ０１２３全角ＡＢＣ\u3000全角空格\n"
    "代码: for i in range(10): print(i ** 2)  # 注释\n"
    "Ünïcödé naïve café — “quotes” ‘single’ ½ ² ∑ ∞ 🤖<|bos|><|assistant_end|>"
)

# Held-out text for the compression figures: written for this module, so it is never in any
# training corpus. Compression on the mix's own held-out split is reported too when it exists.
HELDOUT_ZH = (
    "清晨的小镇还笼罩在薄雾里，街角的早餐铺已经升起了热气。老板一边擀面，一边和熟客聊着昨晚的雨。"
    "孩子们背着书包跑过石板路，笑声在巷子里回荡。图书馆的管理员打开窗户，让新鲜的空气吹进阅览室，"
    "她把归还的图书按照编号一本本放回书架。午后，阳光穿过梧桐树的叶子，在地上洒下斑驳的光影。"
    "退休的工程师坐在长椅上，用手机学习新的编程语言，他说学习永远不嫌晚。傍晚时分，河边的广场上"
    "响起了音乐，人们跳舞、散步、聊天，小贩推着车卖冰糖葫芦和烤红薯。夜深了，城市渐渐安静下来，"
    "只有便利店的灯还亮着，店员整理着货架，准备迎接第二天的忙碌。科学研究表明，规律的作息和适量的"
    "运动有助于保持身心健康，而阅读可以拓宽视野、培养耐心。"
)
HELDOUT_EN = (
    "The morning train was late again, so the commuters gathered under the station roof and "
    "watched the rain drift across the tracks. A student reviewed her notes on thermodynamics, "
    "while an old man explained to his grandson how the signals worked before computers took "
    "over. When the train finally arrived, everyone squeezed inside, shaking water from their "
    "umbrellas. In the city, the library opened at nine; its volunteers sorted returned books, "
    "repaired torn pages and answered questions about local history. Researchers have found that "
    "regular sleep, a balanced diet and moderate exercise improve both memory and mood, and that "
    "reading for twenty minutes a day can widen one's vocabulary considerably over a year."
)

# GB2312 level 1: the 3,755 most frequently used Chinese characters of the GB2312 standard
# (rows 16-55), derived from Python's codec so no list has to be shipped. A fixed, corpus-independent
# yardstick for "common Chinese characters are single tokens".
def gb2312_level1() -> list[str]:
    chars = []
    for row in range(0xB0, 0xD8):
        for col in range(0xA1, 0xFF):
            try:
                chars.append(bytes([row, col]).decode("gb2312"))
            except UnicodeDecodeError:
                pass  # row 55 ends at 0xF9
    return chars


class TokenizerError(RuntimeError):
    """A tokenizer could not be trained, saved or loaded; the message says why and where."""


# --------------------------------------------------------------------------------------- config

class TokenizerConfig(CoreConfig):
    """Settings of tokenizer training (defaults: the seed's vocabulary, nanochat's corpus caps)."""

    vocab_size: int = Field(6400, description="final vocabulary size, special tokens included")
    pattern: str = Field(DEFAULT_PATTERN, description="split regex (stored with the tokenizer)")
    max_chars_per_doc: int = Field(10_000, gt=0, description="longer documents are truncated")
    # 200M characters, not nanochat's 2B: in Chinese, `\p{L}+` makes nearly every run of Han
    # characters a distinct chunk, so training memory grows with the text itself (measured with
    # the Rust trainer: ~26 bytes of RAM per character, 228 MB for the 8.7M characters of the
    # benchmark corpus), while English chunks repeat and stay small. 200M Chinese characters need
    # about 5 GB; raise it when
    # the machine has the memory (the metadata reports whether the cap was reached).
    max_chars_total: int = Field(200_000_000, gt=0, description="stop reading after this many")
    num_threads: int | None = Field(None, gt=0, description="training threads; None = all cores")
    trainer: Literal["auto", "rust", "python"] = Field(
        "auto", description="auto: Rust extension if built, else the pure-Python reference")
    heldout_paths: list[Path] = Field(
        default_factory=list,
        description="extra held-out JSONL for compression figures (default: sibling *_heldout)")

    @field_validator("vocab_size")
    @classmethod
    def _vocab_big_enough(cls, v: int) -> int:
        minimum = 256 + len(SPECIAL_TOKENS)
        if v < minimum:
            raise ValueError(
                f"vocab_size={v} is too small: the 256 byte tokens and {len(SPECIAL_TOKENS)} "
                f"special tokens need at least {minimum}")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, v: str) -> str:
        try:
            regex.compile(v)
        except regex.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from None
        return v


class TokenizerReport(BaseModel):
    path: Path
    vocab_size: int
    metadata: dict[str, Any]


# ------------------------------------------------------------------------------------ tokenizer

def _as_messages(conversation: Any) -> list[dict[str, Any]]:
    if isinstance(conversation, dict):
        for key in ("conversations", "messages"):
            if key in conversation:
                conversation = conversation[key]
                break
        else:
            raise ValueError("conversation dict needs a 'conversations' or 'messages' list")
    if not isinstance(conversation, list) or not conversation:
        raise ValueError("a conversation is a non-empty list of messages")
    out = []
    for i, m in enumerate(conversation):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} is not an object: {m!r:.80}")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = {"human": "user", "gpt": "assistant", "observation": "tool"}.get(role, role)
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"message {i}: unknown role {role!r}")
        if content is None:
            content = ""
        out.append({"role": role, "content": content})
    # A system message is folded into the first user message (the model has no system role).
    if out[0]["role"] == "system":
        system = out.pop(0)
        if not out or out[0]["role"] != "user":
            raise ValueError("a system message must be followed by a user message")
        out[0] = {"role": "user", "content": _text_of(system["content"]) + "\n\n"
                  + _text_of(out[0]["content"])}
    for i, m in enumerate(out):
        if m["role"] == "system":
            raise ValueError(f"message {i}: a system message is only allowed first")
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    raise ValueError(f"message content must be a string or a list of parts, got {type(content)}")


class Tokenizer:
    """A trained tokenizer, served by tiktoken. Build with `load_tokenizer(dir)` or `train_from_iterator`.

    The API follows nanochat's `RustBPETokenizer`, which users of that project already know.
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str = DEFAULT_PATTERN,
                 special_tokens: Sequence[str] = SPECIAL_TOKENS, name: str = "minillm"):
        n = len(mergeable_ranks)
        if sorted(mergeable_ranks.values()) != list(range(n)):
            raise TokenizerError("mergeable ranks must be exactly 0..n-1 (contiguous, unique)")
        for b in range(256):
            if mergeable_ranks.get(bytes([b])) != b:
                raise TokenizerError(f"byte {b} must have rank {b}")
        self.pattern = pattern
        self.mergeable_ranks = dict(mergeable_ranks)
        self.special_tokens = {tok: n + i for i, tok in enumerate(special_tokens)}
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=self.mergeable_ranks,
                                     special_tokens=self.special_tokens,
                                     explicit_n_vocab=n + len(self.special_tokens))

    # -- construction
    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int,
                            pattern: str = DEFAULT_PATTERN, num_threads: int | None = None,
                            trainer: str = "auto", log: LogFn | None = None) -> "Tokenizer":
        """Train on an iterable of strings; `vocab_size` counts the special tokens."""
        ranks, _ = _train_ranks(texts, vocab_size - len(SPECIAL_TOKENS), pattern, num_threads,
                                trainer, log)
        return cls(ranks, pattern)

    # -- sizes and special tokens
    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_special_tokens(self) -> set[str]:
        return set(self.special_tokens)

    def encode_special(self, name: str) -> int:
        try:
            return self.special_tokens[name]
        except KeyError:
            raise KeyError(f"unknown special token {name!r}; known: "
                           f"{', '.join(self.special_tokens)}") from None

    def get_bos_token_id(self) -> int:
        return self.special_tokens[BOS]

    @property
    def bos_token_id(self) -> int:
        return self.special_tokens[BOS]

    def id_to_token(self, token_id: int) -> str:
        return self.enc.decode([token_id])

    def token_bytes(self, token_id: int) -> bytes:
        return self.enc.decode_single_token_bytes(token_id)

    @cached_property
    def hash(self) -> str:
        """sha256 of ranks, pattern and special tokens: what tensors and checkpoints record."""
        return _hash_tokenizer(self.mergeable_ranks, self.pattern, self.special_tokens)

    # -- encode / decode
    def _id(self, x: int | str) -> int:
        return self.encode_special(x) if isinstance(x, str) else int(x)

    def encode(self, text: str | list[str], prepend: int | str | None = None,
               append: int | str | None = None, num_threads: int = 8) -> list[int] | list[list[int]]:
        """Encode text (special-token strings in it are plain text) or a batch of texts.

        `prepend`/`append` take a token id or a special token name (e.g. "<|bos|>")."""
        pre = None if prepend is None else self._id(prepend)
        post = None if append is None else self._id(append)
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            if pre is not None:
                ids.insert(0, pre)
            if post is not None:
                ids.append(post)
            return ids
        if isinstance(text, list):
            batch = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
            for ids in batch:
                if pre is not None:
                    ids.insert(0, pre)
                if post is not None:
                    ids.append(post)
            return batch
        raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")

    __call__ = encode

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode(list(ids))

    # -- conversations
    def render_conversation(self, conversation: Any, max_tokens: int = 2048
                            ) -> tuple[list[int], list[int]]:
        """Token ids and a mask (1 = the model is trained to predict this token) for a chat.

        Layout: `<|bos|>` then per turn `<|user_start|> text <|user_end|>` (mask 0) or
        `<|assistant_start|>` (mask 0) `text <|assistant_end|>` (mask 1). A system message is
        folded into the first user message; a `tool` message becomes `<|output_start|> text
        <|output_end|>` (mask 0: the model does not write tool output). Assistant content may be a
        list of parts `{"type": "text"|"python"|"python_output", "text": ...}` as in nanochat.
        Truncated to `max_tokens`."""
        messages = _as_messages(conversation)
        ids: list[int] = []
        mask: list[int] = []

        def add(tokens: int | list[int], m: int) -> None:
            if isinstance(tokens, int):
                tokens = [tokens]
            ids.extend(tokens)
            mask.extend([m] * len(tokens))

        sp = self.special_tokens
        add(sp[BOS], 0)
        for msg in messages:
            role, content = msg["role"], msg["content"]
            if role == "user":
                add(sp["<|user_start|>"], 0)
                add(self.enc.encode_ordinary(_text_of(content)), 0)
                add(sp["<|user_end|>"], 0)
            elif role == "tool":
                add(sp["<|output_start|>"], 0)
                add(self.enc.encode_ordinary(_text_of(content)), 0)
                add(sp["<|output_end|>"], 0)
            else:  # assistant
                add(sp["<|assistant_start|>"], 0)
                if isinstance(content, str):
                    add(self.enc.encode_ordinary(content), 1)
                elif isinstance(content, list):
                    for part in content:
                        kind, text = part.get("type", "text"), part.get("text", "")
                        enc = self.enc.encode_ordinary(text)
                        if kind == "text":
                            add(enc, 1)
                        elif kind == "python":
                            add(sp["<|python_start|>"], 1)
                            add(enc, 1)
                            add(sp["<|python_end|>"], 1)
                        elif kind == "python_output":
                            # Produced by the interpreter at inference time: not learned.
                            add(sp["<|output_start|>"], 0)
                            add(enc, 0)
                            add(sp["<|output_end|>"], 0)
                        else:
                            raise ValueError(f"unknown assistant content part type {kind!r}")
                else:
                    raise ValueError(f"assistant content must be str or list, got {type(content)}")
                add(sp["<|assistant_end|>"], 1)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: Any) -> list[int]:
        """Ids that prime the model to answer: the conversation without its final assistant
        message (if any), then `<|assistant_start|>`."""
        messages = _as_messages(conversation)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise ValueError("nothing to complete: the conversation has only an assistant message")
        ids, _ = self.render_conversation(messages, max_tokens=sys.maxsize)
        ids.append(self.special_tokens["<|assistant_start|>"])
        return ids

    def visualize_tokenization(self, ids: Sequence[int], mask: Sequence[int] | None = None) -> str:
        """Tokens joined by '|' (masked ones in brackets): a debugging aid."""
        parts = []
        for i, t in enumerate(ids):
            s = self.id_to_token(t)
            parts.append(f"[{s}]" if mask is not None and mask[i] else s)
        return "|".join(parts)

    # -- persistence
    def save(self, directory: Path | str, meta: dict[str, Any] | None = None) -> Path:
        """Write the three files as one directory, swapped in atomically (a reader never sees a
        partial tokenizer; a previous one under that name is replaced whole)."""
        with atomic_path(directory, directory=True) as tmp:
            self._write(tmp, meta)
        return Path(directory)

    def _write(self, d: Path, meta: dict[str, Any] | None) -> None:
        lines = [f"{base64.b64encode(b).decode('ascii')} {r}"
                 for b, r in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])]
        (d / RANKS_FILE).write_text("\n".join(lines) + "\n", encoding="ascii")
        full = {
            "format_version": FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "vocab_size": self.get_vocab_size(),
            "num_ranks": len(self.mergeable_ranks),
            "bos_token_id": self.bos_token_id,
            "hash": self.hash,
            **(meta or {}),
        }
        (d / META_FILE).write_text(json.dumps(full, ensure_ascii=False, indent=2, sort_keys=True)
                                   + "\n", encoding="utf-8")
        # For the seed's tools only (a pickled tiktoken.Encoding, like nanochat's tokenizer.pkl).
        with open(d / PICKLE_FILE, "wb") as f:
            pickle.dump(self.enc, f)


def _hash_tokenizer(ranks: dict[bytes, int], pattern: str, specials: dict[str, int]) -> str:
    h = hashlib.sha256()
    h.update(b"minillm-tokenizer-v1\0")
    h.update(pattern.encode("utf-8") + b"\0")
    h.update(json.dumps(specials, sort_keys=True).encode() + b"\0")
    for b, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(base64.b64encode(b) + b" %d\n" % r)
    return h.hexdigest()


def load_tokenizer(directory: Path | str) -> Tokenizer:
    """Load a tokenizer directory (never the pickle): ranks from `tokenizer.tiktoken`, pattern and
    special tokens from `tokenizer_meta.json`; the recorded hash must match."""
    d = require(directory, "tokenizer directory")
    ranks_path = require(d / RANKS_FILE, "tokenizer ranks file")
    meta_path = require(d / META_FILE, "tokenizer metadata")
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(ranks_path.read_text(encoding="ascii").splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split(" ")
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as exc:
            raise TokenizerError(f"{ranks_path}:{lineno}: not a 'base64 rank' line ({exc})") from None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{meta_path}: not valid JSON ({exc})") from None
    specials = meta.get("special_tokens") or {}
    names = sorted(specials, key=specials.get)
    n = len(ranks)
    if [specials[k] for k in names] != list(range(n, n + len(names))):
        raise TokenizerError(f"{meta_path}: special token ids must follow the {n} ranks")
    try:
        tok = Tokenizer(ranks, meta["pattern"], names)
    except (TokenizerError, KeyError, ValueError) as exc:
        raise TokenizerError(f"{d}: cannot build the tokenizer: {exc}") from None
    if meta.get("hash") and meta["hash"] != tok.hash:
        raise TokenizerError(f"{d}: tokenizer hash {tok.hash[:12]} does not match the recorded "
                             f"{meta['hash'][:12]} (files edited or mixed from two tokenizers)")
    return tok


# -------------------------------------------------------------------------------------- training

@lru_cache(maxsize=1)
def rust_module():
    """The `minillm_rustbpe` extension, or None when it is not built."""
    try:
        import minillm_rustbpe
    except ImportError:
        return None
    return minillm_rustbpe


def _train_ranks(texts: Iterable[str], n_ranks: int, pattern: str, num_threads: int | None,
                 trainer: str, log: LogFn | None) -> tuple[dict[bytes, int], str]:
    """Train `n_ranks` (bytes + merges) ranks; return them and the name of the trainer used."""
    mod = rust_module() if trainer in ("auto", "rust") else None
    if trainer == "rust" and mod is None:
        raise TokenizerError("trainer='rust' but minillm_rustbpe is not built: run "
                             "`.venv/bin/pip install ./rustbpe` (needs cargo), or use trainer='auto'")
    if mod is not None:
        tok = mod.Tokenizer()
        try:
            tok.train_from_iterator(iter(texts), n_ranks, pattern=pattern, num_threads=num_threads)
        except ValueError as exc:  # a pattern fancy-regex rejects (tiktoken could not serve it)
            raise TokenizerError(f"minillm_rustbpe: {exc}") from None
        ranks = dict(tok.get_mergeable_ranks())
        return ranks, f"minillm_rustbpe {getattr(mod, '__version__', '?')}"
    if trainer == "auto":
        emit(log, "minillm_rustbpe not built; training with the pure-Python reference trainer "
                  "(slow; build it with `.venv/bin/pip install ./rustbpe`)")
    merges = bpe_reference.train(texts, n_ranks, pattern)
    return bpe_reference.mergeable_ranks(merges), "bpe_reference (pure Python)"


def _conversation_text(messages: Any) -> str:
    return "\n".join(_text_of(m.get("content", m.get("value", "")) or "")
                     for m in messages if isinstance(m, dict))


def record_texts(record: Any) -> list[str]:
    """Plain text of one mix record: pretrain `text`, SFT `conversations`/`messages`, DPO
    `chosen`+`rejected` (the shared prompt once, then both final answers)."""
    if isinstance(record, list):  # nanochat's bare-array conversation lines
        return [_conversation_text(record)]
    if not isinstance(record, dict):
        return []
    if isinstance(record.get("text"), str):
        return [record["text"]]
    for key in ("conversations", "messages"):
        if isinstance(record.get(key), list):
            return [_conversation_text(record[key])]
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        return [_conversation_text(chosen), _conversation_text(rejected[k:])]
    return []


class CorpusStats:
    """What the training stream read: counts for the metadata, and a sample of Han characters
    (first `han_sample_chars` characters) for the common-character coverage figure."""

    def __init__(self, han_sample_chars: int = 20_000_000):
        self.files: dict[str, int] = {}
        self.records = self.docs = self.docs_truncated = self.chars = self.bytes = 0
        self.bad_lines = 0
        self.cap_reached = False
        self.han = Counter()
        self._han_budget = han_sample_chars

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "records": self.records, "docs": self.docs,
                "docs_truncated": self.docs_truncated, "chars": self.chars, "bytes": self.bytes,
                "bad_lines": self.bad_lines, "max_chars_total_reached": self.cap_reached}


def iter_mix_texts(paths: Sequence[Path], max_chars_per_doc: int, max_chars_total: int,
                   stats: CorpusStats | None = None, log: LogFn | None = None) -> Iterator[str]:
    """Stream the documents of JSONL mixes as plain text, capped per document and in total.

    Reads one line at a time, so memory stays bounded whatever the corpus size."""
    stats = stats if stats is not None else CorpusStats()
    total_bytes = sum(Path(p).stat().st_size for p in paths)
    with Progress(total_bytes, "tokenizer: reading", unit="B", log=log) as bar:
        for path in paths:
            n = 0
            with open(path, "rb") as f:
                for line in f:
                    bar.update(len(line))
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        stats.bad_lines += 1
                        continue
                    n += 1
                    stats.records += 1
                    for text in record_texts(record):
                        if not text:
                            continue
                        if len(text) > max_chars_per_doc:
                            text = text[:max_chars_per_doc]
                            stats.docs_truncated += 1
                        room = max_chars_total - stats.chars
                        if len(text) >= room:
                            text = text[:room]
                            stats.cap_reached = True
                        stats.docs += 1
                        stats.chars += len(text)
                        stats.bytes += len(text.encode("utf-8"))
                        if stats._han_budget > 0:
                            sample = text[:stats._han_budget]
                            stats._han_budget -= len(sample)
                            stats.han.update(_HAN_RE.findall(sample))
                        if text:
                            yield text
                        if stats.cap_reached:
                            stats.files[str(path)] = n
                            emit(log, f"tokenizer: max_chars_total={max_chars_total:,} reached "
                                      f"in {path} after {n} records; the rest is not read")
                            return
            stats.files[str(path)] = n


_HAN_RE = regex.compile(r"\p{Han}")


def _is_han(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2FFFF


def compression(tok: Tokenizer, text: str) -> dict[str, float]:
    n = max(len(tok.encode(text)), 1)
    return {"bytes_per_token": round(len(text.encode("utf-8")) / n, 4),
            "chars_per_token": round(len(text) / n, 4), "tokens": n}


def single_token_share(tok: Tokenizer, chars: Sequence[str]) -> float:
    if not chars:
        return 0.0
    return round(sum(len(tok.encode(c)) == 1 for c in chars) / len(chars), 4)


def _heldout_texts(paths: Sequence[Path], limit_chars: int = 2_000_000) -> str:
    out: list[str] = []
    size = 0
    for p in paths:
        with open(p, "rb") as f:
            for line in f:
                try:
                    texts = record_texts(json.loads(line))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                for t in texts:
                    out.append(t)
                    size += len(t)
                if size >= limit_chars:
                    return "\n".join(out)
    return "\n".join(out)


def quality_metadata(tok: Tokenizer, han_counts: Counter | None = None,
                     heldout_paths: Sequence[Path] = ()) -> dict[str, Any]:
    """The figures the tokenizer asset shows: round trip, compression, coverage, a vocab sample."""
    ids = tok.encode(TRICKY_TEXT)
    md: dict[str, Any] = {
        "roundtrip_ok": tok.decode(ids) == TRICKY_TEXT,
        "roundtrip_tokens": len(ids),
        "special_strings_are_plain_text": not (set(ids) & set(tok.special_tokens.values())),
        "compression_heldout_zh": compression(tok, HELDOUT_ZH),
        "compression_heldout_en": compression(tok, HELDOUT_EN),
    }
    if heldout_paths:
        text = _heldout_texts(heldout_paths)
        if text:
            md["compression_heldout_mix"] = compression(tok, text)
    level1 = gb2312_level1()
    md["gb2312_level1_single_token_share"] = single_token_share(tok, level1)
    if han_counts:
        top = [c for c, _ in sorted(han_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3500]]
        md["top3500_han_single_token_share"] = single_token_share(tok, top)
        md["top3500_han_distinct_in_sample"] = len(top)
    # A decoded sample of the learned tokens: evenly spaced over the merge ranks, plus the
    # longest Chinese tokens (what the vocabulary learned about Chinese words).
    n = len(tok.mergeable_ranks)
    if n > 256:
        step = max((n - 256) // 24, 1)
        # [rank, token]; a token that is not whole UTF-8 (part of a character) shows its bytes.
        md["vocab_sample"] = [[r, _show_token(tok.token_bytes(r))] for r in range(256, n, step)]
        han_tokens = []
        for b, r in tok.mergeable_ranks.items():
            try:
                s = b.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if s and all(_is_han(c) for c in s) and len(s) > 1:
                han_tokens.append((-len(s), r, s))
        md["longest_chinese_tokens"] = [s for _, _, s in sorted(han_tokens)[:20]]
        md["multi_char_chinese_tokens"] = len(han_tokens)
    return md


def _show_token(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return repr(b)


def _default_heldout(mix_paths: Sequence[Path]) -> list[Path]:
    out = []
    for p in mix_paths:
        p = Path(p)
        h = p.with_name(p.stem + "_heldout" + p.suffix)
        if h.exists():
            out.append(h)
    return out


def train_tokenizer(cfg: TokenizerConfig, mix_paths: Sequence[Path | str], out_dir: Path | str,
                    log: LogFn | None = None) -> TokenizerReport:
    """Train on the mixes (streamed, capped) and write the tokenizer directory atomically."""
    paths = [require(p, "mix file") for p in mix_paths]
    if not paths:
        raise ConfigError("train_tokenizer needs at least one mix file")
    out = Path(out_dir)
    n_ranks = cfg.vocab_size - len(SPECIAL_TOKENS)
    stats = CorpusStats()
    texts = iter_mix_texts(paths, cfg.max_chars_per_doc, cfg.max_chars_total, stats, log)
    t0, c0 = time.perf_counter(), time.process_time()
    ranks, trainer = _train_ranks(texts, n_ranks, cfg.pattern, cfg.num_threads, cfg.trainer, log)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if stats.chars == 0:
        raise TokenizerError(f"no text found in {', '.join(map(str, paths))}: expected JSONL "
                             "records with 'text', 'conversations'/'messages' or 'chosen'/'rejected'")
    tok = Tokenizer(ranks, cfg.pattern)
    stopped_early = len(ranks) < n_ranks
    if stopped_early:
        emit(log, f"WARNING tokenizer: the corpus ran out of pairs after {len(ranks) - 256} merges; "
                  f"vocabulary is {tok.get_vocab_size()} instead of {cfg.vocab_size} "
                  "(train on more text for the full size)")
    heldout = list(cfg.heldout_paths) or _default_heldout(paths)
    quality = quality_metadata(tok, stats.han, heldout)
    meta = {
        "trainer": trainer,
        "requested_vocab_size": cfg.vocab_size,
        "stopped_early": stopped_early,
        "training_seconds": round(seconds, 3),
        "training_cpu_seconds": round(cpu, 3),
        "corpus": stats.as_dict(),
        "config": json.loads(cfg.model_dump_json()),
        "heldout_paths": [str(p) for p in heldout],
        "quality": quality,
    }
    tok.save(out, meta)
    emit(log, f"tokenizer: {tok.get_vocab_size()} tokens ({trainer}) from {stats.chars:,} chars "
              f"in {seconds:.1f}s -> {out}")
    metadata = {
        "vocab_size": tok.get_vocab_size(),
        "requested_vocab_size": cfg.vocab_size,
        "stopped_early": stopped_early,
        "trainer": trainer,
        "training_seconds": round(seconds, 3),
        "chars_used": stats.chars,
        "bytes_used": stats.bytes,
        "docs_used": stats.docs,
        "docs_truncated": stats.docs_truncated,
        "max_chars_total_reached": stats.cap_reached,
        "hash": tok.hash,
        **quality,
    }
    return TokenizerReport(path=out, vocab_size=tok.get_vocab_size(), metadata=metadata)


def check_tokenizer(directory: Path | str) -> list[str]:
    """Problems with a tokenizer directory (empty list = healthy): for the asset check."""
    problems: list[str] = []
    d = Path(directory)
    for name in (RANKS_FILE, META_FILE, PICKLE_FILE):
        if not (d / name).is_file():
            problems.append(f"missing {name}")
    try:
        tok = load_tokenizer(d)
    except (TokenizerError, ArtifactError, OSError, ValueError) as exc:
        return problems + [f"cannot load: {exc}"]
    meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    if meta.get("vocab_size") != tok.get_vocab_size():
        problems.append(f"meta vocab_size {meta.get('vocab_size')} != {tok.get_vocab_size()}")
    if set(tok.special_tokens) != set(SPECIAL_TOKENS):
        problems.append(f"special tokens differ from the project's: {sorted(tok.special_tokens)}")
    ids = tok.encode(TRICKY_TEXT)
    if tok.decode(ids) != TRICKY_TEXT:
        problems.append("round trip failed on the fixed tricky text")
    if set(ids) & set(tok.special_tokens.values()):
        problems.append("special-token strings in text were encoded as control tokens")
    for ch in "的一是在不了有和人这中大为上个国我以要他":
        if len(tok.encode(ch)) != 1 and tok.get_vocab_size() >= 2000:
            problems.append(f"common character {ch!r} is not a single token")
            break
    return problems


# ----------------------------------------------------------------------------------------- command

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minillm tokenizer",
        description="Train the byte-level BPE tokenizer from pretrain, SFT or DPO JSONL.")
    p.add_argument("--data_path", "--data-path", nargs="+", required=True, type=Path,
                   help="JSONL mix files ({'text'}, {'conversations'|'messages'}, "
                        "{'chosen','rejected'})")
    p.add_argument("--out_dir", "--out-dir", "--tokenizer_dir", type=Path,
                   default=Path("out/tokenizer"), help="output directory (default: out/tokenizer)")
    p.add_argument("--vocab_size", "--vocab-size", type=int, default=None,
                   help="vocabulary size incl. special tokens (default 6400)")
    p.add_argument("--max_chars_per_doc", "--doc-cap", "--doc_cap", type=int, default=None)
    p.add_argument("--max_chars_total", "--max-chars", "--max_chars", type=int, default=None)
    p.add_argument("--num_threads", "--num-threads", type=int, default=None)
    p.add_argument("--trainer", choices=["auto", "rust", "python"], default=None)
    p.add_argument("--pattern", default=None, help="split regex (default: the GPT-4-style variant)")
    p.add_argument("--profile", default=None, choices=sorted(PROFILES),
                   help="preset to layer under the flags")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    layers: list[dict[str, Any]] = []
    if args.profile:
        from minillm_core.profiles import preset
        layers.append(preset(args.profile, "tokenizer"))
    layers.append({"vocab_size": args.vocab_size, "max_chars_per_doc": args.max_chars_per_doc,
                   "max_chars_total": args.max_chars_total, "num_threads": args.num_threads,
                   "trainer": args.trainer, "pattern": args.pattern})
    try:
        cfg = TokenizerConfig.resolve(*layers)
        report = train_tokenizer(cfg, args.data_path, args.out_dir)
    except (ConfigError, TokenizerError, ArtifactError) as exc:
        print(f"minillm tokenizer: {exc}", file=sys.stderr)
        return 2
    md = report.metadata
    print(json.dumps({k: md[k] for k in ("vocab_size", "trainer", "training_seconds", "chars_used",
                                         "roundtrip_ok", "compression_heldout_zh",
                                         "compression_heldout_en", "hash")},
                     ensure_ascii=False, indent=2))
    problems = check_tokenizer(report.path)
    for problem in problems:
        print(f"check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
