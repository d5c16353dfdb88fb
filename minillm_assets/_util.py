"""Small helpers shared by the asset modules: clear failures and UI metadata."""

from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from minillm_core.artifacts import ArtifactError, MissingArtifactError
from minillm_core.config import ConfigError

MODULE = "minillm_assets"


def build_command(asset: str) -> str:
    return f"dagster asset materialize -m {MODULE} --select '*{asset}'"


def need(path: Path, upstream: str, asset: str) -> Path:
    """Fail with one clear line when an upstream asset's artifact is not on disk."""
    if not path.exists():
        raise dg.Failure(
            description=f"{asset}: upstream asset '{upstream}' has not been materialized "
            f"({path} is missing). Build it and everything it needs with: {build_command(asset)}",
            allow_retries=False,
        )
    return path


@contextlib.contextmanager
def user_errors(asset: str) -> Iterator[None]:
    """Turn the core's user-facing errors (bad config, bad input, missing files) into a Dagster
    Failure carrying the message alone; programming errors keep their traceback."""
    try:
        yield
    except MissingArtifactError as exc:
        raise dg.Failure(
            description=f"{asset}: {exc}. Build what it needs with: {build_command(asset)}",
            allow_retries=False) from exc
    except (ConfigError, ArtifactError, ValueError, FileNotFoundError) as exc:
        raise dg.Failure(description=f"{asset}: {exc}", allow_retries=False) from exc


def check_result(problems: list[str]) -> dg.AssetCheckResult:
    """An asset check's result from a core check function's list of problems (empty = pass)."""
    return dg.AssetCheckResult(passed=not problems,
                               metadata={"problems": dg.MetadataValue.json(problems[:20])})


def image_md(png: Path | str, title: str) -> dg.MetadataValue:
    """A PNG inlined in markdown metadata: the asset page shows the picture itself."""
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{data})")


def to_metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """Core report metadata (JSON-able) -> Dagster metadata. Numbers stay numbers so the UI
    plots them across materializations; nested values become JSON; `*_md` keys render as
    markdown; paths become path links."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            out[key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[key] = dg.MetadataValue.float(value if math.isfinite(value) else float("nan"))
        elif isinstance(value, Path):
            out[key] = dg.MetadataValue.path(str(value))
        elif isinstance(value, str):
            out[key] = dg.MetadataValue.md(value) if key.endswith("_md") else \
                dg.MetadataValue.text(value)
        elif value is None:
            continue
        else:
            out[key] = dg.MetadataValue.json(value)
    return out
