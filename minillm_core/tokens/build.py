"""`export_tokens`: one stage's JSONL mix, streamed, into a token directory that appears atomically.

The mix is read a batch of records at a time (memory is bounded by one batch and never grows with
the corpus) and hashed on the way; shards stream to disk; `index.json` holds the counts, dtype,
max length, layout, vocabulary size, pad/BOS ids, the tokenizer hash and the mix sha256. The index
is deterministic (no timings), so the same mix and tokenizer give a byte-identical directory.

Pretrain layouts (`TensorConfig.layout`):
- `padded` (the seed's): one document per row, `<|bos|>` + text (+ end token), cut at
  `max_length + 1` tokens, padded to the row length by the collator.
- `packed`: all documents back to back as one stream (`<|bos|> doc <|bos|> doc ...`, so the BOS
  separates them), cut into rows of `max_length` inputs; consecutive rows overlap by one token so
  the token at a row boundary is still a target. Nothing is truncated (a long document continues
  in the next row) and only the very last row is short. Attention crosses document boundaries
  inside a row, as in nanochat and GPT-2-style pretraining; the BOS tells the model a new
  document starts.

`packed` is the default: on the real Chinese corpus the padded layout spends most of its positions
on padding and still cuts the long documents, while packing pads only the last row and cuts
nothing (measurements: `bench/bench_tensors.py`, table in docs/tensors.md). Every pretrain export
reports both layouts' padding fractions, so the comparison stays visible.

Truncation (padded pretrain, SFT, DPO) is counted per sample (`truncated_samples`,
`truncated_tokens`, `truncated_assistant_tokens`) and reported in one warning with the count and
the longest sample.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minillm_core.artifacts import atomic_path, require, sha256_json, write_json
from minillm_core.errors import ArtifactError, ConfigError
from minillm_core.progress import LogFn, Progress, emit
from minillm_core.schema import STAGES, Stage
from minillm_core.tokens.config import RUNTIME_ONLY, TensorConfig, TensorReport, disk_dtype
from minillm_core.tokens.encode import Encoder, batched, read_jsonl, record_parts
from minillm_core.tokens.shards import FORMAT, FORMAT_VERSION, STREAMS, PackedWriter, RowWriter
from minillm_core.tokens.stats import Stats, index_stats, padding, warn

Writer = RowWriter | PackedWriter


def export_tokens(
    cfg: TensorConfig,
    stage: Stage,
    mix_path: Path | str,
    tokenizer_dir: Path | str,
    out_dir: Path | str,
    log: LogFn | None = None,
) -> TensorReport:
    """Tokenize one stage's JSONL mix into `out_dir/` (shards + index.json), atomically.

    Streams the mix in batches of `cfg.batch_records` records; a malformed record (no text, a
    conversation the tokenizer refuses) is dropped, counted and named in one warning; a mix with no
    usable record at all is an error. Returns the report whose `metadata` the asset shows."""
    if stage not in STAGES:
        raise ConfigError(f"stage: {stage!r} is not one of {', '.join(STAGES)}")
    mix_path, tokenizer_dir, out_dir = Path(mix_path), Path(tokenizer_dir), Path(out_dir)
    require(mix_path, f"{stage} mix")
    require(tokenizer_dir, "tokenizer")
    # Imported here, not at module top: training nodes read tensors (TokenDataset) without needing
    # the tokenizer's compiled extension.
    from minillm_core.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    enc = Encoder(tok, cfg)
    dtype = disk_dtype(cfg.dtype, enc.vocab_size)
    stats = Stats()
    hasher = hashlib.sha256()
    t0 = time.perf_counter()
    with (
        atomic_path(out_dir, directory=True) as tmp,
        Progress(mix_path.stat().st_size, f"{stage} tokens", unit="B", log=log) as bar,
    ):
        writer: Writer
        if stage == "pretrain" and cfg.layout == "packed":
            writer = PackedWriter(tmp, dtype, cfg.max_length, cfg.shard_rows)
        else:
            writer = RowWriter(tmp, STREAMS[stage], dtype, stage != "pretrain", cfg.shard_rows)
        for batch in batched(read_jsonl(mix_path, hasher, bar.update), cfg.batch_records):
            _encode_batch(stage, batch, enc, stats, writer, dtype)
        writer.flush()
        if writer.rows == 0:
            first = f"; first: {stats.first_invalid}" if stats.first_invalid else ""
            raise ArtifactError(
                f"{mix_path}: no usable {stage} record ({stats.samples} read, "
                f"dropped {stats.dropped or 'none'}{first})"
            )
        index = _index(
            cfg, stage, writer, stats, enc, str(tok.hash), hasher.hexdigest(), mix_path, out_dir
        )
        write_json(tmp / "index.json", index)
    seconds = time.perf_counter() - t0
    warn(stats, stage, mix_path, cfg.max_length, log)
    tokens = index["tokens"]
    meta = {
        **index["stats"],
        "rows": writer.rows,
        "tokens": tokens,
        "supervised_tokens": index["supervised_tokens"],
        "shards": len(writer.shards),
        "dtype": dtype.name,
        "layout": index["layout"],
        "max_length": cfg.max_length,
        "tokenizer_hash": index["tokenizer_hash"],
        "mix_sha256": index["mix_sha256"],
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
    }
    emit(
        log,
        f"{stage} tokens: {writer.rows} rows, {tokens} tokens, padding "
        f"{meta['padding_fraction']:.1%}, {meta['tokens_per_s']:.0f} tokens/s -> {out_dir}",
    )
    return TensorReport(path=out_dir, rows=writer.rows, tokens=tokens, metadata=meta)


def _encode_batch(
    stage: str,
    batch: list[tuple[int, Any]],
    enc: Encoder,
    stats: Stats,
    writer: Writer,
    dtype: np.dtype,
) -> None:
    if stage == "pretrain":
        _pretrain_batch(batch, enc, stats, writer, dtype)
        return
    assert isinstance(writer, RowWriter)
    for line, record in batch:
        try:
            parts = record_parts(stage, record, enc, stats, line)
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            stats.invalid(line, exc)
            continue
        if parts is not None:
            _check_ids(parts, enc.vocab_size, line)
            writer.add(parts)


def _index(
    cfg: TensorConfig,
    stage: str,
    writer: Writer,
    stats: Stats,
    enc: Encoder,
    tokenizer_hash: str,
    mix_sha256: str,
    mix_path: Path,
    out_dir: Path,
) -> dict[str, Any]:
    """The index.json of a finished export."""
    dtype = disk_dtype(cfg.dtype, enc.vocab_size)
    tokens, inputs, supervised = writer.totals()
    config = cfg.model_dump(exclude=RUNTIME_ONLY)
    # The rows are a pure function of these inputs (the export is deterministic), so their hash
    # identifies the content without reading it back: the asset's data version.
    content_hash = sha256_json(
        {
            "format": [FORMAT, FORMAT_VERSION],
            "stage": stage,
            "tokenizer": tokenizer_hash,
            "mix": mix_sha256,
            "config": config,
        }
    )
    index: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "stage": stage,
        "layout": cfg.layout if stage == "pretrain" else "padded",
        "rows": writer.rows,
        "tokens": tokens,
        "supervised_tokens": supervised,
        "dtype": dtype.name,
        "max_length": cfg.max_length,
        "vocab_size": enc.vocab_size,
        "pad_id": enc.pad_id,
        "bos_id": enc.bos_id,
        "eos_id": enc.eos_id,
        "streams": list(STREAMS[stage]),
        "masked": stage != "pretrain",
        "tokenizer_hash": tokenizer_hash,
        "mix_sha256": mix_sha256,
        "mix_path": os.path.relpath(mix_path.resolve(), out_dir.resolve()),  # relocatable
        "content_hash": content_hash,
        "config": config,
        "shards": writer.shards,
        "stats": index_stats(stats, inputs, writer.rows * len(STREAMS[stage]), cfg.max_length),
    }
    if stage == "pretrain":
        # Both layouts' padding, from the same document lengths whichever layout is written, so
        # every pretrain export reports the comparison that chose the default.
        packed_rows = -(-(stats.stream_tokens - 1) // cfg.max_length)
        index["stats"]["padding_fraction_packed"] = padding(
            stats.stream_tokens - 1, packed_rows, cfg.max_length
        )
        index["stats"]["padding_fraction_padded"] = padding(
            stats.padded_inputs, stats.padded_rows, cfg.max_length
        )
    return index


def _pretrain_texts(
    batch: list[tuple[int, Any]], stats: Stats
) -> tuple[list[str], list[int], list[Any]]:
    """The batch's non-empty texts with their line numbers and records; the rest is counted."""
    texts, lines, records = [], [], []
    for line, record in batch:
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            stats.invalid(line, ValueError('pretrain record without a string "text"'))
        elif not text:
            stats.samples += 1
            stats.drop("empty")
        else:
            texts.append(text)
            lines.append(line)
            records.append(record)
    return texts, lines, records


