"""Near-duplicate removal: MinHash signatures in an LSH index (`datasketch.MinHashLSH`).

Two records are near-duplicates when the Jaccard similarity of their sets of character 5-gram
shingles (over the normalised text of `decontam.record_text`, the one the exact key and the
decontamination windows use) is at or above `near_dedup_threshold` (0.8). During the scan each
valid record is looked up in the index, in category then file order: a record with a
candidate earlier than it is dropped (the first one stays), any other is inserted. LSH candidates
are taken as they come (no pairwise check): with 128 permutations and the band split datasketch
picks for the threshold, pairs well below it rarely collide.

Signatures are computed in numpy rather than by `MinHash.update` per shingle: the 5-gram
hashes come from `decontam.window_hashes`, and each of the 128 permutations is a multiply-shift
hash of their top 32 bits, `(a * h + b) mod 2^32` with `a` odd (datasketch's own "affine32"
scheme, a bijection per permutation); the minimum per permutation is the signature, handed to
datasketch as `hashvalues`.

Cost: the index holds each distinct record's band keys (about 1 KB per record at 128
permutations), so it is off in the smoke profile and on in the gpu profile; the exact dedup stays
the cheap default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH

from minillm_core.data.decontam import record_text, window_hashes

SHINGLE_CHARS = 5
NUM_PERM = 128


class NearDup:
    """The LSH index of one output's records, filled in scan order."""

    def __init__(self, threshold: float, seed: int, num_perm: int = NUM_PERM):
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        rng = np.random.default_rng(seed)
        a = rng.integers(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.perm = (a, rng.integers(0, 1 << 32, num_perm, dtype=np.uint32))
        self.inserted = 0

    def signature(self, text: str) -> np.ndarray:
        """The MinHash signature of a text's character 5-gram shingles (uint32 per permutation)."""
        shingles = window_hashes(text, min(SHINGLE_CHARS, len(text)))
        h = np.unique((shingles >> np.uint64(32)).astype(np.uint32))
        if not len(h):
            return np.full(self.num_perm, (1 << 32) - 1, dtype=np.uint32)
        a, b = self.perm
        sig: np.ndarray = (h[:, None] * a + b).min(axis=0)  # uint32: wraparound is the modulo
        return sig

    def seen(self, fields: dict[str, Any]) -> bool:
        """True when an earlier record is a near-duplicate of this one; else it is indexed."""
        sig = self.signature(record_text(fields))
        # datasketch's "affine32" scheme is this one: a * h + b modulo 2^32, a odd.
        m = MinHash(self.num_perm, hashvalues=sig, permutations=self.perm, scheme="affine32")
        if self.lsh.query(m):
            return True
        self.lsh.insert(self.inserted, m, check_duplication=False)
        self.inserted += 1
        return False
