"""The chat REPL as a real process at a terminal (a pty): split from tests/unit/test_chat.py,
whose tiny model and byte tokenizer it reuses."""

from __future__ import annotations

from tests.unit.test_chat import _checkpoint, byte_tokenizer


def _own_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty (so Ctrl-C signals it),
    with SIGINT ignored as a script's background job inherits it (the chat must undo that)."""
    import fcntl
    import os
    import signal
    import termios

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_terminal_session_through_a_pty(tmp_path):
    """At a terminal: the prompt, an answer, readline history, and Ctrl-C at the prompt leaving
    with no traceback."""
    import contextlib
    import os
    import pty
    import select
    import subprocess
    import sys
    import termios
    import time
    from pathlib import Path

    tok = byte_tokenizer()
    _checkpoint(tmp_path, tok)
    repo = Path(__file__).resolve().parents[2]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(repo / "scripts" / "chat.py"),
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--tokenizer",
            str(tmp_path / "tok"),
            "--device",
            "cpu",
            "--temperature",
            "0",
            "--max-new-tokens",
            "4",
        ],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        preexec_fn=_own_terminal,
    )
    os.close(follower)
    seen = b""

    def read(wait: float) -> bool:
        nonlocal seen
        if not select.select([leader], [], [], wait)[0]:
            return True
        try:
            seen += os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            return False
        return True

    def read_until(marker: bytes, count: int = 1) -> None:
        deadline = time.monotonic() + 60
        while seen.count(marker) < count:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            assert read(0.2), seen.decode(errors="replace")

    def type_in(keys: bytes) -> None:
        # Readline drops input typed before it puts the terminal in raw mode: wait for that.
        # (The leader reads the follower's settings.) Once the chat has exited, nothing waits.
        deadline = time.monotonic() + 30
        while proc.poll() is None and termios.tcgetattr(leader)[3] & termios.ICANON:
            assert time.monotonic() < deadline, "the terminal never left canonical mode"
            time.sleep(0.01)
        if proc.poll() is None:
            os.write(leader, keys)

    try:
        read_until(b"you: ")
        type_in(b"hi\n")
        read_until(b"you: ", count=2)  # answered, asked again
        assert seen.count(b"assistant: ") == 1
        mark = len(seen)
        type_in(b"\x1b[A\n")  # up arrow: readline's history brings back "hi"
        read_until(b"you: ", count=3)
        assert b"hi" in seen[mark:] and seen.count(b"assistant: ") == 2
        deadline = time.monotonic() + 90  # a loaded machine is slow to start and to exit
        while proc.poll() is None:  # Ctrl-C at the prompt (again, if it came mid-setup)
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            type_in(b"\x03")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
            read(0)  # keep the terminal drained, and what the chat said for the message above
        assert proc.returncode == 130
        while read(0.5) and select.select([leader], [], [], 0)[0]:
            pass  # what is left to read
        assert b"Traceback" not in seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
