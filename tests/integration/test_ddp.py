"""DDP under torchrun on CPU (gloo, 2 ranks): the same loss trajectory as one process with the same
global batch, rank 0 alone writing files, each rank reading only its own rows, resume under another
world size, the asset's torchrun path through Dagster Pipes, and a killed rank failing the asset.

Real processes throughout: `python -m torch.distributed.run` (torchrun) on a tiny model (hidden 32,
one layer) over real token tensors (a 300-token tokenizer, packed pretrain rows). What the ranks do
is observed from outside: a `sitecustomize` put on PYTHONPATH for the test logs every file rename
(who put a file in place) and every row read, per RANK.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minillm_core.errors import ConfigError, TrainingInterrupted
from minillm_core.model import ModelConfig
from minillm_core.train import TrainConfig, train
from minillm_core.train.ddp import DistributedConfig, write_rank_config

pytestmark = pytest.mark.timeout(300)

MODEL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
CORPUS = [
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "你好，世界！你好，小明。",
    "中华人民共和国成立于一九四九年。北京是中国的首都。",
]

SITE = textwrap.dedent("""
    # Test probe (tests/integration/test_ddp.py): log renames into place and row reads, with the process's RANK.
    import os
    _log = os.environ.get("MINILLM_PROBE")
    if _log:
        def _note(kind, what):
            with open(_log, "a") as f:
                f.write(f"{os.environ.get('RANK', '-')} {kind} {what}\\n")
        _replace, _rename = os.replace, os.rename
        def replace(src, dst, *a, **k):
            _note("write", dst)
            return _replace(src, dst, *a, **k)
        def rename(src, dst, *a, **k):
            _note("write", dst)
            return _rename(src, dst, *a, **k)
        os.replace, os.rename = replace, rename
        if os.environ.get("RANK"):
            from minillm_core import tokens as tensors
            _get = tensors.TokenDataset.__getitem__
            def getitem(self, i):
                _note("row", int(i))
                return _get(self, i)
            tensors.TokenDataset.__getitem__ = getitem
""")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project root with out/tokenizer and out/tokens/pretrain (what the assets expect)."""
    from minillm_core.tokenizer import TokenizerConfig, train_tokenizer
    from minillm_core.tokens import TensorConfig, export_tokens

    root = tmp_path_factory.mktemp("ddp")
    mix = root / "mix.jsonl"
    with open(mix, "w", encoding="utf-8") as f:
        for i, t in enumerate(CORPUS * 8):
            f.write(
                json.dumps({"text": f"{i} {t * (1 + i % 3)}", "source": "test"}, ensure_ascii=False)
                + "\n"
            )
    train_tokenizer(
        TokenizerConfig(vocab_size=300, trainer="python"),
        [mix],
        root / "out" / "tokenizer",
        log=lambda m: None,
    )
    export_tokens(
        TensorConfig(max_length=16, num_threads=1),
        "pretrain",
        mix,
        root / "out" / "tokenizer",
        root / "out" / "tokens" / "pretrain",
        log=lambda m: None,
    )
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITE)
    return root


def _tokens(project: Path) -> Path:
    return project / "out" / "tokens" / "pretrain"


