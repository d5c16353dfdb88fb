"""The BPE trainers behind one call: the Rust extension `rustbpe` (crate `rustbpe/`), or
the pure-Python reference (`reference`, same merges exactly) when the extension is not built.

This is the only module that imports the extension. The Rust trainer splits and counts the corpus
in parallel with the GIL released and merges with incremental pair counts; the reference is fine
for the smoke profile and tests, far too slow for a real corpus (see bench/bench_tokenizer.py and
docs/tokenizer.md for the figures).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from types import ModuleType

from minillm_core.progress import LogFn, emit
from minillm_core.tokenizer import reference
from minillm_core.tokenizer.core import TokenizerError


@lru_cache(maxsize=1)
def rust_module() -> ModuleType | None:
    """The `rustbpe` extension, or None when it is not built. From the repository root, the
    crate's folder `rustbpe/` imports as an empty namespace package when the extension is not
    installed: that is "not built" too."""
    try:
        import rustbpe
    except ImportError:
        return None
    return rustbpe if hasattr(rustbpe, "Tokenizer") else None


def train_ranks(
    texts: Iterable[str],
    n_ranks: int,
    pattern: str,
    num_threads: int | None,
    trainer: str,
    log: LogFn | None,
) -> tuple[dict[bytes, int], str]:
    """Train `n_ranks` (bytes + merges) ranks; return them and the name of the trainer used."""
    mod = rust_module() if trainer in ("auto", "rust") else None
    if trainer == "rust" and mod is None:
        raise TokenizerError(
            "trainer='rust' but the rustbpe extension is not built: run "
            "`.venv/bin/pip install ./rustbpe` (needs cargo), or use trainer='auto'"
        )
    if mod is not None:
        tok = mod.Tokenizer()
        try:
            tok.train_from_iterator(iter(texts), n_ranks, pattern=pattern, num_threads=num_threads)
        except ValueError as exc:  # a pattern fancy-regex rejects (tiktoken could not serve it)
            raise TokenizerError(f"rustbpe: {exc}") from None
        ranks = dict(tok.get_mergeable_ranks())
        return ranks, f"rustbpe {getattr(mod, '__version__', '?')}"
    if trainer == "auto":
        emit(
            log,
            "rustbpe not built; training with the pure-Python reference trainer "
            "(slow; build it with `.venv/bin/pip install ./rustbpe`)",
        )
    merges = reference.train(texts, n_ranks, pattern)
    return reference.mergeable_ranks(merges), "bpe_reference (pure Python)"
