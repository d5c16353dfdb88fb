"""Temporary re-export for the restructure; removed at merge."""

from minillm_core.tokens import (JsonlDataset, TensorConfig, TokenDataset, check_tokens,  # noqa: F401
                                 encode_record, export_tokens, plot_length_histogram)
