"""The rows a stage trains on: opening them, checking them, their order and their batches.

Data order and resume. The training data is one stream of samples: epoch e is a permutation of the
dataset that depends only on (seed, e), and the stream is epoch 0, then epoch 1, ... A run's
position is the number of *global* samples consumed, so the resume state does not depend on the
batch split: a run may resume under another number of processes.

Several processes: each optimizer step is accumulation_steps micro-batches of batch_size rows,
dealt round-robin to the ranks (`MicroBatches`), so rank r reads only its own rows of the
memory-mapped shards and the global batch is the same for any world size.

Batches are built only by `minillm_core.tokens.collate.training_batch` (padded to the longest row
of the batch). Rows are never cut: a row longer than the model's context is refused before
training (`check_context`), naming both lengths.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from minillm_core.artifacts import require, sha256_file
from minillm_core.errors import ConfigError
from minillm_core.model import ModelConfig
from minillm_core.tokens import training_batch
from minillm_core.train.config import TrainConfig


def epoch_order(
    seed: int,
    epoch: int,
    n: int,
    lengths: Sequence[int] | None = None,
    batch: int = 1,
    chunk_batches: int = 64,
) -> torch.Tensor:
    """The dataset permutation of one epoch: a pure function of (seed, epoch[, lengths]).

    With `lengths`, rows of similar length share a batch: the shuffled order is cut into chunks of
    `chunk_batches` batches, each chunk is sorted by length and cut into batches, and the batches
    of a chunk are shuffled again. A batch is padded to its longest row, so this removes most of
    the padding of variable-length rows (DPO pairs) while the data still arrives in random order.
    """
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) % (2**63))
    perm = torch.randperm(n, generator=g)
    if lengths is None or batch <= 1:
        return perm
    lens = torch.as_tensor(lengths, dtype=torch.long)
    out: list[torch.Tensor] = []
    size = batch * chunk_batches
    for lo in range(0, n, size):
        chunk = perm[lo : lo + size]
        chunk = chunk[torch.argsort(lens[chunk], descending=True, stable=True)]
        batches = list(chunk.split(batch))
        out.extend(batches[i] for i in torch.randperm(len(batches), generator=g).tolist())
    return torch.cat(out)


class SampleStream:
    """Dataset indices of global stream positions [start, end); epoch e = positions e*n .. e*n+n-1."""

    def __init__(self, seed: int, n: int, lengths: Sequence[int] | None = None, batch: int = 1):
        self.seed, self.n, self.lengths, self.batch = seed, n, lengths, batch
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def indices(self, start: int, end: int) -> list[int]:
        out: list[int] = []
        pos = start
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            if epoch != self._epoch:
                self._epoch = epoch
                self._order = epoch_order(self.seed, epoch, self.n, self.lengths, self.batch)
            take = min(end - pos, self.n - offset)
            out.extend(self._order[offset : offset + take].tolist())
            pos += take
        return out


def row_lengths(ds: Any, stage: str) -> list[int]:
    """Positions each row costs (a DPO pair: its longer side, what its batch is padded to).

    Token tensors (`TokenDataset.sequences`) answer from the row index alone: the token arrays
    are memory-map views whose length needs no page of the corpus, so every DDP rank can compute
    the (global) length order without reading the whole data set. Each stored sequence is one
    longer than its input_ids."""
    if hasattr(ds, "sequences"):
        return [max(len(t) for t, _ in ds.sequences(i)) - 1 for i in range(len(ds))]
    if stage == "dpo":
        return [
            max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"]))
            for r in map(ds.__getitem__, range(len(ds)))
        ]
    return [len(ds[i]["input_ids"]) for i in range(len(ds))]


class MicroBatches(torch.utils.data.Sampler):  # type: ignore[type-arg]
    """Batch sampler: micro-batch k holds stream positions [k*bs, (k+1)*bs) (clipped to `end`),
    starting at `start`, so a resumed run reads exactly the micro-batches the first run had left.

    With `world` processes, micro-batch k goes to rank k mod world (a "round" is world consecutive
    micro-batches), so each rank reads only its own rows. In the last round of a run the stream may
    end before every rank has rows; such a rank gets a stand-in (the round's first micro-batch),
    which the loop runs with weight 0: DDP needs every rank in every gradient all-reduce, and a
    zero-weighted real batch is the simplest way to take part without changing the gradient."""

    def __init__(
        self,
        stream: SampleStream,
        start: int,
        end: int,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.stream, self.start, self.end, self.bs = stream, start, end, batch_size
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.bs * self.world
        for pos in range(self.start, self.end, step):
            lo = min(pos + self.rank * self.bs, self.end)
            hi = min(lo + self.bs, self.end)
            if lo == hi and self.world > 1:
                lo, hi = pos, min(pos + self.bs, self.end)  # the stand-in (weight 0)
            idx = self.stream.indices(lo, hi)
            if idx:
                yield [(i, p) for i, p in zip(idx, range(lo, hi))]

    def __len__(self) -> int:
        return math.ceil((self.end - self.start) / (self.bs * self.world))


class Indexed(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Wraps a map-style dataset so each row carries its dataset index (for error messages,
    the DPO reference cache)."""

    def __init__(self, ds: Any):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, dict[str, torch.Tensor]]:
        return key[0], self.ds[key[0]]


