"""Temporary re-export for the restructure; removed at merge."""

from minillm_core.train.checkpointer import (WEIGHTS, load_checkpoint, load_resume,  # noqa: F401
                                             require_same_model, save_checkpoint, weights_state)
