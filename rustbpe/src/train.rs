//! Learning the merges from chunk counts, with incremental pair counts.
//!
//! Data layout (chosen for memory: nanochat's trainer keeps a hash set of word positions inside
//! every heap entry and a `Vec` per word, and peaks at about 660 MB on 20 MB of Chinese):
//! - all words live in one flat `Vec<u32>` arena; a word is (start, current length) and shrinks
//!   in place as it is merged; single-symbol chunks are dropped (they hold no pair);
//! - one hash map from pair to (count, list of words that hold or held it); the lists may keep
//!   stale or repeated word indices (cheaper than removing them), each word is visited once per
//!   merge thanks to a per-word stamp;
//! - a binary max-heap of (count, pair) entries, refreshed lazily.
//!
//! Exactness. The count of a pair is the number of adjacent positions holding it in all words,
//! times the word counts (overlaps included: "aaa" holds (a, a) twice), exactly as a full recount
//! would find. When a word is merged left to right, each replacement of `a b` by `n` at position i
//! removes the pairs (x, a), (a, b), (b, y) and adds (x, n), (n, y), where x is the symbol already
//! written before it (possibly an `n` from the previous replacement) and y the next unread one:
//! the counts stay equal to a recount after every replacement.
//!
//! Tie rule (same as `minillm_core.bpe_reference`): the pair with the highest count wins; among
//! equal counts, the smallest (left id, right id). The heap orders entries by (count, reversed
//! pair), so the order is total and the result depends on nothing else (not thread count, hash
//! seed or corpus order).
//!
//! Lazy heap. A merge only lowers the counts of existing pairs, and creates pairs that contain the
//! new id. So a popped entry whose recorded count is still the current count is the true maximum;
//! an entry whose count went down is pushed back with its current count. The one case where an
//! existing pair's count goes *up* — a merge whose bytes already exist as a token, merged into
//! that token's id — is handled by pushing every pair the merge touched that contains the new id.
//!
//! Duplicate bytes. Two merge paths can spell the same bytes ((ab, c) and (a, bc)). The merge
//! then maps to the existing id instead of creating a second token with the same bytes, so the
//! vocabulary's byte strings stay unique (tiktoken's `bytes -> rank` table needs that).

use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// (left id, right id, resulting id).
pub type Merge = (u32, u32, u32);

#[inline(always)]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

#[inline(always)]
fn unkey(k: u64) -> (u32, u32) {
    ((k >> 32) as u32, k as u32)
}

#[derive(Default)]
struct PairEntry {
    count: i64,
    words: Vec<u32>,
}

/// Words to train on: chunk byte strings flattened into one arena, with their counts.
/// Stored as bytes (1 byte per symbol) until training starts, which widens them to the symbol
/// type it needs.
#[derive(Default)]
pub struct Words {
    symbols: Vec<u8>,
    starts: Vec<usize>,
    lens: Vec<u32>,
    counts: Vec<i64>,
}

impl Words {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(words: usize, bytes: usize) -> Self {
        Words {
            symbols: Vec::with_capacity(bytes),
            starts: Vec::with_capacity(words),
            lens: Vec::with_capacity(words),
            counts: Vec::with_capacity(words),
        }
    }

    /// Add a chunk seen `count` times. Chunks of one byte hold no pair and are skipped.
    pub fn push(&mut self, chunk: &[u8], count: u64) {
        if chunk.len() < 2 || count == 0 {
            return;
        }
        assert!(
            self.starts.len() < u32::MAX as usize,
            "more than 4 billion distinct chunks"
        );
        self.starts.push(self.symbols.len());
        self.lens.push(chunk.len() as u32);
        self.counts.push(count as i64);
        self.symbols.extend_from_slice(chunk);
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    pub fn total_symbols(&self) -> usize {
        self.symbols.len()
    }
}

/// The result of training: the merges in order and the bytes of every token (index = id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trained {
    pub merges: Vec<Merge>,
    pub token_bytes: Vec<Vec<u8>>,
}

impl Trained {
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }
}

