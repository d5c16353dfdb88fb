"""Temporary re-export for the restructure; removed at merge."""

from minillm_core.train.checkpointer import (  # noqa: F401
                                             WEIGHTS,
                                             load_checkpoint,
                                             load_resume,
                                             require_same_model,
                                             save_checkpoint,
                                             weights_state,
)
