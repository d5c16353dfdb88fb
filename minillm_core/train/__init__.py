"""Training: one loop for pretrain, SFT and DPO, in the shape of torchtitan's trainer.

    config.py        TrainConfig (+ the per-stage defaults), TrainReport
    loop.py          train(cfg, model_cfg, log=...): the loop, read top to bottom
    step.py          one optimizer step: accumulation, the ranks' agreement, guards, update
    objectives.py    loss(model, batch) -> (loss, metrics) per stage
    data.py          epoch order, the sample stream, micro-batches, opening and checking rows
    state.py         TrainState: model, optimiser, LR schedule, step, RNG
    checkpointer.py  atomic checkpoints and the exact resume
    logger.py        progress bar, log lines, TensorBoard, loss plot, the report's metadata
    ddp.py           DDP collectives, the rank config file and the rank entry point
"""

from typing import Any

from minillm_core.train.config import PARENT, STAGE_DEFAULTS, TrainConfig, TrainReport
from minillm_core.train.loop import train

__all__ = ["PARENT", "STAGE_DEFAULTS", "TrainConfig", "TrainReport", "train"]


def __getattr__(name: str) -> Any:
    # Temporary re-export for the restructure; removed at merge (minillm_assets.pipeline still
    # imports train_overrides from here; it lives in the front end now).
    if name == "train_overrides":
        from minillm_cli.train import train_overrides

        return train_overrides
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
