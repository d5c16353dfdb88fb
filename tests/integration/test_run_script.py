"""scripts/run.sh and scripts/run_cn_pipeline.sh as a user runs them: `--help` lists the flags and
the environment, the profile flags, and a gpu run on a machine without CUDA stopping at the
device check (after setup, before the mix) in one line, with and without uv on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

RUN = REPO / "scripts" / "run.sh"
UV_RUN = REPO / "scripts" / "run_cn_pipeline.sh"


def bash(script: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 120):
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_every_flag_and_environment_variable():
    res = bash(RUN, "--help")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for flag in ("--profile NAME", "--smoke-test", "--dry-run", "-h, --help"):
        assert f"  {flag}" in out, flag
    for name in ("smoke:", "cpu:", "gpu:"):
        assert name in out
    for var in (
        "MINILLM_PROFILE",
        "PRETRAIN_ARGS",
        "SFT_ARGS",
        "DPO_ARGS",
        "MINILLM_ROOT",
        "TF_DIR",
        "MINILLM_LOG",
        "DAGSTER_HOME",
        "PYTHON",
        "VENV_DIR",
        "ENABLE_RUSTBPE",
        "MINILLM_ALLOCATOR",
    ):
        assert f"\n  {var} " in out, var
    assert "set -euo" not in out  # not lines of code
    assert bash(UV_RUN, "--help").stdout == out


@pytest.mark.parametrize(
    ("args", "profile"),
    [
        (["--smoke-test"], "smoke"),
        (["--profile", "cpu"], "cpu"),
        (["--profile=gpu"], "gpu"),
        ([], "gpu"),
    ],
)
def test_profile_flags(args, profile):
    res = bash(RUN, *args, "--dry-run", env={"MINILLM_PROFILE": ""} if not args else None)
    assert res.returncode == 0, res.stderr
    assert f"minillm_assets.pipeline --profile {profile} " in res.stdout


def test_unknown_option_is_refused():
    res = bash(RUN, "--fast")
    assert res.returncode == 2 and "unknown option --fast (try --help)" in res.stderr


def fake_venv(tmp_path: Path) -> Path:
    """A venv folder whose python is the test's interpreter and whose install stamp is current,
    so scripts/setup.sh installs nothing (the stamp formula is setup.sh's)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    stamp = subprocess.run(
        [
            "bash",
            "-c",
            "cat pyproject.toml requirements.lock requirements-dev.lock rustbpe/Cargo.toml "
            "rustbpe/pyproject.toml $(find rustbpe/src -type f | sort) | sha256sum | cut -c1-16",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (venv / ".deps_installed").write_text(f"{stamp}-rustbpe=auto\n")
    return venv


def no_cuda_env(tmp_path: Path, path: str) -> dict[str, str]:
    return {
        "VENV_DIR": str(fake_venv(tmp_path)),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "MINILLM_ROOT": str(tmp_path / "root"),
        "CUDA_VISIBLE_DEVICES": "",
        "PATH": path,
        "ENABLE_RUSTBPE": "",
    }


def _path_without(tool: str) -> str:
    """PATH minus every folder holding `tool`."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if not (Path(d) / tool).exists())


@pytest.mark.parametrize("script", [RUN, UV_RUN], ids=["run.sh", "run_cn_pipeline.sh"])
def test_gpu_profile_without_cuda_stops_at_the_device_check(tmp_path, script):
    env = no_cuda_env(tmp_path, _path_without("uv"))
    env.pop("ENABLE_RUSTBPE")
    res = bash(script, "--profile", "gpu", env=env)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert err[-1].startswith("error: the gpu profile needs CUDA; no CUDA device here"), err
    assert "scripts/run.sh --profile cpu" in err[-1]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "root" / "data").exists()  # stopped before the mix
    if script == UV_RUN:
        assert "uv not found: setting up with python3 -m venv and pip" in res.stdout


def test_a_missing_allocator_library_stops_before_any_work(tmp_path):
    env = {**no_cuda_env(tmp_path, _path_without("uv")), "MINILLM_ALLOCATOR": "/nonexistent/lib.so"}
    res = bash(RUN, "--profile", "cpu", env=env)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == (
        "error: MINILLM_ALLOCATOR=/nonexistent/lib.so: no such library "
        "(use auto, system or a library path)"
    )
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "root" / "data").exists()
