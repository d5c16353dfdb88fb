"""Hostile and damaged files: a tokenizer.pkl, resume state, checkpoint or token shard crafted to
run code when unpickled is never executed, and a truncated file gives an error naming it.

Each payload is real: a control assertion shows that the ordinary unsafe loader (pickle.loads,
torch.load(weights_only=False), np.load(allow_pickle=True)) does create the marker file; the
project's loaders must refuse the same bytes and the marker must never appear.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from minillm_core.artifacts import ArtifactError
from minillm_core.model import MiniLLM, ModelConfig
from minillm_core.tokenizer import Tokenizer, check_tokenizer, load_tokenizer
from minillm_core.tokens import TensorConfig, TokenDataset, check_tokens, export_tokens
from minillm_core.train.checkpointer import load_checkpoint, load_resume, save_checkpoint
from tests.faults_helpers import REPO, Payload, count, payload_bytes

pytestmark = pytest.mark.faults

TEXTS = [
    "你好，世界！今天天气很好。",
    "The quick brown fox jumps over the lazy dog.",
    "机器学习是人工智能的一个分支。",
    "数字 12345 和 emoji 😀",
] * 20


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """A tiny tokenizer, a pretrain token directory and a checkpoint, built directly (seconds)."""
    root = tmp_path_factory.mktemp("hostile")
    tok = Tokenizer.train_from_iterator(TEXTS, vocab_size=300, trainer="auto")
    tok.save(root / "tokenizer")
    mix = root / "pretrain.jsonl"
    mix.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8"
    )
    export_tokens(
        TensorConfig(max_length=16, shard_rows=8),
        "pretrain",
        mix,
        root / "tokenizer",
        root / "tokens",
    )
    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    save_checkpoint(root / "ckpt", MiniLLM(cfg), {"stage": "pretrain", "tokenizer_hash": tok.hash})
    return root


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_the_payload_is_real(tmp_path):
    """Control: the bytes used below do run code under a plain unpickler."""
    marker = tmp_path / "marker"
    pickle.loads(payload_bytes(marker))
    assert marker.read_text() == "pwned"


def test_tokenizer_pkl_with_a_payload_is_never_unpickled(arts, tmp_path):
    marker = tmp_path / "pwned-tokenizer"
    tok_dir = _copy(arts / "tokenizer", tmp_path / "tokenizer")
    (tok_dir / "tokenizer.pkl").write_bytes(payload_bytes(marker))
    tok = load_tokenizer(tok_dir)
    assert tok.decode(tok.encode("你好 world")) == "你好 world"
    assert check_tokenizer(tok_dir) == []
    export_tokens(
        TensorConfig(max_length=16),
        "pretrain",
        arts / "pretrain.jsonl",
        tok_dir,
        tmp_path / "tokens",
    )
    assert not marker.exists(), "tokenizer.pkl was unpickled"
    count("hostile_files_refused")


def test_resume_state_with_a_payload_is_refused_and_never_run(arts, tmp_path):
    marker, control = tmp_path / "pwned-resume", tmp_path / "control"
    torch.save({"step": 1, "model": Payload(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # the unsafe loader runs it
    assert control.exists()

    ckpt = _copy(arts / "ckpt", tmp_path / "ckpt")
    torch.save({"step": 1, "finished": False, "model": Payload(marker)}, ckpt / "resume.pt")
    with pytest.raises(ArtifactError, match="resume.pt: unreadable resume state, refused"):
        load_resume(ckpt / "resume.pt")
    # The training loop reads the same file through the same function when it resumes.
    from minillm_core.train import TrainConfig, train

    model_cfg = ModelConfig(**json.loads((ckpt / "model.json").read_text())["model"])
    cfg = TrainConfig(
        stage="pretrain",
        data_path=str(arts / "tokens"),
        out_dir=str(ckpt),
        batch_size=2,
        max_steps=1,
        save_interval=1,
        log_interval=1,
        device="cpu",
        dtype="float32",
    )
    with pytest.raises(ArtifactError, match="refused"):
        train(cfg, model_cfg)
    assert not marker.exists(), "resume.pt was unpickled"
    count("hostile_files_refused")


def test_checkpoint_weights_that_are_a_pickle_are_refused(arts, tmp_path):
    marker = tmp_path / "pwned-weights"
    ckpt = _copy(arts / "ckpt", tmp_path / "ckpt")
    torch.save({"embed_tokens.weight": Payload(marker)}, ckpt / "model.safetensors")
    with pytest.raises(ArtifactError, match="model.safetensors: not a readable safetensors file"):
        load_checkpoint(ckpt)
    (ckpt / "model.safetensors").write_bytes(payload_bytes(marker))
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    count("hostile_files_refused", 2)


def test_token_shard_holding_a_pickled_object_array_is_refused(arts, tmp_path):
    marker, control = tmp_path / "pwned-npy", tmp_path / "control"
    np.save(tmp_path / "control.npy", np.array([Payload(control)], dtype=object), allow_pickle=True)
    np.load(tmp_path / "control.npy", allow_pickle=True)  # the unsafe loader runs it
    assert control.exists()

    tokens = _copy(arts / "tokens", tmp_path / "tokens")
    shard = tokens / "shard_00000.tokens.npy"
    np.save(shard, np.array([Payload(marker)] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(ArtifactError, match="shard_00000.tokens.npy: not a readable token shard"):
        TokenDataset(tokens)[0]
    problems = check_tokens(tokens)
    assert problems and "shard_00000" in problems[0]
    assert not marker.exists()
    count("hostile_files_refused")


@pytest.mark.parametrize("what", ["safetensors", "npy", "resume", "index"])
def test_truncated_files_give_an_error_naming_the_file(arts, tmp_path, what):
    if what in ("safetensors", "resume"):
        d = _copy(arts / "ckpt", tmp_path / "ckpt")
        if what == "resume":
            torch.save({"step": torch.tensor(3), "losses": torch.zeros(100)}, d / "resume.pt")
        name = "model.safetensors" if what == "safetensors" else "resume.pt"
    else:
        d = _copy(arts / "tokens", tmp_path / "tokens")
        name = "shard_00000.tokens.npy" if what == "npy" else "index.json"
    f = d / name
    data = f.read_bytes()
    for cut in (len(data) // 2, 7):
        f.write_bytes(data[:cut])
        with pytest.raises(ArtifactError) as err:
            if what == "safetensors":
                load_checkpoint(d)
            elif what == "resume":
                load_resume(f)
            else:
                TokenDataset(d)[0]
        msg = str(err.value)
        assert str(f) in msg, msg
        count("truncated_files_reported")


# Loaders that can run code from a file. The project must never call them on its artifacts.
_UNSAFE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("dill", "load"),
    ("joblib", "load"),
    ("cloudpickle", "load"),
}


def _project_sources() -> list[Path]:
    files = [
        *sorted((REPO / "minillm_core").glob("*.py")),
        *sorted((REPO / "minillm_assets").glob("*.py")),
        *sorted((REPO / "scripts").glob("*.py")),
    ]
    assert len(files) > 20
    return files


def test_no_project_code_unpickles_or_loads_torch_files_unsafely():
    """Static: no pickle loads; every torch.load passes weights_only=True; every np.load keeps
    allow_pickle off. A new unsafe loader anywhere in the code fails here, naming the line."""
    problems = []
    for path in _project_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            name = node.func.attr
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if (owner, name) in _UNSAFE_CALLS:
                problems.append(f"{where}: {owner}.{name}")
            if owner == "torch" and name == "load":
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner == "np" and name == "load":
                v = kw.get("allow_pickle")
                if isinstance(v, ast.Constant) and v.value is True:
                    problems.append(f"{where}: np.load(allow_pickle=True)")
        count("source_files_scanned_for_unsafe_loads")
    assert not problems, problems
