"""Temporary re-export for the restructure; removed at merge."""

from minillm_core.eval import EvalConfig, check_eval, evaluate, print_latest  # noqa: F401
