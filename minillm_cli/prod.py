"""Run Dagster the way a team runs it: the instance in PostgreSQL, and the webserver and the daemon
as two long-running processes (scripts/prod.sh is the command; docs/deploy.md the guide).

    python -m minillm_cli.prod check            # can the instance be opened? one line if not
    python -m minillm_cli.prod start [--port N]  # webserver + daemon, returns once both are up
    python -m minillm_cli.prod status
    python -m minillm_cli.prod stop

`DAGSTER_HOME` (default: `<project>/.dagster-prod`) holds `dagster.yaml`, copied from
`deploy/dagster.yaml` when missing, the processes' logs (`logs/`) and pid files (`run/`). The
connection comes from `DAGSTER_PG_HOST`, `DAGSTER_PG_PORT`, `DAGSTER_PG_DB`, `DAGSTER_PG_USERNAME`
(defaults below) and `DAGSTER_PG_PASSWORD` (no default).

Why a probe before Dagster opens the instance: dagster-postgres retries a failed connection for
about 12 s and then says only "too many retries for DB connection", and the webserver and the
daemon each print a traceback. The probe connects once with the same settings and turns the
server's answer into one line naming the host, port, database and user.

Signals: a process started from a shell script in the background inherits SIGINT/SIGTERM as
ignored, and Dagster's processes then never stop on SIGTERM. Each child gets the default handlers
back before it starts, in its own session, so `stop` can SIGTERM its whole process group (the
code servers and run workers it started go with it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from minillm_core.errors import ConfigError, MiniLLMError, ResourceError
from minillm_core.layout import CHECKOUT

PG_DEFAULTS = {
    "DAGSTER_PG_HOST": "localhost",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
}
PROCESSES = ("webserver", "daemon")
DAEMON_HEALTH = """query { instance { daemonHealth { allDaemonStatuses {
  daemonType required healthy } } } }"""


def default_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or CHECKOUT / ".dagster-prod")


def prepare_home(home: Path) -> None:
    """The instance folder: deploy/dagster.yaml unless one is there already (then it is kept, so
    local edits survive), and the first-visit dialog of the UI marked seen."""
    (home / ".nux").mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(CHECKOUT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    nux = home / ".nux" / "nux.yaml"
    if not nux.exists():
        nux.write_text("seen: 1\n")


def _resolve(value: Any, where: str) -> Any:
    if isinstance(value, Mapping) and set(value) == {"env"}:
        name = value["env"]
        if os.environ.get(name) is None:
            raise ConfigError(f"{where} reads ${name}, which is not set")
        return os.environ[name]
    return value


def pg_settings(home: Path) -> dict[str, Any]:
    """The `postgres_db` block of `home/dagster.yaml` with its `env:` values read, as Dagster
    reads them (the file is validated by Dagster's own instance schema first)."""
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(home))
    block = (config.get("storage") or {}).get("postgres") or {}
    db = block.get("postgres_db")
    if not db:
        raise ConfigError(
            f"{home / 'dagster.yaml'} has no storage.postgres.postgres_db block "
            f"(see deploy/dagster.yaml)"
        )
    return {k: _resolve(v, f"storage.postgres.postgres_db.{k}") for k, v in db.items()}


def _where(db: Mapping[str, Any]) -> str:
    return (
        f"PostgreSQL at {db.get('hostname')}:{db.get('port', 5432)}, database "
        f"{db.get('db_name')!r} (user {db.get('username')!r})"
    )


def probe(db: Mapping[str, Any], timeout_s: int = 5) -> None:
    """Connect once; a refused connection or login becomes one line naming the server."""
    import psycopg2

    try:
        conn = psycopg2.connect(
            host=db.get("hostname"),
            port=int(db.get("port", 5432)),
            dbname=db.get("db_name"),
            user=db.get("username"),
            password=db.get("password") or None,
            connect_timeout=timeout_s,
        )
    except psycopg2.Error as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = lines[0] if lines else type(exc).__name__
        # psycopg2 prefixes "connection to server at "h" (ip), port p failed:"; we name it once
        reason = reason.split(" failed: ", 1)[-1]
        raise ResourceError(
            f"cannot open the Dagster instance: {_where(db)}: {reason}",
            "start the server, or fix DAGSTER_PG_HOST/PORT/DB/USERNAME/PASSWORD",
        ) from None
    conn.close()


def open_instance(home: Path):
    """The instance of `home`, or a one-line error: the probe first, then Dagster itself (which
    creates or checks its tables)."""
    from dagster import DagsterInstance

    db = pg_settings(home)
    probe(db)
    try:
        return DagsterInstance.from_config(str(home))
    except Exception as exc:  # noqa: BLE001 (Dagster's errors here have no common type)
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ResourceError(
            f"cannot open the Dagster instance in {home}: {_where(db)}: {first}",
            "see the message above; `dagster instance migrate` after an upgrade",
        ) from None


