//! PyO3 bindings: the only file that knows about Python.
//!
//! The surface keeps what users of nanochat's `rustbpe` package call (`Tokenizer()`,
//! `train_from_iterator(iterator, vocab_size, buffer_size=8192, pattern=None)`, `get_pattern()`,
//! `get_mergeable_ranks()`, `encode`, `batch_encode`, `vocab_size`), plus `decode`, `get_merges`,
//! `train_stats` and a module-level `split` used by the tests. Texts are pulled from the Python
//! iterator in batches while holding the GIL; each batch is split and counted with the GIL
//! released, and so is the merge phase.

use crate::count::ChunkCounter;
use crate::encode::Encoder;
use crate::split::{Splitter, DEFAULT_PATTERN};
use crate::train::{train, Merge};
use crate::words_from_counts;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::time::Instant;

fn err(e: String) -> PyErr {
    PyValueError::new_err(e)
}

#[derive(Default, Clone)]
struct Stats {
    texts: u64,
    bytes: u64,
    chunks: u64,
    distinct_chunks: u64,
    words: u64,
    count_seconds: f64,
    merge_seconds: f64,
    threads: usize,
    fast_splitter: bool,
}

#[pyclass(module = "rustbpe")]
pub struct Tokenizer {
    pattern: String,
    merges: Vec<Merge>,
    encoder: Option<Encoder>,
    stats: Stats,
}

impl Tokenizer {
    fn encoder(&self) -> PyResult<&Encoder> {
        self.encoder
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("the tokenizer is not trained yet"))
    }
}

