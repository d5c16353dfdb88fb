//! minillm-rustbpe: a byte-level BPE trainer that is exact, deterministic and fast.
//!
//! Pipeline: split each text into chunks (`split`: a hand-written scanner for the GPT-4-style
//! pattern, `fancy-regex` for any other), count distinct chunks in parallel (`count`), then learn
//! merges with incremental pair counts and a lazy max-heap (`train`). `encode` applies a trained
//! vocabulary with tiktoken's rule. The Python bindings live in `python.rs`, behind the `python`
//! feature, so the core builds and tests (`cargo test`) without Python.

pub mod count;
pub mod encode;
pub mod split;
pub mod train;
pub mod unicode;

#[cfg(feature = "python")]
mod python;

pub use count::ChunkCounter;
pub use encode::Encoder;
pub use split::{Splitter, DEFAULT_PATTERN, GPT4_PATTERN};
pub use train::{train, train_naive, Merge, Trained, Words};

/// Turn chunk counts into training words (consumes the map, freeing each chunk as it goes).
pub fn words_from_counts(counts: rustc_hash::FxHashMap<Box<str>, u64>) -> Words {
    let bytes: usize = counts.keys().map(|k| k.len()).sum();
    let mut words = Words::with_capacity(counts.len(), bytes);
    for (chunk, n) in counts {
        words.push(chunk.as_bytes(), n);
    }
    words
}

/// Train on an in-memory list of texts (Rust callers and tests; Python streams instead).
pub fn train_texts<S: AsRef<str> + Sync>(
    texts: &[S],
    vocab_size: usize,
    pattern: &str,
) -> Result<Trained, String> {
    let splitter = Splitter::new(pattern)?;
    let mut counter = ChunkCounter::new();
    counter.feed(&splitter, texts)?;
    Ok(train(
        words_from_counts(counter.counts),
        vocab_size,
        |_, _| {},
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_then_encode_round_trips() {
        let texts = [
            "你好，世界！你好世界。hello hello world 123456 😀😀",
            "世界你好 hello!!",
        ];
        let t = train_texts(&texts, 300, DEFAULT_PATTERN).unwrap();
        let enc = Encoder::new(DEFAULT_PATTERN, t.token_bytes.clone()).unwrap();
        for s in texts.iter().chain(["unseen 文本 ✓\n\n  x"].iter()) {
            let ids = enc.encode(s).unwrap();
            assert_eq!(enc.decode_bytes(&ids).unwrap(), s.as_bytes());
        }
        // A training chunk is encoded with the merges learned for it.
        assert_eq!(enc.encode(" hello").unwrap().len(), 1);
    }
}
