"""Build the Chinese pretrain / SFT / DPO mixes, as the seed's script did.

    python scripts/build_chinese_mix.py --output-dir data/processed [--dry-run] [--profile smoke]

The same command as `minillm mix`; every option is documented by `--help`. The work is done by
`minillm_core.mix` (installed with the project), so this file only forwards the arguments.
"""

import sys

from minillm_core.mix import main

if __name__ == "__main__":
    sys.exit(main())
