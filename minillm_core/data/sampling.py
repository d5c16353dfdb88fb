"""Pass 2's choice: which records of a category are held out, which train, how often each.

Per category, with N valid records and quota q: held-out ordinals are drawn first (seeded by seed
and category only, so pretrain and SFT hold out the same records when their counts agree), then
q training ordinals from the rest: without replacement when N is large enough, else every record
k times plus a seeded remainder (whole copies give the same expected counts with less variance
than re-sampling with replacement), reported as a repeat factor. O(q) integers, and one byte per
record while drawing (Floyd's algorithm; `random.sample` would copy the population into a list of
Python ints).
"""

from __future__ import annotations

import math
import random

import numpy as np

from minillm_core.data.config import MixConfig


def heldout_count(cfg: MixConfig, n_valid: int, quota: int) -> int:
    if n_valid <= 1:
        return 0
    want = max(cfg.heldout_min, math.ceil(cfg.heldout_fraction * min(quota, n_valid)))
    return min(want, n_valid - 1)  # at least one record must remain for training


def sample_sorted(rng: random.Random, n: int, k: int) -> np.ndarray:
    """k distinct integers of range(n), uniformly, sorted (Floyd's algorithm).

    `random.sample(range(n), k)` copies the whole population into a list when k is a large part
    of n (28+ bytes per source record); Floyd's draw with a byte per record keeps the peak flat.
    """
    mark = bytearray(n)
    randbelow = rng.randrange
    for j in range(n - k, n):
        t = randbelow(j + 1)
        mark[j if mark[t] else t] = 1
    return np.flatnonzero(np.frombuffer(mark, dtype=np.uint8)).astype(np.int64, copy=False)


def draw_heldout(seed: int, category: str, n_valid: int, n_heldout: int) -> np.ndarray:
    """The held-out ordinals of a category, sorted (seeded by seed and category only)."""
    return sample_sorted(random.Random(f"{seed}:heldout:{category}"), n_valid, n_heldout)


def draw_training(
    seed: int,
    output: str,
    category: str,
    n_valid: int,
    quota: int,
    excluded: np.ndarray,
    max_repeat: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(training ordinals, multiplicities) among range(n_valid) minus the sorted `excluded`
    (held out, or overlapping a held-out record). With `max_repeat`, no record is drawn more
    often than that: the draws stop at pool x max_repeat, below the quota."""
    pool = n_valid - len(excluded)
    if max_repeat is not None:
        quota = min(quota, pool * max_repeat)
    rng = random.Random(f"{seed}:train:{output}:{category}")
    if quota <= pool:
        picks = sample_sorted(rng, pool, quota)
        mult = np.ones(quota, dtype=np.int32)
    else:
        # Fewer records than the quota: every record k times, a seeded remainder once more.
        k, r = divmod(quota, pool)
        picks = np.arange(pool, dtype=np.int64)
        mult = np.full(pool, k, dtype=np.int32)
        mult[sample_sorted(rng, pool, r)] += 1
    # Pool index -> ordinal among all records, stepping over the excluded ones (stays sorted).
    steps = excluded - np.arange(len(excluded), dtype=np.int64)
    picks += np.searchsorted(steps, picks, side="right")
    return picks, mult


def select(
    seed: int, output: str, category: str, n_valid: int, quota: int, n_heldout: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heldout ordinals, training ordinals, multiplicities), ordinals sorted, disjoint."""
    held = draw_heldout(seed, category, n_valid, n_heldout)
    picks, mult = draw_training(seed, output, category, n_valid, quota, held)
    return held, picks, mult
