#!/usr/bin/env python
"""Talk to a checkpoint in the terminal: same as `minillm chat`.

python scripts/chat.py --checkpoint out/dpo --tokenizer out/tokenizer --temperature 0.6
"""

import sys

from minillm_cli.chat import main

if __name__ == "__main__":
    sys.exit(main())
