"""The data stage: user sources in many formats -> the pretrain / SFT / DPO mixes.

readers   containers: sniff a file, stream its values (JSON Lines, arrays, CSV, lines)
formats   record schemas: detect one value's format, convert it to canonical fields
config    MixConfig (the settings) and the per-output quotas
scan      pass 1: find a category's files, validate and count every record
dedup     exact duplicates per output, dropped before the held-out split
sampling  which records are held out, which train, how often each
spool     pass 2: convert the chosen records, assemble the outputs
policy    per-record policies: control characters stripped, records over the size cap dropped
decontam  held-out decontamination by 50-character windows (mix and eval)
mix       build_mix: the steps, the sidecars
report    mix_report.json, the warnings about files, dry_run
check     check_mix: the asset check of a built mix
"""

from minillm_core.data.check import check_mix, check_mix_counts
from minillm_core.data.config import (
    OUTPUTS,
    CategoryConfig,
    MixConfig,
    Output,
    SourceOverride,
    quotas,
)
from minillm_core.data.decontam import clean_heldout
from minillm_core.data.mix import MixReport, build_mix
from minillm_core.data.readers import MixError, NotApplicable, RecordError
from minillm_core.data.report import dry_run
from minillm_core.data.scan import resolve_files

__all__ = [
    "OUTPUTS",
    "CategoryConfig",
    "MixConfig",
    "MixError",
    "MixReport",
    "NotApplicable",
    "Output",
    "RecordError",
    "SourceOverride",
    "build_mix",
    "check_mix",
    "check_mix_counts",
    "clean_heldout",
    "dry_run",
    "quotas",
    "resolve_files",
]
