"""The seed's `trainer/train_dpo.py`: DPO, starting from and referenced to the SFT weights
(out/sft by default).

    python trainer/train_dpo.py --data_path data/processed/dpo_chinese.jsonl --batch_size 8 ...

The same command as `minillm dpo`; flags and paths as in trainer/train_pretrain.py (`--help`).
"""

import sys
from pathlib import Path

# Run from a checkout as the seed's scripts were (`python trainer/train_dpo.py`): the checkout's
# packages come first, whether or not the project is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minillm_cli.train import main_dpo  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_dpo(sys.argv[1:]))
