"""scripts/prod.sh run as a subprocess: split from tests/unit/test_deploy.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def test_prod_script_keeps_the_postgres_home_apart_from_the_local_one(tmp_path):
    """setup.sh (stubbed here: the real one installs) prepares the local SQLite home in
    DAGSTER_HOME; prod.sh must hand it none of the user's Postgres home, then use that home."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "prod.sh", tmp_path / "scripts" / "prod.sh")
    (tmp_path / "scripts" / "setup.sh").write_text(
        f'VENV_DIR="{Path(sys.executable).parent.parent}"\n'
        'echo "setup saw DAGSTER_HOME=${DAGSTER_HOME:-unset}"\n'
    )
    home = tmp_path / "pg_home"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(REPO),
        "DAGSTER_PG_PASSWORD": "x",
        "DAGSTER_PG_HOST": "localhost",
        "DAGSTER_PG_PORT": "1",
    }
    proc = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "prod.sh"), "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "setup saw DAGSTER_HOME=unset" in proc.stdout, proc.stdout
    assert proc.returncode == 1 and proc.stderr.startswith(
        "error: cannot open the Dagster instance: PostgreSQL at localhost:1"
    )
    assert (home / "dagster.yaml").read_text() == (DEPLOY / "dagster.yaml").read_text()
