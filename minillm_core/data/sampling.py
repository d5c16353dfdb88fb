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


def select(
    seed: int, output: str, category: str, n_valid: int, quota: int, n_heldout: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heldout ordinals, training ordinals, multiplicities), ordinals sorted, disjoint."""
    held = sample_sorted(random.Random(f"{seed}:heldout:{category}"), n_valid, n_heldout)
    pool = n_valid - n_heldout
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
    # Pool index -> ordinal among all records, stepping over the held-out ones (stays sorted).
    picks += np.searchsorted(held - np.arange(n_heldout, dtype=np.int64), picks, side="right")
    return held, picks, mult
