"""Pure-Python byte-level BPE trainer: the oracle for the Rust trainer and its fallback.

It is meant to be read. It does the same thing as `rustbpe/` and produces exactly the same
merges, so the tests can compare the two merge lists element by element:

1. Split every text into chunks with the pattern (the `regex` module, which supports `\\p{..}`,
   possessive quantifiers and look-ahead, like the Rust `fancy-regex`), and count equal chunks.
2. Each distinct chunk becomes a "word": its UTF-8 bytes as token ids 0..255, weighted by count.
3. Repeat until the vocabulary is full or no adjacent pair is left:
   - the pair count is the number of adjacent (left, right) positions in all words, times the word
     weight (overlapping occurrences count: "aaa" holds the pair (a, a) twice);
   - take the pair with the highest count; **tie rule: among equal counts, the smallest
     (left id, right id)** — a total order on pairs, so the result never depends on hash order,
     thread count or corpus order;
   - if the concatenated bytes are new, they become the next id (256, 257, ...); if a token with
     those bytes already exists (two merge paths can spell the same bytes, e.g. (ab, c) and
     (a, bc)), the pair is merged into that existing id and no id is consumed, so the byte
     strings of the vocabulary stay unique, as tiktoken's `bytes -> rank` table requires;
   - replace each occurrence in every word left to right, non-overlapping ("aaa" -> "aa" "a").

Trade-off: the pair counts are recomputed per merge only for the words that contain the merged
pair (a word's pairs are subtracted, the word is merged, its pairs added back). That keeps the
code obvious while making the fallback usable for the smoke profile and the tests. The best pair
is found with a linear `max` over all pairs per merge, which is O(pairs x merges): fine for tests
and smoke runs, far too slow for a real corpus (timings against the Rust trainer, with identical
merges: docs/tokenizer.md and bench/bench_tokenizer.py), which is why the Rust trainer exists.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

import regex

# nanochat's variant of the GPT-4 split pattern: numbers are split into runs of at most 2 digits
# (`\p{N}{1,2}`, GPT-4 uses 3), which wastes fewer tokens on number vocabulary in a small vocab.
# `\p{L}+` makes a whole run of Han characters one chunk, so merges can cross word boundaries in
# Chinese (there are no spaces): that is what lets BPE learn multi-character Chinese words.
DEFAULT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

Pair = tuple[int, int]
# One merge: (left id, right id, resulting id). The resulting id is 256 + (number of distinct
# tokens created before), or an existing id when the bytes already exist (see module docstring).
Merge = tuple[int, int, int]


def count_chunks(texts: Iterable[str], pattern: str = DEFAULT_PATTERN) -> Counter[str]:
    """Count each distinct chunk that the pattern splits the texts into."""
    compiled = regex.compile(pattern)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(compiled.findall(text))
    return counts


def _pairs(word: list[int]) -> Counter[Pair]:
    return Counter(zip(word, word[1:]))


def _merge_word(word: list[int], pair: Pair, new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_merges(chunk_counts: dict[str, int], vocab_size: int) -> list[Merge]:
    """Learn merges from chunk counts until `vocab_size` tokens (256 byte tokens included) exist,
    or no pair is left (then fewer; the caller reports it)."""
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (the byte tokens), got {vocab_size}")
    # Words in sorted chunk order: the order does not change the result, sorting just makes the
    # internal state reproducible for debugging.
    items = sorted(chunk_counts.items())
    words = [list(chunk.encode("utf-8")) for chunk, _ in items]
    weights = [count for _, count in items]

    pair_counts: Counter[Pair] = Counter()
    where: defaultdict[Pair, set[int]] = defaultdict(set)  # pair -> indices of words holding it
    for w, (word, weight) in enumerate(zip(words, weights)):
        for pair, n in _pairs(word).items():
            pair_counts[pair] += n * weight
            where[pair].add(w)

    token_bytes: list[bytes] = [bytes([i]) for i in range(256)]
    id_of: dict[bytes, int] = {b: i for i, b in enumerate(token_bytes)}
    merges: list[Merge] = []
    while len(token_bytes) < vocab_size and pair_counts:
        # Highest count; ties -> smallest (left, right).
        pair = max(pair_counts, key=lambda p: (pair_counts[p], -p[0], -p[1]))
        merged = token_bytes[pair[0]] + token_bytes[pair[1]]
        new_id = id_of.get(merged)
        if new_id is None:
            new_id = len(token_bytes)
            token_bytes.append(merged)
            id_of[merged] = new_id
        merges.append((pair[0], pair[1], new_id))
        for w in sorted(where.pop(pair)):
            old, weight = words[w], weights[w]
            for p, n in _pairs(old).items():
                pair_counts[p] -= n * weight
                if pair_counts[p] == 0:
                    del pair_counts[p]
            words[w] = new = _merge_word(old, pair, new_id)
            for p, n in _pairs(new).items():
                pair_counts[p] += n * weight
                where[p].add(w)
        # `where` may keep stale word indices for pairs a word no longer holds; harmless (the
        # recount above is exact), and cheaper than pruning.
    return merges


def train(texts: Iterable[str], vocab_size: int, pattern: str = DEFAULT_PATTERN) -> list[Merge]:
    """Split, count and learn merges: the whole reference trainer."""
    return train_merges(count_chunks(texts, pattern), vocab_size)


def mergeable_ranks(merges: list[Merge]) -> dict[bytes, int]:
    """tiktoken's `bytes -> rank` table: the 256 bytes, then each new token in creation order."""
    token_bytes = [bytes([i]) for i in range(256)]
    for left, right, new_id in merges:
        if new_id == len(token_bytes):
            token_bytes.append(token_bytes[left] + token_bytes[right])
    return {b: i for i, b in enumerate(token_bytes)}
