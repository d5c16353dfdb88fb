"""Which malloc a CPU training process runs on: the one place that finds tcmalloc, tells whether
this process has it, and builds the environment that preloads it.

A training step allocates and frees the same large activation tensors every step. glibc's malloc
hands the largest back to the kernel each time (mmap above its threshold, heap trimming below it),
so every step page-faults and zeroes them again; tcmalloc keeps them, and a CPU step runs faster
(`bench/bench_train.py --allocators system,tcmalloc` measures it). A library can only be chosen
before the process starts, so launchers ask this module for the environment (`scripts/run.sh`
runs `python -m minillm_core.allocator`), and a CPU run's first log line says which allocator it
has and, without tcmalloc, how to get it.

`MINILLM_ALLOCATOR`: `auto` (default: tcmalloc when installed, e.g. Debian's
`libtcmalloc-minimal4`), `system` (glibc's malloc), or the path of a malloc library to preload.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from minillm_core.errors import ConfigError

ENV = "MINILLM_ALLOCATOR"
_MALLOCS = ("tcmalloc", "jemalloc")  # the malloc libraries a process may have preloaded
_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
# tcmalloc prints a line for every allocation above 1 GiB by default: a full-size model's
# optimizer state or a long batch would fill the log with them.
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def find_tcmalloc() -> Path | None:
    """The installed tcmalloc library, or None."""
    for d in _DIRS:
        for name in _NAMES:
            if (Path(d) / name).is_file():
                return Path(d) / name
    return None


def chosen(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The library `MINILLM_ALLOCATOR` asks to preload (None: the system's malloc)."""
    value = environ.get(ENV, "auto").strip() or "auto"
    if value == "system":
        return None
    if value == "auto":
        return find_tcmalloc() if sys.platform == "linux" else None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{ENV}={value}: no such library (use auto, system or a library path)")
    return path


def active() -> str:
    """The malloc this process runs on: `tcmalloc`, `jemalloc` or `system`."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no preloading here
        return "system"
    for name in _MALLOCS:
        if f"lib{name}" in maps:
            return name
    return "system"


def environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`environ` with LD_PRELOAD naming the chosen library, and no other malloc library, first
    (`system`: none; the other preloads are kept)."""
    env = dict(environ)
    lib = chosen(environ)
    preload = [
        p
        for p in env.pop("LD_PRELOAD", "").split(":")
        if p and not any(f"lib{name}" in Path(p).name for name in _MALLOCS)
    ]
    if lib is not None:
        preload.insert(0, str(lib))
        env = {**_QUIET, **env}
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    return env


def describe() -> str:
    """One line for a CPU run's log: the allocator it has, and how to get tcmalloc without it."""
    name = active()
    if name != "system":
        return f"allocator: {name}"
    lib = find_tcmalloc()
    how = (
        f"preload it (scripts/run.sh does): LD_PRELOAD={lib}"
        if lib
        else "install it (Debian: apt-get install libtcmalloc-minimal4)"
    )
    return f"allocator: the system malloc; CPU steps run faster on tcmalloc: {how}"


def main() -> int:
    """Print the shell lines that give this environment the chosen allocator (for `eval`)."""
    try:
        env = environment()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key in ("LD_PRELOAD", *_QUIET):
        if key not in env:
            if key in os.environ:
                print(f"unset {key}")
        elif env[key] != os.environ.get(key):
            print(f"export {key}={shlex.quote(env[key])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
