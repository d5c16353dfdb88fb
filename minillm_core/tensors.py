"""Temporary re-export for the restructure; removed at merge."""

from minillm_core.tokens import (  # noqa: F401
    JsonlDataset,
    TensorConfig,
    TokenDataset,
    check_tokens,
    encode_record,
    export_tokens,
    plot_length_histogram,
)
