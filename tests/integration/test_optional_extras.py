"""Import checks in a fresh interpreter: split from tests/unit/test_hf_export.py."""

from __future__ import annotations


def test_core_modules_import_without_the_optional_extras():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('transformers', 'tokenizers', 'fastapi', 'uvicorn', 'openai'):\n"
        "    sys.modules[name] = None  # any import of it now fails\n"
        "import minillm_core.export, minillm_core.inference, minillm_core.eval\n"
        "import minillm_cli.serve, minillm_cli.chat, minillm_cli.export\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
