"""Progress for long work: a tqdm bar (rate, ETA) in the terminal, and a line every `every_s`
seconds to a log callback (Dagster's log in an asset). Each Dagster log line is a database write,
so the callback is rate-limited by time, not called per step."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

LogFn = Callable[[str], None]


def emit(log: LogFn | None, msg: str) -> None:
    """Send `msg` to the log callback, or to stderr when there is none."""
    if log is None:
        print(msg, file=sys.stderr, flush=True)
    else:
        log(msg)


class Progress:
    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        log: LogFn | None = None,
        every_s: float = 30.0,
        disable: bool | None = None,
    ):
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            dynamic_ncols=True,
            mininterval=1.0,
            disable=disable,
            file=sys.stderr,
        )
        self.desc, self.unit, self.log, self.every_s = desc, unit, log, every_s
        self.t0 = self.last = time.monotonic()

    def update(self, n: int = 1, **postfix: object) -> None:
        self.bar.update(n)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        now = time.monotonic()
        if self.log is not None and now - self.last >= self.every_s:
            self.last = now
            self.log(self._line(postfix))

    def _line(self, postfix: dict) -> str:
        done, total = self.bar.n, self.bar.total
        rate = done / max(time.monotonic() - self.t0, 1e-9)
        eta = f", ETA {(total - done) / rate:.0f}s" if total and rate > 0 else ""
        extra = "".join(f", {k}={v}" for k, v in postfix.items())
        of = f"/{total}" if total else ""
        return f"{self.desc}: {done}{of} {self.unit} ({rate:.1f} {self.unit}/s{eta}{extra})"

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