@dataclass
class TrainingData:
    """The rows of a stage and what is known about them (vocab_size, pad_id, tokenizer_hash,
    stage, data_hash, and for token tensors the max_length they were packed at)."""

    rows: Any
    meta: dict[str, Any]

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def pad_id(self) -> int:
        return int(self.meta.get("pad_id", 0))


def open_data(cfg: TrainConfig, model_cfg: ModelConfig, dataset: Any | None = None) -> TrainingData:
    """The stage's rows (`dataset` in place of cfg.data_path, for in-memory data), checked
    against the model: stage, vocabulary, tokenizer, and lengths within the model's context."""
    if dataset is None:
        data = _open_path(cfg, model_cfg.max_position_embeddings)
    else:
        data = TrainingData(dataset, dataset_meta(dataset))
        data.meta.setdefault("data_hash", None)
    check_data(cfg, model_cfg, data.meta, data.n)
    check_context(data, cfg, model_cfg.max_position_embeddings)
    return data


def _open_path(cfg: TrainConfig, context: int) -> TrainingData:
    path = require(
        cfg.required_path("data_path"), f"{cfg.stage} data (token tensors dir or JSONL mix)"
    )
    from minillm_core import tokens as tensors

    if path.is_file():
        if not cfg.tokenizer_dir:
            raise ConfigError(
                f"data_path {path} is a JSONL mix: --tokenizer_dir is needed to tokenize it"
            )
        from minillm_core.tokenizer import load_tokenizer

        tok = load_tokenizer(require(cfg.tokenizer_dir, "tokenizer"))
        ds = tensors.JsonlDataset(path, cfg.stage, tok, tensors.TensorConfig(max_length=context))
        return TrainingData(
            ds,
            {
                "vocab_size": ds.vocab_size,
                "pad_id": ds.pad_id,
                "tokenizer_hash": str(tok.hash),
                "stage": cfg.stage,
                "data_hash": sha256_file(path),
                "max_length": context,
            },
        )
    tokens = tensors.TokenDataset(path, expected_tokenizer_hash=cfg.tokenizer_hash)
    meta = dict(tokens.meta)
    # index.json is deterministic and holds the mix sha256 and the tokenizer hash: its hash
    # identifies the data without reading every shard.
    index = path / "index.json"
    meta.setdefault("data_hash", sha256_file(index) if index.exists() else None)
    return TrainingData(tokens, meta)


def dataset_meta(ds: Any) -> dict[str, Any]:
    meta = dict(getattr(ds, "meta", None) or {})
    for key in ("vocab_size", "pad_id", "tokenizer_hash", "stage", "max_length"):
        if key not in meta and hasattr(ds, key):
            meta[key] = getattr(ds, key)
    return meta


