"""The seed's `trainer/train_dpo.py` command: DPO, starting from and
referenced to the SFT weights (out/sft by default).

    python scripts/train_dpo.py --data_path out/tokens/dpo --batch_size 8 ...

A thin front end, the same as `minillm dpo`: the options (`--help`), the loop and the
checkpoint format are those of `minillm_cli.train` and `minillm_core.train`, shared by every
stage.
"""

import sys

from minillm_cli.train import main_dpo

if __name__ == "__main__":
    sys.exit(main_dpo(sys.argv[1:]))