fn run<T: Send>(pool: &Option<rayon::ThreadPool>, f: impl FnOnce() -> T + Send) -> T {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

#[pymethods]
impl Tokenizer {
    #[new]
    fn new() -> Self {
        Tokenizer {
            pattern: DEFAULT_PATTERN.to_string(),
            merges: Vec::new(),
            encoder: None,
            stats: Stats::default(),
        }
    }

    /// Train from an iterator of str. `vocab_size` counts the 256 byte tokens (no special tokens).
    #[pyo3(signature = (iterator, vocab_size, buffer_size = 8192, pattern = None, num_threads = None))]
    fn train_from_iterator(
        &mut self,
        py: Python<'_>,
        iterator: &Bound<'_, PyAny>,
        vocab_size: usize,
        buffer_size: usize,
        pattern: Option<String>,
        num_threads: Option<usize>,
    ) -> PyResult<()> {
        if vocab_size < 256 {
            return Err(PyValueError::new_err(format!(
                "vocab_size must be at least 256 (the byte tokens), got {vocab_size}"
            )));
        }
        let pattern = pattern.unwrap_or_else(|| DEFAULT_PATTERN.to_string());
        let splitter = Splitter::new(&pattern).map_err(err)?;
        let fast_splitter = splitter.is_fast();
        crate::unicode::init();
        let pool = match num_threads {
            Some(0) => return Err(PyValueError::new_err("num_threads must be positive")),
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| PyRuntimeError::new_err(e.to_string()))?,
            ),
            None => None,
        };
        let buffer_size = buffer_size.max(1);
        // Also cut a batch at 16 MiB of text, so a few huge documents cannot blow up memory.
        const BATCH_BYTES: usize = 16 << 20;
        let t0 = Instant::now();
        // Pipeline: this thread pulls texts from Python (GIL held) while a worker thread splits and
        // counts the previous batch in parallel (no GIL). On a real corpus the Python side (reading
        // and parsing JSONL) costs as much as counting, so overlapping them cuts the wall time.
        // At most two batches are in flight (the one being filled and one queued).
        let pool = std::sync::Arc::new(pool);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<String>>(1);
        let worker = {
            let pool = pool.clone();
            std::thread::spawn(move || -> Result<ChunkCounter, String> {
                let mut counter = ChunkCounter::new();
                for batch in rx {
                    run(&pool, || counter.feed(&splitter, &batch))?;
                }
                Ok(counter)
            })
        };
        let mut it = iterator.try_iter()?;
        let mut py_error: Option<PyErr> = None;
        'outer: loop {
            let mut buf: Vec<String> = Vec::with_capacity(buffer_size.min(1 << 16));
            let mut bytes = 0;
            let mut done = false;
            while buf.len() < buffer_size && bytes < BATCH_BYTES {
                match it.next() {
                    Some(Ok(item)) => match item.extract::<String>() {
                        Ok(s) => {
                            bytes += s.len();
                            buf.push(s);
                        }
                        Err(_) => {
                            py_error = Some(PyValueError::new_err(format!(
                                "the iterator must yield str, got {}",
                                item.get_type()
                                    .name()
                                    .map(|n| n.to_string())
                                    .unwrap_or_default()
                            )));
                            break 'outer;
                        }
                    },
                    Some(Err(e)) => {
                        py_error = Some(e);
                        break 'outer;
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            // A send fails only when the worker stopped on an error; join below reports it.
            if py.allow_threads(|| tx.send(buf)).is_err() || done {
                break;
            }
        }
        drop(tx);
        let counted = py.allow_threads(|| worker.join());
        if let Some(e) = py_error {
            return Err(e);
        }
        let mut counter = counted
            .map_err(|_| PyRuntimeError::new_err("the counting thread panicked"))?
            .map_err(err)?;
        let count_seconds = t0.elapsed().as_secs_f64();
        let (texts, bytes, chunks, distinct) = (
            counter.texts,
            counter.bytes,
            counter.chunks,
            counter.counts.len() as u64,
        );
        let t1 = Instant::now();
        let trained = py.allow_threads(|| {
            let words = words_from_counts(std::mem::take(&mut counter.counts));
            let n_words = words.len() as u64;
            (train(words, vocab_size, |_, _| {}), n_words)
        });
        let (trained, n_words) = trained;
        self.stats = Stats {
            texts,
            bytes,
            chunks,
            distinct_chunks: distinct,
            words: n_words,
            count_seconds,
            merge_seconds: t1.elapsed().as_secs_f64(),
            threads: run(&pool, rayon::current_num_threads),
            fast_splitter,
        };
        self.encoder = Some(Encoder::new(&pattern, trained.token_bytes).map_err(err)?);
        self.merges = trained.merges;
        self.pattern = pattern;
        Ok(())
    }

    fn get_pattern(&self) -> String {
        self.pattern.clone()
    }

    /// [(token bytes, rank)] in rank order: 0..255 the bytes, then each learned token.
    fn get_mergeable_ranks<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Vec<(Bound<'py, PyBytes>, u32)>> {
        let enc = self.encoder()?;
        Ok(enc
            .token_bytes()
            .iter()
            .enumerate()
            .map(|(i, b)| (PyBytes::new(py, b), i as u32))
            .collect())
    }

    /// [(left id, right id, new id)] in the order they were learned.
    fn get_merges(&self) -> Vec<Merge> {
        self.merges.clone()
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.encoder.as_ref().map_or(256, |e| e.token_bytes().len())
    }

    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        let enc = self.encoder()?;
        py.allow_threads(|| enc.encode(text)).map_err(err)
    }

    fn batch_encode(&self, py: Python<'_>, texts: Vec<String>) -> PyResult<Vec<Vec<u32>>> {
        let enc = self.encoder()?;
        py.allow_threads(|| enc.batch_encode(&texts)).map_err(err)
    }

    /// Decode ids to text; bytes that are not valid UTF-8 become U+FFFD.
    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        let bytes = self.encoder()?.decode_bytes(&ids).map_err(err)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Counts and timings of the last training run.
    fn train_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.stats;
        let d = PyDict::new(py);
        d.set_item("texts", s.texts)?;
        d.set_item("bytes", s.bytes)?;
        d.set_item("chunks", s.chunks)?;
        d.set_item("distinct_chunks", s.distinct_chunks)?;
        d.set_item("words", s.words)?;
        d.set_item("merges", self.merges.len())?;
        d.set_item("count_seconds", s.count_seconds)?;
        d.set_item("merge_seconds", s.merge_seconds)?;
        d.set_item("threads", s.threads)?;
        d.set_item("fast_splitter", s.fast_splitter)?;
        Ok(d)
    }
}

/// Split `text` with `pattern` (default: the project's) the way training does.
#[pyfunction]
#[pyo3(signature = (text, pattern = None))]
fn split(text: &str, pattern: Option<&str>) -> PyResult<Vec<String>> {
    let s = Splitter::new(pattern.unwrap_or(DEFAULT_PATTERN)).map_err(err)?;
    Ok(s.split(text)
        .map_err(err)?
        .into_iter()
        .map(str::to_string)
        .collect())
}

/// Split with the regex engine even for the default pattern (to check the scanner against it).
#[pyfunction]
#[pyo3(signature = (text, pattern = None))]
fn split_regex(text: &str, pattern: Option<&str>) -> PyResult<Vec<String>> {
    let s = Splitter::regex_only(pattern.unwrap_or(DEFAULT_PATTERN)).map_err(err)?;
    Ok(s.split(text)
        .map_err(err)?
        .into_iter()
        .map(str::to_string)
        .collect())
}

// The Python module is `rustbpe`, as nanochat and the seed name it (the Rust crate stays
// `minillm_rustbpe` for `cargo test` and the examples).
#[pymodule]
#[pyo3(name = "rustbpe")]
fn rustbpe_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Tokenizer>()?;
    m.add_function(wrap_pyfunction!(split, m)?)?;
    m.add_function(wrap_pyfunction!(split_regex, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_PATTERN", DEFAULT_PATTERN)?;
    m.add("GPT4_PATTERN", crate::split::GPT4_PATTERN)?;
    Ok(())
}
