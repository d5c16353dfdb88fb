"""The seed's command name for `minillm tokens`: export one stage's token tensors.

    python scripts/export_embeddings.py --stage pretrain --input data/processed/pretrain_chinese.jsonl \
        --output out/tokens/pretrain --tokenizer out/tokenizer --max-length 2048

Same options as `minillm tokens --help` (`--stage`, `--input`, `--output`, `--tokenizer`,
`--max-length`, `--layout`, `--bos-token`, `--append-eos`, `--eos-token`, `--dtype`, ...). The
work is done by `minillm_core.tokens` through the front end `minillm_cli.tokens`; this file only
keeps the seed's entry point alive.
"""

import sys

from minillm_cli.tokens import main

if __name__ == "__main__":
    sys.exit(main())
