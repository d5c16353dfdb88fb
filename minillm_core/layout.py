"""Where every artifact lives: the only module that builds an artifact path.

One root decides (the Dagster resource's `root`, else `MINILLM_ROOT`, else the checkout this
package sits in); every default folder is relative to it and nothing resolves against the current
directory unless the user typed the path (`user_path`). Relocatable artifacts follow from this:
records and sidecars name files relative to the root (`Layout.relative`), never absolutely.

    <root>/data/chinese/                 the user's sources (git-ignored)
    <checkout>/dataset/                  shipped samples, per category when the user has none
    <root>/data/processed/<out>_chinese[_heldout].jsonl   mixes
    <root>/out/tokenizer/                tokenizer
    <root>/out/tokens/<stage>/           token shards
    <root>/out/<stage>/                  checkpoints
    <root>/out/hf/                       HuggingFace export
    <root>/out/logs/                     the run script's full logs and the run's step times
    <root>/out/run_summary.md            the last run's summary table
    <tf>/eval_results.jsonl, <tf>/eval, <tf>/<stage>   eval results and TensorBoard logs
                                         (tf: $TF_DIR relative to the root, else <root>/../tf_dir)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The checkout minillm_core lives in: the shipped samples are found here whatever the root.
CHECKOUT = Path(__file__).resolve().parents[1]

SOURCES_DIR = "data/chinese"
SAMPLES_DIR = "dataset"
PROCESSED_DIR = "data/processed"
OUT_DIR = "out"


def project_root() -> Path:
    """`MINILLM_ROOT`, else the checkout (never the current directory)."""
    if env := os.environ.get("MINILLM_ROOT"):
        return Path(env).expanduser().resolve()
    return CHECKOUT


def user_path(path: str | os.PathLike[str]) -> Path:
    """A path the user typed (a flag, an argument): relative to where they typed it."""
    return Path(path).expanduser().resolve()


def _under(base: Path, path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


@dataclass(frozen=True)
class Layout:
    """The artifact folders of one project root."""

    root: Path
    sources: Path
    samples: Path
    processed: Path
    out: Path
    tf: Path

    @classmethod
    def at(
        cls,
        root: str | os.PathLike[str] | None = None,
        *,
        sources_dir: str = SOURCES_DIR,
        samples_dir: str = SAMPLES_DIR,
        processed_dir: str = PROCESSED_DIR,
        out_dir: str = OUT_DIR,
        tf_dir: str = "",
    ) -> Layout:
        """The layout under `root` (default: `project_root()`). Relative folders resolve against
        the root, except `samples_dir`, which ships with the code and resolves against the
        checkout. An empty `tf_dir` means `$TF_DIR` (relative to the root), else `../tf_dir`."""
        base = Path(root).expanduser().resolve() if root else project_root()
        tf = (
            _under(base, tf_dir)
            if tf_dir
            else _under(base, os.environ["TF_DIR"])
            if os.environ.get("TF_DIR")
            else base.parent / "tf_dir"
        )
        return cls(
            root=base,
            sources=_under(base, sources_dir),
            samples=_under(CHECKOUT, samples_dir),
            processed=_under(base, processed_dir),
            out=_under(base, out_dir),
            tf=tf.resolve(),
        )

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """A configured (not typed) path: absolute as given, else under the root."""
        return _under(self.root, path)

    def relative(self, path: str | os.PathLike[str]) -> str:
        """`path` as recorded in artifacts: relative to the root (or the checkout, for shipped
        samples) with forward slashes; absolute only when it lies outside both."""
        p = Path(path).resolve()
        for base in (self.root, CHECKOUT):
            if p == base or base in p.parents:
                return p.relative_to(base).as_posix()
        return p.as_posix()

    def mix_path(self, output: str, heldout: bool = False) -> Path:
        return self.processed / f"{output}_chinese{'_heldout' if heldout else ''}.jsonl"

    @property
    def tokenizer_dir(self) -> Path:
        return self.out / "tokenizer"

    def tokens_dir(self, stage: str) -> Path:
        return self.out / "tokens" / stage

    def checkpoint_dir(self, stage: str) -> Path:
        return self.out / stage

    @property
    def hf_dir(self) -> Path:
        return self.out / "hf"

    @property
    def logs_dir(self) -> Path:
        return self.out / "logs"

    @property
    def step_times_file(self) -> Path:
        """Seconds per Dagster step of the last pipeline run (the summary's time column)."""
        return self.logs_dir / "step_times.json"

    @property
    def summary_file(self) -> Path:
        return self.out / "run_summary.md"

    @property
    def results_file(self) -> Path:
        return self.tf / "eval_results.jsonl"

    @property
    def eval_tensorboard_dir(self) -> Path:
        return self.tf / "eval"

    def tensorboard_dir(self, stage: str) -> Path:
        """A training stage's TensorBoard logs."""
        return self.tf / stage
