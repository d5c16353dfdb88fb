"""Token tensors: the pretrain, SFT and DPO mixes tokenized once, on disk, read by memory maps.

The seed tokenized whole JSONL files into memory at training time, once per GPU rank, and cut SFT
answers silently at `--max-length`. Here `export_tokens` streams a mix (a batch of records at a
time; memory is bounded by one batch and never grows with the corpus), writes sharded `.npy`
files plus `index.json` into one directory that appears atomically, and `TokenDataset` opens the
shards lazily as read-only memory maps: the pages live in the OS page cache, shared by every rank
and DataLoader worker on the host, so host RAM does not grow with corpus size or rank count.

Rows (the TOKEN ROWS convention of docs/architecture.md). A stored row is a sequence `seq` of at
most `max_length + 1` token ids; `input_ids = seq[:-1]` (at most `max_length` positions, so a
packed batch is exactly `max_length` wide) and `labels = seq[1:]` (the next token), -100 where
not trained. SFT/DPO rows also store a 0/1 mask parallel to `seq` (1 on assistant tokens and
`<|assistant_end|>`, from `render_conversation`); `labels[t] = seq[t+1]` if `mask[t+1]` else
-100, and `loss_mask = mask[1:]`. Because labels are derived from ids and mask at read time they
cannot drift out of line with the ids; `check_tokens` verifies the stored spans and masks.

Pretrain layouts (`TensorConfig.layout`):
- `padded` (the seed's): one document per row, `<|bos|>` + text (+ end token), cut at
  `max_length + 1` tokens, padded to the row length by the collator.
- `packed`: all documents back to back as one stream (`<|bos|> doc <|bos|> doc ...`, so the BOS
  separates them), cut into rows of `max_length` inputs; consecutive rows overlap by one token so
  the token at a row boundary is still a target. Nothing is truncated (a long document continues
  in the next row) and only the very last row is short. Attention crosses document boundaries
  inside a row, as in nanochat and GPT-2-style pretraining; the BOS tells the model a new
  document starts.

Evidence (the real Chinese corpus of /work/shared/corpus/build_corpus.sh, 61,191 documents,
20 MB, shuffled, tokenized with a 4096-token BPE trained on it: 6.1 M tokens; median document 32-63
tokens, longest 151,216; `bench/bench_tensors.py`, table in docs/tensors.md): at
`max_length=2048` the padded layout spends 95.9% of its positions on padding (59.5% even when
the collator pads each shuffled batch of 4 only to its longest row) and still cuts 211 documents,
13.9% of all tokens; packing spends 0.02% (the last row) and cuts nothing. At 512: padded 85.8%
(55.1% batch-longest) and 26% of tokens cut, packed 0.004%. So `packed` is the default: the same
tokens train in about a twentieth of the steps, and no document is cut.

Truncation (padded pretrain, SFT, DPO): counted per sample (`truncated_samples`,
`truncated_tokens`, `truncated_assistant_tokens`), reported in one warning with the count and the
longest sample. An SFT sample with no assistant token left after the cut, or a DPO pair in which
either side's final answer would be cut away entirely (the pair would carry no preference), is
dropped and counted instead of trained on.

Storage, per shard `shard_NNNNN` and stream (`""` for pretrain/SFT, `chosen`/`rejected` for
DPO, which share row indices): `<shard>[.<stream>].tokens.npy` (1-D, narrowest dtype that holds
the vocabulary: uint16 up to 65,536 ids, widened to torch.long on read),
`<shard>[.<stream>].rows.npy` (int64 `[rows, 2]`: start, length of each row in the token array)
and, for SFT/DPO, `<shard>[.<stream>].mask.npy` (uint8 parallel to tokens). Plain `.npy`, loaded
with `allow_pickle=False`; nothing is pickled. `index.json` holds the counts, dtype, max length,
layout, vocabulary size, pad/BOS ids, the tokenizer hash and the mix sha256; it is deterministic
(no timings), so the same mix and tokenizer give a byte-identical directory.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from minillm_core.artifacts import (ArtifactError, atomic_path, read_json, require, sha256_json,
                                   write_json)
from minillm_core.config import ConfigError, CoreConfig
from minillm_core.profiles import PROFILES
from minillm_core.progress import LogFn, Progress, emit

FORMAT = "minillm-tokens"
FORMAT_VERSION = 1
IGNORE_INDEX = -100
Stage = Literal["pretrain", "sft", "dpo"]
STAGES: tuple[str, ...] = ("pretrain", "sft", "dpo")
# Streams stored per stage; DPO keeps chosen and rejected as two streams with the same row index.
STREAMS: dict[str, tuple[str, ...]] = {"pretrain": ("",), "sft": ("",), "dpo": ("chosen", "rejected")}
# render_conversation truncates to its max_tokens; we ask for everything and cut ourselves, so the
# cut is counted (the seed lost answers silently here).
_NO_LIMIT = 1 << 62
# Settings that change speed, not content: left out of the index and the content hash.
_RUNTIME_ONLY = {"num_threads", "batch_records"}
_DTYPES = {"uint16": np.uint16, "int32": np.int32, "int64": np.int64}


class TensorConfig(CoreConfig):
    """Settings of the token tensors stage (`minillm tokens`, the `*_tokens` assets)."""

    max_length: int = Field(2048, ge=1, description="input positions per row (the seed's --max-length)")
    layout: Literal["packed", "padded"] = Field(
        "packed", description="pretrain only: documents packed back to back (default, no padding) "
        "or the seed's one document per row, truncated and padded")
    bos_token: str = Field("<|bos|>", description="special token put before every pretrain document")
    append_eos: bool = Field(False, description="pretrain only: also end every document with eos_token")
    eos_token: str = Field("<|assistant_end|>", description="end token appended with append_eos "
                           "(a special token of the tokenizer)")
    dtype: Literal["auto", "uint16", "int32", "int64"] = Field(
        "auto", description="on-disk integer type; auto = narrowest that holds the vocabulary")
    shard_rows: int = Field(16384, ge=1, description="rows (DPO: pairs) per shard file")
    batch_records: int = Field(1024, ge=1, description="records read and encoded per batch; bounds "
                               "the exporter's memory")
    num_threads: int = Field(0, ge=0, description="encoding threads; 0 = all CPUs")


class TensorReport(BaseModel):
    """What `export_tokens` returns: the directory, its counts, and JSON-able metadata for the UI."""

    path: Path
    rows: int
    tokens: int
    metadata: dict[str, Any]


class TokenizerMismatchError(ArtifactError):
    """Token tensors were built with another tokenizer than the one the caller uses."""


# ----------------------------------------------------------------------------- tokenizer helpers

def _special_id(tok: Any, name: str, what: str) -> int:
    try:
        return int(tok.encode_special(name))
    except Exception as exc:  # the tokenizer raises its own KeyError/ValueError for an unknown name
        raise ConfigError(f"{what}: {name!r} is not a special token of the tokenizer ({exc})") from None


def _pad_id(tok: Any, bos_id: int) -> int:
    # Padded positions are never trained (labels -100), so any valid id works; a dedicated
    # <|pad|> is clearer in a debugger when the tokenizer has one, else BOS (always present).
    try:
        return int(tok.encode_special("<|pad|>"))
    except KeyError:
        return bos_id


def disk_dtype(name: str, vocab_size: int) -> np.dtype:
    """The on-disk dtype for a vocabulary: `auto` is uint16 up to 65,536 ids, else int32."""
    if name == "auto":
        return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)
    dt = np.dtype(_DTYPES[name])
    if vocab_size - 1 > np.iinfo(dt).max:
        raise ConfigError(f"dtype: {name} cannot hold token ids up to {vocab_size - 1} "
                          f"(vocabulary of {vocab_size}); use int32 or auto")
    return dt


def _threads(cfg: TensorConfig) -> int:
    return cfg.num_threads or os.cpu_count() or 1


def _messages(conv: Any) -> list:
    """The message list of a conversation: {"conversations": [...]}, {"messages": [...]} or a list."""
    if isinstance(conv, dict):
        conv = conv.get("conversations", conv.get("messages"))
    if not isinstance(conv, list) or not conv:
        raise ValueError("expected a non-empty list of messages")
    return conv


class _Encoder:
    """The tokenizer plus the resolved special ids of one config; shared by export and JSONL rows."""

    def __init__(self, tok: Any, cfg: TensorConfig):
        self.tok, self.cfg = tok, cfg
        self.vocab_size = int(tok.get_vocab_size())
        self.bos_id = _special_id(tok, cfg.bos_token, "bos_token")
        self.eos_id = _special_id(tok, cfg.eos_token, "eos_token") if cfg.append_eos else None
        self.pad_id = _pad_id(tok, self.bos_id)
        self.limit = cfg.max_length + 1  # stored tokens per row: max_length inputs + 1 target

    def pretrain(self, texts: list[str]) -> list[list[int]]:
        # One call for the whole batch: the tokenizer encodes in parallel threads (GIL released).
        return self.tok.encode(texts, prepend=self.bos_id, append=self.eos_id,
                               num_threads=_threads(self.cfg))

    def pretrain_one(self, text: str) -> list[int]:
        # A single text skips the batch path, which starts a thread pool per call.
        return self.tok.encode(text, prepend=self.bos_id, append=self.eos_id)

    def chat(self, messages: Any) -> tuple[list[int], list[int]]:
        ids, mask = self.tok.render_conversation({"messages": _messages(messages)}, _NO_LIMIT)
        if len(ids) != len(mask):
            raise ValueError(f"render_conversation gave {len(ids)} ids but {len(mask)} mask values")
        return list(ids), [int(m) for m in mask]


def _final_answer_start(mask: Sequence[int]) -> int:
    """Index where the last run of 1s in the mask starts (the final assistant answer), or -1."""
    end = len(mask) - 1
    while end >= 0 and not mask[end]:
        end -= 1
    if end < 0:
        return -1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return start


@dataclass
class _Cut:
    """One chat sequence after truncation to the row limit."""

    ids: list[int]
    mask: list[int]
    full_len: int
    cut_tokens: int
    cut_assistant: int
    supervised: int       # label positions kept (mask[1:] ones)
    has_answer: bool      # the full conversation has an assistant token at all
    answer_kept: bool     # some token of the final assistant answer survives the cut


def _cut_chat(ids: list[int], mask: list[int], limit: int) -> _Cut:
    full = len(ids)
    answer = _final_answer_start(mask)
    kept_ids, kept_mask = ids[:limit], mask[:limit]
    # Position 0 is never a target (it has no previous token), so it does not count as supervised.
    supervised = sum(kept_mask[1:])
    return _Cut(kept_ids, kept_mask, full, max(0, full - limit), sum(mask[limit:]), supervised,
                has_answer=answer >= 0, answer_kept=answer >= 1 and answer < limit)


# ----------------------------------------------------------------------------- rows

def _row(tokens: Any, mask: Any | None, prefix: str = "", loss_mask: bool = True) -> dict[str, torch.Tensor]:
    """Row tensors from one stored sequence (and its mask): the single place rows are made, used
    by TokenDataset and encode_record alike, so the eval stage sees exactly what training sees."""
    seq = torch.from_numpy(np.array(tokens, dtype=np.int64))
    out = {prefix + "input_ids": seq[:-1].clone(), prefix + "labels": seq[1:].clone()}
    if mask is not None:
        m = torch.from_numpy(np.array(mask[1:], dtype=np.int64))
        out[prefix + "labels"][m == 0] = IGNORE_INDEX
        if loss_mask:
            out[prefix + "loss_mask"] = m
    return out


def _stage_row(stage: str, parts: Sequence[tuple[Any, Any | None]]) -> dict[str, torch.Tensor]:
    if stage == "pretrain":
        return _row(parts[0][0], None)
    if stage == "sft":
        return _row(parts[0][0], parts[0][1])
    (ct, cm), (rt, rm) = parts
    return {**_row(ct, cm, "chosen_", loss_mask=False), **_row(rt, rm, "rejected_", loss_mask=False)}


def collate(rows: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest row: `*input_ids` with pad_id, `*labels` with -100, masks with 0.

    DPO rows are padded to one length common to chosen and rejected, so the trainer can
    concatenate them into a single forward pass."""
    if not rows:
        raise ValueError("collate: empty batch")
    width = max(t.numel() for r in rows for t in r.values())
    out: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        fill = pad_id if key.endswith("input_ids") else IGNORE_INDEX if key.endswith("labels") else 0
        buf = torch.full((len(rows), width), fill, dtype=torch.long)
        for b, r in enumerate(rows):
            t = r[key]
            buf[b, : t.numel()] = t
        out[key] = buf
    return out


