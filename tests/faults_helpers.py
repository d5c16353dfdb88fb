"""Shared helpers of the reliability suite (tests/integration/test_faults*.py, test_hostile_files.py,
test_config_validation.py, test_fuzz_readers.py, test_reproducibility.py).

- `run_materialize` starts `dagster asset materialize` as a subprocess in its own process group,
  with its Dagster home and every artifact root under a temporary folder, never the repo's.
- `scan_artifacts` opens every file under a final name below the artifact roots and reports each
  one that does not parse or load (temporaries `.<name>.tmp-*` are allowed to be left behind).
- `artifact_digest` hashes what must be reproducible: mixes, tokenizer ranks, token tensors,
  checkpoint weights.
- `count` / `COUNTS` tally trials, kills, files scanned and inputs fuzzed; the totals are printed
  at the end of the pytest session (by a `pytest_terminal_summary` hook calling `take_summary`
  where conftest has one, else an `atexit` line on the real stdout; and as JSON in the file
  `MINILLM_RELIABILITY_COUNTS` names) so CI logs show them.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))

COUNTS: Counter = Counter()


def count(key: str, n: int = 1) -> None:
    COUNTS[key] += n


_PRINTED = [False]


def take_summary() -> str | None:
    """The counts line for a `pytest_terminal_summary` hook; the exit-time print is then skipped."""
    if not COUNTS:
        return None
    _PRINTED[0] = True
    return "reliability suite counts: " + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items()))


def _report() -> None:
    if not COUNTS:
        return
    if not _PRINTED[0]:
        try:
            sys.__stdout__.write("\n" + take_summary() + "\n")
            sys.__stdout__.flush()
        except (OSError, ValueError):
            pass
    target = os.environ.get("MINILLM_RELIABILITY_COUNTS")
    if target:
        Path(target).write_text(json.dumps(dict(sorted(COUNTS.items())), indent=2) + "\n")


atexit.register(_report)


# ------------------------------------------------------------------------------ hostile payloads


class Payload:
    """Unpickling this object runs `open(marker, 'w').write('pwned')`: a real code payload."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def payload_bytes(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker), protocol=2)


# ------------------------------------------------------------------------------ dagster runs


def roots(base: Path) -> dict[str, Path]:
    return {
        "sources": base / "sources",
        "processed": base / "processed",
        "out": base / "out",
        "tf": base / "tf",
        "home": base / "home",
    }


def run_config(base: Path) -> dict[str, Any]:
    r = roots(base)
    return {
        "resources": {
            "minillm": {
                "config": {
                    "profile": "smoke",
                    "sources_dir": str(r["sources"]),
                    "processed_dir": str(r["processed"]),
                    "out_dir": str(r["out"]),
                    "tf_dir": str(r["tf"]),
                }
            }
        }
    }


