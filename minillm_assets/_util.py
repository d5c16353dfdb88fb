"""Small helpers shared by the asset modules: clear failures and UI metadata."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from minillm_core.errors import MiniLLMError, MissingArtifactError, is_retryable

MODULE = "minillm_assets"
CHECKOUT = Path(__file__).resolve().parents[1]


def build_command(asset: str) -> str:
    return f"dagster asset materialize -m {MODULE} --select '*{asset}'"


def code_version(*modules: str) -> str:
    """A code version from the content of the core code an asset runs (every source file of the
    named modules and packages), so the UI marks an asset stale exactly when that code changed;
    nobody bumps a version by hand."""
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ImportError(f"code_version: no module {name!r}")
        files = (
            [Path(spec.origin)]
            if not spec.submodule_search_locations
            else sorted(
                f
                for d in spec.submodule_search_locations
                for f in Path(d).rglob("*")
                if f.suffix in (".py", ".jinja")
            )
        )
        for f in files:
            digest.update(f.relative_to(CHECKOUT).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


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
    """Turn the core's errors into a Dagster Failure carrying the message alone, and decide
    retries from the error's type: only what can succeed on a second try (a resource that ran
    out, an interrupted run that resumes) respects the asset's retry policy. A NaN loss at the
    same seed, bad settings or bad data fail at once; so does any error that is not ours (a bug
    would only repeat), which keeps its traceback as the Failure's cause."""
    try:
        yield
    except dg.Failure:
        raise
    except MissingArtifactError as exc:
        raise dg.Failure(
            description=f"{asset}: {exc}. Build what it needs with: {build_command(asset)}",
            allow_retries=False,
        ) from exc
    except MiniLLMError as exc:
        # Our errors say what went wrong and what to change in their one line: no traceback.
        advice = getattr(exc, "advice", None)
        raise dg.Failure(
            description=f"{asset}: {exc}",
            allow_retries=is_retryable(exc),
            metadata={"advice": advice} if advice else None,
        ) from None
    except (ValueError, FileNotFoundError) as exc:
        raise dg.Failure(description=f"{asset}: {exc}", allow_retries=False) from exc
    except Exception as exc:
        raise dg.Failure(
            description=f"{asset}: {type(exc).__name__}: {exc}", allow_retries=False
        ) from exc


def check_result(problems: list[str]) -> dg.AssetCheckResult:
    """An asset check's result from a core check function's list of problems (empty = pass)."""
    return dg.AssetCheckResult(
        passed=not problems, metadata={"problems": dg.MetadataValue.json(problems[:20])}
    )


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
            out[key] = (
                dg.MetadataValue.md(value) if key.endswith("_md") else dg.MetadataValue.text(value)
            )
        elif value is None:
            continue
        else:
            out[key] = dg.MetadataValue.json(value)
    return out
