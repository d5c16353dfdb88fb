#!/usr/bin/env python
"""Export a checkpoint as a HuggingFace Llama folder: same as `minillm export-hf`.

python scripts/export_hf.py --checkpoint out/dpo --tokenizer out/tokenizer --out out/hf
"""

import sys

from minillm_cli.export import main

if __name__ == "__main__":
    sys.exit(main())
