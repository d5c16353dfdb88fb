"""Evaluation after every stage: numbers that mean the same thing across runs.

What is measured, per stage, on the held-out split of that stage's mix only (the mix writes
`data/processed/<stage>_chinese_heldout.jsonl`, a fixed seeded split no training stage reads):

- pretrain: held-out loss (mean next-token cross-entropy, nats), perplexity `exp(loss)`, and
  bits per byte: the summed loss in bits divided by the UTF-8 bytes those target tokens spell.
  Loss per token depends on the vocabulary (a bigger vocabulary packs more text into a token and
  so has a higher loss per token for the same model quality); loss per byte does not, so runs
  with different tokenizers compare (nanochat reports the same number). Special tokens spell no
  bytes and are left out of the bits-per-byte sums, as nanochat does. Plus greedy continuations
  of a few fixed text prefixes.
- sft: held-out masked loss (assistant tokens only, the SFT objective), greedy answers to a fixed
  prompt set whose identity probes ("你是谁？", "谁开发了你？") are scored against the configured
  name and author, and multiple-choice letter accuracy on held-out knowledge items: the model's
  likelihood of each option letter where the trained answer states it (right after
  `<|assistant_start|>` for "B. 北京", after the lead-in for the mix's "答案是 B：北京"), argmax
  wins. Scoring by letter likelihood instead of parsing generated text means a small model that
  rambles still gets a score, and the chance level (1 / number of options) is printed beside it.
- dpo: preference accuracy (share of held-out pairs where the policy's log-ratio over the
  reference, chosen minus rejected, is positive; a tie counts as a miss so an untrained policy
  equal to its reference scores 0, not 0.5), the mean reward margin `beta * that difference`,
  the policy's mean chosen / rejected log-probs, and the same prompt set.

Outputs: a small table printed to stdout; ONE JSON line appended to `results_file` (timestamp,
stage, checkpoint path and sha256, config, metrics, samples) under an exclusive `flock` and in a
single `write` on an `O_APPEND` descriptor, so concurrent evaluations never interleave; scalars
under `tensorboard_dir`; and `EvalReport.metadata` for the Dagster UI.

Everything is deterministic: greedy decoding, the first `max_samples` records in file order, and
seeded torch state. Asset checks call `check_eval` with thresholds held as data (the profile's
`eval_checks` preset); `evaluate` itself never asks which profile is active. Rows are scored up
to the checkpoint's context (`max_position_embeddings`) unless `max_seq_len` asks for less.

Modules: `config` (EvalConfig, EvalReport), `data` (held-out records -> rows and items),
`metrics` (the math), `scoring` (loops over batches, greedy samples), `results` (results file,
tables, TensorBoard), `checks` (thresholds), `run` (evaluate, run_eval, finish).
"""

from minillm_core.eval.checks import VALID_RANGES, check_eval, eval_thresholds
from minillm_core.eval.config import (
    DEFAULT_CONTINUATIONS,
    DEFAULT_FOREIGN_IDENTITIES,
    DEFAULT_PROMPTS,
    EvalConfig,
    EvalReport,
)
from minillm_core.eval.results import append_jsonl, print_latest, read_results
from minillm_core.eval.run import evaluate, finish, run_eval

__all__ = [
    "DEFAULT_CONTINUATIONS",
    "DEFAULT_FOREIGN_IDENTITIES",
    "DEFAULT_PROMPTS",
    "EvalConfig",
    "EvalReport",
    "VALID_RANGES",
    "append_jsonl",
    "check_eval",
    "eval_thresholds",
    "evaluate",
    "finish",
    "print_latest",
    "read_results",
    "run_eval",
]
