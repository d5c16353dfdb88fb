"""Dependencies point one way: minillm_assets -> minillm_core -> rustbpe (the Rust extension)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_dagster_or_assets():
    files = sorted((REPO / "minillm_core").rglob("*.py"))
    assert len(files) >= 8
    for f in files:
        bad = _imports(f) & {"dagster", "dagster_pipes", "minillm_assets"}
        assert not bad, f"{f.relative_to(REPO)} imports {bad}"


def test_only_the_tokenizer_imports_the_rust_extension():
    for f in sorted((REPO / "minillm_core").rglob("*.py")) + sorted(
        (REPO / "minillm_assets").rglob("*.py")
    ):
        if {"rustbpe", "minillm_rustbpe"} & _imports(f):
            assert f.relative_to(REPO).as_posix() == "minillm_core/tokenizer/trainers.py", f


def test_importing_every_core_module_loads_no_dagster():
    code = (
        "import importlib, pkgutil, sys, minillm_core\n"
        "for m in pkgutil.walk_packages(minillm_core.__path__, 'minillm_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('dagster', 'minillm_assets'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
