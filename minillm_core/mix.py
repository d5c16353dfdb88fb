"""Temporary re-export for the restructure; removed at merge."""

from minillm_core.data import MixConfig, MixError, build_mix, check_mix, resolve_files  # noqa: F401
