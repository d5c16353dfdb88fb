"""The allocator a CPU run gets: what `MINILLM_ALLOCATOR` selects, and that a process started with
the environment `minillm_core.allocator` builds (as scripts/run.sh starts the pipeline) runs on
it, checked in the child's own memory map."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from minillm_core import allocator
from minillm_core.errors import ConfigError
from tests.conftest import require_tcmalloc

PROBE = "from minillm_core import allocator; print(allocator.active())"


def _active_in_child(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_auto_preloads_tcmalloc_in_a_child() -> None:
    lib = require_tcmalloc()
    env = allocator.environment({**os.environ, allocator.ENV: "auto"})
    assert env["LD_PRELOAD"].split(":")[0] == lib
    assert _active_in_child(env) == "tcmalloc"


def test_system_takes_malloc_libraries_out_and_keeps_other_preloads() -> None:
    lib = require_tcmalloc()
    other = "/nonexistent/libother.so"
    env = allocator.environment({allocator.ENV: "system", "LD_PRELOAD": f"{lib}:{other}"})
    assert env["LD_PRELOAD"] == other
    assert "LD_PRELOAD" not in allocator.environment({allocator.ENV: "system", "LD_PRELOAD": lib})
    child_env = allocator.environment({**os.environ, allocator.ENV: "system", "LD_PRELOAD": lib})
    assert _active_in_child(child_env) == "system"


def test_the_shell_lines_run_sh_evaluates() -> None:
    """`eval "$(python -m minillm_core.allocator)"`, the line in scripts/run.sh."""
    require_tcmalloc()
    script = f'eval "$({sys.executable} -m minillm_core.allocator)"; {sys.executable} -c "{PROBE}"'
    for choice, want in (("auto", "tcmalloc"), ("system", "system")):
        env = {**os.environ, allocator.ENV: choice}
        out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == want


def test_a_missing_library_is_refused_naming_the_variable(tmp_path) -> None:
    missing = str(tmp_path / "libnone.so")
    with pytest.raises(ConfigError, match=f"{allocator.ENV}=.*no such library"):
        allocator.environment({allocator.ENV: missing})
    out = subprocess.run(
        [sys.executable, "-m", "minillm_core.allocator"],
        env={**os.environ, allocator.ENV: missing},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and not out.stdout
    assert (
        out.stderr
        == f"error: {allocator.ENV}={missing}: no such library (use auto, system or a library path)\n"
    )


def test_the_log_line_says_how_to_get_tcmalloc_without_it() -> None:
    line = allocator.describe()
    if allocator.active() == "system":
        assert "LD_PRELOAD=" in line or "apt-get install libtcmalloc-minimal4" in line
    else:
        assert line == f"allocator: {allocator.active()}"