/// A symbol in the word arena: `u16` while every id fits (vocab <= 65,536), else `u32`. The merge
/// loop is bound by memory traffic over the arena (profiled: ~50% of training time is the load of
/// the next symbol while scanning a word), so halving the symbol width pays directly.
trait Sym: Copy + Eq + Send + Sync + 'static {
    fn from_u32(x: u32) -> Self;
    fn to_u32(self) -> u32;
}

impl Sym for u16 {
    #[inline(always)]
    fn from_u32(x: u32) -> Self {
        x as u16
    }
    #[inline(always)]
    fn to_u32(self) -> u32 {
        self as u32
    }
}

impl Sym for u32 {
    #[inline(always)]
    fn from_u32(x: u32) -> Self {
        x
    }
    #[inline(always)]
    fn to_u32(self) -> u32 {
        self
    }
}

/// Learn merges until the vocabulary holds `vocab_size` tokens (the 256 bytes included) or no pair
/// is left. `progress` is called after each merge with (tokens so far, vocab_size).
pub fn train(words: Words, vocab_size: usize, progress: impl FnMut(usize, usize)) -> Trained {
    assert!(
        vocab_size >= 256,
        "vocab_size must be at least 256 (the byte tokens)"
    );
    if vocab_size <= 1 << 16 {
        train_impl::<u16>(words, vocab_size, progress)
    } else {
        train_impl::<u32>(words, vocab_size, progress)
    }
}

