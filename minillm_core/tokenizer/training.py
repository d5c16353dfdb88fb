"""Training the tokenizer on the mixes: `TokenizerConfig` (the settings) and `train_tokenizer`.

Vocabulary: `vocab_size` counts the 9 special tokens, which take the ids after the BPE ranks.
On a tiny corpus the trainer may run out of pairs before the vocabulary is full; it then stops,
logs a warning and writes a smaller, valid tokenizer whose `get_vocab_size()` tells the truth.
The trainers' speed and memory against nanochat's `rustbpe` and HuggingFace `tokenizers` are in
docs/tokenizer.md (measured by bench/bench_tokenizer.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import regex
from pydantic import BaseModel, Field, field_validator

from minillm_core.artifacts import require
from minillm_core.config import CoreConfig
from minillm_core.errors import ConfigError
from minillm_core.progress import LogFn, emit
from minillm_core.schema import SPECIAL_TOKENS
from minillm_core.tokenizer.core import DEFAULT_PATTERN, Tokenizer, TokenizerError
from minillm_core.tokenizer.corpus import CorpusStats, iter_mix_texts
from minillm_core.tokenizer.quality import quality_metadata
from minillm_core.tokenizer.trainers import train_ranks


class TokenizerConfig(CoreConfig):
    """Settings of tokenizer training (defaults: the seed's vocabulary, nanochat's corpus caps)."""

    vocab_size: int = Field(6400, description="final vocabulary size, special tokens included")
    pattern: str = Field(DEFAULT_PATTERN, description="split regex (stored with the tokenizer)")
    max_chars_per_doc: int = Field(10_000, gt=0, description="longer documents are truncated")
    # 200M characters, not nanochat's 2B: in Chinese, `\p{L}+` makes nearly every run of Han
    # characters a distinct chunk, so training memory grows with the text itself, while English
    # chunks repeat and stay small (bytes per character: bench/bench_tokenizer.py, table in
    # docs/tokenizer.md). Raise it when the machine has the memory (the metadata reports whether
    # the cap was reached).
    max_chars_total: int = Field(200_000_000, gt=0, description="stop reading after this many")
    num_threads: int | None = Field(None, gt=0, description="training threads; None = all cores")
    trainer: Literal["auto", "rust", "python"] = Field(
        "auto", description="auto: Rust extension if built, else the pure-Python reference"
    )
    heldout_paths: list[Path] = Field(
        default_factory=list,
        description="extra held-out JSONL for compression figures (default: sibling *_heldout)",
    )

    @field_validator("vocab_size")
    @classmethod
    def _vocab_big_enough(cls, v: int) -> int:
        minimum = 256 + len(SPECIAL_TOKENS)
        if v < minimum:
            raise ValueError(
                f"vocab_size={v} is too small: the 256 byte tokens and {len(SPECIAL_TOKENS)} "
                f"special tokens need at least {minimum}"
            )
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


def _default_heldout(mix_paths: Sequence[Path]) -> list[Path]:
    out = []
    for p in mix_paths:
        p = Path(p)
        h = p.with_name(p.stem + "_heldout" + p.suffix)
        if h.exists():
            out.append(h)
    return out


def train_tokenizer(
    cfg: TokenizerConfig,
    mix_paths: Sequence[Path | str],
    out_dir: Path | str,
    log: LogFn | None = None,
) -> TokenizerReport:
    """Train on the mixes (streamed, capped) and write the tokenizer directory atomically."""
    paths = [require(p, "mix file") for p in mix_paths]
    if not paths:
        raise ConfigError("train_tokenizer needs at least one mix file")
    out = Path(out_dir)
    n_ranks = cfg.vocab_size - len(SPECIAL_TOKENS)
    stats = CorpusStats()
    texts = iter_mix_texts(paths, cfg.max_chars_per_doc, cfg.max_chars_total, stats, log)
    t0, c0 = time.perf_counter(), time.process_time()
    ranks, trainer = train_ranks(texts, n_ranks, cfg.pattern, cfg.num_threads, cfg.trainer, log)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if stats.chars == 0:
        raise TokenizerError(
            f"no text found in {', '.join(map(str, paths))}: expected JSONL "
            "records with 'text', 'conversations'/'messages' or 'chosen'/'rejected'"
        )
    tok = Tokenizer(ranks, cfg.pattern)
    stopped_early = len(ranks) < n_ranks
    if stopped_early:
        emit(
            log,
            f"WARNING tokenizer: the corpus ran out of pairs after {len(ranks) - 256} merges; "
            f"vocabulary is {tok.get_vocab_size()} instead of {cfg.vocab_size} "
            "(train on more text for the full size)",
        )
    heldout = list(cfg.heldout_paths) or _default_heldout(paths)
    quality = quality_metadata(tok, stats.han, heldout)
    run = {
        "trainer": trainer,
        "requested_vocab_size": cfg.vocab_size,
        "stopped_early": stopped_early,
        "training_seconds": round(seconds, 3),
    }
    tok.save(
        out,
        {
            **run,
            "training_cpu_seconds": round(cpu, 3),
            "corpus": stats.as_dict(),
            "config": json.loads(cfg.model_dump_json()),
            "heldout_paths": [str(p) for p in heldout],
            "quality": quality,
        },
    )
    emit(
        log,
        f"tokenizer: {tok.get_vocab_size()} tokens ({trainer}) from {stats.chars:,} chars "
        f"in {seconds:.1f}s -> {out}",
    )
    metadata = {
        "vocab_size": tok.get_vocab_size(),
        **run,
        "chars_used": stats.chars,
        "bytes_used": stats.bytes,
        "docs_used": stats.docs,
        "docs_truncated": stats.docs_truncated,
        "max_chars_total_reached": stats.cap_reached,
        "hash": tok.hash,
        **quality,
    }
    return TokenizerReport(path=out, vocab_size=tok.get_vocab_size(), metadata=metadata)
