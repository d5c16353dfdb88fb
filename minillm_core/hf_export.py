"""Temporary re-export for the restructure; removed at merge."""

from minillm_core.export import ExportConfig, export_hf  # noqa: F401