# ----------------------------------------------------------------------------- one record

def _record_parts(stage: str, record: Any, enc: _Encoder, stats: "_Stats | None" = None,
                  line: int = 0) -> list[tuple[list[int], list[int] | None]] | None:
    """One mix record -> the stored sequences of its row (cut to the row limit), or None when the
    record is dropped; counts into `stats` when given. Raises ValueError on a malformed record."""
    if not isinstance(record, dict):
        raise ValueError("record is not a JSON object")
    if stage == "pretrain":
        text = record.get("text")
        if not isinstance(text, str):
            raise ValueError('pretrain record without a string "text"')
        seq = enc.pretrain_one(text) if text else []
        return _pretrain_padded(seq, enc, stats, line, record)
    if stage == "sft":
        ids, mask = enc.chat(record)
        c = _cut_chat(ids, mask, enc.limit)
        if stats is not None:
            stats.sample([c.full_len], line, record, c.cut_tokens, c.cut_assistant)
        if not c.has_answer:
            return _drop(stats, "no_answer")
        if c.supervised == 0:
            return _drop(stats, "answer_truncated")
        return [(c.ids, c.mask)]
    if stage == "dpo":
        sides = []
        for key in ("chosen", "rejected"):
            if key not in record:
                raise ValueError(f'dpo record without "{key}"')
            sides.append(_cut_chat(*enc.chat(record[key]), enc.limit))
        if stats is not None:
            stats.sample([c.full_len for c in sides], line, record, sum(c.cut_tokens for c in sides),
                         sum(c.cut_assistant for c in sides))
        if any(not c.has_answer for c in sides):
            return _drop(stats, "no_answer")
        if any(not c.answer_kept for c in sides):
            return _drop(stats, "answer_truncated")
        return [(c.ids, c.mask) for c in sides]
    raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")


