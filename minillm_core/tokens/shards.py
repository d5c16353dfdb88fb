"""The on-disk format of token tensors: shards of plain `.npy` files plus `index.json`.

Per shard `shard_NNNNN` and stream (`""` for pretrain/SFT, `chosen`/`rejected` for DPO, which
share row indices): `<shard>[.<stream>].tokens.npy` (1-D, the narrowest dtype that holds the
vocabulary, widened to torch.long on read), `<shard>[.<stream>].rows.npy` (int64 `[rows, 2]`:
start and length of each row in the token array) and, for SFT/DPO, `<shard>[.<stream>].mask.npy`
(uint8, parallel to the tokens). Nothing is pickled: readers load with `allow_pickle=False`.

Shards stream to disk (`NpyStream` reserves the header and rewrites it at close), so an export
holds one batch of records in memory, never a shard or the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minillm_core.artifacts import read_json, require
from minillm_core.errors import ArtifactError

FORMAT = "minillm-tokens"
FORMAT_VERSION = 1
# Streams stored per stage; DPO keeps chosen and rejected as two streams with the same row index.
STREAMS: dict[str, tuple[str, ...]] = {
    "pretrain": ("",),
    "sft": ("",),
    "dpo": ("chosen", "rejected"),
}


def shard_file(shard: str, stream: str, kind: str) -> str:
    """The file name of one array (`tokens`, `rows`, `mask`) of a shard's stream."""
    return f"{shard}{'.' + stream if stream else ''}.{kind}.npy"


def load_index(path: Path) -> dict[str, Any]:
    """The index.json of a token directory, refused unless it is this format and version."""
    index: dict[str, Any] = read_json(require(path / "index.json", "token tensors index"))
    if index.get("format") != FORMAT or index.get("version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: not a {FORMAT} v{FORMAT_VERSION} directory "
            f"(format {index.get('format')!r}, version {index.get('version')!r}); "
            "export the tokens again"
        )
    return index


class NpyStream:
    """An .npy file written in pieces: the header is reserved up front and rewritten with the
    final length at close, so a shard streams to disk instead of being assembled in memory."""

    HEADER = 128  # bytes: magic + version + length + padded dict, a multiple of 64 as numpy likes

    def __init__(self, path: Path, dtype: np.dtype | type, width: int | None = None):
        self.path, self.dtype, self.width, self.n = path, np.dtype(dtype), width, 0
        self.f = open(path, "wb", buffering=1 << 20)
        self.f.write(self._header(0))

    def _header(self, n: int) -> bytes:
        shape = (n,) if self.width is None else (n, self.width)
        d = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": shape,
        }
        text = repr(d).encode("latin1")
        pad = self.HEADER - 10 - len(text) - 1
        return (
            b"\x93NUMPY\x01\x00"
            + (self.HEADER - 10).to_bytes(2, "little")
            + text
            + b" " * pad
            + b"\n"
        )

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self.f.write(arr.tobytes())
        self.n += arr.shape[0]

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(self._header(self.n))
        self.f.close()