def _cfg(project: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        stage="pretrain",
        data_path=str(_tokens(project)),
        out_dir=str(out),
        batch_size=2,
        accumulation_steps=4,
        epochs=1,
        max_steps=4,
        learning_rate=3e-3,
        warmup_steps=1,
        log_interval=1,
        save_interval=2,
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def _model(project: Path) -> ModelConfig:
    vocab = json.loads((_tokens(project) / "index.json").read_text())["vocab_size"]
    return ModelConfig(vocab_size=vocab, **MODEL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(project: Path, probe: Path | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([str(project / "site"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("MINILLM_PROBE", None)
    if probe is not None:
        env["MINILLM_PROBE"] = str(probe)
    return env


def _torchrun(
    project: Path, cfg: TrainConfig, model: ModelConfig, probe: Path | None = None, nproc: int = 2
) -> subprocess.CompletedProcess:
    # The ranks read the resolved configs from one JSON file, as the asset's launcher writes it.
    config = write_rank_config(
        Path(cfg.out_dir).parent / f"{Path(cfg.out_dir).name}-rank.json",
        cfg,
        model,
        DistributedConfig(nproc_per_node=nproc, backend="gloo", timeout_s=60),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(_free_port()),
        "--max_restarts",
        "0",
        "--monitor_interval",
        "0.2",
        "-m",
        "minillm_core.train",
        str(config),
    ]
    return subprocess.run(
        cmd, env=_env(project, probe), capture_output=True, text=True, timeout=240
    )


def _single(cfg: TrainConfig, model: ModelConfig):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg, model, log=lambda m: None)
    finally:
        torch.set_num_threads(prev)


def _probe(path: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split(" ", 2)) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------ the loop under DDP


def test_two_gloo_ranks_follow_the_single_process_trajectory(project, tmp_path):
    model = _model(project)
    one = _single(_cfg(project, tmp_path / "one"), model)

    probe = tmp_path / "probe.log"
    proc = _torchrun(project, _cfg(project, tmp_path / "ddp"), model, probe)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = json.loads((tmp_path / "one" / "model.json").read_text())
    b = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert len(a["losses"]) == len(b["losses"]) == 4
    assert max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) < 1e-5, (
        a["losses"],
        b["losses"],
    )
    assert (b["world_size"], a["world_size"]) == (2, 1)
    # the same global samples and tokens, whatever the split
    assert (
        (b["samples_seen"], b["tokens_seen"])
        == (a["samples_seen"], a["tokens_seen"])
        == (32, one.tokens_seen)
    )
    wa, wb = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "ddp" / "model.safetensors")),
    )
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5

    events = _probe(probe)
    writes = [
        (rank, p) for rank, kind, p in events if kind == "write" and str(tmp_path / "ddp") in p
    ]
    assert {Path(p).name for _, p in writes} >= {
        "model.safetensors",
        "model.json",
        "resume.pt",
        "loss.png",
    }
    assert {rank for rank, _ in writes} == {"0"}, writes  # rank 0 alone writes checkpoints
    rows = {
        r: {int(i) for rank, kind, i in events if kind == "row" and rank == r} for r in ("0", "1")
    }
    assert rows["0"] and rows["1"] and not rows["0"] & rows["1"], rows  # each rank its own rows
    assert len(rows["0"] | rows["1"]) == 32  # together: the global batches of the 4 steps
    # only rank 0 prints the metadata (and logs)
    assert proc.stdout.count('"final_loss"') == 1


def test_uneven_tail_and_resume_on_another_world_size(project, tmp_path):
    """A stream that ends mid-round (13 samples: the last step has 1 sample, rank 1 none) and a run
    interrupted in one process, then finished by two: same losses as one uninterrupted process."""
    from minillm_core.tokens import TokenDataset

    model = _model(project)
    n = len(TokenDataset(_tokens(project)))
    cfg = dict(max_steps=None, epochs=1, accumulation_steps=2, batch_size=3, save_interval=1)
    ref = _single(_cfg(project, tmp_path / "ref", **cfg), model)
    assert n % 6 != 0 and ref.steps == -(-n // 6)

    class StopAt(torch.utils.data.Dataset):
        """The real rows; reading the 10th sends SIGTERM to this process (a scheduler's stop)."""

        def __init__(self):
            self.ds, self.meta, self.reads = TokenDataset(_tokens(project)), None, 0
            self.meta = {**self.ds.meta, "data_hash": _data_hash(project)}

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            self.reads += 1
            if self.reads == 10:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.ds[i]

    with pytest.raises(TrainingInterrupted):
        train(_cfg(project, tmp_path / "run", **cfg), model, log=lambda m: None, dataset=StopAt())
    state = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)
    assert 0 < state["step"] < ref.steps and not state["finished"]

    proc = _torchrun(project, _cfg(project, tmp_path / "run", **cfg), model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((tmp_path / "ref" / "model.json").read_text())
    b = json.loads((tmp_path / "run" / "model.json").read_text())
    assert len(a["losses"]) == len(b["losses"]) == ref.steps
    assert max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) < 1e-5
    assert (
        (b["samples_seen"], b["tokens_seen"])
        == (a["samples_seen"], a["tokens_seen"])
        == (n, ref.tokens_seen)
    )


def _data_hash(project: Path) -> str:
    from minillm_core.artifacts import sha256_file

    return sha256_file(_tokens(project) / "index.json")


def test_global_batch_must_split_across_ranks(project, tmp_path):
    cfg = _cfg(project, tmp_path, accumulation_steps=3)
    assert cfg.rank_accumulation(1) == 3 and cfg.rank_accumulation(3) == 1
    with pytest.raises(ConfigError, match="accumulation_steps=3 does not split across 2 processes"):
        cfg.rank_accumulation(2)


# ------------------------------------------------------------------------------ through Dagster


def _resource(project: Path):
    from minillm_assets.resources import MiniLLMResource

    return MiniLLMResource(
        profile="smoke", root=str(project), out_dir=str(project / "out"), tf_dir=str(project / "tf")
    )


def _run_config(**dist) -> dict:
    return {
        "ops": {
            "pretrain_checkpoint": {
                "config": {
                    "model": MODEL,
                    "max_steps": 4,
                    "batch_size": 2,
                    "accumulation_steps": 2,
                    "log_interval": 1,
                    "save_interval": 2,
                    **({"distributed": dist} if dist else {}),
                }
            }
        }
    }


def _materialize(project: Path, run_config: dict, env: dict[str, str] | None = None):
    import dagster as dg

    from minillm_assets.training import checkpoint_asset

    asset, _ = checkpoint_asset("pretrain", retry_policy=None)  # fail once, do not retry
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                [asset],
                resources={"minillm": _resource(project)},
                run_config=run_config,
                instance=instance,
                raise_on_error=False,
            )
            result.log_lines = [e.user_message for e in instance.all_logs(result.run_id)]
            return result
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_asset_runs_torchrun_through_pipes_with_the_in_process_metadata(project):
    import dagster as dg

    inproc = _materialize(project, _run_config())
    assert inproc.success
    probe = project / "asset_probe.log"
    ddp = _materialize(
        project, _run_config(nproc_per_node=2, backend="gloo", timeout_s=60), _env(project, probe)
    )
    assert ddp.success, [e.message for e in ddp.all_events if e.is_failure]
    a, b = (r.asset_materializations_for_node("pretrain_checkpoint") for r in (inproc, ddp))
    assert len(a) == len(b) == 1  # one report: rank 0's
    ma, mb = a[0].metadata, b[0].metadata
    assert set(ma) == set(mb)
    for key in ma:
        assert type(ma[key]) is type(mb[key]), key
    assert mb["world_size"].value == 2 and ma["world_size"].value == 1
    assert abs(ma["final_loss"].value - mb["final_loss"].value) < 1e-5
    for key in ("steps", "tokens_seen", "samples_seen", "global_batch", "path", "tensorboard"):
        assert ma[key] == mb[key], key
    assert isinstance(mb["loss_curve"], dg.MarkdownMetadataValue)
    writes = {r for r, kind, p in _probe(probe) if kind == "write" and "out/pretrain" in p}
    assert writes == {"0"}, writes
    # rank 0's log lines reach the run's log through Pipes, once (no other rank logs)
    assert sum("trainable parameters" in line for line in ddp.log_lines) == 1, ddp.log_lines
    assert any("pretrain step 4/4" in line for line in ddp.log_lines)


