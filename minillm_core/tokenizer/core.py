"""The byte-level BPE tokenizer as served: tiktoken over the trained `bytes -> rank` table.

Serving (encode/decode) always goes through tiktoken, built from the trained ranks and the *same*
pattern string, which is stored with the tokenizer. The pattern used in training and in inference
therefore cannot drift apart: both read it from one file, and the tokenizer hash (ranks + pattern
+ special tokens) is recorded by the token tensors and checkpoints, which refuse a mismatch.

Artifacts (one directory, swapped in atomically): `tokenizer.tiktoken` (tiktoken's format: one
`base64(bytes) rank` line per token, what the project loads), `tokenizer_meta.json` (pattern,
special tokens and ids, sizes, corpus stats, timing, compression, hash), `tokenizer.pkl` (a
pickled `tiktoken.Encoding` for the seed's tools; the project never unpickles anything).

Vocabulary: the 9 special tokens (`schema.SPECIAL_TOKENS`) take the ids after the BPE ranks.
Literal special-token strings inside text (a user typing `<|assistant_end|>`) are encoded as
ordinary text (`encode_ordinary`); only `encode_special` and the conversation renderer emit
control tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, overload

import tiktoken

from minillm_core.artifacts import atomic_path, require
from minillm_core.errors import ArtifactError
from minillm_core.progress import LogFn
from minillm_core.schema import BOS, SPECIAL_TOKENS
from minillm_core.tokenizer import reference, render

DEFAULT_PATTERN = reference.DEFAULT_PATTERN
RANKS_FILE = "tokenizer.tiktoken"
META_FILE = "tokenizer_meta.json"
PICKLE_FILE = "tokenizer.pkl"
FORMAT_VERSION = 1


class TokenizerError(ArtifactError):
    """A tokenizer could not be trained, saved or loaded; the message says why and where."""


class Tokenizer:
    """A trained tokenizer, served by tiktoken. Build with `load_tokenizer(dir)` or
    `train_from_iterator`.

    The API follows nanochat's `RustBPETokenizer` (an alias of this class), which users of that
    project already know.
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        pattern: str = DEFAULT_PATTERN,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        name: str = "minillm",
    ):
        n = len(mergeable_ranks)
        if sorted(mergeable_ranks.values()) != list(range(n)):
            raise TokenizerError("mergeable ranks must be exactly 0..n-1 (contiguous, unique)")
        for b in range(256):
            if mergeable_ranks.get(bytes([b])) != b:
                raise TokenizerError(f"byte {b} must have rank {b}")
        self.pattern = pattern
        self.mergeable_ranks = dict(mergeable_ranks)
        self.special_tokens = {tok: n + i for i, tok in enumerate(special_tokens)}
        self.enc = tiktoken.Encoding(
            name,
            pat_str=pattern,
            mergeable_ranks=self.mergeable_ranks,
            special_tokens=self.special_tokens,
            explicit_n_vocab=n + len(self.special_tokens),
        )

    # -- construction
    @classmethod
    def train_from_iterator(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        pattern: str = DEFAULT_PATTERN,
        num_threads: int | None = None,
        trainer: str = "auto",
        log: LogFn | None = None,
    ) -> Tokenizer:
        """Train on an iterable of strings; `vocab_size` counts the special tokens."""
        from minillm_core.tokenizer.trainers import (
            train_ranks,  # it imports this module
        )

        ranks, _ = train_ranks(
            texts, vocab_size - len(SPECIAL_TOKENS), pattern, num_threads, trainer, log
        )
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
            raise KeyError(
                f"unknown special token {name!r}; known: {', '.join(self.special_tokens)}"
            ) from None

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

    @overload
    def encode(
        self,
        text: str,
        prepend: int | str | None = None,
        append: int | str | None = None,
        num_threads: int = 8,
    ) -> list[int]: ...

    @overload
    def encode(
        self,
        text: list[str],
        prepend: int | str | None = None,
        append: int | str | None = None,
        num_threads: int = 8,
    ) -> list[list[int]]: ...

    def encode(
        self,
        text: str | list[str],
        prepend: int | str | None = None,
        append: int | str | None = None,
        num_threads: int = 8,
    ) -> list[int] | list[list[int]]:
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

    # -- conversations (the layout: `minillm_core.tokenizer.render`)
    def render_conversation(
        self, conversation: Any, max_tokens: int = 2048
    ) -> tuple[list[int], list[int]]:
        """Token ids and a mask (1 = the model is trained to predict this token) for a chat."""
        return render.render_conversation(self, conversation, max_tokens)

    def render_for_completion(self, conversation: Any) -> list[int]:
        """Ids that prime the model to answer (the conversation, then `<|assistant_start|>`)."""
        return render.render_for_completion(self, conversation)

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
            _write_files(self, tmp, meta)
        return Path(directory)


def _write_files(tok: Tokenizer, d: Path, meta: dict[str, Any] | None) -> None:
    """The three files of a tokenizer directory, written into `d`."""
    lines = [
        f"{base64.b64encode(b).decode('ascii')} {r}"
        for b, r in sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1])
    ]
    (d / RANKS_FILE).write_text("\n".join(lines) + "\n", encoding="ascii")
    full = {
        "format_version": FORMAT_VERSION,
        "pattern": tok.pattern,
        "special_tokens": tok.special_tokens,
        "vocab_size": tok.get_vocab_size(),
        "num_ranks": len(tok.mergeable_ranks),
        "bos_token_id": tok.bos_token_id,
        "hash": tok.hash,
        **(meta or {}),
    }
    (d / META_FILE).write_text(
        json.dumps(full, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    # For the seed's tools only (a pickled tiktoken.Encoding, like nanochat's tokenizer.pkl).
    with open(d / PICKLE_FILE, "wb") as f:
        pickle.dump(tok.enc, f)


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
            raise TokenizerError(
                f"{ranks_path}:{lineno}: not a 'base64 rank' line ({exc})"
            ) from None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{meta_path}: not valid JSON ({exc})") from None
    specials = meta.get("special_tokens") or {}
    names = sorted(specials, key=lambda k: specials[k])
    n = len(ranks)
    if [specials[k] for k in names] != list(range(n, n + len(names))):
        raise TokenizerError(f"{meta_path}: special token ids must follow the {n} ranks")
    try:
        tok = Tokenizer(ranks, meta["pattern"], names)
    except (TokenizerError, KeyError, ValueError) as exc:
        raise TokenizerError(f"{d}: cannot build the tokenizer: {exc}") from None
    if meta.get("hash") and meta["hash"] != tok.hash:
        raise TokenizerError(
            f"{d}: tokenizer hash {tok.hash[:12]} does not match the recorded "
            f"{meta['hash'][:12]} (files edited or mixed from two tokenizers)"
        )
    return tok


# nanochat's name for the same class, for users coming from that project.
RustBPETokenizer = Tokenizer
