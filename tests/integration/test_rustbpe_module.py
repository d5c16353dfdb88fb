"""The Rust extension under the seed's and nanochat's name: `import rustbpe`, from the repository
root (where the crate's folder `rustbpe/` must not shadow the installed module) and from anywhere
else; `RustBPETokenizer` from the tokenizer module."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from minillm_core.tokenizer import trainers
from tests.conftest import REPO

PROBE = (
    "import rustbpe; from minillm_core.tokenizer import rust_module; "
    "m = rust_module(); assert m is rustbpe, (m, rustbpe); "
    "print(rustbpe.__file__, rustbpe.Tokenizer().vocab_size)"
)


def test_tokenizer_module_exports_the_seed_class_name():
    from minillm_core.tokenizer import RustBPETokenizer, Tokenizer

    assert RustBPETokenizer is Tokenizer


def test_the_crate_folder_is_not_taken_for_the_extension(monkeypatch):
    # From the repository root without the extension installed, `import rustbpe` finds the
    # crate's folder as an empty namespace package: that is "not built", not a trainer.
    monkeypatch.setitem(sys.modules, "rustbpe", types.ModuleType("rustbpe"))
    trainers.rust_module.cache_clear()
    try:
        assert trainers.rust_module() is None
    finally:
        trainers.rust_module.cache_clear()


@pytest.mark.skipif(
    trainers.rust_module() is None, reason="rustbpe not built (pip install ./rustbpe)"
)
@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_import_rustbpe_from_the_root_and_elsewhere(tmp_path, where):
    cwd = REPO if where == "repo_root" else tmp_path
    res = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{_extension_parent()}"},
    )
    assert res.returncode == 0, res.stderr
    assert str(REPO / "rustbpe") not in res.stdout.split()[0]  # the module, not the crate folder


def _extension_parent() -> str:
    """The folder holding the installed extension (site-packages, or an unpacked wheel)."""
    mod = trainers.rust_module()
    assert mod is not None and mod.__file__
    from pathlib import Path

    return str(Path(mod.__file__).resolve().parents[1])