def _ranks(marker: str) -> dict[int, int]:
    """{RANK: pid} of this user's processes whose command line holds `marker`."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(marker.encode() in c for c in cmd):
            for kv in env:
                if kv.startswith(b"RANK="):
                    out[int(kv[5:])] = int(pid)
    return out


def _signal_rank1_during_a_long_run(project, sig: int, timeout_s: float):
    """Start an endless 2-rank pretrain and, once rank 1 is training, send it `sig`. A stopped
    rank is continued after rank 0 has gone, so the agent's SIGTERM can reach it.
    Returns the run's result and when/whom it signalled."""
    out = project / "out" / "pretrain"
    for f in out.glob("*"):
        f.unlink()
    seen: dict[str, float] = {}

    def signaller():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ranks = _ranks("minillm_assets.pipes")
            if "at" not in seen and 1 in ranks and (out / "resume.pt").exists():  # training
                os.kill(ranks[1], sig)
                seen["at"], seen["pid"], seen["rank0"] = time.monotonic(), ranks[1], ranks[0]
                if sig != signal.SIGSTOP:
                    return
            if "at" in seen and not Path(f"/proc/{seen['rank0']}").exists():
                os.kill(seen["pid"], signal.SIGCONT)
                return
            time.sleep(0.05)

    t = threading.Thread(target=signaller, daemon=True)
    t.start()
    cfg = _run_config(nproc_per_node=2, backend="gloo", timeout_s=timeout_s)
    cfg["ops"]["pretrain_checkpoint"]["config"].update(
        max_steps=100000, epochs=100000, save_interval=1
    )
    result = _materialize(project, cfg, _env(project))
    t.join(timeout=5)
    return result, seen


def test_a_killed_rank_fails_the_asset_naming_the_rank(project):
    result, killed = _signal_rank1_during_a_long_run(project, signal.SIGKILL, timeout_s=30)
    assert "at" in killed, "rank 1 was never seen running"
    assert not result.success
    assert time.monotonic() - killed["at"] < 30  # the agent noticed; no collective timeout needed
    text = _failure_text(result)
    print(text)
    assert "rank 1" in text and "SIGKILL" in text, text


def test_a_stuck_rank_turns_into_a_timeout_failure(project):
    """Rank 1 frozen (SIGSTOP) mid-run: rank 0 waits in a collective until the process-group
    timeout, then fails with gloo's timeout error, and the asset fails with that rank's message."""
    result, seen = _signal_rank1_during_a_long_run(project, signal.SIGSTOP, timeout_s=4)
    assert "at" in seen and not result.success
    waited = time.monotonic() - seen["at"]
    assert 4 <= waited < 40, waited
    text = _failure_text(result)
    print(text)
    assert "rank 0" in text and "timed out" in text.lower(), text


def _failure_text(result) -> str:
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    data = failure.step_failure_data
    return str(data.user_failure_data.description if data.user_failure_data else data.error)


def test_rank_config_file_round_trips_the_configs_exactly(tmp_path):
    from minillm_core.train.ddp import read_rank_config

    cfg = _cfg(tmp_path, tmp_path / "out", learning_rate=1 / 3, warmup_ratio=0.1 + 0.2, beta=1e-300)
    model = ModelConfig(vocab_size=300, rope_theta=10_000.000000001, **MODEL)
    dist_cfg = DistributedConfig(nproc_per_node=2, backend="gloo", timeout_s=0.1 + 0.7)
    again = read_rank_config(write_rank_config(tmp_path / "rank.json", cfg, model, dist_cfg))
    assert again == (cfg, model, dist_cfg)
