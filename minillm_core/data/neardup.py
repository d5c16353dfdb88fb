"""Near-duplicate removal: MinHash signatures in an LSH index (`datasketch.MinHashLSH`).

Two records are near-duplicates when the Jaccard similarity of their sets of character 5-gram
shingles (over the normalised text of `decontam.record_text`, the one the exact key and the
decontamination windows use) is at or above `near_dedup_threshold` (0.8). During the scan each
valid record is looked up in the index, in category then file order: a record is dropped when an
earlier LSH candidate's signature agrees with its own on at least `threshold` of the permutations
(the MinHash estimate of their Jaccard similarity); any other is inserted. LSH banding alone
would also drop some pairs well below the threshold (a band can collide by chance); the check
keeps them.

Signatures are computed in numpy rather than by `MinHash.update` per shingle: the 5-gram
hashes come from `decontam.window_hashes`, and each of the 128 permutations is a multiply-shift
hash of their top 32 bits, `(a * h + b) mod 2^32` with `a` odd (datasketch's own "affine32"
scheme, a bijection per permutation); the minimum per permutation is the signature, handed to
datasketch as `hashvalues`.

Cost: the index holds each distinct record's band keys (about 1 KB per record at 128
permutations) and, for the check, the low 16 bits of its signature (256 bytes: two different
hash values agree there by chance once in 65536, a negligible bias of the estimate). So it is off
in the smoke profile and on in the cpu and gpu profiles; the exact dedup stays the cheap default.
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
        self.num_perm, self.threshold = num_perm, threshold
        self.sigs = np.empty((1024, num_perm), dtype=np.uint16)  # row i: inserted record i
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
        low = sig.astype(np.uint16)
        if cands := self.lsh.query(m):
            agree = (self.sigs[np.asarray(cands)] == low).mean(axis=1)
            if agree.max() >= self.threshold:
                return True
        if self.inserted == len(self.sigs):
            self.sigs = np.concatenate([self.sigs, np.empty_like(self.sigs)])
        self.sigs[self.inserted] = low
        self.lsh.insert(self.inserted, m, check_duplication=False)
        self.inserted += 1
        return False
