"""The shape rules of the code base: no function over 80 lines and no module over 600 lines in
minillm_core, minillm_cli and minillm_assets.

The one way out is the module's docstring saying why, on a line of its own:

    long function: NAME: the reason it reads best whole
    long module: the reason it is not split

Every violation is reported at once, so one run lists all that is left to split.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("minillm_core", "minillm_cli", "minillm_assets")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600

_LONG_FUNCTION = re.compile(r"^\s*long function: (\w+): \S", re.MULTILINE)
_LONG_MODULE = re.compile(r"^\s*long module: \S", re.MULTILINE)


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def shape_violations(path: Path) -> list[str]:
    """What in `path` breaks the shape rules and is not excused by its docstring."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, str(path))
    doc = ast.get_docstring(tree) or ""
    excused = set(_LONG_FUNCTION.findall(doc))
    name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)
    out = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES and not _LONG_MODULE.search(doc):
        out.append(f"{name}: module of {lines} lines (limit {MAX_MODULE_LINES})")
    for fn in _functions(tree):
        length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
        if length > MAX_FUNCTION_LINES and fn.name not in excused:
            out.append(
                f"{name}:{fn.lineno}: function {fn.name} of {length} lines "
                f"(limit {MAX_FUNCTION_LINES})"
            )
    return out


def test_no_long_functions_or_modules():
    found = [
        v
        for pkg in PACKAGES
        for f in sorted((REPO / pkg).rglob("*.py"))
        for v in shape_violations(f)
    ]
    assert not found, "split these (or say why in the module docstring):\n" + "\n".join(found)


def test_the_rules_catch_and_excuse(tmp_path: Path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    long_fn = f"def long_one():\n{body}"
    f = tmp_path / "m.py"
    f.write_text(f'"""A module."""\n\n{long_fn}')
    assert [v.split(": ", 1)[1] for v in shape_violations(f)] == [
        f"function long_one of {MAX_FUNCTION_LINES + 1} lines (limit {MAX_FUNCTION_LINES})"
    ]
    f.write_text(
        f'"""A module.\n\nlong function: long_one: a table read top to bottom\n"""\n\n{long_fn}'
    )
    assert shape_violations(f) == []
    f.write_text('"""A module."""\n' + "x = 1\n" * MAX_MODULE_LINES)
    assert len(shape_violations(f)) == 1 and "module of" in shape_violations(f)[0]
    f.write_text(
        '"""A module.\n\nlong module: generated tables\n"""\n' + "x = 1\n" * MAX_MODULE_LINES
    )
    assert shape_violations(f) == []
