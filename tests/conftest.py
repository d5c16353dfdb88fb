"""Shared fixtures. `smoke_graph` materializes the whole graph once per test session, in-process
with `dagster.materialize`, on the shipped samples with the smoke profile, into a temporary
project layout; tests that need real artifacts (a trained tokenizer, checkpoints) reuse it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """A system component the test needs is missing: skip, except in CI (`CI` set, as .ci/run
    sets it, after installing them), where a skip would pass a test that never ran."""
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so this fails instead of skipping")
    pytest.skip(reason)


def require_tcmalloc() -> str:
    from minillm_core.allocator import find_tcmalloc

    lib = find_tcmalloc()
    if lib is None:
        skip_or_fail("tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4)")
    return str(lib)


@dataclass
class SmokeGraph:
    root: Path
    resource: object  # MiniLLMResource
    result: object  # dagster ExecuteInProcessResult


def smoke_resource(root: Path, **overrides: str):
    from minillm_assets.resources import MiniLLMResource

    return MiniLLMResource(
        profile="smoke",
        sources_dir=str(root / "sources"),  # empty: every category falls back to the samples
        samples_dir=str(REPO / "dataset"),
        processed_dir=str(root / "processed"),
        out_dir=str(root / "out"),
        tf_dir=str(root / "tf_dir"),
        **overrides,
    )


@pytest.fixture(scope="session")
def smoke_graph(tmp_path_factory: pytest.TempPathFactory) -> SmokeGraph:
    import dagster as dg

    from minillm_assets.definitions import all_assets, all_checks

    root = tmp_path_factory.mktemp("smoke")
    (root / "sources").mkdir()
    resource = smoke_resource(root)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*all_assets, *all_checks],
            resources={"minillm": resource},
            instance=instance,
            raise_on_error=True,
        )
        yield SmokeGraph(root=root, resource=resource, result=result)


def pytest_terminal_summary(terminalreporter):
    """The reliability suite's counts (trials, kills survived, inputs fuzzed, files scanned)."""
    from tests import faults_helpers

    line = faults_helpers.take_summary()
    if line:
        terminalreporter.write_sep("=", "reliability suite")
        terminalreporter.write_line(line)
