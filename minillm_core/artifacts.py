"""Artifacts on disk: atomic writes, content hashes and JSON sidecars.

Every artifact is built under a temporary name beside its final name and renamed into place, so a
reader can trust any file under its final name: a crash leaves at most a `.<name>.tmp-*` file.
Temporary names carry the pid and a random suffix, so two runs writing the same artifact never
share a temporary file; the last rename wins, whole.

Directories (a tokenizer, a tensor shard set) are swapped in with two renames: for an instant the
final name is absent, never partial.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from minillm_core.errors import ArtifactError, DiskFullError, MissingArtifactError


def require(path: Path | str, what: str) -> Path:
    """Return `path` if it exists, else raise MissingArtifactError naming `what`."""
    p = Path(path)
    if not p.exists():
        raise MissingArtifactError(p, what)
    return p


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_path(path: Path) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync_file(child)
    else:
        _fsync_file(path)
    # The rename is only durable once the parent directory entry is on disk too.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _size(path: Path) -> int:
    """Bytes under `path` (a file, or a directory's files); 0 when it is gone."""
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _free(path: Path) -> int:
    try:
        return shutil.disk_usage(path.parent).free
    except OSError:
        return -1


def _is_disk_full(exc: BaseException, path: Path) -> bool:
    """Whether `exc` came from a full disk. Writers report it in their own ways: OSError ENOSPC
    (plain writes), "os error 28" (safetensors), "N requested and M written" (numpy), a bare
    RuntimeError (torch.save); the last two are recognised by the filesystem being (nearly) full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e) or "os error 28" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return isinstance(exc, (OSError, RuntimeError)) and 0 <= _free(path) < (1 << 20)


def _disk_full(exc: BaseException, path: Path, written: int = 0) -> DiskFullError:
    return DiskFullError(
        f"no space left on device while writing {path}: it needs more than {written} bytes "
        f"(written before the disk filled), {_free(path)} bytes free there",
        "free some space and materialize again (the previous version was left untouched)",
    )


disk_full_error = _disk_full  # for writers outside atomic_path (the mix's spool)


def _swap_dir(tmp: Path, final: Path) -> None:
    """Rename directory `tmp` to `final`, moving an existing `final` aside first. Another run may
    be swapping the same directory at the same moment: each rename either wins whole or finds the
    name taken or gone, and then retries, so the final name always holds one complete version."""
    displaced: list[Path] = []
    try:
        while True:
            try:
                os.rename(tmp, final)  # succeeds only when `final` is absent (or an empty dir)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            old = _tmp_name(final)
            try:
                os.rename(final, old)
                displaced.append(old)
            except FileNotFoundError:
                continue  # the other run moved it aside first; try again
    finally:
        for old in displaced:
            _remove(old)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, rename it into place.

    With `directory=True` the temporary path is an (empty) directory to fill. On any error the
    temporary is removed and the previous artifact under `path` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        _fsync_path(tmp)
        if directory:
            _swap_dir(tmp, final)
        else:
            os.replace(tmp, final)
    except BaseException as exc:
        full = isinstance(exc, Exception) and _is_disk_full(exc, final)
        written = _size(tmp) if full else 0
        _remove(tmp)
        if full:
            raise _disk_full(exc, final, written) from exc
        raise


def write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def read_json(path: Path | str) -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{p}: not valid JSON ({exc})") from exc


def sidecar_path(artifact: Path | str) -> Path:
    """`out/model.safetensors` -> `out/model.safetensors.meta.json` (a directory keeps it inside)."""
    a = Path(artifact)
    return a / "meta.json" if a.is_dir() else a.with_name(a.name + ".meta.json")


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: Path | str) -> str:
    """Hash of a file, or of a directory's relative file names and contents (sorted)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(b"\0")
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-able value (configs): key order does not matter."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