def _pretrain_batch(
    batch: list[tuple[int, Any]], enc: Encoder, stats: Stats, writer: Writer, dtype: np.dtype
) -> None:
    texts, lines, records = _pretrain_texts(batch, stats)
    if not texts:
        return
    seqs = enc.pretrain(texts)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    stats.add_lengths(lengths, lines, records)
    stats.stream_tokens += int(lengths.sum())
    kept = np.minimum(lengths, enc.limit)
    stats.padded_inputs += int((kept - 1).sum())
    stats.padded_rows += len(seqs)
    if isinstance(writer, PackedWriter):  # packed rows continue, never cut
        flat = np.fromiter(
            itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum())
        )
        _check_flat(flat, enc.vocab_size, lines[0])
        writer.feed(flat.astype(dtype, copy=False))
        return
    over = lengths > enc.limit
    if over.any():
        stats.truncated_samples += int(over.sum())
        stats.truncated_tokens += int((lengths - kept).sum())
    chain = (s[: enc.limit] if n > enc.limit else s for s, n in zip(seqs, lengths.tolist()))
    flat = np.fromiter(itertools.chain.from_iterable(chain), dtype=np.int64, count=int(kept.sum()))
    _check_flat(flat, enc.vocab_size, lines[0])
    writer.add_flat(flat.astype(dtype, copy=False), kept)


def _check_flat(flat: np.ndarray, vocab_size: int, line: int) -> None:
    # Cheap (one vectorised max per batch) and it turns a tokenizer/vocabulary mix-up into an
    # error here instead of an index error deep inside an embedding layer on a GPU.
    if len(flat) and (int(flat.max()) >= vocab_size or int(flat.min()) < 0):
        raise ArtifactError(
            f"token id {int(flat.max())} out of the vocabulary ({vocab_size}) "
            f"in the batch starting at line {line}"
        )


def _check_ids(parts: Sequence[tuple[Sequence[int], Any]], vocab_size: int, line: int) -> None:
    for ids, _ in parts:
        if ids and (max(ids) >= vocab_size or min(ids) < 0):
            raise ArtifactError(
                f"line {line}: token id {max(ids)} out of the vocabulary ({vocab_size})"
            )
