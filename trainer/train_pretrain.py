"""The seed's `trainer/train_pretrain.py`: pretraining from a JSONL mix or token tensors.

    python trainer/train_pretrain.py --data_path data/processed/pretrain_chinese.jsonl --batch_size 8 ...

A thin front end, the same command as `minillm pretrain`: the seed's flags (`--data_path`, `--out_dir`,
`--epochs`, `--batch_size`, `--learning_rate`, `--device`, `--dtype`, `--accumulation_steps`,
`--max_seq_len`, `--save_interval`, `--log_interval`, `--hidden_size`, `--num_hidden_layers`, ...;
`--help` lists them all), the loop and the checkpoint format are those of `minillm_cli.train` and
`minillm_core.train`. A JSONL mix is tokenized with the project's trained tokenizer (out/tokenizer
unless `--tokenizer_dir`); unset paths come from the project layout.
"""

import sys
from pathlib import Path

# Run from a checkout as the seed's scripts were (`python trainer/train_pretrain.py`): the checkout's
# packages come first, whether or not the project is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minillm_cli.train import main_pretrain  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_pretrain(sys.argv[1:]))
