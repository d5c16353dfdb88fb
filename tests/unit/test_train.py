"""The training loop on tiny in-memory data: overfitting per stage, the SFT mask, DPO at step 0,
guards (NaN, unfrozen reference, mismatched data / resume state), the data stream, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from minillm_cli.train import parse_train_args, train_overrides
from minillm_core.errors import ConfigError, NonFiniteLossError, OutOfMemoryError
from minillm_core.layout import Layout
from minillm_core.model import MiniLLM, ModelConfig
from minillm_core.tokens.collate import training_batch
from minillm_core.train import TrainConfig, train
from minillm_core.train.checkpointer import load_checkpoint, save_checkpoint
from minillm_core.train.data import SampleStream
from minillm_core.train.objectives import DPOLoss, sft_loss
from minillm_core.train.state import lr_at

V = 64
MODEL = ModelConfig(
    vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


class Rows(torch.utils.data.Dataset):
    """A map-style dataset of token rows (the TOKEN ROWS convention) held in memory."""

    def __init__(self, rows, stage, vocab_size=V, pad_id=0, tokenizer_hash="tok-a"):
        self.rows = rows
        self.meta = {
            "stage": stage,
            "vocab_size": vocab_size,
            "pad_id": pad_id,
            "tokenizer_hash": tokenizer_hash,
            "data_hash": f"{stage}-{len(rows)}",
        }

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def chat_row(seq: torch.Tensor, mask: torch.Tensor) -> dict:
    labels = torch.where(mask[1:] == 1, seq[1:], torch.full_like(seq[1:], -100))
    return {"input_ids": seq[:-1], "labels": labels, "loss_mask": mask[1:].long()}


def pretrain_rows(n=4, g=None):
    g = g or torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        seq = torch.randint(1, V, (10 + 2 * i,), generator=g)
        rows.append({"input_ids": seq[:-1], "labels": seq[1:]})
    return Rows(rows, "pretrain")


def sft_rows(n=4):
    g = torch.Generator().manual_seed(2)
    rows = []
    for i in range(n):
        seq = torch.randint(1, V, (14 + i,), generator=g)
        mask = torch.zeros_like(seq)
        mask[8:] = 1  # the first 8 tokens are the user's turn
        rows.append(chat_row(seq, mask))
    return Rows(rows, "sft")


def dpo_rows(n=4):
    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(n):
        prompt = torch.randint(1, V, (6,), generator=g)
        mask = torch.tensor([0] * 6 + [1] * (4 + i))
        parts = {}
        for side in ("chosen", "rejected"):
            seq = torch.cat([prompt, torch.randint(1, V, (4 + i,), generator=g)])
            r = chat_row(seq, mask)
            parts[f"{side}_input_ids"], parts[f"{side}_labels"] = r["input_ids"], r["labels"]
        rows.append(parts)
    return Rows(rows, "dpo")


def cfg(stage, out, **kw) -> TrainConfig:
    base = dict(
        stage=stage,
        out_dir=str(out),
        data_path="mem",
        batch_size=4,
        accumulation_steps=1,
        epochs=1000,
        log_interval=50,
        save_interval=1000,
        warmup_steps=0,
        min_lr_ratio=1.0,
        weight_decay=0.0,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _few_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box; tiny models gain nothing from threads
    yield
    torch.set_num_threads(prev)


# ------------------------------------------------------------------------------ overfitting


def test_pretrain_overfits_a_tiny_batch_and_writes_artifacts(tmp_path):
    rep = train(
        cfg("pretrain", tmp_path, learning_rate=1e-2, max_steps=80), MODEL, dataset=pretrain_rows()
    )
    assert rep.final_loss < 0.1, rep.final_loss
    assert rep.steps == 80 and rep.num_parameters == MiniLLM(MODEL).num_parameters()
    assert rep.tokens_seen == 80 * sum(9 + 2 * i for i in range(4))
    for f in ("model.safetensors", "model.json", "resume.pt", "loss.png"):
        assert (tmp_path / f).exists(), f
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["stage"] == "pretrain" and meta["step"] == 80 and meta["finished"]
    assert meta["tokenizer_hash"] == "tok-a" and meta["model"]["hidden_size"] == 64
    json.dumps(rep.metadata)  # JSON-able for the UI
    model, _ = load_checkpoint(tmp_path)
    row = pretrain_rows()[0]
    assert torch.equal(model(row["input_ids"][None])[0].argmax(-1), row["labels"])


def _pretrained(tmp_path) -> Path:
    d = tmp_path / "pre"
    torch.manual_seed(0)
    save_checkpoint(d, MiniLLM(MODEL), {"stage": "pretrain", "step": 0, "tokenizer_hash": "tok-a"})
    return d


def test_sft_overfits_from_pretrained_weights(tmp_path):
    pre = _pretrained(tmp_path)
    rep = train(
        cfg("sft", tmp_path / "sft", learning_rate=1e-2, max_steps=60, pretrained_path=str(pre)),
        MODEL,
        dataset=sft_rows(),
    )
    assert rep.final_loss < 0.1, rep.final_loss
    assert json.loads((tmp_path / "sft" / "model.json").read_text())["init_from"] == str(pre)


def test_dpo_overfits(tmp_path):
    pre = _pretrained(tmp_path)
    rep = train(
        cfg(
            "dpo",
            tmp_path / "dpo",
            learning_rate=1e-2,
            max_steps=40,
            beta=0.5,
            pretrained_path=str(pre),
        ),
        MODEL,
        dataset=dpo_rows(),
    )
    assert rep.final_loss < 0.05, rep.final_loss


# ------------------------------------------------------------------------------ objectives


def test_sft_loss_ignores_non_assistant_targets():
    torch.manual_seed(0)
    model = MiniLLM(MODEL)
    rows = sft_rows()
    items = list(enumerate(rows[i] for i in range(len(rows))))
    batch = training_batch(items, stage="sft", pad_id=0)
    base, _ = sft_loss(model, batch)
    # Give a user position a real target (as a wrong label pipeline would): nothing changes.
    tampered = dict(batch)
    tampered["labels"] = batch["labels"].clone()
    tampered["labels"][:, 2] = 5
    same, _ = sft_loss(model, tampered)
    assert torch.equal(base, same)
    # ...while an assistant target does change it (the test can see a change).
    tampered["labels"][:, 10] = (batch["labels"][:, 10] + 1) % V
    other, _ = sft_loss(model, tampered)
    assert not torch.equal(base, other)


def test_dpo_step0_loss_is_ln2(tmp_path):
    pre = _pretrained(tmp_path)
    ref, _ = load_checkpoint(pre)
    ref.requires_grad_(False)
    policy, _ = load_checkpoint(pre)
    policy.train()
    items = list(enumerate(dpo_rows()[i] for i in range(4)))
    batch = training_batch(items, stage="dpo", pad_id=0)
    loss, m = DPOLoss(ref, beta=0.1)(policy, batch)
    assert abs(loss.item() - math.log(2)) < 1e-6
    assert m["reward_margin"].item() == 0.0
    # and through the loop: the first step's loss
    rep = train(
        cfg("dpo", tmp_path / "dpo", learning_rate=1e-3, max_steps=1, pretrained_path=str(pre)),
        MODEL,
        dataset=dpo_rows(),
    )
    assert abs(rep.final_loss - math.log(2)) < 1e-6


def test_dpo_refuses_a_reference_that_is_not_frozen():
    ref = MiniLLM(MODEL).eval()
    with pytest.raises(ValueError, match="not frozen"):
        DPOLoss(ref, beta=0.1)


def test_dpo_reference_cache_gives_the_same_numbers():
    torch.manual_seed(0)
    ref = MiniLLM(MODEL).eval().requires_grad_(False)
    items = list(enumerate(dpo_rows()[i] for i in range(4)))
    batch = training_batch(items, stage="dpo", pad_id=0)
    cached = DPOLoss(ref, 0.1, cache=True)
    first = cached.reference_logps(batch)
    assert len(cached.cache) == 4
    assert torch.equal(cached.reference_logps(batch), first)
    again = DPOLoss(ref, 0.1, cache=True)
    again.load_state_dict(cached.state_dict())
    assert torch.equal(again.reference_logps(batch), first)


# ------------------------------------------------------------------------------ guards


def test_nan_in_a_batch_stops_with_step_records_and_last_checkpoint(tmp_path):
    """A corrupted embedding row for token 63 makes exactly the batches holding 63 non-finite."""
    torch.manual_seed(0)
    model_cfg = MODEL.model_copy(update={"tie_word_embeddings": False})
    bad = MiniLLM(model_cfg)
    with torch.no_grad():
        bad.model.embed_tokens.weight[V - 1] = float("nan")
    save_checkpoint(tmp_path / "pre", bad, {"stage": "pretrain", "tokenizer_hash": "tok-a"})
    rows = [{"input_ids": torch.arange(1, 9), "labels": torch.arange(2, 10)} for _ in range(7)]
    rows.append(
        {"input_ids": torch.tensor([1, 2, V - 1, 3]), "labels": torch.tensor([2, V - 1, 3, 4])}
    )
    ds = Rows(rows, "sft")
    c = cfg(
        "sft",
        tmp_path / "sft",
        learning_rate=1e-3,
        batch_size=1,
        epochs=1,
        save_interval=2,
        pretrained_path=str(tmp_path / "pre"),
        seed=0,
    )
    at = SampleStream(0, 8).indices(0, 8).index(7)  # where row 7 falls in the data order
    with pytest.raises(NonFiniteLossError) as err:
        train(c, model_cfg, dataset=ds)
    msg = str(err.value)
    assert f"at step {at + 1}" in msg and "rows [7]" in msg
    last = (at // 2) * 2
    assert (
        (f"last good checkpoint: {tmp_path / 'sft'} (step {last})" in msg)
        if last
        else "none yet" in msg
    )


def test_data_of_another_stage_vocab_or_tokenizer_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="holds sft rows"):
        train(cfg("pretrain", tmp_path, max_steps=1), MODEL, dataset=sft_rows())
    with pytest.raises(ConfigError, match="100-token tokenizer but the model has vocab_size 64"):
        train(
            cfg("pretrain", tmp_path, max_steps=1),
            MODEL,
            dataset=Rows([], "pretrain", vocab_size=100),
        )
    with pytest.raises(ConfigError, match="tokenizer mismatch"):
        train(
            cfg("pretrain", tmp_path, max_steps=1, tokenizer_hash="tok-b"),
            MODEL,
            dataset=pretrain_rows(),
        )


def test_resume_state_from_other_settings_is_refused_naming_the_difference(tmp_path):
    c = cfg("pretrain", tmp_path, learning_rate=1e-3, max_steps=4, save_interval=2, epochs=10)
    first = pretrain_rows()
    # leave an unfinished resume state behind: stop right after the step-2 save
    import minillm_core.train.checkpointer as T

    orig = T.save_resume
    calls = []

    def boom(path, state):
        orig(path, state)
        calls.append(state["step"])
        raise KeyboardInterrupt

    T.save_resume = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            train(c, MODEL, dataset=first)
    finally:
        T.save_resume = orig
    assert calls == [2]
    with pytest.raises(ConfigError, match=r"train.learning_rate: 0.001 there, 0.002 now"):
        train(c.model_copy(update={"learning_rate": 2e-3}), MODEL, dataset=first)
    with pytest.raises(ConfigError, match=r"data.tokenizer_hash: 'tok-a' there, 'tok-b' now"):
        train(c, MODEL, dataset=Rows(first.rows, "pretrain", tokenizer_hash="tok-b"))
    rep = train(c, MODEL, dataset=first)  # same settings: resumes and finishes
    assert rep.steps == 4


# ------------------------------------------------------------------------------ plumbing


def test_stream_is_a_pure_function_of_seed_epoch_and_position():
    s = SampleStream(5, 10)
    whole = s.indices(0, 30)
    assert sorted(whole[:10]) == list(range(10)) and whole[:10] != whole[10:20]
    assert SampleStream(5, 10).indices(13, 27) == whole[13:27]


def test_collate_pads_dpo_pairs_to_the_longest_of_both_sides():
    items = list(enumerate(dpo_rows()[i] for i in range(2)))
    b = training_batch(items, stage="dpo", pad_id=0)
    assert b["input_ids"].shape == (4, 6 + 5 - 1)
    assert (b["labels"][0, -1] == -100) and b["num_tokens"] == 2 * (9 + 10)


def test_lr_warms_up_then_decays_to_the_floor():
    c = TrainConfig(stage="pretrain", learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, c) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(
        0.1, abs=1e-3
    )


def test_stage_defaults_and_cli_overrides():
    assert TrainConfig(stage="pretrain").epochs == 2
    assert TrainConfig(stage="dpo").pretrained_path is None  # the front end fills paths
    t, m = train_overrides(
        "pretrain",
        [
            "--batch_size",
            "8",
            "--learning_rate",
            "3e-4",
            "--hidden_size",
            "64",
            "--resume",
            "false",
            "--compile",
        ],
    )
    assert t == {"batch_size": 8, "learning_rate": 3e-4, "resume": False, "compile": True}
    assert m == {"hidden_size": 64}
    c, mc = parse_train_args("sft", ["--profile", "smoke", "--max_steps", "2"])
    assert (c.max_steps, c.batch_size, c.learning_rate, mc.hidden_size) == (2, 4, 1e-3, 64)
    layout = Layout.at()
    assert c.accumulation_steps == 1 and c.pretrained_path == str(layout.checkpoint_dir("pretrain"))
    assert (c.data_path, c.out_dir) == (
        str(layout.tokens_dir("sft")),
        str(layout.checkpoint_dir("sft")),
    )


def test_smoke_profile_fields_exist():
    from minillm_core.profiles import PROFILES

    for stage in ("pretrain", "sft", "dpo"):
        for profile in PROFILES:
            TrainConfig(stage=stage, **PROFILES[profile][stage])
    ModelConfig(**PROFILES["smoke"]["model"])


# ------------------------------------------------------------------------------ real artifacts


def test_manual_commands_on_token_tensors_and_a_jsonl_mix(tmp_path, capsys):
    """`minillm pretrain` on exported token tensors, then `minillm sft` on a JSONL mix (tokenized
    with the trained tokenizer) which finds the pretrain weights and takes their model shape."""
    import random

    from minillm_cli.train import main_pretrain, main_sft
    from minillm_core.tokenizer import TokenizerConfig, train_tokenizer
    from minillm_core.tokens import TensorConfig, export_tokens

    rnd = random.Random(0)
    words = "我们 今天 天气 很好 学习 模型 语言 中文 数据 训练 你好 世界".split()

    def say(n):
        return "".join(rnd.choice(words) for _ in range(n))

    pre = tmp_path / "pre.jsonl"
    pre.write_text(
        "".join(
            json.dumps({"text": say(rnd.randint(5, 30))}, ensure_ascii=False) + "\n"
            for _ in range(60)
        ),
        encoding="utf-8",
    )
    sft = tmp_path / "sft.jsonl"
    sft.write_text(
        "".join(
            json.dumps(
                {
                    "conversations": [
                        {"role": "user", "content": say(4)},
                        {"role": "assistant", "content": say(6)},
                    ]
                },
                ensure_ascii=False,
            )
            + "\n"
            for _ in range(12)
        ),
        encoding="utf-8",
    )
    tok = tmp_path / "tok"
    train_tokenizer(TokenizerConfig(vocab_size=320), [pre, sft], tok)
    export_tokens(TensorConfig(max_length=32), "pretrain", pre, tok, tmp_path / "tokens")
    common = [
        "--profile",
        "smoke",
        "--max_steps",
        "3",
        "--hidden_size",
        "32",
        "--num_hidden_layers",
        "1",
    ]
    assert (
        main_pretrain(
            ["--data_path", str(tmp_path / "tokens"), "--out_dir", str(tmp_path / "p"), *common]
        )
        == 0
    )
    meta = json.loads((tmp_path / "p" / "model.json").read_text())
    assert meta["model"]["vocab_size"] == 320 and meta["step"] == 3
    assert (
        main_sft(
            [
                "--data_path",
                str(sft),
                "--tokenizer_dir",
                str(tok),
                "--out_dir",
                str(tmp_path / "s"),
                "--pretrained_path",
                str(tmp_path / "p"),
                "--profile",
                "smoke",
                "--max_steps",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "trainable parameters" in out.out
    smeta = json.loads((tmp_path / "s" / "model.json").read_text())
    assert smeta["model"] == meta["model"] and smeta["tokenizer_hash"] == meta["tokenizer_hash"]
    # DPO without its data says what is missing
    from minillm_cli.train import main_dpo

    assert (
        main_dpo(
            [
                "--data_path",
                str(tmp_path / "nope"),
                "--out_dir",
                str(tmp_path / "d"),
                "--pretrained_path",
                str(tmp_path / "s"),
            ]
        )
        == 1
    )
    assert "dpo data" in capsys.readouterr().err


def test_group_by_length_is_a_deterministic_permutation_of_similar_length_batches():
    from minillm_core.train.data import epoch_order

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 500, (1000,), generator=g).tolist()
    a = epoch_order(3, 0, 1000, lengths, batch=4, chunk_batches=16)
    assert sorted(a.tolist()) == list(range(1000))
    assert torch.equal(a, epoch_order(3, 0, 1000, lengths, batch=4, chunk_batches=16))
    lens = torch.tensor(lengths)[a].view(-1, 4)
    spread = (lens.max(1).values - lens.min(1).values).float().mean()
    plain = torch.tensor(lengths)[epoch_order(3, 0, 1000)].view(-1, 4)
    assert spread < 0.2 * (plain.max(1).values - plain.min(1).values).float().mean()
    assert TrainConfig(stage="dpo").group_by_length and not TrainConfig(stage="sft").group_by_length


# ------------------------------------------------------------------------------ one sequence length


def test_rows_longer_than_the_model_context_are_refused_before_training(tmp_path):
    short = MODEL.model_copy(update={"max_position_embeddings": 12})
    with pytest.raises(ConfigError) as err:  # rows of 9..15 positions, a context of 12
        train(cfg("pretrain", tmp_path, max_steps=1), short, dataset=pretrain_rows())
    msg = str(err.value)
    assert "\n" not in msg and "up to 15 positions" in msg and "context of 12" in msg
    assert "--max_seq_len" in msg
    assert not (tmp_path / "model.safetensors").exists()  # refused before any step
    # rows exactly as long as the context train
    train(
        cfg("pretrain", tmp_path / "ok", max_steps=1),
        MODEL.model_copy(update={"max_position_embeddings": 15}),
        dataset=pretrain_rows(),
    )


def test_cli_max_seq_len_sets_the_pretrain_context_and_must_match_a_parent(tmp_path):
    _, m = train_overrides("pretrain", ["--max_seq_len", "256"])
    assert m == {"max_position_embeddings": 256}
    _, mc = parse_train_args("pretrain", ["--profile", "smoke", "--max_seq_len", "64"])
    assert mc.max_position_embeddings == 64
    from minillm_cli.train import fill_model_from_upstream

    pre = _pretrained(tmp_path)  # context 512 (the default)
    c, mc = parse_train_args("sft", ["--pretrained_path", str(pre), "--max_seq_len", "128"])
    with pytest.raises(ConfigError, match=r"--max_seq_len 128 differs .*\(512\)"):
        fill_model_from_upstream(c, mc, train_overrides("sft", ["--max_seq_len", "128"])[1])


def test_out_of_memory_becomes_a_resource_error_with_the_flags_to_change(tmp_path, monkeypatch):
    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(MiniLLM, "forward", oom)
    with pytest.raises(OutOfMemoryError) as err:
        train(
            cfg("pretrain", tmp_path, max_steps=1, accumulation_steps=2),
            MODEL,
            dataset=pretrain_rows(),
        )
    advice = err.value.advice
    assert "\n" not in advice and err.value.retryable
    for flag in ("--batch_size", "--accumulation_steps", "--max_seq_len"):
        assert flag in advice, advice
    # the CPU allocator's failure is a plain RuntimeError: it is recognised too
    monkeypatch.setattr(
        MiniLLM,
        "forward",
        lambda self, *a, **k: (_ for _ in ()).throw(
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
            )
        ),
    )
    with pytest.raises(OutOfMemoryError):
        train(cfg("pretrain", tmp_path / "cpu", max_steps=1), MODEL, dataset=pretrain_rows())


def test_default_paths_come_from_the_project_root_not_the_current_directory(tmp_path, monkeypatch):
    root, elsewhere = tmp_path / "root", tmp_path / "root" / "some" / "sub-folder"
    elsewhere.mkdir(parents=True)
    monkeypatch.setenv("MINILLM_ROOT", str(root))
    monkeypatch.chdir(elsewhere)
    c, _ = parse_train_args("dpo", [])
    assert (c.data_path, c.out_dir, c.pretrained_path) == (
        str(root / "out" / "tokens" / "dpo"),
        str(root / "out" / "dpo"),
        str(root / "out" / "sft"),
    )


def test_packed_pretrain_batches_carry_documents_and_train_each_as_if_alone():
    """Packed rows (documents opened by <bos> = 1, back to back) batch with `doc_ids`, and the
    pretrain loss is then every document's own loss from a fresh context; SFT rows, unpacked rows
    and `document_mask=False` get no doc_ids."""
    from minillm_core.train.data import TrainingData, document_start
    from minillm_core.train.objectives import pretrain_loss

    g = torch.Generator().manual_seed(3)
    docs = [torch.randint(2, V, (n,), generator=g) for n in (6, 11, 8)]
    for d in docs:
        d[0] = 1
    seq = torch.cat(docs)
    packed = {"layout": "packed", "bos_id": 1}
    data = TrainingData(Rows([], "pretrain"), packed)
    assert document_start(data, cfg("pretrain", "out")) == 1
    assert document_start(data, cfg("pretrain", "out", document_mask=False)) is None
    assert (
        document_start(TrainingData([], {"layout": "padded", "bos_id": 1}), cfg("pretrain", "o"))
        is None
    )
    assert document_start(TrainingData([], packed), cfg("sft", "out")) is None
    row = {"input_ids": seq[:-1], "labels": seq[1:]}
    batch = training_batch([(0, row)], stage="pretrain", pad_id=0, doc_start=1)
    assert batch["doc_ids"].tolist() == [[1] * 6 + [2] * 11 + [3] * 7]
    model = MiniLLM(MODEL).eval()
    loss, _ = pretrain_loss(model, batch)
    # The same targets, each document scored alone (a fresh context), the next <bos> included.
    total = 0.0
    for i, d in enumerate(docs):
        ids = torch.cat([d, docs[i + 1][:1]]) if i + 1 < len(docs) else d
        logits = model(ids[None, :-1])[0]
        total += torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum").item()
    assert loss.item() == pytest.approx(total / (len(seq) - 1), rel=1e-5)
    unmasked, _ = pretrain_loss(model, {k: v for k, v in batch.items() if k != "doc_ids"})
    assert unmasked.item() != pytest.approx(loss.item(), rel=1e-5)


# ------------------------------------------------------------------------------------ Muon


@pytest.mark.parametrize("shape", [(48, 160), (160, 48)])
def test_muon_orthogonalizes_a_spread_spectrum_to_about_one(shape):
    from minillm_core.train.muon import orthogonalize

    g = torch.Generator().manual_seed(0)
    u, _, v = torch.linalg.svd(torch.randn(*shape, generator=g), full_matrices=False)
    spread = u @ torch.diag(torch.logspace(-1, 1, min(shape))) @ v  # singular values 0.1..10
    o = orthogonalize(spread, 5, torch.float32)
    s = torch.linalg.svdvals(o)
    assert 0.5 < s.min() and s.max() < 1.3, (s.min(), s.max())
    # ...with the gradient's singular directions: close to U V^T
    assert torch.nn.functional.cosine_similarity(o.flatten(), (u @ v).flatten(), dim=0) > 0.95


def test_muon_trains_matrices_with_muon_and_the_rest_with_adamw(tmp_path):
    from minillm_core.train.muon import Muon
    from minillm_core.train.state import make_optimizer

    model = MiniLLM(MODEL)
    opt = make_optimizer(model, cfg("pretrain", tmp_path, optimizer="muon", learning_rate=1e-3))
    assert isinstance(opt, Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]]
    adam = [names[id(p)] for g in opt.param_groups if not g["muon"] for p in g["params"]]
    assert muon and all(n.startswith("model.layers.") and "layernorm" not in n for n in muon)
    assert "model.embed_tokens.weight" in adam and "model.norm.weight" in adam
    assert len(muon) + len(adam) == len(names)
    assert opt.param_groups[0]["lr_ratio"] == pytest.approx(0.02 / 1e-3)
    rep = train(
        cfg("pretrain", tmp_path / "run", optimizer="muon", learning_rate=1e-2, max_steps=80),
        MODEL,
        dataset=pretrain_rows(),
    )
    assert rep.final_loss < 0.1, rep.final_loss


def test_muon_resume_continues_bitwise(tmp_path):
    import minillm_core.train.checkpointer as T

    c = cfg("pretrain", tmp_path / "a", optimizer="muon", max_steps=6, save_interval=3)
    c = c.model_copy(update={"learning_rate": 3e-3, "deterministic": True})
    train(c, MODEL, dataset=pretrain_rows())
    orig = T.save_resume

    def stop_after_first_save(path, state):
        orig(path, state)
        raise KeyboardInterrupt

    T.save_resume = stop_after_first_save
    try:
        with pytest.raises(KeyboardInterrupt):
            train(
                c.model_copy(update={"out_dir": str(tmp_path / "b")}),
                MODEL,
                dataset=pretrain_rows(),
            )
    finally:
        T.save_resume = orig
    train(c.model_copy(update={"out_dir": str(tmp_path / "b")}), MODEL, dataset=pretrain_rows())
    a, b = load_checkpoint(tmp_path / "a")[0], load_checkpoint(tmp_path / "b")[0]
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