def _vocab_fix(cfg: TrainConfig, data_vocab: int, model_vocab: int) -> str:
    """What to change on a vocabulary mismatch. Pretraining may size its new model to the data;
    SFT and DPO cannot resize the checkpoint they start from, so the data must be tokenized with
    the tokenizer that checkpoint was trained with (or the parent retrained with this one)."""
    if cfg.stage == "pretrain":
        return f"set --vocab_size {data_vocab} (or leave it unset: it follows the data)"
    return (
        f"{cfg.pretrained_path} was trained with a {model_vocab}-token tokenizer: tokenize "
        f"{cfg.data_path} with that tokenizer (--tokenizer_dir for a JSONL mix, or `minillm "
        f"tokens --tokenizer` for token tensors), or point --pretrained_path at a checkpoint "
        f"trained with this one"
    )


def check_data(cfg: TrainConfig, model_cfg: ModelConfig, meta: dict[str, Any], n: int) -> None:
    if meta.get("stage") not in (None, cfg.stage):
        raise ConfigError(
            f"{cfg.data_path} holds {meta['stage']} rows; the {cfg.stage} stage needs "
            f"{cfg.stage} rows"
        )
    if meta.get("vocab_size") is not None and int(meta["vocab_size"]) != model_cfg.vocab_size:
        raise ConfigError(
            f"vocabulary mismatch: the data was tokenized with a {meta['vocab_size']}-token "
            f"tokenizer but the model has vocab_size {model_cfg.vocab_size}; "
            + _vocab_fix(cfg, int(meta["vocab_size"]), model_cfg.vocab_size)
        )
    if (
        cfg.tokenizer_hash
        and meta.get("tokenizer_hash")
        and meta["tokenizer_hash"] != cfg.tokenizer_hash
    ):
        raise ConfigError(
            f"tokenizer mismatch: data made with tokenizer {meta['tokenizer_hash'][:12]}, "
            f"expected {cfg.tokenizer_hash[:12]}"
        )
    if n == 0:
        raise ConfigError(f"{cfg.data_path}: no {cfg.stage} rows to train on")


def check_context(data: TrainingData, cfg: TrainConfig, context: int) -> None:
    """Refuse rows longer than the model's context, before any step (rows are never cut).

    The bound the rows were packed at (token tensors' max_length) answers without reading rows;
    only rows of unknown or larger bound are measured."""
    bound = data.meta.get("max_length")
    if bound is not None and int(bound) <= context:
        return
    longest = max(row_lengths(data.rows, cfg.stage), default=0)
    if longest > context:
        raise ConfigError(
            f"{cfg.data_path}: {cfg.stage} rows of up to {longest} positions are longer than the "
            f"model's context of {context} (max_position_embeddings); rebuild the token tensors at "
            f"--max-length {context} or set --max_seq_len {longest} when pretraining"
        )


def document_start(data: TrainingData, cfg: TrainConfig) -> int | None:
    """The token that opens each document of packed pretrain rows, when they train with the
    document mask; None otherwise (SFT and DPO rows hold one conversation each)."""
    packed = cfg.stage == "pretrain" and data.meta.get("layout") == "packed"
    if not (cfg.document_mask and packed and data.meta.get("bos_id") is not None):
        return None
    return int(data.meta["bos_id"])


def micro_batches(
    data: TrainingData,
    cfg: TrainConfig,
    start: int,
    end: int,
    rank: int,
    world: int,
    device: torch.device,
) -> Iterator[dict[str, Any]]:
    """This rank's micro-batches of the stream positions [start, end), as padded batches."""
    lengths = row_lengths(data.rows, cfg.stage) if cfg.group_by_length else None
    # Length groups of one micro-batch (not x world): the stream then does not depend on the
    # number of processes, and each rank's micro-batch is still one group of similar lengths.
    stream = SampleStream(cfg.seed, data.n, lengths, cfg.batch_size)
    collate = functools.partial(
        training_batch,
        stage=cfg.stage,
        pad_id=data.pad_id,
        # compiled graphs specialise on shapes: fewer widths, fewer recompiles
        multiple=64 if cfg.compile else 1,
        doc_start=document_start(data, cfg),
    )
    loader = torch.utils.data.DataLoader(
        Indexed(data.rows),
        batch_sampler=MicroBatches(stream, start, end, cfg.batch_size, rank, world),
        collate_fn=collate,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        # Its own generator: creating a loader iterator draws a seed, and drawing it from the
        # global RNG would shift the dropout stream of a resumed run by one draw.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return iter(loader)