def _pretrain_padded(seq: list[int], enc: _Encoder, stats: "_Stats | None", line: int,
                     record: Any) -> list[tuple[list[int], None]] | None:
    if stats is not None:
        stats.sample([len(seq)], line, record, max(0, len(seq) - enc.limit), 0)
    if len(seq) < 2:  # an empty text: BOS alone has no target
        return _drop(stats, "empty")
    return [(seq[: enc.limit], None)]


def _drop(stats: "_Stats | None", reason: str) -> None:
    if stats is not None:
        stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
    return None


def encode_record(stage: Stage, record: dict, tokenizer: Any,
                  cfg: TensorConfig) -> dict[str, torch.Tensor] | None:
    """One mix record -> one row dict (as `TokenDataset[i]`), or None when the record is dropped
    (empty text, no assistant answer, answer cut away entirely). Always one document per row
    (pretrain truncates at max_length, whatever cfg.layout says): it serves held-out evaluation
    and small JSONL files, where a row per document is what one wants."""
    parts = _record_parts(stage, record, _Encoder(tokenizer, cfg))
    return None if parts is None else _stage_row(stage, parts)


class JsonlDataset(torch.utils.data.Dataset):
    """A small JSONL mix as an in-memory map-style dataset of the same row dicts as TokenDataset
    (one row per kept record). For held-out evaluation and manual runs on a JSONL mix; a training
    corpus belongs in `export_tokens` + `TokenDataset`, which do not hold it in memory."""

    def __init__(self, path: Path | str, stage: Stage, tokenizer: Any, cfg: TensorConfig | None = None):
        if isinstance(tokenizer, (str, Path)):
            from minillm_core.tokenizer import load_tokenizer
            tokenizer = load_tokenizer(Path(tokenizer))
        self.path, self.stage, self.cfg = Path(path), stage, cfg or TensorConfig()
        enc = _Encoder(tokenizer, self.cfg)
        self.pad_id, self.vocab_size = enc.pad_id, enc.vocab_size
        self.stats = _Stats(stage, self.cfg.max_length)
        self.rows: list[dict[str, torch.Tensor]] = []
        for line, record in _read_jsonl(require(self.path, f"{stage} JSONL"), hashlib.sha256()):
            try:
                parts = _record_parts(stage, record, enc, self.stats, line)
            except (ValueError, KeyError, TypeError, AssertionError) as exc:
                raise ValueError(f"{self.path}:{line}: {exc}") from exc
            if parts is not None:
                self.rows.append(_stage_row(stage, parts))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]

    @property
    def collate_fn(self) -> Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]]:
        return functools.partial(collate, pad_id=self.pad_id)


# ----------------------------------------------------------------------------- reading a mix

def _read_jsonl(path: Path, hasher: Any, on_bytes: Callable[[int], None] | None = None
                ) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record) one at a time, hashing the raw bytes on the way, so the mix is
    read once for both and never held whole."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            hasher.update(raw)
            if on_bytes is not None:
                on_bytes(len(raw))
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


# ----------------------------------------------------------------------------- statistics

