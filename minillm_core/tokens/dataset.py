"""Reading rows: `TokenDataset` over an exported directory, `JsonlDataset` over a small JSONL mix.

`TokenDataset` opens the shards lazily as read-only memory maps: the pages live in the OS page
cache, shared by every rank and DataLoader worker on the host, so host RAM does not grow with
corpus size or rank count. Both datasets yield the same unpadded row dicts (`encode.make_row`)
and batch them through the one collate (`tokens.collate`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minillm_core.artifacts import require
from minillm_core.errors import ArtifactError, DataError, TokenizerMismatchError
from minillm_core.schema import Stage
from minillm_core.tokens.collate import collate_rows
from minillm_core.tokens.config import TensorConfig
from minillm_core.tokens.encode import Encoder, read_jsonl, record_parts, stage_row
from minillm_core.tokens.shards import load_index, shard_file
from minillm_core.tokens.stats import Stats

Row = dict[str, torch.Tensor]
# Per stream: the tokens, the row spans and (SFT/DPO) the mask of one shard.
ShardArrays = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]


def _load_array(f: Path) -> np.ndarray:
    try:
        arr: np.ndarray = np.load(f, mmap_mode="r", allow_pickle=False)
        return arr
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        # numpy names neither the file nor the cause ("mmap length is greater than file size");
        # an object array (pickle) is refused here too.
        raise ArtifactError(
            f"{f}: not a readable token shard ({exc}); the directory is truncated "
            "or corrupt: export the tokens again"
        ) from None


class TokenDataset(torch.utils.data.Dataset[Row]):
    """Rows of an exported token directory, read through memory maps.

    The constructor reads only index.json; shard files are mapped on first access in the process
    that reads them (and the maps are dropped when the dataset is pickled into a DataLoader worker
    or a spawned rank), so constructing it in every DDP rank and worker costs no memory: the pages
    are the OS page cache, shared by all of them. `ds[i]` is a dict of unpadded torch.long tensors
    (the row table in docs/tensors.md); batch them with `collate_rows` / `ds.collate_fn`."""

    def __init__(self, path: Path | str, expected_tokenizer_hash: str | None = None):
        self.path = Path(path)
        self.meta = load_index(self.path)
        if (
            expected_tokenizer_hash is not None
            and expected_tokenizer_hash != self.meta["tokenizer_hash"]
        ):
            raise TokenizerMismatchError(
                f"{self.path} was tokenized with tokenizer {self.meta['tokenizer_hash']}, but the "
                f"tokenizer in use is {expected_tokenizer_hash}: ids would mean different text; "
                "export the tokens again with this tokenizer"
            )
        self.stage: str = self.meta["stage"]
        self.pad_id: int = int(self.meta["pad_id"])
        self.vocab_size: int = int(self.meta["vocab_size"])
        self.max_length: int = int(self.meta["max_length"])
        self.streams: tuple[str, ...] = tuple(self.meta["streams"])
        self.masked: bool = bool(self.meta["masked"])
        self._ends = np.cumsum([int(s["rows"]) for s in self.meta["shards"]], dtype=np.int64)
        self._maps: dict[int, ShardArrays] = {}

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are per process: a worker re-opens its own instead of receiving copies.
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def shard_arrays(self, k: int) -> ShardArrays:
        """The memory-mapped arrays of shard k, per stream (mapped on first use)."""
        maps = self._maps.get(k)
        if maps is None:
            name = self.meta["shards"][k]["name"]

            def load(stream: str, kind: str) -> np.ndarray:
                return _load_array(self.path / shard_file(name, stream, kind))

            maps = {
                s: (load(s, "tokens"), load(s, "rows"), load(s, "mask") if self.masked else None)
                for s in self.streams
            }
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
            tokens, rows, mask = self.shard_arrays(k)[s]
            start, length = (int(x) for x in rows[j])
            out.append(
                (
                    tokens[start : start + length],
                    None if mask is None else mask[start : start + length],
                )
            )
        return out

    def __getitem__(self, i: int) -> Row:
        return stage_row(self.stage, self.sequences(int(i)))

    @property
    def collate_fn(self) -> Callable[[list[Row]], Row]:
        return functools.partial(collate_rows, pad_id=self.pad_id)


class JsonlDataset(torch.utils.data.Dataset[Row]):
    """A small JSONL mix as an in-memory map-style dataset of the same row dicts as TokenDataset
    (one row per kept record). For held-out evaluation and manual runs on a JSONL mix; a training
    corpus belongs in `export_tokens` + `TokenDataset`, which do not hold it in memory. `cfg`
    carries the row length, the model's context, so the caller always hands it in."""

    def __init__(self, path: Path | str, stage: Stage, tokenizer: Any, cfg: TensorConfig):
        if isinstance(tokenizer, (str, Path)):
            from minillm_core.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(Path(tokenizer))
        self.path, self.stage, self.cfg = Path(path), stage, cfg
        enc = Encoder(tokenizer, self.cfg)
        self.pad_id, self.vocab_size = enc.pad_id, enc.vocab_size
        self.stats = Stats()
        self.rows: list[Row] = []
        for line, record in read_jsonl(require(self.path, f"{stage} JSONL")):
            try:
                parts = record_parts(stage, record, enc, self.stats, line)
            except (ValueError, KeyError, TypeError, AssertionError) as exc:
                raise DataError(str(exc), file=self.path, line=line) from exc
            if parts is not None:
                self.rows.append(stage_row(stage, parts))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Row:
        return self.rows[i]

    @property
    def collate_fn(self) -> Callable[[list[Row]], Row]:
        return functools.partial(collate_rows, pad_id=self.pad_id)
