"""Token tensors: build them from a mix, store them as shards, read them back, batch them.

config    TensorConfig (the row length is the model's context, handed in), TensorReport, disk_dtype
encode    a record -> a row: the encoder, the chat cut, `encode_record`
stats     what an export counts (truncation, drops, lengths) and warns about
shards    the on-disk format: npy streams, shard and row writers, index.json, format version
build     `export_tokens`: a JSONL mix -> a token directory, atomically
dataset   `TokenDataset` (memory maps) and `JsonlDataset` (a small mix in memory)
check     `check_tokens`, the row checks, the length histogram plot
collate   the one way rows become a padded batch
"""

from minillm_core.tokens.build import export_tokens
from minillm_core.tokens.check import check_tokens, plot_length_histogram
from minillm_core.tokens.collate import collate_rows, training_batch
from minillm_core.tokens.config import TensorConfig, TensorReport, disk_dtype
from minillm_core.tokens.dataset import JsonlDataset, TokenDataset
from minillm_core.tokens.encode import encode_record
from minillm_core.tokens.shards import FORMAT, FORMAT_VERSION

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "JsonlDataset",
    "TensorConfig",
    "TensorReport",
    "TokenDataset",
    "check_tokens",
    "collate_rows",
    "disk_dtype",
    "encode_record",
    "export_tokens",
    "plot_length_histogram",
    "training_batch",
]
