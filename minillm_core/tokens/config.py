"""Settings of the token tensors stage, the report an export returns, and the on-disk integer type."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from minillm_core.config import CoreConfig
from minillm_core.errors import ConfigError

_DTYPES: dict[str, type[np.integer[Any]]] = {
    "uint16": np.uint16,
    "int32": np.int32,
    "int64": np.int64,
}
# Settings that change speed, not content: left out of the index and the content hash.
RUNTIME_ONLY = {"num_threads", "batch_records"}


def _model_context() -> int:
    # The sequence length has one owner, the model's context; a number written here would be a
    # second one. Imported late: the model module is not needed to read or write tensors.
    from minillm_core.model import ModelConfig

    return int(ModelConfig.model_fields["max_position_embeddings"].default)


class TensorConfig(CoreConfig):
    """Settings of the token tensors stage (`minillm tokens`, the `*_tokens` assets)."""

    max_length: int = Field(
        default_factory=_model_context,
        ge=1,
        description="input positions per row (the seed's --max-length). Always the model's "
        "context, `ModelConfig.max_position_embeddings`, handed in by the caller: the tokens "
        "assets pass the resource's context_length, `minillm tokens` the profile's model context "
        "unless --max-length is given. The default is the model's default context, for Python "
        "callers that build a config by hand",
    )
    layout: Literal["packed", "padded"] = Field(
        "packed",
        description="pretrain only: documents packed back to back (default, no padding) "
        "or the seed's one document per row, truncated and padded",
    )
    bos_token: str = Field(
        "<|bos|>", description="special token put before every pretrain document"
    )
    append_eos: bool = Field(
        False, description="pretrain only: also end every document with eos_token"
    )
    eos_token: str = Field(
        "<|assistant_end|>",
        description="end token appended with append_eos (a special token of the tokenizer)",
    )
    dtype: Literal["auto", "uint16", "int32", "int64"] = Field(
        "auto", description="on-disk integer type; auto = narrowest that holds the vocabulary"
    )
    shard_rows: int = Field(16384, ge=1, description="rows (DPO: pairs) per shard file")
    batch_records: int = Field(
        1024, ge=1, description="records read and encoded per batch; bounds the exporter's memory"
    )
    num_threads: int = Field(0, ge=0, description="encoding threads; 0 = all CPUs")


class TensorReport(BaseModel):
    """What `export_tokens` returns: the directory, its counts, and JSON-able metadata for the UI."""

    path: Path
    rows: int
    tokens: int
    metadata: dict[str, Any]


def disk_dtype(name: str, vocab_size: int) -> np.dtype:
    """The on-disk dtype for a vocabulary: `auto` is uint16 up to 65,536 ids, else int32."""
    if name == "auto":
        return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)
    dt = np.dtype(_DTYPES[name])
    if vocab_size - 1 > np.iinfo(_DTYPES[name]).max:
        raise ConfigError(
            f"dtype: {name} cannot hold token ids up to {vocab_size - 1} "
            f"(vocabulary of {vocab_size}); use int32 or auto"
        )
    return dt
