//! Counting distinct chunks over a stream of text batches, in parallel.
//!
//! Each batch is cut into one contiguous slice per thread; every thread splits its texts and counts
//! chunks in its own map keyed by borrowed `&str` (no allocation per chunk). The thread maps are
//! then folded into the global map, which owns its keys: a chunk is copied once, the first time it
//! is seen in the whole corpus. Counts are sums, so the result does not depend on the thread count
//! or on how batches were cut.

use crate::split::Splitter;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

#[derive(Default)]
pub struct ChunkCounter {
    pub counts: FxHashMap<Box<str>, u64>,
    pub texts: u64,
    pub bytes: u64,
    pub chunks: u64,
}

impl ChunkCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Split and count one batch (uses the current rayon pool).
    pub fn feed<S: AsRef<str> + Sync>(
        &mut self,
        splitter: &Splitter,
        texts: &[S],
    ) -> Result<(), String> {
        if texts.is_empty() {
            return Ok(());
        }
        let threads = rayon::current_num_threads().max(1);
        let per = texts.len().div_ceil(threads);
        // Per thread: (chunk counts, bytes, chunks).
        type Local<'t> = (FxHashMap<&'t str, u64>, u64, u64);
        let locals: Vec<Result<Local, String>> = texts
            .par_chunks(per)
            .map(|part| {
                let mut m: FxHashMap<&str, u64> = FxHashMap::default();
                let (mut bytes, mut chunks) = (0u64, 0u64);
                for t in part {
                    let t = t.as_ref();
                    bytes += t.len() as u64;
                    splitter.for_each(t, |c| {
                        chunks += 1;
                        *m.entry(c).or_insert(0) += 1;
                    })?;
                }
                Ok((m, bytes, chunks))
            })
            .collect();
        for local in locals {
            let (m, bytes, chunks) = local?;
            self.bytes += bytes;
            self.chunks += chunks;
            self.counts.reserve(m.len() / 2);
            for (chunk, n) in m {
                match self.counts.get_mut(chunk) {
                    Some(c) => *c += n,
                    None => {
                        self.counts.insert(chunk.into(), n);
                    }
                }
            }
        }
        self.texts += texts.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::DEFAULT_PATTERN;

    #[test]
    fn counts_do_not_depend_on_threads_or_batches() {
        let texts: Vec<String> = (0..500)
            .map(|i| format!("doc {i} 你好 hello {} !!", i % 7))
            .collect();
        let s = Splitter::new(DEFAULT_PATTERN).unwrap();
        let run = |threads: usize, batch: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut c = ChunkCounter::new();
            pool.install(|| {
                for b in texts.chunks(batch) {
                    c.feed(&s, b).unwrap();
                }
            });
            let mut v: Vec<_> = c.counts.into_iter().collect();
            v.sort();
            v
        };
        let one = run(1, 500);
        assert_eq!(one, run(3, 17));
        assert_eq!(one, run(2, 1));
        assert!(one.iter().any(|(k, n)| &**k == " hello" && *n == 500));
    }
}
