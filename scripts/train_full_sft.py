"""The seed's `trainer/train_full_sft.py` command: supervised fine-tuning,
starting from the pretrain weights (out/pretrain by default).

    python scripts/train_full_sft.py --data_path out/tokens/sft --batch_size 8 ...

A thin front end, the same as `minillm sft`: the options (`--help`), the loop and the
checkpoint format are those of `minillm_cli.train` and `minillm_core.train`, shared by every
stage.
"""

import sys

from minillm_cli.train import main_sft

if __name__ == "__main__":
    sys.exit(main_sft(sys.argv[1:]))
