"""Build the Chinese pretrain / SFT / DPO mixes, as the seed's script did.

    python scripts/build_chinese_mix.py --output-dir data/processed [--dry-run] [--profile smoke]

The same command as `minillm mix`; every option is documented by `--help`. The work is done by
`minillm_core.data` (installed with the project), so this file only forwards the arguments.
Defaults are under the project root (`MINILLM_ROOT`, else the checkout), not the current folder.
"""

import sys

from minillm_cli.mix import main

if __name__ == "__main__":
    sys.exit(main())
