"""Atomic artifacts: a failed write leaves the previous version; concurrent writers never leave a
partial one under the final name; a full disk names the path."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from minillm_core.artifacts import ArtifactError, atomic_path, write_json
from tests.conftest import REPO


def test_failed_write_keeps_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_disk_full_names_the_path_and_keeps_previous(tmp_path, monkeypatch):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"good")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ArtifactError, match=f"no space left on device while writing {target}"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_concurrent_directory_swaps_always_leave_one_whole_version(tmp_path):
    final = tmp_path / "tok"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(40):
                with atomic_path(final, directory=True) as tmp:
                    for part in range(3):
                        (tmp / f"part{part}").write_text(f"{n}-{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()

    def read_version() -> set[str]:
        # One directory handle for all parts, as a loader holding the directory open sees it.
        fd = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
        try:
            parts = set()
            for p in range(3):
                f = os.open(f"part{p}", os.O_RDONLY, dir_fd=fd)
                with os.fdopen(f) as fh:
                    parts.add(fh.read())
            return parts
        finally:
            os.close(fd)

    seen = 0
    while any(t.is_alive() for t in threads):
        try:
            parts = read_version()
        except FileNotFoundError:
            continue  # between two renames the name is briefly absent (or just displaced)
        assert len(parts) == 1, parts
        seen += 1
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
    assert len({(final / f"part{p}").read_text() for p in range(3)}) == 1


def test_two_concurrent_runs_of_the_same_assets_leave_valid_artifacts(tmp_path):
    from minillm_core.data import check_mix
    from minillm_core.tokenizer import check_tokenizer

    config = {
        "resources": {
            "minillm": {
                "config": {
                    "profile": "smoke",
                    "sources_dir": str(tmp_path / "sources"),
                    "processed_dir": str(tmp_path / "processed"),
                    "out_dir": str(tmp_path / "out"),
                    "tf_dir": str(tmp_path / "tf"),
                }
            }
        }
    }
    dagster = str(Path(sys.executable).with_name("dagster"))
    procs = []
    for i in range(2):
        home = tmp_path / f"home{i}"
        home.mkdir()
        procs.append(
            subprocess.Popen(
                [
                    dagster,
                    "asset",
                    "materialize",
                    "-m",
                    "minillm_assets",
                    "--select",
                    "*tokenizer",
                    "--config-json",
                    json.dumps(config),
                ],
                cwd=REPO,
                env={**os.environ, "DAGSTER_HOME": str(home)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    processed, out_dir = tmp_path / "processed", tmp_path / "out"
    for stage in ("pretrain", "sft", "dpo"):
        assert check_mix(processed / f"{stage}_chinese.jsonl", stage) == []
    assert check_tokenizer(out_dir / "tokenizer") == []
    leftovers = [p for p in [*processed.iterdir(), *out_dir.iterdir()] if ".tmp-" in p.name]
    assert not leftovers
