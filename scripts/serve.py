#!/usr/bin/env python
"""Serve a checkpoint with an OpenAI-compatible API: same as `minillm serve`.

python scripts/serve.py --checkpoint out/dpo --tokenizer out/tokenizer --host 127.0.0.1 --port 8000
"""

import sys

from minillm_cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