@dataclass
class _Stats:
    stage: str
    max_length: int
    samples: int = 0
    truncated_samples: int = 0
    truncated_tokens: int = 0
    truncated_assistant_tokens: int = 0
    longest: int = 0
    longest_line: int = 0
    longest_source: str = ""
    stream_tokens: int = 0  # pretrain: tokens of all documents before any cut
    padded_inputs: int = 0  # pretrain: input positions the padded layout keeps...
    padded_rows: int = 0    # ...in this many rows (computed for both layouts, see export_tokens)
    dropped: dict[str, int] = field(default_factory=dict)
    first_invalid: str = ""
    # hist[k] counts sequences of length in [2**k, 2**(k+1)); power-of-two bins need no upper bound
    hist: np.ndarray = field(default_factory=lambda: np.zeros(64, dtype=np.int64))

    def sample(self, lengths: Sequence[int], line: int, record: Any, cut: int, cut_assistant: int) -> None:
        self.samples += 1
        for n in lengths:
            if n > 0:
                self.hist[n.bit_length() - 1] += 1
        longest = max(lengths)
        if longest > self.longest:
            self.longest, self.longest_line = longest, line
            self.longest_source = str(record.get("source", "")) if isinstance(record, dict) else ""
        if cut:
            self.truncated_samples += 1
            self.truncated_tokens += cut
            self.truncated_assistant_tokens += cut_assistant

    def add_lengths(self, lengths: np.ndarray, lines: Sequence[int], records: Sequence[Any]) -> None:
        """Vectorised `sample` for a batch of pretrain documents (no truncation to count)."""
        self.samples += len(lengths)
        nz = lengths[lengths > 0]
        np.add.at(self.hist, np.frexp(nz)[1] - 1, 1)
        i = int(np.argmax(lengths))
        if lengths[i] > self.longest:
            self.longest, self.longest_line = int(lengths[i]), lines[i]
            self.longest_source = str(records[i].get("source", ""))

    def histogram(self) -> list[list[int]]:
        top = int(np.flatnonzero(self.hist).max()) + 1 if self.hist.any() else 0
        return [[1 << k, int(self.hist[k])] for k in range(top)]

    def invalid(self, line: int, exc: Exception) -> None:
        self.dropped["invalid"] = self.dropped.get("invalid", 0) + 1
        if not self.first_invalid:
            self.first_invalid = f"line {line}: {type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- writing shards

class _NpyStream:
    """An .npy file written in pieces: the header is reserved up front and rewritten with the
    final length at close, so a shard streams to disk instead of being assembled in memory."""

    HEADER = 128  # bytes: magic + version + length + padded dict, a multiple of 64 as numpy likes

    def __init__(self, path: Path, dtype: np.dtype, width: int | None = None):
        self.path, self.dtype, self.width, self.n = path, np.dtype(dtype), width, 0
        self.f = open(path, "wb", buffering=1 << 20)
        self.f.write(self._header(0))

    def _header(self, n: int) -> bytes:
        shape = (n,) if self.width is None else (n, self.width)
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        text = repr(d).encode("latin1")
        pad = self.HEADER - 10 - len(text) - 1
        return b"\x93NUMPY\x01\x00" + (self.HEADER - 10).to_bytes(2, "little") + text + b" " * pad + b"\n"

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self.f.write(arr.tobytes())
        self.n += arr.shape[0]

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(self._header(self.n))
        self.f.close()


def _file(shard: str, stream: str, kind: str) -> str:
    return f"{shard}{'.' + stream if stream else ''}.{kind}.npy"


class _Shard:
    """One shard being written: per stream a token file, a mask file (SFT/DPO) and row spans."""

    def __init__(self, out: Path, index: int, streams: tuple[str, ...], dtype: np.dtype, masked: bool):
        self.out, self.name, self.streams = out, f"shard_{index:05d}", streams
        self.tokens = {s: _NpyStream(out / _file(self.name, s, "tokens"), dtype) for s in streams}
        self.masks = ({s: _NpyStream(out / _file(self.name, s, "mask"), np.uint8) for s in streams}
                      if masked else {})
        self.rows: dict[str, list[tuple[int, int]]] = {s: [] for s in streams}

    def close(self, rows: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "streams": {}}
        for s in self.streams:
            self.tokens[s].close()
            if s in self.masks:
                self.masks[s].close()
            spans = rows[s] if rows is not None else np.array(self.rows[s], dtype=np.int64).reshape(-1, 2)
            np.save(self.out / _file(self.name, s, "rows"), spans, allow_pickle=False)
            info["rows"] = int(spans.shape[0])
            info["streams"][s] = {"tokens": self.tokens[s].n}
        return info

    def discard(self) -> None:
        for s in self.streams:
            for st in (self.tokens.get(s), self.masks.get(s)):
                if st is not None:
                    st.f.close()
                    st.path.unlink()


