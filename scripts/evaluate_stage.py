#!/usr/bin/env python
"""The seed's per-stage evaluation command, kept under its old name: same as `minillm eval`.

python scripts/evaluate_stage.py --stage sft --checkpoint out/sft --max-samples 100
python scripts/evaluate_stage.py --summary 3     # the last three results as a table
"""

import sys

from minillm_cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
