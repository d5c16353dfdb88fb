"""The seed's `trainer/train_full_sft.py`: supervised fine-tuning, starting from the pretrain weights
(out/pretrain by default).

    python trainer/train_full_sft.py --data_path data/processed/sft_chinese.jsonl --batch_size 8 ...

The same command as `minillm sft`; flags and paths as in trainer/train_pretrain.py (`--help`).
"""

import sys
from pathlib import Path

# Run from a checkout as the seed's scripts were (`python trainer/train_full_sft.py`): the checkout's
# packages come first, whether or not the project is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minillm_cli.train import main_sft  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_sft(sys.argv[1:]))