class _RowWriter:
    """Ragged rows (padded pretrain, SFT, DPO): each row is stored unpadded; `shard_rows` per shard."""

    def __init__(self, out: Path, streams: tuple[str, ...], dtype: np.dtype, masked: bool, shard_rows: int):
        self.out, self.streams, self.dtype = out, streams, dtype
        self.masked, self.shard_rows = masked, shard_rows
        self.shard: _Shard | None = None
        self.shards: list[dict[str, Any]] = []
        self.rows = 0
        self.tokens = 0
        self.inputs = 0       # input positions (row length - 1), summed: padding = rows*L - inputs
        self.supervised = 0   # label positions that are trained

    def add(self, parts: Sequence[tuple[Sequence[int], Sequence[int] | None]]) -> None:
        if self.shard is None:
            self.shard = _Shard(self.out, len(self.shards), self.streams, self.dtype, self.masked)
        for s, (ids, mask) in zip(self.streams, parts):
            start = self.shard.tokens[s].n
            self.shard.tokens[s].write(np.asarray(ids))
            self.shard.rows[s].append((start, len(ids)))
            self.tokens += len(ids)
            self.inputs += len(ids) - 1
            if self.masked:
                self.shard.masks[s].write(np.asarray(mask, dtype=np.uint8))
                self.supervised += sum(mask[1:])
            else:
                self.supervised += len(ids) - 1
        self.rows += 1
        if len(self.shard.rows[self.streams[0]]) >= self.shard_rows:
            self.flush()

    def add_flat(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Many unmasked single-stream rows at once (pretrain, padded): one write per shard piece."""
        done = pos = 0
        while done < len(lengths):
            if self.shard is None:
                self.shard = _Shard(self.out, len(self.shards), self.streams, self.dtype, False)
            room = self.shard_rows - len(self.shard.rows[""])
            take = lengths[done: done + room]
            n_tok = int(take.sum())
            starts = self.shard.tokens[""].n + np.cumsum(take) - take
            self.shard.tokens[""].write(flat[pos: pos + n_tok])
            self.shard.rows[""].extend(zip(starts.tolist(), take.tolist()))
            self.rows += len(take)
            self.tokens += n_tok
            self.inputs += n_tok - len(take)
            self.supervised += n_tok - len(take)
            done += len(take)
            pos += n_tok
            if len(self.shard.rows[""]) >= self.shard_rows:
                self.flush()

    def flush(self) -> None:
        if self.shard is not None:
            self.shards.append(self.shard.close())
            self.shard = None


class _PackedWriter:
    """Packed pretrain: one token stream cut into rows of `L` inputs; row i spans stream tokens
    [i*L, i*L + L] (L+1 tokens), so consecutive rows share one token and every token but the
    first is a target. A shard holds `shard_rows` rows (shard_rows*L + 1 tokens); the next shard
    starts with the last token of the previous one, keeping shards self-contained."""

    def __init__(self, out: Path, dtype: np.dtype, max_length: int, shard_rows: int):
        self.out, self.dtype, self.L, self.shard_rows = out, dtype, max_length, shard_rows
        self.cap = shard_rows * max_length + 1
        self.shard: _Shard | None = None
        self.shards: list[dict[str, Any]] = []
        self.carry: np.ndarray | None = None
        self.stream_tokens = 0  # distinct tokens of the stream (the overlap token counted once)
        self.rows = 0

    def feed(self, flat: np.ndarray) -> None:
        pos = 0
        self.stream_tokens += len(flat)
        while pos < len(flat):
            if self.shard is None:
                self.shard = _Shard(self.out, len(self.shards), ("",), self.dtype, False)
                if self.carry is not None:
                    self.shard.tokens[""].write(self.carry)
            room = self.cap - self.shard.tokens[""].n
            piece = flat[pos: pos + room]
            self.shard.tokens[""].write(piece)
            pos += len(piece)
            if self.shard.tokens[""].n == self.cap:
                self.carry = piece[-1:].copy()
                self._close()

    def _close(self) -> None:
        assert self.shard is not None
        n = self.shard.tokens[""].n
        rows = -(-(n - 1) // self.L)
        if rows == 0:  # a single token (or none): no target, no row
            self.shard.discard()
        else:
            starts = np.arange(rows, dtype=np.int64) * self.L
            spans = np.stack([starts, np.minimum(self.L + 1, n - starts)], axis=1)
            self.shards.append(self.shard.close({"": spans}))
            self.rows += rows
        self.shard = None

    def flush(self) -> None:
        if self.shard is not None:
            self._close()


# ----------------------------------------------------------------------------- export

def _padding(inputs: int, rows: int, max_length: int) -> float:
    return 1.0 - inputs / (rows * max_length) if rows else 0.0


def export_tokens(cfg: TensorConfig, stage: Stage, mix_path: Path | str, tokenizer_dir: Path | str,
                  out_dir: Path | str, log: LogFn | None = None) -> TensorReport:
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
    enc = _Encoder(tok, cfg)
    dtype = disk_dtype(cfg.dtype, enc.vocab_size)
    stats = _Stats(stage, cfg.max_length)
    hasher = hashlib.sha256()
    t0 = time.perf_counter()
    size = mix_path.stat().st_size
    pretrain_packed = stage == "pretrain" and cfg.layout == "packed"

    with atomic_path(out_dir, directory=True) as tmp, \
            Progress(size, f"{stage} tokens", unit="B", log=log) as bar:
        writer: _RowWriter | _PackedWriter
        if pretrain_packed:
            writer = _PackedWriter(tmp, dtype, cfg.max_length, cfg.shard_rows)
        else:
            writer = _RowWriter(tmp, STREAMS[stage], dtype, stage != "pretrain", cfg.shard_rows)
        records = _read_jsonl(mix_path, hasher, bar.update)
        for batch in _batched(records, cfg.batch_records):
            if stage == "pretrain":
                _pretrain_batch(batch, enc, stats, writer, dtype)
                continue
            for line, record in batch:
                try:
                    parts = _record_parts(stage, record, enc, stats, line)
                except (ValueError, KeyError, TypeError, AssertionError) as exc:
                    stats.invalid(line, exc)
                    continue
                if parts is not None:
                    _check_ids(parts, enc.vocab_size, line)
                    writer.add(parts)
        writer.flush()
        if writer.rows == 0:
            first = f"; first: {stats.first_invalid}" if stats.first_invalid else ""
            raise ArtifactError(f"{mix_path}: no usable {stage} record ({stats.samples} read, "
                                f"dropped {stats.dropped or 'none'}{first})")
        if pretrain_packed:
            tokens, inputs = writer.stream_tokens, writer.stream_tokens - 1
            supervised = inputs
        else:
            tokens, inputs, supervised = writer.tokens, writer.inputs, writer.supervised
        seq_rows = writer.rows * len(STREAMS[stage])
        # The rows are a pure function of these inputs (the export is deterministic), so their hash
        # identifies the content without reading it back: the asset's data version.
        content_hash = sha256_json({"format": [FORMAT, FORMAT_VERSION], "stage": stage,
                                    "tokenizer": str(tok.hash), "mix": hasher.hexdigest(),
                                    "config": cfg.model_dump(exclude=_RUNTIME_ONLY)})
        index = {
            "format": FORMAT, "version": FORMAT_VERSION, "stage": stage,
            "layout": cfg.layout if stage == "pretrain" else "padded",
            "rows": writer.rows, "tokens": tokens, "supervised_tokens": supervised,
            "dtype": dtype.name, "max_length": cfg.max_length, "vocab_size": enc.vocab_size,
            "pad_id": enc.pad_id, "bos_id": enc.bos_id, "eos_id": enc.eos_id,
            "streams": list(STREAMS[stage]), "masked": stage != "pretrain",
            "tokenizer_hash": str(tok.hash), "mix_sha256": hasher.hexdigest(), "mix_path": str(mix_path),
            "content_hash": content_hash,
            "config": cfg.model_dump(exclude=_RUNTIME_ONLY),
            "shards": writer.shards,
            "stats": _index_stats(stats, inputs, seq_rows, cfg.max_length),
        }
        if stage == "pretrain":
            # Both layouts' padding, from the same document lengths whichever layout is written, so
            # every pretrain export reports the comparison that chose the default.
            packed_rows = -(-(stats.stream_tokens - 1) // cfg.max_length)
            index["stats"]["padding_fraction_packed"] = _padding(stats.stream_tokens - 1, packed_rows,
                                                                 cfg.max_length)
            index["stats"]["padding_fraction_padded"] = _padding(stats.padded_inputs, stats.padded_rows,
                                                                 cfg.max_length)
        write_json(tmp / "index.json", index)
    seconds = time.perf_counter() - t0
    _warn(stats, stage, mix_path, cfg, log)
    meta = {**index["stats"], "rows": writer.rows, "tokens": tokens, "supervised_tokens": supervised,
            "shards": len(writer.shards), "dtype": dtype.name, "layout": index["layout"],
            "max_length": cfg.max_length, "tokenizer_hash": index["tokenizer_hash"],
            "mix_sha256": index["mix_sha256"], "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
    emit(log, f"{stage} tokens: {writer.rows} rows, {tokens} tokens, padding "
              f"{meta['padding_fraction']:.1%}, {meta['tokens_per_s']:.0f} tokens/s -> {out_dir}")
    return TensorReport(path=out_dir, rows=writer.rows, tokens=tokens, metadata=meta)


def _pretrain_batch(batch: list[tuple[int, Any]], enc: _Encoder, stats: _Stats, writer: Any,
                    dtype: np.dtype) -> None:
    texts, lines, records = [], [], []
    for line, record in batch:
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            stats.invalid(line, ValueError('pretrain record without a string "text"'))
        elif not text:
            stats.samples += 1
            stats.dropped["empty"] = stats.dropped.get("empty", 0) + 1
        else:
            texts.append(text)
            lines.append(line)
            records.append(record)
    if not texts:
        return
    seqs = enc.pretrain(texts)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    stats.add_lengths(lengths, lines, records)
    stats.stream_tokens += int(lengths.sum())
    kept = np.minimum(lengths, enc.limit)
    stats.padded_inputs += int((kept - 1).sum())
    stats.padded_rows += len(seqs)
    over = lengths > enc.limit
    if not isinstance(writer, _PackedWriter) and over.any():  # packed rows continue, never cut
        stats.truncated_samples += int(over.sum())
        stats.truncated_tokens += int((lengths - kept).sum())
    if isinstance(writer, _PackedWriter):
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
        _check_flat(flat, enc.vocab_size, lines[0])
        writer.feed(flat.astype(dtype, copy=False))
    else:
        chain = (s[: enc.limit] if n > enc.limit else s for s, n in zip(seqs, lengths.tolist()))
        flat = np.fromiter(itertools.chain.from_iterable(chain), dtype=np.int64, count=int(kept.sum()))
        _check_flat(flat, enc.vocab_size, lines[0])
        writer.add_flat(flat.astype(dtype, copy=False), kept)


def _check_flat(flat: np.ndarray, vocab_size: int, line: int) -> None:
    # Cheap (one vectorised max per batch) and it turns a tokenizer/vocabulary mix-up into an
    # error here instead of an index error deep inside an embedding layer on a GPU.
    if len(flat) and (int(flat.max()) >= vocab_size or int(flat.min()) < 0):
        raise ArtifactError(f"token id {int(flat.max())} out of the vocabulary ({vocab_size}) "
                            f"in the batch starting at line {line}")


def _check_ids(parts: Sequence[tuple[Sequence[int], Any]], vocab_size: int, line: int) -> None:
    for ids, _ in parts:
        if ids and (max(ids) >= vocab_size or min(ids) < 0):
            raise ArtifactError(f"line {line}: token id {max(ids)} out of the vocabulary ({vocab_size})")


def _index_stats(stats: _Stats, inputs: int, seq_rows: int, max_length: int) -> dict[str, Any]:
    return {
        "samples": stats.samples,
        "padding_fraction": round(_padding(inputs, seq_rows, max_length), 6),
        "truncated_samples": stats.truncated_samples,
        "truncated_tokens": stats.truncated_tokens,
        "truncated_assistant_tokens": stats.truncated_assistant_tokens,
        "dropped_samples": sum(stats.dropped.values()),
        "dropped": dict(sorted(stats.dropped.items())),
        "first_invalid": stats.first_invalid,
        "longest_sample": stats.longest,
        "longest_sample_line": stats.longest_line,
        "longest_sample_source": stats.longest_source,
        "length_histogram": stats.histogram(),
    }


def _warn(stats: _Stats, stage: str, mix: Path, cfg: TensorConfig, log: LogFn | None) -> None:
    """At most one line per kind of loss, with the numbers a user needs to pick a max_length."""
    if stats.truncated_samples:
        cut_answers = stats.dropped.get("answer_truncated", 0)
        extra = (f", {stats.truncated_assistant_tokens} assistant tokens cut, {cut_answers} samples "
                 "dropped because their answer would be cut away entirely") if stage != "pretrain" else ""
        emit(log, f"WARNING: {stats.truncated_samples} of {stats.samples} {stage} samples are longer "
                  f"than max_length={cfg.max_length} (+1 target) and were truncated "
                  f"({stats.truncated_tokens} tokens cut{extra}); longest sample: {stats.longest} tokens "
                  f"({mix}:{stats.longest_line}, source {stats.longest_source!r})")
    if stats.dropped.get("invalid"):
        emit(log, f"WARNING: {stats.dropped['invalid']} {stage} records of {mix} could not be "
                  f"encoded and were dropped; first: {stats.first_invalid}")


# ----------------------------------------------------------------------------- reading tensors

def _load_index(path: Path) -> dict[str, Any]:
    index = read_json(require(path / "index.json", "token tensors index"))
    if index.get("format") != FORMAT or index.get("version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} directory "
                            f"(format {index.get('format')!r}, version {index.get('version')!r}); "
                            "export the tokens again")
    return index


class TokenDataset(torch.utils.data.Dataset):
    """Rows of an exported token directory, read through memory maps.

    The constructor reads only index.json; shard files are mapped on first access in the process
    that reads them (and the maps are dropped when the dataset is pickled into a DataLoader worker
    or a spawned rank), so constructing it in every DDP rank and worker costs no memory: the pages
    are the OS page cache, shared by all of them. `ds[i]` is a dict of unpadded torch.long tensors
    (TOKEN ROWS in docs/architecture.md); batch them with `collate` / `ds.collate_fn`."""

    def __init__(self, path: Path | str, expected_tokenizer_hash: str | None = None):
        self.path = Path(path)
        self.meta = _load_index(self.path)
        if expected_tokenizer_hash is not None and expected_tokenizer_hash != self.meta["tokenizer_hash"]:
            raise TokenizerMismatchError(
                f"{self.path} was tokenized with tokenizer {self.meta['tokenizer_hash']}, but the "
                f"tokenizer in use is {expected_tokenizer_hash}: ids would mean different text; "
                "export the tokens again with this tokenizer")
        self.stage: str = self.meta["stage"]
        self.pad_id: int = int(self.meta["pad_id"])
        self.vocab_size: int = int(self.meta["vocab_size"])
        self.max_length: int = int(self.meta["max_length"])
        self.streams: tuple[str, ...] = tuple(self.meta["streams"])
        self.masked: bool = bool(self.meta["masked"])
        self._ends = np.cumsum([int(s["rows"]) for s in self.meta["shards"]], dtype=np.int64)
        self._maps: dict[int, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = {}

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are per process: a worker re-opens its own instead of receiving copies.
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def _shard(self, k: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        maps = self._maps.get(k)
        if maps is None:
            name = self.meta["shards"][k]["name"]

            def load(stream: str, kind: str) -> np.ndarray:
                f = self.path / _file(name, stream, kind)
                try:
                    return np.load(f, mmap_mode="r", allow_pickle=False)
                except FileNotFoundError:
                    raise
                except (OSError, ValueError, EOFError) as exc:
                    # numpy names neither the file nor the cause ("mmap length is greater than
                    # file size"); an object array (pickle) is refused here too.
                    raise ArtifactError(f"{f}: not a readable token shard ({exc}); the directory "
                                        "is truncated or corrupt: export the tokens again") from None

            maps = {s: (load(s, "tokens"), load(s, "rows"), load(s, "mask") if self.masked else None)
                    for s in self.streams}
            self._maps[k] = maps
        return maps

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, row within the shard) of global row i."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows in {self.path}")
        k = int(np.searchsorted(self._ends, i, side="right"))
        return k, i - (int(self._ends[k - 1]) if k else 0)

    def sequences(self, i: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """The stored sequence (and mask) of row i per stream, as memory-mapped numpy views."""
        k, j = self.locate(i)
        out = []
        for s in self.streams:
            tokens, rows, mask = self._shard(k)[s]
            start, length = (int(x) for x in rows[j])
            out.append((tokens[start: start + length], None if mask is None else mask[start: start + length]))
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return _stage_row(self.stage, self.sequences(int(i)))

    @property
    def collate_fn(self) -> Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]]:
        return functools.partial(collate, pad_id=self.pad_id)


# ----------------------------------------------------------------------------- checks and plots

def check_tokens(path: Path | str, expected_tokenizer_hash: str | None = None,
                 sample_rows: int = 256) -> list[str]:
    """Problems with an exported token directory (an empty list when it is sound).

    Every row is checked vectorised, shard by shard: spans inside the token array, lengths within
    max_length + 1 (packed: exactly, except the last row), token ids inside the vocabulary, masks
    0/1 and as long as the tokens, and each SFT/DPO row with at least one trained label (a DPO
    side with its final answer present). Then `sample_rows` rows spread over the directory are read
    through TokenDataset and checked for labels that line up with the ids (labels[t] is
    input_ids[t+1] or -100, loss_mask is 1 exactly where labels are kept). With
    `expected_tokenizer_hash`, tensors from another tokenizer are a problem too."""
    path = Path(path)
    problems: list[str] = []
    try:
        ds = TokenDataset(path, expected_tokenizer_hash)
    except (ArtifactError, FileNotFoundError, KeyError) as exc:
        return [f"cannot open {path}: {exc}"]
    meta, L = ds.meta, ds.max_length
    dtype = np.dtype(meta["dtype"])
    rows_total = tokens_total = 0
    packed = meta["stage"] == "pretrain" and meta["layout"] == "packed"
    for k, shard in enumerate(meta["shards"]):
        name = shard["name"]
        try:
            maps = ds._shard(k)
        except (OSError, ValueError, ArtifactError) as exc:
            problems.append(f"{name}: cannot map its files ({exc})")
            continue
        for s in ds.streams:
            where = f"{name}{'/' + s if s else ''}"
            tokens, rows, mask = maps[s]
            if tokens.dtype != dtype:
                problems.append(f"{where}: tokens are {tokens.dtype}, index says {dtype}")
            if rows.ndim != 2 or rows.shape[1] != 2 or rows.shape[0] != shard["rows"]:
                problems.append(f"{where}: rows array {rows.shape}, index says {shard['rows']} rows")
                continue
            if len(tokens) != shard["streams"][s]["tokens"]:
                problems.append(f"{where}: {len(tokens)} tokens, index says {shard['streams'][s]['tokens']}")
            starts, lengths = np.asarray(rows[:, 0]), np.asarray(rows[:, 1])
            ends = starts + lengths
            bad = np.flatnonzero((starts < 0) | (ends > len(tokens)) | (lengths < 2) | (lengths > L + 1))
            if len(bad):
                problems.append(f"{where}: {len(bad)} rows with a span outside the tokens or a length "
                                f"outside [2, {L + 1}] (first: row {int(bad[0])}, span "
                                f"{rows[bad[0]].tolist()})")
                continue
            if not packed and int(lengths.sum()) != len(tokens):
                problems.append(f"{where}: rows cover {int(lengths.sum())} of {len(tokens)} tokens")
            if packed:
                expect = np.arange(len(rows)) * L
                if not np.array_equal(starts, expect) or np.any(lengths[:-1] != L + 1):
                    problems.append(f"{where}: packed rows are not consecutive spans of {L + 1} tokens")
            if len(tokens) and int(tokens.max()) >= ds.vocab_size:
                problems.append(f"{where}: token id {int(tokens.max())} >= vocab size {ds.vocab_size}")
            if mask is not None:
                if len(mask) != len(tokens):
                    problems.append(f"{where}: mask has {len(mask)} values for {len(tokens)} tokens")
                    continue
                if len(mask) and int(mask.max()) > 1:
                    problems.append(f"{where}: mask values other than 0/1")
                # Trained labels per row = ones in mask[start+1 : end], by prefix sums.
                csum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
                trained = csum[ends] - csum[starts + 1]
                empty = np.flatnonzero(trained == 0)
                if len(empty):
                    problems.append(f"{where}: {len(empty)} rows with no trained label (first: row "
                                    f"{int(empty[0])}); such samples should have been dropped")
            tokens_total += int(lengths.sum())
        rows_total += int(shard["rows"])
    if rows_total != meta["rows"]:
        problems.append(f"index says {meta['rows']} rows, shards hold {rows_total}")
    # Packed rows overlap by one token (within a shard, and a shard repeats the previous shard's
    # last token), so the stream's distinct tokens = sum of row spans - (rows - 1).
    expect_tokens = meta["tokens"] + rows_total - 1 if packed else meta["tokens"]
    if not problems and tokens_total != expect_tokens:
        problems.append(f"index says {meta['tokens']} tokens, shards hold {tokens_total} in their rows")
    if problems:
        return problems
    n = len(ds)
    for i in sorted({int(x) for x in np.linspace(0, n - 1, num=min(sample_rows, n))}):
        problems += [f"row {i}: {p}" for p in _row_problems(ds[i], ds.stage)]
    return problems


def _row_problems(row: dict[str, torch.Tensor], stage: str) -> list[str]:
    out = []
    for prefix in ("chosen_", "rejected_") if stage == "dpo" else ("",):
        ids, labels = row[prefix + "input_ids"], row[prefix + "labels"]
        if ids.dtype != torch.long or labels.shape != ids.shape:
            out.append(f"{prefix}labels {tuple(labels.shape)} do not match "
                       f"{prefix}input_ids {tuple(ids.shape)}")
            continue
        kept = labels != IGNORE_INDEX
        if not torch.equal(labels[:-1][kept[:-1]], ids[1:][kept[:-1]]):
            out.append(f"{prefix}labels are not the next input ids")
        if stage == "pretrain" and not bool(kept.all()):
            out.append("pretrain row with ignored labels inside the row")
        if prefix + "loss_mask" in row and not torch.equal(row[prefix + "loss_mask"].bool(), kept):
            out.append("loss_mask is not 1 exactly where labels are kept")
    return out


def plot_length_histogram(source: Path | str | Sequence[Sequence[int]], png_path: Path | str,
                          title: str | None = None) -> Path:
    """Render the sample length histogram (a tokens directory, or its `length_histogram` list of
    [bin start, count] with power-of-two bins) to a PNG, atomically. Uses the Agg canvas directly,
    so no global matplotlib backend is switched and no display is needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    max_length = None
    if isinstance(source, (str, Path)):
        index = _load_index(Path(source))
        hist, max_length = index["stats"]["length_histogram"], index["max_length"]
        title = title or f"{index['stage']} sample lengths ({index['rows']} rows)"
    else:
        hist = [list(b) for b in source]
    fig = Figure(figsize=(7, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [f"{lo}-{2 * lo - 1}" if lo > 1 else "1" for lo, _ in hist]
    ax.bar(range(len(hist)), [c for _, c in hist], color="#4878a8")
    ax.set_xticks(range(len(hist)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("tokens per sample (BOS and special tokens included)")
    ax.set_ylabel("samples")
    if max_length is not None:
        ax.axvline(math.log2(max_length + 1) - 0.5 if max_length > 0 else 0, color="#c44e52",
                   linestyle="--", label=f"max_length + 1 = {max_length + 1}")
        ax.legend(fontsize=8)
    ax.set_title(title or "sample lengths")
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return png_path


# ----------------------------------------------------------------------------- command

def main(argv: list[str] | None = None) -> int:
    """`minillm tokens` / `scripts/export_embeddings.py`: export one stage's token tensors."""
    from minillm_core.profiles import preset

    p = argparse.ArgumentParser(prog="minillm tokens", description=export_tokens.__doc__.split("\n")[0])
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--input", type=Path,
                   help="the stage's JSONL mix (default data/processed/<stage>_chinese.jsonl)")
    p.add_argument("--output", type=Path, help="output directory (default out/tokens/<stage>)")
    p.add_argument("--tokenizer", type=Path, default=Path("out/tokenizer"), help="tokenizer directory")
    p.add_argument("--profile", choices=sorted(PROFILES), help="layer a profile's preset under the flags")
    p.add_argument("--max-length", type=int, help="input positions per row (default 2048)")
    p.add_argument("--layout", choices=("packed", "padded"), help="pretrain row layout (default packed)")
    p.add_argument("--bos-token", help="special token before every pretrain document (default <|bos|>)")
    p.add_argument("--append-eos", action="store_const", const=True,
                   help="end every pretrain document with --eos-token")
    p.add_argument("--eos-token", help="end token for --append-eos (default <|assistant_end|>)")
    p.add_argument("--dtype", choices=("auto", "uint16", "int32", "int64"),
                   help="on-disk dtype (default auto)")
    p.add_argument("--shard-rows", type=int, help="rows per shard file")
    p.add_argument("--num-threads", type=int, help="encoding threads (default all CPUs)")
    a = p.parse_args(argv)
    flags = {"max_length": a.max_length, "layout": a.layout, "bos_token": a.bos_token,
             "append_eos": a.append_eos, "eos_token": a.eos_token, "dtype": a.dtype,
             "shard_rows": a.shard_rows, "num_threads": a.num_threads}
    try:
        cfg = TensorConfig.resolve(preset(a.profile, "tensors") if a.profile else None, flags)
        report = export_tokens(cfg, a.stage, a.input or Path(f"data/processed/{a.stage}_chinese.jsonl"),
                               a.tokenizer, a.output or Path(f"out/tokens/{a.stage}"))
    except (ConfigError, ArtifactError, ValueError) as exc:
        print(f"minillm tokens: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.model_dump(mode="json"), ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
