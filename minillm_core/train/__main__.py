"""`python -m minillm_core.train RANK_CONFIG.json` (one torchrun rank) and
`python -m minillm_core.train launch ...` (torchrun with a failure report); see train.ddp."""

import sys

from torch.distributed.elastic.multiprocessing.errors import record

from minillm_core.train.ddp import main

if __name__ == "__main__":
    # @record: an exception in a rank lands in torchrun's error file, so the job's failure report
    # carries its message, not only an exit code.
    sys.exit(record(main)())
