"""The byte-level BPE tokenizer: trained by `rustbpe` (Rust), served by tiktoken.

core       Tokenizer (alias RustBPETokenizer, nanochat's name), load_tokenizer, the files
render     conversations as ids and a loss mask
trainers   the Rust trainer, or the pure-Python reference when it is not built
reference  the pure-Python BPE trainer: the oracle the Rust trainer is tested against
corpus     the mixes' records as plain text, streamed and capped
quality    the quality figures and the asset check
training   TokenizerConfig and train_tokenizer
"""

from minillm_core.schema import BOS, SPECIAL_TOKENS
from minillm_core.tokenizer.core import (
    DEFAULT_PATTERN,
    META_FILE,
    PICKLE_FILE,
    RANKS_FILE,
    RustBPETokenizer,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)
from minillm_core.tokenizer.corpus import CorpusStats, iter_mix_texts, record_texts
from minillm_core.tokenizer.quality import (
    HELDOUT_EN,
    HELDOUT_ZH,
    TRICKY_TEXT,
    check_tokenizer,
    compression,
    gb2312_level1,
    quality_metadata,
    single_token_share,
)
from minillm_core.tokenizer.trainers import rust_module
from minillm_core.tokenizer.training import (
    TokenizerConfig,
    TokenizerReport,
    train_tokenizer,
)

__all__ = [
    "BOS",
    "DEFAULT_PATTERN",
    "HELDOUT_EN",
    "HELDOUT_ZH",
    "META_FILE",
    "PICKLE_FILE",
    "RANKS_FILE",
    "SPECIAL_TOKENS",
    "TRICKY_TEXT",
    "CorpusStats",
    "RustBPETokenizer",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerError",
    "TokenizerReport",
    "check_tokenizer",
    "compression",
    "gb2312_level1",
    "iter_mix_texts",
    "load_tokenizer",
    "quality_metadata",
    "record_texts",
    "rust_module",
    "single_token_share",
    "train_tokenizer",
]
