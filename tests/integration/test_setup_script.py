"""scripts/setup.sh on a nearly full disk: it warns before pip starts and names the venv and the
free space when pip fails, instead of leaving only pip's bare "[Errno 28]".

The venv's `python` and `df` are stand-ins on PATH (a real first install downloads GBs), so the
script's own lines run unchanged: the free-space reading, the warning and the failure message.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.faults_helpers import REPO

SETUP = REPO / "scripts" / "setup.sh"


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


def _run_setup(tmp_path: Path, free_kb: int) -> subprocess.CompletedProcess:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    # pip fails as a full disk makes it fail; the log shows it was the install that ran.
    _stub(
        venv / "bin" / "python",
        f'echo "$@" >> {tmp_path}/pip.log\n'
        'echo "ERROR: Could not install packages due to an OSError: [Errno 28] '
        'No space left on device" >&2\nexit 1',
    )
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    _stub(
        fake_bin / "df",
        "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        f"echo '/dev/vda 264000000 263000000 {free_kb} 99% /'",
    )
    env = {
        **os.environ,
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "VENV_DIR": str(venv),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    return subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=60)


def test_low_disk_warns_and_a_failed_install_says_where(tmp_path):
    proc = _run_setup(tmp_path, free_kb=3 * 1024 * 1024)
    assert proc.returncode == 1
    assert "install -q --require-hashes -r" in (tmp_path / "pip.log").read_text()
    assert "WARNING: only 3 GB free under" in proc.stderr
    assert f"pip could not install MiniLLM into {tmp_path / 'venv'} (3 GB were free" in proc.stderr
    assert not (tmp_path / "venv" / ".deps_installed").exists()  # the next run tries again


def test_enough_disk_gives_no_warning(tmp_path):
    proc = _run_setup(tmp_path, free_kb=50 * 1024 * 1024)
    assert proc.returncode == 1
    assert "WARNING" not in proc.stderr
    assert "(50 GB were free" in proc.stderr