fn train_impl<S: Sym>(
    mut words: Words,
    vocab_size: usize,
    mut progress: impl FnMut(usize, usize),
) -> Trained {
    let mut symbols: Vec<S> = words
        .symbols
        .iter()
        .map(|&b| S::from_u32(b as u32))
        .collect();
    words.symbols = Vec::new();
    let mut token_bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut id_of: FxHashMap<Vec<u8>, u32> = token_bytes
        .iter()
        .enumerate()
        .map(|(i, b)| (b.clone(), i as u32))
        .collect();
    let mut merges: Vec<Merge> = Vec::new();

    // Initial pair counts and word lists.
    let mut pairs: FxHashMap<u64, PairEntry> = FxHashMap::default();
    for w in 0..words.len() {
        let s = &symbols[words.starts[w]..words.starts[w] + words.lens[w] as usize];
        let c = words.counts[w];
        for win in s.windows(2) {
            let e = pairs
                .entry(key(win[0].to_u32(), win[1].to_u32()))
                .or_default();
            e.count += c;
            if e.words.last() != Some(&(w as u32)) {
                e.words.push(w as u32);
            }
        }
    }
    // The initial lists are the largest; drop their growth slack (measured: -15% peak memory).
    for e in pairs.values_mut() {
        e.words.shrink_to_fit();
    }
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> =
        pairs.iter().map(|(&k, e)| (e.count, Reverse(k))).collect();

    // Per-word state packed in one 24-byte record, so visiting a word costs one cache line for its
    // metadata plus the lines of its symbols (both prefetched a few words ahead, below).
    // stamp == merge number when the word was already merged for this merge.
    let mut meta: Vec<WordMeta> = (0..words.len())
        .map(|w| WordMeta {
            start: words.starts[w] as u64,
            len: words.lens[w],
            stamp: 0,
            count: words.counts[w],
        })
        .collect();
    drop(words);
    let mut touched: Vec<u64> = Vec::new();

    while token_bytes.len() < vocab_size {
        let Some((count, Reverse(k))) = heap.pop() else {
            break;
        };
        let current = pairs.get(&k).map_or(0, |e| e.count);
        if current != count {
            if current > 0 {
                heap.push((current, Reverse(k)));
            }
            continue;
        }
        if count <= 0 {
            break;
        }
        let (a, b) = unkey(k);
        let mut merged = token_bytes[a as usize].clone();
        merged.extend_from_slice(&token_bytes[b as usize]);
        let new_id = match id_of.get(&merged) {
            Some(&id) => id,
            None => {
                let id = token_bytes.len() as u32;
                id_of.insert(merged.clone(), id);
                token_bytes.push(merged);
                id
            }
        };
        merges.push((a, b, new_id));
        let merge_no = merges.len() as u32;

        let holders = std::mem::take(&mut pairs.get_mut(&k).expect("popped pair exists").words);
        touched.clear();
        for (h, &w) in holders.iter().enumerate() {
            // The words are scattered over the arena and each visit starts with a cache miss:
            // prefetching the metadata 16 words ahead and the symbols 8 ahead hides most of it.
            if let Some(&ahead) = holders.get(h + 16) {
                prefetch(meta.as_ptr().wrapping_add(ahead as usize) as *const u8);
            }
            if let Some(&ahead) = holders.get(h + 8) {
                let m = &meta[ahead as usize];
                prefetch(symbols.as_ptr().wrapping_add(m.start as usize) as *const u8);
            }
            let wi = w as usize;
            if meta[wi].stamp == merge_no {
                continue;
            }
            meta[wi].stamp = merge_no;
            let c = meta[wi].count;
            let start = meta[wi].start as usize;
            let len = meta[wi].len as usize;
            let s = &mut symbols[start..start + len];
            let (sa, sb, sn) = (S::from_u32(a), S::from_u32(b), S::from_u32(new_id));
            // Nothing changes before the first occurrence: start reading and writing there.
            let Some(first) = s.windows(2).position(|p| p[0] == sa && p[1] == sb) else {
                continue; // a stale entry: the word no longer holds the pair
            };
            let mut read = first;
            let mut write = first;
            while read < len {
                if read + 1 < len && s[read] == sa && s[read + 1] == sb {
                    if write > 0 {
                        let x = s[write - 1].to_u32();
                        add(&mut pairs, key(x, a), -c, w);
                        add(&mut pairs, key(x, new_id), c, w);
                        touched.push(key(x, new_id));
                    }
                    add(&mut pairs, k, -c, w);
                    if read + 2 < len {
                        let y = s[read + 2].to_u32();
                        add(&mut pairs, key(b, y), -c, w);
                        add(&mut pairs, key(new_id, y), c, w);
                        touched.push(key(new_id, y));
                    }
                    s[write] = sn;
                    read += 2;
                } else {
                    s[write] = s[read];
                    read += 1;
                }
                write += 1;
            }
            meta[wi].len = write as u32;
        }
        drop(holders);
        // Every occurrence was merged, so the pair's count reached 0 and `add` removed it.
        debug_assert!(!pairs.contains_key(&k));

        // Pairs holding the new id are new (or, after a duplicate-bytes merge, grew): (re)push.
        touched.sort_unstable();
        touched.dedup();
        for &t in &touched {
            if let Some(e) = pairs.get(&t) {
                if e.count > 0 {
                    heap.push((e.count, Reverse(t)));
                }
            }
        }
        progress(token_bytes.len(), vocab_size);
    }
    Trained {
        merges,
        token_bytes,
    }
}

struct WordMeta {
    start: u64,
    len: u32,
    stamp: u32,
    count: i64,
}

#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p as *const i8, core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline(always)]
fn add(pairs: &mut FxHashMap<u64, PairEntry>, k: u64, delta: i64, w: u32) {
    let e = pairs.entry(k).or_default();
    e.count += delta;
    if delta > 0 {
        if e.words.last() != Some(&w) {
            e.words.push(w);
        }
    } else if e.count == 0 {
        // No word holds the pair any more: free its word list now.
        pairs.remove(&k);
    }
}

