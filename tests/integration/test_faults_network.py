"""Network exposure: the web UI launcher binds loopback unless the user asks otherwise, and the
README says how to share it behind authentication.

The static test reads scripts/ui.sh. The live test (slow, ~20-40 s) runs the launcher's own
`exec` line through bash with a free DAGSTER_PORT (its `${DAGSTER_HOST:-...}` default evaluated by
bash, not by us), waits for `/server_info`, and lists every listening TCP socket of the launched
process group from /proc: the webserver and the code server it starts must all be on loopback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.faults_helpers import REPO, count

UI = REPO / "scripts" / "ui.sh"


def _exec_line() -> str:
    lines = [ln.strip() for ln in UI.read_text().splitlines() if ln.strip().startswith("exec ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_ui_launcher_binds_loopback_by_default():
    line = _exec_line()
    assert re.search(r"\bdagster\"? dev\b", line), line
    m = re.search(r"(?:-h|--host)\s+\"?\$\{DAGSTER_HOST:-([^}]+)\}\"?", line)
    assert m, f"ui.sh does not pass a host to dagster dev (it would choose): {line}"
    assert ipaddress.ip_address(m.group(1)).is_loopback, m.group(1)
    assert "0.0.0.0" not in UI.read_text() and "::" not in line
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    security = readme.split("## Security", 1)
    assert len(security) == 2, "README has no Security section"
    section = security[1].split("\n## ", 1)[0]
    assert "127.0.0.1" in section and re.search(r"auth", section, re.I) and "ssh -L" in section
    count("network_checks")


def _pgroup_pids(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # pgrp is the 5th field; [0] is the state after ')'
                pids.append(int(d.name))
    return pids


def _socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def _addr(hex_ip: str) -> ipaddress._BaseAddress:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return ipaddress.IPv6Address(words)


def _listening(pgid: int) -> list[tuple[str, int]]:
    inodes = _socket_inodes(_pgroup_pids(pgid))
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                ip, port = parts[1].split(":")
                out.append((str(_addr(ip)), int(port, 16)))
    return out


_LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"


def _wait_for_code_location(port: int, deadline: float) -> None:
    """Until the webserver reports every code location loaded (its code server is up)."""
    body = json.dumps({"query": _LOCATIONS}).encode()
    status: object = None
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                entries = json.load(r)["data"]["workspaceOrError"]["locationEntries"]
            status = [e["loadStatus"] for e in entries]
            if status and all(s == "LOADED" for s in status):
                return
        except OSError as exc:
            status = exc
        time.sleep(0.5)
    raise AssertionError(f"code location not loaded in time: {status}")


def _loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped:
        a = a.ipv4_mapped
    return a.is_loopback


@pytest.mark.slow
def test_started_ui_listens_only_on_loopback(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from ui_launcher import free_port, isolated_env

    port = free_port()
    env = {
        **isolated_env(tmp_path),
        "DAGSTER_PORT": str(port),
        "VENV_DIR": str(Path(sys.executable).parent.parent),
    }
    env.pop("DAGSTER_HOST", None)
    script = tmp_path / "ui_exec.sh"
    # The launcher's own exec line (setup.sh skipped: it may reinstall the venv), same defaults.
    script.write_text(f"set -euo pipefail\ncd {REPO}\n{_exec_line()}\n")
    proc = subprocess.Popen(
        ["bash", str(script)],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, ready = time.monotonic() + 150, False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                    ready = r.status == 200
            except OSError:
                pass
            if ready:
                break
            time.sleep(0.5)
        assert ready, "dagster dev did not come up: " + (
            proc.stdout.read(4000).decode() if proc.poll() is not None else "timeout"
        )
        _wait_for_code_location(port, deadline)  # its code server starts beside the webserver
        sockets = _listening(proc.pid)
        assert ("127.0.0.1", port) in sockets, sockets
        exposed = [s for s in sockets if not _loopback(s[0])]
        assert not exposed, f"listening beyond loopback: {exposed} (all: {sockets})"
        count("listening_sockets_checked", len(sockets))
        print("listening:", sockets)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=20)
