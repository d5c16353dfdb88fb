//! Encoding with a trained vocabulary, by tiktoken's rule, so that the trainer's own encoding
//! and the tiktoken encoding the project serves give the same ids.
//!
//! Rule (tiktoken's `byte_pair_merge`): within a chunk, repeatedly merge the adjacent pair whose
//! concatenated bytes have the lowest rank (the leftmost on ties) until no adjacent pair is a
//! token. Ranks are token ids: 0..255 for bytes, then merges in creation order. The scan is
//! O(n^2) in the chunk length, like tiktoken's; chunks are short except for long runs of Han
//! characters, which the per-document character cap bounds.

use crate::split::Splitter;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

pub struct Encoder {
    splitter: Splitter,
    ranks: FxHashMap<Vec<u8>, u32>,
    token_bytes: Vec<Vec<u8>>,
}

impl Encoder {
    pub fn new(pattern: &str, token_bytes: Vec<Vec<u8>>) -> Result<Self, String> {
        let ranks = token_bytes
            .iter()
            .enumerate()
            .map(|(i, b)| (b.clone(), i as u32))
            .collect();
        Ok(Encoder {
            splitter: Splitter::new(pattern)?,
            ranks,
            token_bytes,
        })
    }

    fn encode_chunk(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(&r) = self.ranks.get(piece) {
            out.push(r);
            return;
        }
        // parts[i] = (start byte, rank of the pair starting at part i); sentinel at the end.
        let rank_of = |parts: &[(usize, u32)], i: usize| -> u32 {
            if i + 2 < parts.len() {
                *self
                    .ranks
                    .get(&piece[parts[i].0..parts[i + 2].0])
                    .unwrap_or(&u32::MAX)
            } else {
                u32::MAX
            }
        };
        let mut parts: Vec<(usize, u32)> = (0..=piece.len()).map(|i| (i, u32::MAX)).collect();
        for i in 0..parts.len().saturating_sub(2) {
            parts[i].1 = rank_of(&parts, i);
        }
        loop {
            let mut best = (u32::MAX, 0);
            for (i, &(_, r)) in parts[..parts.len() - 1].iter().enumerate() {
                if r < best.0 {
                    best = (r, i);
                }
            }
            if best.0 == u32::MAX {
                break;
            }
            let i = best.1;
            parts.remove(i + 1);
            parts[i].1 = rank_of(&parts, i);
            if i > 0 {
                parts[i - 1].1 = rank_of(&parts, i - 1);
            }
        }
        for w in parts.windows(2) {
            out.push(self.ranks[&piece[w[0].0..w[1].0]]);
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.splitter
            .for_each(text, |c| self.encode_chunk(c.as_bytes(), &mut out))?;
        Ok(out)
    }

    pub fn batch_encode<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>, String> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    pub fn token_bytes(&self) -> &[Vec<u8>] {
        &self.token_bytes
    }

    /// The bytes of the ids, concatenated; an unknown id is an error.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for &id in ids {
            let b = self.token_bytes.get(id as usize).ok_or_else(|| {
                format!(
                    "token id {id} is out of range (vocab {})",
                    self.token_bytes.len()
                )
            })?;
            out.extend_from_slice(b);
        }
        Ok(out)
    }
}
