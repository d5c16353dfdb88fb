"""The seed's `trainer/train_pretrain.py` command: pretraining from token tensors or a JSONL mix.

    python scripts/train_pretrain.py --data_path out/tokens/pretrain --batch_size 8 ...

A thin front end, the same as `minillm pretrain`: the options (`--help`), the loop and the
checkpoint format are those of `minillm_cli.train` and `minillm_core.train`, shared by every
stage.
"""

import sys

from minillm_cli.train import main_pretrain

if __name__ == "__main__":
    sys.exit(main_pretrain(sys.argv[1:]))