class Shard:
    """One shard being written: per stream a token file, a mask file (SFT/DPO) and row spans."""

    def __init__(
        self, out: Path, index: int, streams: tuple[str, ...], dtype: np.dtype, masked: bool
    ):
        self.out, self.name, self.streams = out, f"shard_{index:05d}", streams
        self.tokens = {
            s: NpyStream(out / shard_file(self.name, s, "tokens"), dtype) for s in streams
        }
        self.masks = (
            {s: NpyStream(out / shard_file(self.name, s, "mask"), np.uint8) for s in streams}
            if masked
            else {}
        )
        self.rows: dict[str, list[tuple[int, int]]] = {s: [] for s in streams}

    def close(self, rows: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Finish the files; returns the shard's entry of the index."""
        info: dict[str, Any] = {"name": self.name, "streams": {}}
        for s in self.streams:
            self.tokens[s].close()
            if s in self.masks:
                self.masks[s].close()
            spans = (
                rows[s]
                if rows is not None
                else np.array(self.rows[s], dtype=np.int64).reshape(-1, 2)
            )
            np.save(self.out / shard_file(self.name, s, "rows"), spans, allow_pickle=False)
            info["rows"] = int(spans.shape[0])
            info["streams"][s] = {"tokens": self.tokens[s].n}
        return info

    def discard(self) -> None:
        for s in self.streams:
            for st in (self.tokens.get(s), self.masks.get(s)):
                if st is not None:
                    st.f.close()
                    st.path.unlink()


class RowWriter:
    """Ragged rows (padded pretrain, SFT, DPO): each row is stored unpadded; `shard_rows` per shard."""

    def __init__(
        self, out: Path, streams: tuple[str, ...], dtype: np.dtype, masked: bool, shard_rows: int
    ):
        self.out, self.streams, self.dtype = out, streams, dtype
        self.masked, self.shard_rows = masked, shard_rows
        self.shard: Shard | None = None
        self.shards: list[dict[str, Any]] = []
        self.rows = 0
        self.tokens = 0
        self.inputs = 0  # input positions (row length - 1), summed: padding = rows*L - inputs
        self.supervised = 0  # label positions that are trained

    def _open(self) -> Shard:
        if self.shard is None:
            self.shard = Shard(self.out, len(self.shards), self.streams, self.dtype, self.masked)
        return self.shard

    def add(self, parts: Sequence[tuple[Sequence[int], Sequence[int] | None]]) -> None:
        shard = self._open()
        for s, (ids, mask) in zip(self.streams, parts):
            start = shard.tokens[s].n
            shard.tokens[s].write(np.asarray(ids))
            shard.rows[s].append((start, len(ids)))
            self.tokens += len(ids)
            self.inputs += len(ids) - 1
            if self.masked:
                assert mask is not None
                shard.masks[s].write(np.asarray(mask, dtype=np.uint8))
                self.supervised += sum(mask[1:])
            else:
                self.supervised += len(ids) - 1
        self.rows += 1
        if len(shard.rows[self.streams[0]]) >= self.shard_rows:
            self.flush()

    def add_flat(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Many unmasked single-stream rows at once (pretrain, padded): one write per shard piece."""
        done = pos = 0
        while done < len(lengths):
            shard = self._open()
            take = lengths[done : done + self.shard_rows - len(shard.rows[""])]
            n_tok = int(take.sum())
            starts = shard.tokens[""].n + np.cumsum(take) - take
            shard.tokens[""].write(flat[pos : pos + n_tok])
            shard.rows[""].extend(zip(starts.tolist(), take.tolist()))
            self.rows += len(take)
            self.tokens += n_tok
            self.inputs += n_tok - len(take)
            self.supervised += n_tok - len(take)
            done += len(take)
            pos += n_tok
            if len(shard.rows[""]) >= self.shard_rows:
                self.flush()

    def flush(self) -> None:
        if self.shard is not None:
            self.shards.append(self.shard.close())
            self.shard = None

    def totals(self) -> tuple[int, int, int]:
        """(tokens stored, input positions, trained label positions)."""
        return self.tokens, self.inputs, self.supervised


class PackedWriter:
    """Packed pretrain: one token stream cut into rows of `L` inputs; row i spans stream tokens
    [i*L, i*L + L] (L+1 tokens), so consecutive rows share one token and every token but the
    first is a target. A shard holds `shard_rows` rows (shard_rows*L + 1 tokens); the next shard
    starts with the last token of the previous one, keeping shards self-contained."""

    def __init__(self, out: Path, dtype: np.dtype, max_length: int, shard_rows: int):
        self.out, self.dtype, self.L, self.shard_rows = out, dtype, max_length, shard_rows
        self.cap = shard_rows * max_length + 1
        self.shard: Shard | None = None
        self.shards: list[dict[str, Any]] = []
        self.carry: np.ndarray | None = None
        self.stream_tokens = 0  # distinct tokens of the stream (the overlap token counted once)
        self.rows = 0

    def feed(self, flat: np.ndarray) -> None:
        pos = 0
        self.stream_tokens += len(flat)
        while pos < len(flat):
            if self.shard is None:
                self.shard = Shard(self.out, len(self.shards), ("",), self.dtype, False)
                if self.carry is not None:
                    self.shard.tokens[""].write(self.carry)
            room = self.cap - self.shard.tokens[""].n
            piece = flat[pos : pos + room]
            self.shard.tokens[""].write(piece)
            pos += len(piece)
            if self.shard.tokens[""].n == self.cap:
                self.carry = piece[-1:].copy()
                self._close(self.shard)

    def _close(self, shard: Shard) -> None:
        n = shard.tokens[""].n
        rows = -(-(n - 1) // self.L)
        if rows == 0:  # a single token (or none): no target, no row
            shard.discard()
        else:
            starts = np.arange(rows, dtype=np.int64) * self.L
            spans = np.stack([starts, np.minimum(self.L + 1, n - starts)], axis=1)
            self.shards.append(shard.close({"": spans}))
            self.rows += rows
        self.shard = None

    def flush(self) -> None:
        if self.shard is not None:
            self._close(self.shard)

    def totals(self) -> tuple[int, int, int]:
        """(distinct tokens of the stream, input positions, trained label positions)."""
        return self.stream_tokens, self.stream_tokens - 1, self.stream_tokens - 1
