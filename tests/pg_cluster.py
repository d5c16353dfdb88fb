"""A throwaway PostgreSQL server for tests: `initdb` in a temporary folder, `pg_ctl start` on a free
loopback port (its socket in the same folder), `pg_ctl stop` and the folder removed after.

The server binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/<major>/bin`;
.ci/run installs it). PostgreSQL refuses to run as root, so when the tests run as root the
cluster belongs to `nobody` (the folder is chowned and the binaries run through `runuser`).
Without the binaries the caller skips, except in CI (`CI` set), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import skip_or_fail
from tests.ui_launcher import free_port

SUPERUSER = "minillm"
PASSWORD = "minillm-test-password"
DB_NAME = "dagster"


def pg_bindir() -> Path | None:
    """The newest installed server's bin folder, or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def require_postgres() -> Path:
    bindir = pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        reason = (
            "PostgreSQL server binaries not found (Debian: apt-get install postgresql; "
            ".ci/run installs them)"
        )
        skip_or_fail(reason)
    return bindir


@dataclass
class PgCluster:
    bindir: Path
    datadir: Path
    port: int
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    password: str = PASSWORD
    db_name: str = DB_NAME

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.db_name,
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
        }


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")


@contextlib.contextmanager
def pg_cluster(bindir: Path) -> Iterator[PgCluster]:
    """A started cluster with a password-protected superuser and an empty `dagster` database."""
    base = Path(tempfile.mkdtemp(prefix="minillm_pg_"))
    datadir = base / "data"
    datadir.mkdir()
    pwfile = base / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        for p in (base, datadir, pwfile):
            shutil.chown(p, "nobody", "nogroup" if _group_exists("nogroup") else None)
    cluster = PgCluster(bindir=bindir, datadir=datadir, port=free_port())
    started = False
    try:
        # scram: a wrong password is refused (trust would let any password in)
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ],
            "initdb",
        )
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={cluster.port} "
            f"-c unix_socket_directories={datadir} -c fsync=off -c max_connections=200"
        )
        _run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(datadir),
                "-o",
                opts,
                "-l",
                str(base / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            "pg_ctl start",
        )
        started = True
        _create_db(cluster)
        yield cluster
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run(
                    [str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop"],
                    "pg_ctl stop",
                )
        shutil.rmtree(base, ignore_errors=True)


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _create_db(cluster: PgCluster) -> None:
    import psycopg2

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = psycopg2.connect(
                host=cluster.host,
                port=cluster.port,
                user=cluster.user,
                password=cluster.password,
                dbname="postgres",
                connect_timeout=5,
            )
            break
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{cluster.db_name}"')
    conn.close()
