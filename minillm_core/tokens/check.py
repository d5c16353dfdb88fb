"""Checks of an exported token directory (the assets' blocking check) and the length histogram plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minillm_core.artifacts import atomic_path
from minillm_core.errors import ArtifactError
from minillm_core.schema import IGNORE_INDEX
from minillm_core.tokens.dataset import TokenDataset
from minillm_core.tokens.shards import load_index


def check_tokens(
    path: Path | str, expected_tokenizer_hash: str | None = None, sample_rows: int = 256
) -> list[str]:
    """Problems with an exported token directory (an empty list when it is sound).

    Every row is checked vectorised, shard by shard: spans inside the token array, lengths within
    max_length + 1 (packed: exactly, except the last row), token ids inside the vocabulary, masks
    0/1 and as long as the tokens, and each SFT/DPO row with at least one trained label (a DPO
    side with its final answer present). Then `sample_rows` rows spread over the directory are read
    through TokenDataset and checked for labels that line up with the ids (labels[t] is
    input_ids[t+1] or -100, loss_mask is 1 exactly where labels are kept). With
    `expected_tokenizer_hash`, tensors from another tokenizer are a problem too."""
    path = Path(path)
    try:
        ds = TokenDataset(path, expected_tokenizer_hash)
    except (ArtifactError, FileNotFoundError, KeyError) as exc:
        return [f"cannot open {path}: {exc}"]
    meta = ds.meta
    packed = meta["stage"] == "pretrain" and meta["layout"] == "packed"
    problems: list[str] = []
    rows_total = tokens_total = 0
    for k, shard in enumerate(meta["shards"]):
        try:
            maps = ds.shard_arrays(k)
        except (OSError, ValueError, ArtifactError) as exc:
            problems.append(f"{shard['name']}: cannot map its files ({exc})")
            continue
        for s in ds.streams:
            found, counted = _stream_problems(ds, shard, s, maps[s], packed)
            problems += found
            tokens_total += counted
        rows_total += int(shard["rows"])
    if rows_total != meta["rows"]:
        problems.append(f"index says {meta['rows']} rows, shards hold {rows_total}")
    # Packed rows overlap by one token (within a shard, and a shard repeats the previous shard's
    # last token), so the stream's distinct tokens = sum of row spans - (rows - 1).
    expect_tokens = meta["tokens"] + rows_total - 1 if packed else meta["tokens"]
    if not problems and tokens_total != expect_tokens:
        problems.append(
            f"index says {meta['tokens']} tokens, shards hold {tokens_total} in their rows"
        )
    if problems:
        return problems
    n = len(ds)
    for i in sorted({int(x) for x in np.linspace(0, n - 1, num=min(sample_rows, n))}):
        problems += [f"row {i}: {p}" for p in row_problems(ds[i], ds.stage)]
    return problems


def _stream_problems(
    ds: TokenDataset,
    shard: dict[str, Any],
    s: str,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    packed: bool,
) -> tuple[list[str], int]:
    """Problems of one stream of one shard, and the tokens its rows cover (0 when its row spans
    cannot be trusted; a count only matters when no problem was found anywhere)."""
    where = f"{shard['name']}{'/' + s if s else ''}"
    tokens, rows, mask = arrays
    L, dtype = ds.max_length, np.dtype(ds.meta["dtype"])
    problems: list[str] = []
    if tokens.dtype != dtype:
        problems.append(f"{where}: tokens are {tokens.dtype}, index says {dtype}")
    if rows.ndim != 2 or rows.shape[1] != 2 or rows.shape[0] != shard["rows"]:
        return problems + [f"{where}: rows array {rows.shape}, index says {shard['rows']} rows"], 0
    if len(tokens) != shard["streams"][s]["tokens"]:
        problems.append(
            f"{where}: {len(tokens)} tokens, index says {shard['streams'][s]['tokens']}"
        )
    starts, lengths = np.asarray(rows[:, 0]), np.asarray(rows[:, 1])
    ends = starts + lengths
    bad = np.flatnonzero((starts < 0) | (ends > len(tokens)) | (lengths < 2) | (lengths > L + 1))
    if len(bad):
        return problems + [
            f"{where}: {len(bad)} rows with a span outside the tokens or a length "
            f"outside [2, {L + 1}] (first: row {int(bad[0])}, span "
            f"{rows[bad[0]].tolist()})"
        ], 0
    if not packed and int(lengths.sum()) != len(tokens):
        problems.append(f"{where}: rows cover {int(lengths.sum())} of {len(tokens)} tokens")
    if packed:
        expect = np.arange(len(rows)) * L
        if not np.array_equal(starts, expect) or np.any(lengths[:-1] != L + 1):
            problems.append(f"{where}: packed rows are not consecutive spans of {L + 1} tokens")
    if len(tokens) and int(tokens.max()) >= ds.vocab_size:
        problems.append(f"{where}: token id {int(tokens.max())} >= vocab size {ds.vocab_size}")
    if mask is not None:
        problems += _mask_problems(where, mask, len(tokens), starts, ends)
    return problems, int(lengths.sum())


def _mask_problems(
    where: str, mask: np.ndarray, n_tokens: int, starts: np.ndarray, ends: np.ndarray
) -> list[str]:
    if len(mask) != n_tokens:
        return [f"{where}: mask has {len(mask)} values for {n_tokens} tokens"]
    problems = []
    if len(mask) and int(mask.max()) > 1:
        problems.append(f"{where}: mask values other than 0/1")
    # Trained labels per row = ones in mask[start+1 : end], by prefix sums.
    csum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    trained = csum[ends] - csum[starts + 1]
    empty = np.flatnonzero(trained == 0)
    if len(empty):
        problems.append(
            f"{where}: {len(empty)} rows with no trained label (first: row "
            f"{int(empty[0])}); such samples should have been dropped"
        )
    return problems


def row_problems(row: dict[str, torch.Tensor], stage: str) -> list[str]:
    """Problems of one row dict: labels that are not the next ids, a loss mask out of line."""
    out = []
    for prefix in ("chosen_", "rejected_") if stage == "dpo" else ("",):
        ids, labels = row[prefix + "input_ids"], row[prefix + "labels"]
        if ids.dtype != torch.long or labels.shape != ids.shape:
            out.append(
                f"{prefix}labels {tuple(labels.shape)} do not match "
                f"{prefix}input_ids {tuple(ids.shape)}"
            )
            continue
        kept = labels != IGNORE_INDEX
        if not torch.equal(labels[:-1][kept[:-1]], ids[1:][kept[:-1]]):
            out.append(f"{prefix}labels are not the next input ids")
        if stage == "pretrain" and not bool(kept.all()):
            out.append("pretrain row with ignored labels inside the row")
        if prefix + "loss_mask" in row and not torch.equal(row[prefix + "loss_mask"].bool(), kept):
            out.append("loss_mask is not 1 exactly where labels are kept")
    return out


def plot_length_histogram(
    source: Path | str | Sequence[Sequence[int]], png_path: Path | str, title: str | None = None
) -> Path:
    """Render the sample length histogram (a tokens directory, or its `length_histogram` list of
    [bin start, count] with power-of-two bins) to a PNG, atomically. Uses the Agg canvas directly,
    so no global matplotlib backend is switched and no display is needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    max_length = None
    if isinstance(source, (str, Path)):
        index = load_index(Path(source))
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
        ax.axvline(
            math.log2(max_length + 1) - 0.5 if max_length > 0 else 0,
            color="#c44e52",
            linestyle="--",
            label=f"max_length + 1 = {max_length + 1}",
        )
        ax.legend(fontsize=8)
    ax.set_title(title or "sample lengths")
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return png_path