/// A slow, obvious trainer (full recount per merge) used by the tests as the oracle.
pub fn train_naive(chunks: &[(Vec<u8>, u64)], vocab_size: usize) -> Trained {
    let mut words: Vec<(Vec<u32>, i64)> = chunks
        .iter()
        .map(|(c, n)| (c.iter().map(|&b| b as u32).collect(), *n as i64))
        .collect();
    let mut token_bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut merges = Vec::new();
    while token_bytes.len() < vocab_size {
        let mut counts: FxHashMap<(u32, u32), i64> = FxHashMap::default();
        for (w, c) in &words {
            for p in w.windows(2) {
                *counts.entry((p[0], p[1])).or_default() += c;
            }
        }
        // Highest count, then smallest pair.
        let Some((&(a, b), _)) = counts.iter().max_by_key(|(&p, &c)| (c, Reverse(p))) else {
            break;
        };
        let mut merged = token_bytes[a as usize].clone();
        merged.extend_from_slice(&token_bytes[b as usize]);
        let id = match token_bytes.iter().position(|t| *t == merged) {
            Some(i) => i as u32,
            None => {
                token_bytes.push(merged);
                token_bytes.len() as u32 - 1
            }
        };
        merges.push((a, b, id));
        for (w, _) in words.iter_mut() {
            let mut out = Vec::with_capacity(w.len());
            let mut i = 0;
            while i < w.len() {
                if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                    out.push(id);
                    i += 2;
                } else {
                    out.push(w[i]);
                    i += 1;
                }
            }
            *w = out;
        }
    }
    Trained {
        merges,
        token_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words_of(chunks: &[(Vec<u8>, u64)]) -> Words {
        let mut w = Words::new();
        for (c, n) in chunks {
            w.push(c, *n);
        }
        w
    }

    fn check(chunks: &[(Vec<u8>, u64)], vocab: usize) -> Trained {
        let fast = train(words_of(chunks), vocab, |_, _| {});
        let slow = train_naive(chunks, vocab);
        assert_eq!(fast, slow);
        fast
    }

    fn c(s: &str, n: u64) -> (Vec<u8>, u64) {
        (s.as_bytes().to_vec(), n)
    }

    #[test]
    fn overlapping_pairs_and_ties() {
        let t = check(&[c("aaaa", 1), c("aaa", 2), c("abab", 3), c("ba", 3)], 270);
        // (a,a) count 3+4=7 beats (a,b) 6 and (b,a) 3+3=6.
        assert_eq!(t.merges[0], (b'a' as u32, b'a' as u32, 256));
    }

    #[test]
    fn tie_takes_the_smallest_pair() {
        // (c,d) and (a,b) both 5: (a,b) first (smaller left id), then (c,d).
        let t = check(&[c("cd", 5), c("ab", 5)], 258);
        assert_eq!(t.merges, vec![(97, 98, 256), (99, 100, 257)]);
    }

    #[test]
    fn stops_when_pairs_run_out() {
        let t = check(&[c("abc", 1)], 1000);
        assert_eq!(t.vocab_size(), 258);
    }

    #[test]
    fn duplicate_bytes_map_to_the_existing_token() {
        // (b,c) first, then (a,b) from "abx", then (a,bc) -> "abc"; "abc" is also reachable as
        // (ab,c) in "abcc"? Build a corpus where both paths occur and check against the oracle.
        let chunks = vec![
            c("bcbc", 9),
            c("abz", 8),
            c("xabc", 7),
            c("zab", 6),
            c("cabc", 3),
        ];
        check(&chunks, 300);
    }

    #[test]
    fn wide_symbols_give_the_same_merges() {
        // Vocabularies above 65,536 train on u32 symbols: same algorithm, same result.
        let chunks = vec![c("abababcabc", 5), c("bcbcab", 4), c("aaaa", 3), c("cabca", 2)];
        let narrow = train_impl::<u16>(words_of(&chunks), 280, |_, _| {});
        let wide = train_impl::<u32>(words_of(&chunks), 280, |_, _| {});
        assert_eq!(narrow, wide);
        assert_eq!(wide, train_naive(&chunks, 280));
    }

    #[test]
    fn random_corpora_match_the_oracle() {
        let mut state: u64 = 42;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let alpha = 2 + (round % 5) as u64;
            let n = 1 + next() % 12;
            let chunks: Vec<(Vec<u8>, u64)> = (0..n)
                .map(|_| {
                    let len = 1 + next() % 9;
                    let s: Vec<u8> = (0..len).map(|_| b'a' + (next() % alpha) as u8).collect();
                    (s, 1 + next() % 4)
                })
                .collect();
            check(&chunks, 256 + (next() % 40) as usize);
        }
    }
}
