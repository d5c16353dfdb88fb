"""Start and stop `dagster dev` for the browser test, isolated from the checkout's artifacts.

`dagster dev` started in the background ignores SIGINT and SIGTERM when it inherits ignored
signals (a shell's background job does), and it runs a webserver, a daemon and a code server as
children. So the server is started through this file run as a script: it restores the default
SIGINT/SIGTERM handlers and then `exec`s `python -m dagster dev`, in a new session (its own
process group). Stopping sends SIGTERM to the whole group (about 3 s on 2 cores), then SIGKILL
if anything is left after a grace period. Readiness is `GET /server_info` answering 200.

Isolation: a temporary `DAGSTER_HOME` (telemetry off, the first-visit dialog marked seen, the
training pool limited to one slot as `scripts/setup.sh` does) and a temporary artifact root:
`MINILLM_ROOT=<tmp>/root` with an empty `data/chinese` (so the mixes use the shipped samples),
which puts `data/processed` and `out` under the tmp dir, and `TF_DIR=<tmp>/tf_dir` (the default,
`$MINILLM_ROOT/../tf_dir`, would be the tmp folder's parent). Nothing under the checkout's `out/`,
`data/processed/` or `../tf_dir` is read or written.

By hand: .venv/bin/python tests/ui_launcher.py --serve  (prints the URL; Ctrl-C stops it)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DAGSTER_YAML = """\
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(tmp: Path, profile: str = "smoke") -> dict[str, str]:
    """Environment for a `dagster dev` whose history and artifacts all live under `tmp`."""
    home = tmp / "dagster_home"
    (home / ".nux").mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    root = tmp / "root"
    # sources_dir (data/chinese) resolves under the root: empty, so every category falls back to
    # the shipped samples (samples_dir resolves against the checkout)
    (root / "data" / "chinese").mkdir(parents=True, exist_ok=True)
    (tmp / "tf_dir").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_")}
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "MINILLM_ROOT": str(root),
            "TF_DIR": str(tmp / "tf_dir"),
            "MINILLM_PROFILE": profile,
            "MPLBACKEND": "Agg",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class DagsterDev:
    url: str
    proc: subprocess.Popen
    log: Path
    tmp: Path

    @property
    def root(self) -> Path:
        return self.tmp / "root"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _spawn(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--exec",
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-w",
        "workspace.yaml",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL whatever is left of the group."""
    pgid = proc.pid  # start_new_session: the group id is the launcher's pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    # dagster dev's children may outlive it for a moment; the group goes in any case
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def dagster_dev(tmp: Path, ready_timeout: float = 180.0, attempts: int = 3) -> Iterator[DagsterDev]:
    """A running `dagster dev` on a free port, isolated under `tmp`; stopped on exit, always."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = isolated_env(tmp)
    log = tmp / "dagster_dev.log"
    for attempt in range(1, attempts + 1):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _spawn(port, env, log)
        server = DagsterDev(url=url, proc=proc, log=log, tmp=tmp)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    break  # exited early (e.g. the port was taken meanwhile): try another port
                if _answers(f"{url}/server_info"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"dagster dev not ready on {url} after {ready_timeout:.0f} "
                        f"s; log tail:\n{server.log_tail()}"
                    )
                time.sleep(1)
            if proc.poll() is not None:
                if attempt == attempts:
                    raise RuntimeError(
                        f"dagster dev exited with {proc.returncode}; log tail:\n{server.log_tail()}"
                    )
                continue
            yield server
            return
        finally:
            stop(proc)


def _exec(argv: list[str]) -> None:
    """Restore default SIGINT/SIGTERM (a background parent may have set them to ignore; ignored
    dispositions survive exec) and become `argv`."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--exec":
        _exec(sys.argv[2:])
    elif len(sys.argv) >= 2 and sys.argv[1] == "--serve":
        import tempfile

        def _interrupt(signum, frame):  # also when started in the background (SIGINT ignored)
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        with tempfile.TemporaryDirectory(prefix="minillm_ui_") as d:
            with dagster_dev(Path(d)) as srv:
                print(
                    f"dagster dev ready at {srv.url} (artifacts under {d}); Ctrl-C stops it",
                    flush=True,
                )
                with contextlib.suppress(KeyboardInterrupt):
                    srv.proc.wait()
    else:
        sys.exit(__doc__)
