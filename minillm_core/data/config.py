"""The settings of the data mix (`MixConfig`, defaults: the seed's) and the per-output quotas.

Paths in a `MixConfig` are configured, not typed: a relative `sources_dir` resolves under the
project root and a relative `samples_dir` under the checkout (`minillm_core.layout`), never
against the current directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from minillm_core.config import CoreConfig
from minillm_core.data.formats import FORMATS
from minillm_core.data.readers import CONTAINERS
from minillm_core.errors import ConfigError
from minillm_core.layout import SAMPLES_DIR, SOURCES_DIR
from minillm_core.schema import DEFAULT_CONTEXT, STAGES, Stage

Output = Stage
OUTPUTS: tuple[str, ...] = STAGES


class SourceOverride(CoreConfig):
    """Force the container and/or record format of the files a glob matches (else detected)."""

    container: str | None = Field(None, description="one of " + ", ".join(CONTAINERS))
    format: str | None = Field(None, description="one of " + ", ".join(FORMATS))

    @field_validator("container")
    @classmethod
    def _container(cls, v: str | None) -> str | None:
        if v is not None and v not in CONTAINERS:
            raise ValueError(f"unknown container {v!r}; allowed: {', '.join(CONTAINERS)}")
        return v

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        if v is not None and v not in FORMATS:
            raise ValueError(f"unknown format {v!r}; allowed: {', '.join(FORMATS)}")
        return v


class CategoryConfig(CoreConfig):
    """One category of the mix: where its files are, how many records, which outputs it feeds."""

    sources: list[str] = Field(description="globs relative to sources_dir (and samples_dir)")
    target: int = Field(ge=1, description="distinct-draw quota per output, before `repeat`")
    outputs: list[Output] = Field(min_length=1)
    repeat: int = Field(
        1,
        ge=1,
        description="each drawn record appears this many times (identity: 2, as nanochat's SFT)",
    )
    format: str | None = Field(None, description="record format for every file (else detected)")
    overrides: dict[str, SourceOverride] = Field(
        default_factory=dict, description="file glob (relative to its directory) -> override"
    )
    fill_placeholders: bool = Field(
        False, description="fill {{name}}/{{author}} from model_name/model_author; refuse others"
    )

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        return SourceOverride._format(v)


def _default_categories() -> dict[str, CategoryConfig]:
    # The seed's quotas; every category also looks for a top-level file named after it, so
    # dropping `identity_conversations.jsonl` into data/chinese/ is enough.
    def cat(
        name: str,
        target: int,
        outputs: list[Output],
        exts: tuple[str, ...] = (".json*",),
        **kw: Any,
    ) -> CategoryConfig:
        globs = [f"{name}/**/*{e}" for e in exts] + [f"{name}*{e}" for e in exts]
        return CategoryConfig(sources=globs, target=target, outputs=outputs, **kw)

    return {
        "general": cat("general", 460_000, ["pretrain", "sft"]),
        "knowledge": cat("knowledge", 100_000, ["pretrain", "sft"], (".json*", ".csv")),
        "math": cat("math", 8_000, ["pretrain", "sft"]),
        "identity": cat("identity", 1_000, ["sft"], repeat=2, fill_placeholders=True),
        "preference": cat("preference", 60_000, ["dpo"]),
    }


class MixConfig(CoreConfig):
    """Settings of the data mix (defaults: the seed's)."""

    sources_dir: Path = Field(Path(SOURCES_DIR), description="the user's sources")
    samples_dir: Path = Field(
        Path(SAMPLES_DIR),
        description="shipped samples, used per category when sources_dir has none for it",
    )
    allow_samples: bool = Field(True, description="False: a category without user files fails")
    categories: dict[str, CategoryConfig] = Field(default_factory=_default_categories)
    seed: int = 42
    max_records: dict[Output, int] = Field(
        default_factory=dict,
        description="cap per output; the quotas feeding it are scaled "
        "down proportionally (smoke: 64/16/8)",
    )
    heldout_fraction: float = Field(
        0.01, ge=0.0, lt=1.0, description="per category, of the distinct records used"
    )
    heldout_min: int = Field(1, ge=0, description="held-out records per category, at least")
    max_bad_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="a file with more bad records than this fails the build"
    )
    dedup: bool = Field(
        True,
        description="drop exact duplicates per output (NFKC, whitespace "
        "collapsed, metadata ignored), across files and categories, before "
        "the held-out split",
    )
    decontam_window: int = Field(
        50,
        ge=0,
        description="characters: a training record sharing a window this long (normalised "
        "as the dedup key) with a held-out record is dropped before re-sampling; 0: off",
    )
    max_record_chars: int = Field(
        default_factory=lambda: default_record_chars(),
        ge=1,
        description="records with more characters of content are dropped, counted and named "
        "(default: 16 x the model's default context in tokens)",
    )
    max_repeat: int = Field(
        10,
        ge=1,
        description="no record is written more than this many times to fill a quota (before "
        "`repeat`); a quota that needs more is left unmet and reported",
    )
    files: dict[str, str] = Field(
        default_factory=dict,
        description="file (relative to sources_dir) -> category, for files no glob matches",
    )
    near_dedup: bool = Field(
        False,
        description="also drop near-duplicates (MinHash LSH over character 5-grams, with "
        "dedup on); the cpu and gpu profiles turn it on",
    )
    near_dedup_threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Jaccard similarity at which two records are near-duplicates",
    )
    model_name: str = Field("MiniLLM", min_length=1, description="fills {{name}} in identity data")
    model_author: str = Field(
        "MiniLLM 开源社区", min_length=1, description="fills {{author}} in identity data"
    )

    @field_validator("max_records")
    @classmethod
    def _caps(cls, v: dict[str, int]) -> dict[str, int]:
        for k, n in v.items():
            if n < 1:
                raise ValueError(f"max_records.{k} must be >= 1 (got {n})")
        return v

    @model_validator(mode="after")
    def _files(self) -> MixConfig:
        for f, cat in self.files.items():
            if cat not in self.categories:
                raise ValueError(
                    f"files.{f}: unknown category {cat!r}; allowed: {', '.join(self.categories)}"
                )
        return self

    @staticmethod
    def load_layer(path: Path | str) -> dict[str, Any]:
        """Settings from a JSON or YAML file (a layer for `MixConfig.resolve`)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(f"mix config {p}: {exc.strerror}") from None
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml  # only when a YAML file is given (a dagster dependency)

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml and json raise unrelated types
            raise ConfigError(f"mix config {p}: cannot parse: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("mix"), dict):
            data = data["mix"]  # a shared settings file with one section per concern
        if not isinstance(data, dict):
            raise ConfigError(f"mix config {p}: expected a mapping of settings")
        return data


RECORD_CHARS_PER_POSITION = 16


def default_record_chars() -> int:
    """16 characters per position of the model's default context: several rows' worth even at
    4 characters a token, so only records no row could hold the end of are dropped."""
    return DEFAULT_CONTEXT * RECORD_CHARS_PER_POSITION


def quotas(cfg: MixConfig, output: str) -> dict[str, int]:
    """Distinct draws per category feeding `output`, after the `max_records` cap.

    Under a cap C, records (quota x repeat) are split in proportion to the uncapped ones, every
    category keeping at least one draw (when C allows), rounded by largest remainder so the
    total is as close to C as the repeats allow without exceeding it.
    """
    cats = {n: c for n, c in cfg.categories.items() if output in c.outputs}
    cap = cfg.max_records.get(output)  # type: ignore[call-overload]
    if cap is None or sum(c.target * c.repeat for c in cats.values()) <= cap:
        return {n: c.target for n, c in cats.items()}
    weight = sum(c.target * c.repeat for c in cats.values())
    ideal = {n: cap * c.target / weight for n, c in cats.items()}  # draws, before repeats
    q = {n: min(cats[n].target, max(1, math.floor(x))) for n, x in ideal.items()}

    def used() -> int:
        return sum(q[n] * cats[n].repeat for n in q)

    # Categories forced up to one draw may push the total over; take back from the largest.
    while used() > cap and any(v > 1 for v in q.values()):
        big = max((n for n in q if q[n] > 1), key=lambda n: (q[n] * cats[n].repeat, n))
        q[big] -= 1
    for n in sorted(q, key=lambda n: (-(ideal[n] - math.floor(ideal[n])), n)):
        if used() + cats[n].repeat <= cap and q[n] < cats[n].target:
            q[n] += 1
    return q
