"""Small helpers shared by the asset modules: clear failures and UI metadata."""

from __future__ import annotations

import ast
import base64
import contextlib
import functools
import hashlib
import importlib.util
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from minillm_core.errors import MiniLLMError, MissingArtifactError, is_retryable

MODULE = "minillm_assets"


def build_command(asset: str) -> str:
    return f"dagster asset materialize -m {MODULE} --select '*{asset}'"


# The packages whose imports code_version follows: the code an asset runs. The Dagster glue
# (minillm_assets) is hashed only where an asset names its module, so one asset's glue does not
# make every other asset stale.
FOLLOW = ("minillm_core", "minillm_cli")
# Every version handed out, with the modules it came from (tests recompute them).
CODE_VERSIONS: dict[str, tuple[str, ...]] = {}


def code_version(*modules: str) -> str:
    """A code version from the content of the code an asset runs: the named modules' source
    files, every `minillm_core`/`minillm_cli` module they import (transitively, function-level
    imports included) and the package data beside them (the chat template), so the UI marks an
    asset stale exactly when that code changed; nobody bumps a version by hand."""
    digest = hashlib.sha256()
    for f in sorted(_closure(modules, FOLLOW)):
        digest.update(_relative(f).encode() + b"\0" + f.read_bytes())
    version = digest.hexdigest()[:16]
    CODE_VERSIONS[version] = modules
    return version


def _closure(modules: tuple[str, ...], follow: tuple[str, ...]) -> set[Path]:
    files: set[Path] = set()
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ImportError(f"code_version: no module {name!r}")
        src = Path(spec.origin)
        files.add(src)
        if spec.submodule_search_locations:  # a package: its data files count too
            files.update(f for f in src.parent.iterdir() if f.suffix == ".jinja")
        if name in modules or name.split(".")[0] in follow:
            found = _imports(src, src.stat().st_mtime_ns)
            todo.extend(m for m in found if m.split(".")[0] in follow and _exists(m))
    return files


@functools.cache
def _imports(src: Path, mtime_ns: int) -> frozenset[str]:
    """Absolute module names `src` imports; `from a import b` gives `a` and `a.b`."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(src.read_bytes(), str(src))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return frozenset(out)


@functools.cache
def _exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _relative(f: Path) -> str:
    """The file's path from the folder holding its top-level package (same in a checkout and in
    an installed copy)."""
    for parent in f.parents:
        if not (parent / "__init__.py").is_file():
            return f.relative_to(parent).as_posix()
    return f.as_posix()


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
