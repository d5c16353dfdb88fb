"""Assets' code versions come from the content of the code they run (`_util.code_version`), not
from hand-bumped strings."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from minillm_assets import _util


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throwaway package `cvprobe`: `a` imports `b` inside a function, nobody imports `c`."""
    pkg = tmp_path / "cvprobe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from cvprobe.b import g\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    (pkg / "c.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_util, "FOLLOW", ("cvprobe",))
    importlib.invalidate_caches()
    _forget()
    yield pkg
    _forget()


def _forget() -> None:
    for name in [n for n in sys.modules if n.split(".")[0] == "cvprobe"]:
        del sys.modules[name]


def test_the_version_follows_the_source_of_the_module_and_what_it_imports(probe: Path):
    v1 = _util.code_version("cvprobe.a")
    assert v1 == _util.code_version("cvprobe.a") and len(v1) == 16
    (probe / "c.py").write_text("X = 2\n")  # not imported: no change
    assert _util.code_version("cvprobe.a") == v1
    (probe / "b.py").write_text("def g():\n    return 2\n")  # imported by a: a new version
    v2 = _util.code_version("cvprobe.a")
    assert v2 != v1
    (probe / "a.py").write_text("def f():\n    from cvprobe.b import g\n    return g() + 1\n")
    assert _util.code_version("cvprobe.a") not in (v1, v2)


def test_package_data_beside_a_package_counts(probe: Path):
    v1 = _util.code_version("cvprobe")
    (probe / "template.jinja").write_text("{{ x }}")
    assert _util.code_version("cvprobe") != v1


def test_a_missing_module_is_an_error():
    with pytest.raises(ImportError, match="no_such_module"):
        _util.code_version("minillm_core.no_such_module")


def test_every_asset_has_a_version_derived_from_its_code():
    from minillm_assets import defs

    graph = defs.resolve_asset_graph()
    seen = set()
    for key in graph.materializable_asset_keys:
        version = graph.get(key).code_version
        assert version in _util.CODE_VERSIONS, key.to_user_string()
        assert _util.code_version(*_util.CODE_VERSIONS[version]) == version
        seen.add(version)
    files = {
        v: {f.as_posix() for f in _util._closure(_util.CODE_VERSIONS[v], _util.FOLLOW)}
        for v in seen
    }

    def runs(asset: str, path: str) -> bool:
        version = graph.get(next(k for k in graph.materializable_asset_keys if k.path == [asset]))
        return any(f.endswith(path) for f in files[version.code_version])

    assert runs("pretrain_checkpoint", "minillm_core/train/loop.py")
    assert runs("pretrain_checkpoint", "minillm_core/train/ddp.py")
    assert runs("sft_eval", "minillm_core/inference.py")
    assert runs("hf_export", "minillm_core/export/chat_template.jinja")
    assert runs("tokenizer", "minillm_core/tokenizer/training.py")
    assert not runs("pretrain_mix", "minillm_core/train/loop.py")
