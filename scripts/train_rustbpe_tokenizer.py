#!/usr/bin/env python3
"""Train the MiniLLM tokenizer from pretrain, SFT or DPO JSONL (the seed's script name).

Same command as `minillm tokenizer`; see `--help`. Example:

    .venv/bin/python scripts/train_rustbpe_tokenizer.py \\
        --data_path data/processed/pretrain_chinese.jsonl data/processed/sft_chinese.jsonl \\
        --out_dir out/tokenizer --vocab_size 6400
"""

import sys

from minillm_cli.tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
