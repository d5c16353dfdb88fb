"""Training: one loop for pretrain, SFT and DPO, in the shape of torchtitan's trainer.

config.py        TrainConfig (+ the per-stage defaults), TrainReport
loop.py          train(cfg, model_cfg, log=...): the loop, read top to bottom
step.py          one optimizer step: accumulation, the ranks' agreement, guards, update
objectives.py    loss(model, batch) -> (loss, metrics) per stage
data.py          epoch order, the sample stream, micro-batches, opening and checking rows
state.py         TrainState: model, optimiser, LR schedule, step, RNG
muon.py          the Muon optimiser (matrices) with AdamW (the rest), for --optimizer muon
checkpointer.py  atomic checkpoints and the exact resume
logger.py        progress bar, log lines, TensorBoard, loss plot, the report's metadata
ddp.py           DDP collectives, the rank config file and the rank entry point
"""

from minillm_core.train.checkpointer import WEIGHTS, load_checkpoint, weights_state
from minillm_core.train.config import PARENT, STAGE_DEFAULTS, TrainConfig, TrainReport
from minillm_core.train.loop import train

__all__ = [
    "PARENT",
    "STAGE_DEFAULTS",
    "WEIGHTS",
    "TrainConfig",
    "TrainReport",
    "load_checkpoint",
    "train",
    "weights_state",
]
