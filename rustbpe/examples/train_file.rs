//! Train on a file of NUL-separated documents and print phase timings (for profiling without
//! Python): `cargo run --release --example train_file -- DOCS_FILE VOCAB_SIZE`.
use minillm_rustbpe::{train, words_from_counts, ChunkCounter, Splitter, DEFAULT_PATTERN};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: train_file DOCS_FILE VOCAB_SIZE");
    let vocab: usize = args.get(2).map_or(6400, |v| v.parse().expect("vocab size"));
    let data = std::fs::read_to_string(path).expect("read docs");
    let docs: Vec<&str> = data.split('\0').collect();
    let t0 = Instant::now();
    let splitter = Splitter::new(DEFAULT_PATTERN).unwrap();
    let mut counter = ChunkCounter::new();
    for batch in docs.chunks(8192) {
        counter.feed(&splitter, batch).unwrap();
    }
    let t1 = Instant::now();
    let distinct = counter.counts.len();
    let words = words_from_counts(counter.counts);
    let t2 = Instant::now();
    let n_words = words.len();
    let trained = train(words, vocab, |_, _| {});
    let t3 = Instant::now();
    println!(
        "docs {} distinct {} words {} merges {} | count {:.3}s words {:.3}s train {:.3}s",
        docs.len(),
        distinct,
        n_words,
        trained.merges.len(),
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64()
    );
}
