"""The seed's manual commands as its README writes them, from a fresh `git clone`: build the
mixes, train the tokenizer, then `python trainer/train_pretrain.py --data_path
data/processed/pretrain_chinese.jsonl` (no --tokenizer_dir: the project layout finds the trained
tokenizer), `trainer/train_full_sft.py` and `trainer/train_dpo.py`, on the shipped samples with
tiny settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

TINY = [
    "--device", "cpu", "--dtype", "float32", "--batch_size", "2", "--accumulation_steps", "1",
    "--max_steps", "2", "--log_interval", "1", "--save_interval", "2",
]  # fmt: skip
MODEL = [
    "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
    "--num_key_value_heads", "1", "--max_seq_len", "64",
]  # fmt: skip


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of this checkout's committed tree (HEAD)."""
    dest = tmp_path_factory.mktemp("seed") / "minillm"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=120)
    return dest


def seed(clone: Path, *argv: str, rc: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MINILLM_ROOT", "PYTHONPATH")}
    env.update(TF_DIR=str(clone.parent / "tf"), MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run(
        [sys.executable, *argv], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == rc, f"{argv}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def test_seed_commands_from_a_fresh_clone(clone):
    # The clone's packages, not the shared venv's install: the trainer scripts put their
    # checkout first; the mix and tokenizer scripts are run the same way through -c.
    run_here = "import sys, runpy; sys.path.insert(0, '.'); sys.argv = sys.argv[1:]; "
    seed(clone, "-c", run_here + "runpy.run_path(sys.argv[0], run_name='__main__')",
         "scripts/build_chinese_mix.py", "--profile", "smoke")  # fmt: skip
    processed = clone / "data" / "processed"
    assert (processed / "pretrain_chinese.jsonl").is_file()
    seed(clone, "-c", run_here + "runpy.run_path(sys.argv[0], run_name='__main__')",
         "scripts/train_rustbpe_tokenizer.py", "--data_path",
         "data/processed/pretrain_chinese.jsonl", "data/processed/sft_chinese.jsonl",
         "--vocab_size", "400", "--trainer", "python")  # fmt: skip
    assert (clone / "out" / "tokenizer").is_dir()

    pre = seed(clone, "trainer/train_pretrain.py", "--data_path",
               "data/processed/pretrain_chinese.jsonl", *TINY, *MODEL)  # fmt: skip
    meta = json.loads((clone / "out" / "pretrain" / "model.json").read_text())
    assert meta["step"] == 2 and meta["model"]["vocab_size"] == 400
    assert meta["model"]["max_position_embeddings"] == 64
    assert json.loads(pre.stdout[pre.stdout.index("{") :])["steps"] == 2
    # The run used the clone's code: its model.json names the clone's layout.
    assert meta["train"]["tokenizer_dir"] == str(clone / "out" / "tokenizer")

    # SFT on data tokenized with another tokenizer than the pretrain checkpoint's: one line
    # that names the right fix (that checkpoint's tokenizer), not --vocab_size.
    seed(clone, "-c", run_here + "runpy.run_path(sys.argv[0], run_name='__main__')",
         "scripts/train_rustbpe_tokenizer.py", "--data_path",
         "data/processed/sft_chinese.jsonl", "--vocab_size", "300", "--trainer", "python",
         "--out_dir", "out/tok300")  # fmt: skip
    bad = seed(clone, "trainer/train_full_sft.py", "--data_path",
               "data/processed/sft_chinese.jsonl", "--tokenizer_dir", "out/tok300", *TINY,
               rc=1)  # fmt: skip
    assert bad.stderr.startswith("minillm sft: vocabulary mismatch"), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "--vocab_size" not in bad.stderr
    assert "--tokenizer_dir" in bad.stderr and "400-token tokenizer" in bad.stderr

    seed(clone, "trainer/train_full_sft.py", "--data_path", "data/processed/sft_chinese.jsonl",
         *TINY)  # fmt: skip
    sft = json.loads((clone / "out" / "sft" / "model.json").read_text())
    assert sft["step"] == 2 and sft["init_from"] == str(clone / "out" / "pretrain")
    seed(clone, "trainer/train_dpo.py", "--data_path", "data/processed/dpo_chinese.jsonl",
         *TINY)  # fmt: skip
    dpo = json.loads((clone / "out" / "dpo" / "model.json").read_text())
    assert dpo["step"] == 2 and dpo["init_from"] == str(clone / "out" / "sft")


def test_trainer_help_lists_the_seed_flags(clone):
    out = seed(clone, "trainer/train_pretrain.py", "--help").stdout
    for flag in ("--data_path", "--out_dir", "--epochs", "--batch_size", "--learning_rate",
                 "--device", "--dtype", "--accumulation_steps", "--max_seq_len",
                 "--save_interval", "--log_interval", "--hidden_size", "--num_hidden_layers"):  # fmt: skip
        assert flag in out, flag