class Run:
    """A `dagster asset materialize` subprocess whose output lines are timestamped as they come."""

    def __init__(self, base: Path, select: str):
        r = roots(base)
        for key in ("sources", "home"):
            r[key].mkdir(parents=True, exist_ok=True)
        (r["home"] / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(r["home"]),
            "MINILLM_ROOT": str(base),
            "TF_DIR": str(r["tf"]),
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [
                DAGSTER,
                "asset",
                "materialize",
                "-m",
                "minillm_assets",
                "--select",
                select,
                "--config-json",
                json.dumps(run_config(base)),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, raw.decode("utf-8", "replace")))

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def step_started(self, step: str) -> float | None:
        """Seconds after launch when `step` started, or None if it has not (yet)."""
        needle = f'Started execution of step "{step}"'
        for t, line in list(self.lines):
            if needle in line:
                return t
        return None

    def step_times(self) -> dict[str, tuple[float, float]]:
        """{step: (start, end)} in seconds after launch, from the run's event lines."""
        starts: dict[str, float] = {}
        out: dict[str, tuple[float, float]] = {}
        for t, line in self.lines:
            if "STEP_START" in line and 'step "' in line:
                starts[line.split('step "', 1)[1].split('"', 1)[0]] = t
            elif "STEP_SUCCESS" in line and 'step "' in line:
                name = line.split('step "', 1)[1].split('"', 1)[0]
                if name in starts:
                    out[name] = (starts[name], t)
        return out

    def kill(self) -> None:
        """SIGKILL the whole process group (the CLI and anything it started)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)

    def wait(self, timeout: float = 600) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(timeout=10)
        return rc


def materialize(base: Path, select: str = "*", timeout: float = 600) -> Run:
    run = Run(base, select)
    rc = run.wait(timeout)
    assert rc == 0, f"materialize {select!r} failed (exit {rc}):\n{run.output[-4000:]}"
    return run


# ------------------------------------------------------------------------------ scanning


def is_temporary(path: Path, root: Path) -> bool:
    """A temporary name (`.<name>.tmp-*`) anywhere on the path below `root`: allowed leftovers."""
    return any(part.startswith(".") and ".tmp-" in part for part in path.relative_to(root).parts)


def _check_file(path: Path) -> None:
    """Open one final-named artifact file the way its reader does; raise if it is unusable."""
    name = path.name
    if name.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise AssertionError(f"{path}:{n}: {exc}") from None
    elif name.endswith(".json"):
        json.loads(path.read_text(encoding="utf-8"))
    elif name.endswith(".safetensors"):
        from safetensors.torch import load_file

        load_file(str(path))
    elif name.endswith(".pt"):
        import torch

        torch.load(path, map_location="cpu", weights_only=True)
    elif name.endswith(".npy"):
        import numpy as np

        np.load(path, mmap_mode="r", allow_pickle=False)
    elif name.endswith(".png"):
        from PIL import Image

        with Image.open(path) as im:
            im.load()
    elif name == "tokenizer.tiktoken":
        import base64

        for line in path.read_text(encoding="ascii").splitlines():
            tok, rank = line.split(" ")
            base64.b64decode(tok, validate=True)
            int(rank)


def _check_dir(path: Path) -> None:
    """Directory artifacts as a whole: a token directory and a tokenizer must load."""
    if (path / "index.json").exists() and (path.parent.name == "tokens"):
        from minillm_core.tokens import check_tokens

        problems = check_tokens(path)
        assert not problems, f"{path}: {problems[:3]}"
    if (path / "tokenizer.tiktoken").exists():
        from minillm_core.tokenizer import load_tokenizer

        load_tokenizer(path)
    if (path / "model.json").exists() and (path / "model.safetensors").exists():
        from minillm_core.train.checkpointer import load_checkpoint

        load_checkpoint(path)


def scan_artifacts(*roots_: Path) -> tuple[int, list[str]]:
    """(files checked, problems) for every final-named file below the roots."""
    checked, problems = 0, []
    for root in roots_:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if is_temporary(path, root):
                continue
            try:
                if path.is_dir():
                    _check_dir(path)
                elif path.is_file():
                    _check_file(path)
                    checked += 1
            except Exception as exc:  # every failure is a finding: collect them all
                problems.append(f"{path}: {type(exc).__name__}: {exc}"[:500])
    return checked, problems


# ------------------------------------------------------------------------------ digests


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artifact_digest(base: Path) -> dict[str, Any]:
    """What must match between two runs: bytes of mixes, tokenizer ranks/hash, token tensors;
    checkpoint weights as tensors (compared by `compare_weights`)."""
    r = roots(base)
    out: dict[str, Any] = {}
    for p in sorted(r["processed"].glob("*.jsonl")):
        out[f"mix/{p.name}"] = _sha(p)
    tok = r["out"] / "tokenizer"
    if (tok / "tokenizer.tiktoken").exists():
        out["tokenizer/tokenizer.tiktoken"] = _sha(tok / "tokenizer.tiktoken")
        out["tokenizer/hash"] = json.loads((tok / "tokenizer_meta.json").read_text())["hash"]
    for stage in ("pretrain", "sft", "dpo"):
        d = r["out"] / "tokens" / stage
        for p in sorted(d.glob("*")) if d.exists() else []:
            if p.is_file() and not p.name.startswith("."):
                out[f"tokens/{stage}/{p.name}"] = _sha(p)
    return out


def weights(base: Path, stage: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(roots(base)["out"] / stage / "model.safetensors"))


def compare_weights(a: dict[str, Any], b: dict[str, Any], atol: float = 1e-6) -> tuple[bool, float]:
    """(bitwise equal, max abs difference); asserts the same names and shapes and `atol`."""
    import torch

    assert a.keys() == b.keys()
    bitwise, worst = True, 0.0
    for k in a:
        assert a[k].shape == b[k].shape, k
        if not torch.equal(a[k], b[k]):
            bitwise = False
            worst = max(worst, float((a[k] - b[k]).abs().max()))
    assert worst <= atol, f"weights differ by {worst} > {atol}"
    return bitwise, worst


# ------------------------------------------------------------------------------ reference run

_REFERENCE: dict[str, object] = {}


def reference_run(tmp_path_factory) -> tuple[Path, dict[str, tuple[float, float]]]:
    """One uninterrupted `dagster asset materialize --select *` from scratch per test session,
    shared by the kill trials and the reproducibility test."""
    if "base" not in _REFERENCE:
        base = tmp_path_factory.mktemp("reference")
        run = materialize(base, "*")
        _REFERENCE["base"], _REFERENCE["times"] = base, run.step_times()
    return _REFERENCE["base"], _REFERENCE["times"]  # type: ignore[return-value]


def normalized_digest(base: Path) -> dict[str, str]:
    """artifact_digest with the run's own root replaced (index.json records the mix path)."""
    import hashlib

    out = {}
    for key, value in artifact_digest(base).items():
        if key.endswith("index.json"):
            stage = key.split("/")[1]
            text = (roots(base)["out"] / "tokens" / stage / "index.json").read_text()
            value = hashlib.sha256(text.replace(str(base), "<ROOT>").encode()).hexdigest()
        out[key] = value
    return out