# -- processes ---------------------------------------------------------------------------------
def _commands(workspace: Path, host: str, port: int) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "webserver": [
            py,
            "-m",
            "dagster_webserver",
            "-w",
            str(workspace),
            "-h",
            host,
            "-p",
            str(port),
        ],
        "daemon": [py, "-m", "dagster._daemon", "run", "-w", str(workspace)],
    }


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process left in the group; a process reparented to an init that
    does not reap would otherwise look alive forever."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def _pidfile(home: Path, name: str) -> Path:
    return home / "run" / f"{name}.pid"


def _read_pid(home: Path, name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(_pidfile(home, name).read_text().split()[0])
    return None


def graphql(
    url: str, query: str, variables: Mapping[str, Any] | None = None, timeout_s: float = 30
) -> dict[str, Any]:
    """POST a query to the webserver's /graphql; the whole answer (`data`, maybe `errors`)."""
    body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
    req = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.load(resp)


def _ready(url: str) -> bool:
    """The webserver answers and every daemon the instance needs has a fresh heartbeat."""
    try:
        statuses = graphql(url, DAEMON_HEALTH, timeout_s=10)["data"]["instance"]["daemonHealth"][
            "allDaemonStatuses"
        ]
    except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):
        return False
    return all(s["healthy"] for s in statuses if s["required"])


def _tail(path: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


def start(
    home: Path,
    workspace: Path,
    host: str = "127.0.0.1",
    port: int = 3000,
    ready_timeout_s: float = 240.0,
) -> str:
    """Start the webserver and the daemon against `home`; return the URL once both are up."""
    if any(status(home).values()):
        raise ConfigError(f"already running for {home} (`stop` first)")
    prepare_home(home)
    open_instance(home).dispose()  # the one-line error, before two processes print tracebacks
    (home / "logs").mkdir(exist_ok=True)
    (home / "run").mkdir(exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    procs = {}
    for name, cmd in _commands(workspace, host, port).items():
        with open(home / "logs" / f"{name}.log", "ab") as log:
            procs[name] = subprocess.Popen(
                cmd,
                cwd=workspace.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # this CLI has no threads: preexec_fn is safe
                preexec_fn=_default_signals,
            )  # noqa: PLW1509
        _pidfile(home, name).write_text(f"{procs[name].pid}\n")
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + ready_timeout_s
    while not _ready(url):
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            stop(home)
            why = f"{dead[0]} exited" if dead else f"not ready after {ready_timeout_s:.0f} s"
            log_path = home / "logs" / f"{dead[0] if dead else 'webserver'}.log"
            raise ResourceError(f"dagster {why}; log tail:\n{_tail(log_path)}", f"see {log_path}")
        time.sleep(1)
    return url


def _ours(pid: int) -> bool:
    """The pid still runs a Dagster process (not a stale pid file whose pid was reused)."""
    try:
        return b"dagster" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc").is_dir()  # no /proc: trust the pid file
    except OSError:
        return False


def stop(home: Path, grace_s: float = 30.0) -> list[str]:
    """SIGTERM both process groups, SIGKILL what is left after `grace_s`; names of those
    stopped. Both are signalled first, so they shut down in parallel."""
    groups = {}
    for name in PROCESSES:
        pid = _read_pid(home, name)
        if pid is not None and _ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
                groups[name] = pid
        _pidfile(home, name).unlink(missing_ok=True)
    deadline = time.monotonic() + grace_s
    while any(_group_alive(g) for g in groups.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pgid in groups.values():
        with contextlib.suppress(ProcessLookupError):
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
    return list(groups)


def status(home: Path) -> dict[str, int | None]:
    return {
        n: (pid if (pid := _read_pid(home, n)) and _ours(pid) and _group_alive(pid) else None)
        for n in PROCESSES
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/prod.sh", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("check", "start", "stop", "status"))
    p.add_argument(
        "--home",
        default=None,
        help="DAGSTER_HOME (default: $DAGSTER_HOME or <project>/.dagster-prod)",
    )
    p.add_argument("-w", "--workspace", default=str(CHECKOUT / "workspace.yaml"))
    p.add_argument("--host", default=os.environ.get("DAGSTER_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("DAGSTER_PORT", "3000")))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    home = Path(args.home).resolve() if args.home else default_home()
    for name, value in PG_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        if args.command == "check":
            prepare_home(home)
            open_instance(home).dispose()
            print(f"ok: {_where(pg_settings(home))}, instance {home}")
        elif args.command == "start":
            url = start(home, Path(args.workspace).resolve(), args.host, args.port)
            print(
                f"webserver at {url} and daemon running (instance {home}, logs in "
                f"{home / 'logs'}); stop with: scripts/prod.sh stop"
            )
        elif args.command == "stop":
            print(f"stopped: {', '.join(stop(home)) or 'nothing was running'}")
        else:
            print(json.dumps(status(home)))
    except MiniLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
