"""Token tensors: exact ids, labels and masks per stage, truncation accounting, storage, refusal of
a foreign tokenizer. A tiny real tokenizer (vocab 300, the pure-Python trainer) is trained once per
session; expected rows are spelled out from its special ids and `encode_ordinary`, so the tests pin
the row layout itself (where BOS goes, what each label is, which positions are masked)."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm_cli import main as cli
from minillm_cli.tokens import main
from minillm_core.artifacts import sha256_tree
from minillm_core.errors import ArtifactError, ConfigError, DataError, TokenizerMismatchError
from minillm_core.model import ModelConfig
from minillm_core.schema import IGNORE_INDEX
from minillm_core.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer
from minillm_core.tokens import (
    JsonlDataset,
    TensorConfig,
    TokenDataset,
    check_tokens,
    disk_dtype,
    encode_record,
    export_tokens,
    plot_length_histogram,
)
from minillm_core.tokens.collate import collate_rows

X = IGNORE_INDEX

CORPUS = [
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支，深度学习又是机器学习的一个分支。",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "你好，世界！你好，小明。我很好，谢谢你。",
    "中华人民共和国成立于一九四九年。北京是中国的首都。",
]


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tensors_tok")
    mix = write_jsonl(d / "mix.jsonl", [{"text": t * 3, "source": "test"} for t in CORPUS * 4])
    train_tokenizer(
        TokenizerConfig(vocab_size=300, trainer="python"), [mix], d / "tok", log=lambda m: None
    )
    return d / "tok"


@pytest.fixture(scope="session")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


@pytest.fixture(scope="session")
def sp(tok):
    return {
        name.strip("<|>"): tok.encode_special(name)
        for name in (
            "<|bos|>",
            "<|user_start|>",
            "<|user_end|>",
            "<|assistant_start|>",
            "<|assistant_end|>",
        )
    }


def enc(tok, text: str) -> list[int]:
    return tok.enc.encode_ordinary(text)


def export(tmp_path, tok_dir, stage, records, name="out", logs=None, **cfg):
    mix = write_jsonl(tmp_path / f"{name}.jsonl", records)
    kw = {"log": logs.append} if logs is not None else {"log": lambda m: None}
    report = export_tokens(TensorConfig(**cfg), stage, mix, tok_dir, tmp_path / name, **kw)
    return report, TokenDataset(report.path)


def as_lists(row: dict) -> dict:
    return {k: v.tolist() for k, v in row.items()}


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


# ----------------------------------------------------------------------------- pretrain


def test_pretrain_padded_rows_are_bos_text_and_next_token_labels(tmp_path, tok_dir, tok, sp):
    texts = [CORPUS[0], CORPUS[2]]
    rep, ds = export(
        tmp_path,
        tok_dir,
        "pretrain",
        [{"text": t, "source": "s"} for t in texts],
        layout="padded",
        max_length=128,
    )
    assert len(ds) == 2 and rep.rows == 2
    for i, t in enumerate(texts):
        seq = [sp["bos"], *enc(tok, t)]
        assert as_lists(ds[i]) == {"input_ids": seq[:-1], "labels": seq[1:]}
        assert ds[i]["input_ids"].dtype == torch.long
    assert rep.tokens == sum(1 + len(enc(tok, t)) for t in texts)
    assert rep.metadata["truncated_samples"] == 0
    assert ds.meta["dtype"] == "uint16" and ds.stage == "pretrain" and ds.vocab_size == 300
    assert ds.pad_id == sp["bos"]  # no <|pad|> special: BOS pads (never trained)


def test_pretrain_append_eos_and_custom_tokens(tmp_path, tok_dir, tok, sp):
    _, ds = export(
        tmp_path,
        tok_dir,
        "pretrain",
        [{"text": CORPUS[3]}],
        layout="padded",
        max_length=128,
        append_eos=True,
        eos_token="<|user_end|>",
        bos_token="<|assistant_start|>",
    )
    seq = [sp["assistant_start"], *enc(tok, CORPUS[3]), sp["user_end"]]
    assert as_lists(ds[0]) == {"input_ids": seq[:-1], "labels": seq[1:]}
    with pytest.raises(ConfigError, match="<\\|nope\\|>"):
        export(tmp_path, tok_dir, "pretrain", [{"text": "x"}], name="bad", bos_token="<|nope|>")


def test_pretrain_padded_truncation_at_the_boundary(tmp_path, tok_dir, tok, sp):
    t = CORPUS[1]
    seq = [sp["bos"], *enc(tok, t)]
    n = len(seq)
    logs: list[str] = []
    # max_length = n-1: the row holds exactly n tokens (n-1 inputs + 1 target), nothing is cut.
    rep, ds = export(
        tmp_path,
        tok_dir,
        "pretrain",
        [{"text": t}],
        name="fits",
        logs=logs,
        layout="padded",
        max_length=n - 1,
    )
    assert as_lists(ds[0]) == {"input_ids": seq[:-1], "labels": seq[1:]}
    assert rep.metadata["truncated_samples"] == 0 and not any("WARNING" in m for m in logs)
    # One position less: the last token is cut, counted and warned about once.
    logs.clear()
    rep, ds = export(
        tmp_path,
        tok_dir,
        "pretrain",
        [{"text": t, "source": "long"}, {"text": CORPUS[0]}],
        name="cut",
        logs=logs,
        layout="padded",
        max_length=n - 2,
    )
    assert as_lists(ds[0]) == {"input_ids": seq[: n - 2], "labels": seq[1 : n - 1]}
    md = rep.metadata
    assert (md["truncated_samples"], md["truncated_tokens"], md["longest_sample"]) == (1, 1, n)
    assert md["longest_sample_line"] == 1 and md["longest_sample_source"] == "long"
    warnings = [m for m in logs if "WARNING" in m]
    assert len(warnings) == 1 and "1 of 2" in warnings[0] and f"{n} tokens" in warnings[0]


def test_pretrain_packed_rows_tile_the_stream_across_shards(tmp_path, tok_dir, tok, sp):
    texts = [CORPUS[i % 5] * (1 + i % 3) for i in range(9)]
    stream = [x for t in texts for x in [sp["bos"], *enc(tok, t)]]
    L = 16
    rep, ds = export(
        tmp_path,
        tok_dir,
        "pretrain",
        [{"text": t} for t in texts],
        layout="packed",
        max_length=L,
        shard_rows=3,
    )
    rows = math.ceil((len(stream) - 1) / L)
    assert len(ds) == rows == rep.rows and rep.tokens == len(stream)
    assert len(ds.meta["shards"]) == math.ceil(rows / 3)
    for i in range(rows):
        seq = stream[i * L : i * L + L + 1]
        assert as_lists(ds[i]) == {"input_ids": seq[:-1], "labels": seq[1:]}, i
    assert (
        len(ds[0]["input_ids"]) == L
        and len(ds[rows - 1]["input_ids"]) == (len(stream) - 1) - (rows - 1) * L
    )
    md = rep.metadata
    assert md["truncated_samples"] == 0
    assert md["padding_fraction"] == pytest.approx(1 - (len(stream) - 1) / (rows * L), abs=1e-6)
    assert md["padding_fraction_packed"] == pytest.approx(md["padding_fraction"], abs=1e-6)
    kept = [min(len(enc(tok, t)) + 1, L + 1) - 1 for t in texts]
    assert md["padding_fraction_padded"] == pytest.approx(1 - sum(kept) / (len(texts) * L))
    assert check_tokens(rep.path) == []


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    doc_ids=st.lists(st.integers(0, 4), min_size=1, max_size=8),
    reps=st.integers(1, 3),
    L=st.integers(1, 24),
    shard_rows=st.integers(1, 4),
    layout=st.sampled_from(["packed", "padded"]),
)
def test_property_rows_rebuild_the_documents(
    tmp_path_factory, tok_dir, tok, sp, doc_ids, reps, L, shard_rows, layout
):
    d = tmp_path_factory.mktemp("prop")
    texts = [CORPUS[i] * reps for i in doc_ids]
    rep, ds = export(
        d,
        tok_dir,
        "pretrain",
        [{"text": t} for t in texts],
        max_length=L,
        shard_rows=shard_rows,
        layout=layout,
    )
    docs = [[sp["bos"], *enc(tok, t)] for t in texts]
    rows = [as_lists(ds[i]) for i in range(len(ds))]
    assert len(ds.meta["shards"]) == math.ceil(len(ds) / shard_rows)
    if layout == "packed":  # the rows, overlapping by one token, are the stream
        stream = [x for doc in docs for x in doc]
        assert [x for r in rows for x in r["input_ids"]] + [rows[-1]["labels"][-1]] == stream
        assert all(len(r["input_ids"]) == L for r in rows[:-1])
    else:  # one row per document, cut at L + 1 tokens
        assert rows == [
            {"input_ids": doc[: L + 1][:-1], "labels": doc[: L + 1][1:]} for doc in docs
        ]
        assert rep.metadata["truncated_samples"] == sum(len(doc) > L + 1 for doc in docs)
    assert check_tokens(rep.path) == []


def test_empty_and_malformed_pretrain_records_are_counted(tmp_path, tok_dir, tok, sp):
    logs: list[str] = []
    rep, ds = export(
        tmp_path,
        tok_dir,
        "pretrain",
        [{"text": ""}, {"txt": "x"}, {"text": CORPUS[0]}, ["not", "an", "object"]],
        logs=logs,
        layout="padded",
        max_length=64,
    )
    assert len(ds) == 1 and ds[0]["input_ids"].tolist()[0] == sp["bos"]
    assert rep.metadata["dropped"] == {"empty": 1, "invalid": 2}
    assert rep.metadata["dropped_samples"] == 3
    assert "line 2" in rep.metadata["first_invalid"]
    assert sum("WARNING" in m and "could not be encoded" in m for m in logs) == 1
    with pytest.raises(ArtifactError, match="no usable pretrain record"):
        export(tmp_path, tok_dir, "pretrain", [{"text": ""}], name="none")
    (tmp_path / "badjson.jsonl").write_text('{"text": "a"}\n{not json\n')
    with pytest.raises(DataError, match="badjson.jsonl:2") as e:
        export_tokens(
            TensorConfig(), "pretrain", tmp_path / "badjson.jsonl", tok_dir, tmp_path / "bj"
        )
    assert (Path(e.value.file).name, e.value.line) == ("badjson.jsonl", 2)


# ----------------------------------------------------------------------------- SFT


def sft_expected(tok, sp, turns):
    """ids and per-id mask spelled out from the chat layout (system folded into the first user)."""
    ids, mask = [sp["bos"]], [0]
    for role, text in turns:
        if role == "user":
            body = [sp["user_start"], *enc(tok, text), sp["user_end"]]
            ids += body
            mask += [0] * len(body)
        else:
            ids += [sp["assistant_start"], *enc(tok, text), sp["assistant_end"]]
            mask += [0] + [1] * (len(enc(tok, text)) + 1)
    return ids, mask


def row_from(ids, mask):
    labels = [t if m else X for t, m in zip(ids[1:], mask[1:])]
    return {"input_ids": ids[:-1], "labels": labels, "loss_mask": mask[1:]}


def test_sft_system_message_and_multi_turn(tmp_path, tok_dir, tok, sp):
    conv = chat(
        ("system", "你是助手。"),
        ("user", "你好"),
        ("assistant", "你好，我很好。"),
        ("user", "今天天气"),
        ("assistant", "今天天气很好。"),
    )
    ids, mask = sft_expected(
        tok,
        sp,
        [
            ("user", "你是助手。\n\n你好"),
            ("assistant", "你好，我很好。"),
            ("user", "今天天气"),
            ("assistant", "今天天气很好。"),
        ],
    )
    rep, ds = export(
        tmp_path,
        tok_dir,
        "sft",
        [{"conversations": conv, "source": "s"}, {"messages": conv[1:3], "source": "t"}],
        max_length=256,
    )
    assert as_lists(ds[0]) == row_from(ids, mask)
    # Spelled out for the second, single-turn record: labels only on the answer and its end token.
    u, a = enc(tok, "你好"), enc(tok, "你好，我很好。")
    seq = [
        sp["bos"],
        sp["user_start"],
        *u,
        sp["user_end"],
        sp["assistant_start"],
        *a,
        sp["assistant_end"],
    ]
    assert ds[1]["input_ids"].tolist() == seq[:-1]
    assert ds[1]["labels"].tolist() == [X] * (len(u) + 3) + a + [sp["assistant_end"]]
    assert ds[1]["loss_mask"].tolist() == [0] * (len(u) + 3) + [1] * (len(a) + 1)
    assert rep.metadata["supervised_tokens"] == sum(mask[1:]) + len(a) + 1
    assert ds.meta["layout"] == "padded" and check_tokens(rep.path) == []


def test_sft_truncation_counts_cut_answers_and_drops_empty_ones(tmp_path, tok_dir, tok, sp):
    turns = [("user", "你好"), ("assistant", CORPUS[1])]
    ids, mask = sft_expected(tok, sp, turns)
    prompt = len(enc(tok, "你好")) + 4  # bos, user_start, ..., user_end, assistant_start
    L = prompt + 3  # keeps 4 answer tokens (L + 1 stored tokens)
    long_prompt = [("user", CORPUS[1] * 2), ("assistant", "好")]
    logs: list[str] = []
    rep, ds = export(
        tmp_path,
        tok_dir,
        "sft",
        [
            {"conversations": chat(*turns)},
            {"conversations": chat(*long_prompt)},
            {"conversations": chat(("user", "你好"))},
        ],
        logs=logs,
        max_length=L,
    )
    assert len(ds) == 1
    assert as_lists(ds[0]) == row_from(ids[: L + 1], mask[: L + 1])
    assert ds[0]["loss_mask"].tolist()[-4:] == [1, 1, 1, 1]
    md = rep.metadata
    cut_answer = sum(mask[L + 1 :])
    long_ids, long_mask = sft_expected(tok, sp, long_prompt)
    assert md["truncated_samples"] == 2
    assert md["truncated_assistant_tokens"] == cut_answer + sum(long_mask)
    assert md["truncated_tokens"] == (len(ids) - L - 1) + (len(long_ids) - L - 1)
    assert md["dropped"] == {"answer_truncated": 1, "no_answer": 1}
    assert md["longest_sample"] == len(long_ids) and md["longest_sample_line"] == 2
    warnings = [m for m in logs if "WARNING" in m]
    assert len(warnings) == 1 and "2 of 3 sft samples" in warnings[0]
    assert f"{cut_answer + sum(long_mask)} assistant tokens cut" in warnings[0]


def test_sft_answer_cut_right_after_assistant_start_is_dropped(tmp_path, tok_dir, tok, sp):
    # A row of L+1 tokens that ends exactly at <|assistant_start|> has no assistant label at all:
    # dropped (here the only record, so the export fails); one more position keeps one label.
    turns = [("user", "你好"), ("assistant", "好")]
    ids, mask = sft_expected(tok, sp, turns)
    L = mask.index(1) - 1  # L + 1 tokens end at assistant_start
    with pytest.raises(ArtifactError, match="answer_truncated"):
        export(tmp_path, tok_dir, "sft", [{"conversations": chat(*turns)}], max_length=L)
    _, ds = export(
        tmp_path, tok_dir, "sft", [{"conversations": chat(*turns)}], name="one", max_length=L + 1
    )
    assert (
        ds[0]["labels"].tolist()[-1] == enc(tok, "好")[0] and ds[0]["loss_mask"].sum().item() == 1
    )


# ----------------------------------------------------------------------------- DPO


def test_dpo_pair_rows_and_collate(tmp_path, tok_dir, tok, sp):
    prompt = [("system", "简短回答。"), ("user", "北京是哪里？")]
    good, bad = "北京是中国的首都。", "不知道"
    rec = {
        "chosen": chat(*prompt, ("assistant", good)),
        "rejected": chat(*prompt, ("assistant", bad)),
        "source": "s",
    }
    rep, ds = export(tmp_path, tok_dir, "dpo", [rec, rec], max_length=256)
    user = ("user", "简短回答。\n\n北京是哪里？")
    c_ids, c_mask = sft_expected(tok, sp, [user, ("assistant", good)])
    r_ids, r_mask = sft_expected(tok, sp, [user, ("assistant", bad)])
    row = as_lists(ds[1])
    c, r = row_from(c_ids, c_mask), row_from(r_ids, r_mask)
    assert row == {
        "chosen_input_ids": c["input_ids"],
        "chosen_labels": c["labels"],
        "rejected_input_ids": r["input_ids"],
        "rejected_labels": r["labels"],
    }
    assert rep.rows == 2 and rep.tokens == 2 * (len(c_ids) + len(r_ids))
    batch = collate_rows([ds[0], ds[1]], ds.pad_id)
    width = max(len(c_ids), len(r_ids)) - 1
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (2, width) for k in row}
    pad = width - (len(r_ids) - 1)
    assert batch["rejected_input_ids"][0].tolist() == r["input_ids"] + [ds.pad_id] * pad
    assert batch["rejected_labels"][0].tolist() == r["labels"] + [X] * pad
    assert check_tokens(rep.path) == []


def test_dpo_pair_dropped_when_a_final_answer_is_cut_away(tmp_path, tok_dir, tok, sp):
    short = {
        "chosen": chat(("user", "好"), ("assistant", "好的")),
        "rejected": chat(("user", "好"), ("assistant", "不")),
    }
    # Same first answer in both; the final answers sit after a long second question.
    long_q = chat(("user", "好"), ("assistant", "好的"), ("user", CORPUS[1]))
    long = {
        "chosen": long_q + chat(("assistant", "对")),
        "rejected": long_q + chat(("assistant", "错")),
    }
    ids, _ = sft_expected(tok, sp, [("user", "好"), ("assistant", "好的")])
    rep, ds = export(tmp_path, tok_dir, "dpo", [short, long], max_length=len(ids) + 4)
    assert len(ds) == 1 and rep.metadata["dropped"] == {"answer_truncated": 1}
    assert rep.metadata["truncated_samples"] == 1
    assert ds[0]["chosen_input_ids"].tolist()[-1] == enc(tok, "好的")[-1]


# ----------------------------------------------------------------------------- storage, loading


def test_collate_pads_ids_labels_and_masks():
    rows = [
        {
            "input_ids": torch.tensor([5, 6, 7]),
            "labels": torch.tensor([6, 7, 8]),
            "loss_mask": torch.tensor([0, 1, 1]),
        },
        {
            "input_ids": torch.tensor([9]),
            "labels": torch.tensor([X]),
            "loss_mask": torch.tensor([0]),
        },
    ]
    b = collate_rows(rows, pad_id=3)
    assert b["input_ids"].tolist() == [[5, 6, 7], [9, 3, 3]]
    assert b["labels"].tolist() == [[6, 7, 8], [X, X, X]]
    assert b["loss_mask"].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert all(v.dtype == torch.long for v in b.values())


def test_dtypes_narrow_on_disk_and_long_on_load(tmp_path, tok_dir):
    assert disk_dtype("auto", 6400) == np.uint16 and disk_dtype("auto", 65536) == np.uint16
    assert disk_dtype("auto", 65537) == np.int32
    with pytest.raises(ConfigError, match="uint16 cannot hold"):
        disk_dtype("uint16", 100_000)
    rows = {}
    for dt in ("uint16", "int32", "int64"):
        rep, ds = export(
            tmp_path,
            tok_dir,
            "pretrain",
            [{"text": t} for t in CORPUS],
            name=dt,
            dtype=dt,
            max_length=8,
        )
        arr = np.load(rep.path / "shard_00000.tokens.npy", mmap_mode="r", allow_pickle=False)
        assert arr.dtype == np.dtype(dt) and ds.meta["dtype"] == dt
        rows[dt] = [as_lists(ds[i]) for i in range(len(ds))]
        assert ds[0]["input_ids"].dtype == torch.long
    assert rows["uint16"] == rows["int32"] == rows["int64"]


def test_foreign_tokenizer_is_refused_naming_both_hashes(tmp_path, tok_dir, tok):
    rep, _ = export(tmp_path, tok_dir, "pretrain", [{"text": CORPUS[0]}])
    other_dir = tmp_path / "tok2"
    mix = write_jsonl(tmp_path / "m2.jsonl", [{"text": "abcabc abd " * 20}])
    other = load_tokenizer(
        train_tokenizer(
            TokenizerConfig(vocab_size=270, trainer="python"), [mix], other_dir, log=lambda m: None
        ).path
    )
    assert other.hash != tok.hash
    with pytest.raises(TokenizerMismatchError) as e:
        TokenDataset(rep.path, expected_tokenizer_hash=other.hash)
    assert tok.hash in str(e.value) and other.hash in str(e.value)
    assert (
        TokenDataset(rep.path, expected_tokenizer_hash=tok.hash).meta["tokenizer_hash"] == tok.hash
    )
    assert "tokenizer" in check_tokens(rep.path, expected_tokenizer_hash=other.hash)[0]


def test_index_records_inputs_and_export_is_deterministic_and_atomic(tmp_path, tok_dir, tok):
    records = [{"text": t} for t in CORPUS]
    rep, ds = export(tmp_path, tok_dir, "pretrain", records, max_length=8, shard_rows=2)
    idx = json.loads((rep.path / "index.json").read_text())
    from minillm_core.artifacts import sha256_file

    assert idx["tokenizer_hash"] == tok.hash
    assert idx["mix_sha256"] == sha256_file(tmp_path / "out.jsonl")
    assert (idx["stage"], idx["layout"], idx["max_length"], idx["vocab_size"]) == (
        "pretrain",
        "packed",
        8,
        300,
    )
    assert (
        idx["rows"] == len(ds)
        and idx["tokens"] == rep.tokens
        and len(idx["shards"]) == math.ceil(len(ds) / 2)
    )
    first = sha256_tree(rep.path)
    export(tmp_path, tok_dir, "pretrain", records, max_length=8, shard_rows=2)
    assert sha256_tree(rep.path) == first
    # A failing export leaves the previous directory whole and no temporary behind.
    (tmp_path / "out.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError):
        export_tokens(
            TensorConfig(max_length=8, shard_rows=2),
            "pretrain",
            tmp_path / "out.jsonl",
            tok_dir,
            rep.path,
            log=lambda m: None,
        )
    assert sha256_tree(rep.path) == first
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_dataset_maps_lazily_and_pickles_without_its_maps(tmp_path, tok_dir):
    rep, ds = export(
        tmp_path,
        tok_dir,
        "sft",
        [{"conversations": chat(("user", "你好"), ("assistant", t))} for t in CORPUS],
        max_length=64,
        shard_rows=2,
    )
    assert ds._maps == {}  # the constructor read index.json only
    row = ds[4]
    tokens, rows, mask = ds._maps[2][""]
    assert (
        isinstance(tokens, np.memmap)
        and isinstance(rows, np.memmap)
        and isinstance(mask, np.memmap)
    )
    clone = pickle.loads(pickle.dumps(ds))
    assert (
        clone._maps == {}
        and as_lists(clone[4]) == as_lists(row)
        and as_lists(ds[-1]) == as_lists(row)
    )
    with pytest.raises(IndexError):
        ds[5]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collate_fn)
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    # A worker process maps the shards itself and yields the same batches.
    worker = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collate_fn, num_workers=1)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(batches, worker) for k in a)


def test_encode_record_and_jsonl_dataset_match_exported_rows(tmp_path, tok_dir, tok):
    sft = [{"conversations": chat(("user", "你好"), ("assistant", t))} for t in CORPUS]
    cfg = dict(max_length=20)
    _, ds = export(tmp_path, tok_dir, "sft", sft, **cfg)
    jd = JsonlDataset(tmp_path / "out.jsonl", "sft", tok_dir, TensorConfig(**cfg))
    assert len(jd) == len(ds) and jd.pad_id == ds.pad_id
    for i in range(len(ds)):
        assert as_lists(jd[i]) == as_lists(ds[i])
    assert jd.stats.truncated_samples > 0
    write_jsonl(tmp_path / "bad.jsonl", [sft[0], {"conversations": []}])
    with pytest.raises(DataError) as e:
        JsonlDataset(tmp_path / "bad.jsonl", "sft", tok_dir, TensorConfig(**cfg))
    assert (Path(e.value.file).name, e.value.line) == ("bad.jsonl", 2)
    # pretrain: one document per row, whatever the layout says
    row = encode_record("pretrain", {"text": CORPUS[0]}, tok, TensorConfig(max_length=4))
    seq = [tok.get_bos_token_id(), *enc(tok, CORPUS[0])][:5]
    assert as_lists(row) == {"input_ids": seq[:-1], "labels": seq[1:]}
    assert encode_record("pretrain", {"text": ""}, tok, TensorConfig()) is None
    dpo = {
        "chosen": chat(("user", "好"), ("assistant", "对")),
        "rejected": chat(("user", "好"), ("assistant", "错")),
    }
    assert set(encode_record("dpo", dpo, tok, TensorConfig())) == {
        "chosen_input_ids",
        "chosen_labels",
        "rejected_input_ids",
        "rejected_labels",
    }


def test_check_tokens_finds_broken_rows(tmp_path, tok_dir):
    rep, _ = export(
        tmp_path,
        tok_dir,
        "sft",
        [{"conversations": chat(("user", "你好"), ("assistant", t))} for t in CORPUS],
        max_length=64,
    )
    assert check_tokens(rep.path) == []
    mask_file = rep.path / "shard_00000.mask.npy"
    m = np.load(mask_file, allow_pickle=False)
    m[:] = 0
    np.save(mask_file, m, allow_pickle=False)
    assert any("no trained label" in p for p in check_tokens(rep.path))
    np.save(mask_file, m[:-1], allow_pickle=False)
    assert any("mask has" in p for p in check_tokens(rep.path))
    rows_file = rep.path / "shard_00000.rows.npy"
    r = np.load(rows_file, allow_pickle=False)
    r[0, 1] = 10_000
    np.save(rows_file, r, allow_pickle=False)
    assert any("span outside" in p for p in check_tokens(rep.path))
    assert "cannot open" in check_tokens(tmp_path / "missing")[0]


def test_histogram_metadata_and_png(tmp_path, tok_dir, tok):
    rep, _ = export(tmp_path, tok_dir, "pretrain", [{"text": t} for t in CORPUS], max_length=64)
    lengths = [1 + len(enc(tok, t)) for t in CORPUS]
    hist = dict(map(tuple, rep.metadata["length_histogram"]))
    for lo, count in hist.items():
        assert count == sum(lo <= n < 2 * lo for n in lengths)
    assert sum(hist.values()) == len(CORPUS)
    json.dumps(rep.metadata)  # JSON-able for the asset
    png = plot_length_histogram(rep.path, tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_length_histogram([[1, 0], [2, 3]], tmp_path / "h2.png").stat().st_size > 0


def test_command_line(tmp_path, tok_dir, tok, capsys):
    mix = write_jsonl(
        tmp_path / "dpo.jsonl",
        [
            {
                "chosen": chat(("user", "好"), ("assistant", "对")),
                "rejected": chat(("user", "好"), ("assistant", "错")),
            }
        ],
    )
    rc = cli.main(
        [
            "tokens",
            "--stage",
            "dpo",
            "--input",
            str(mix),
            "--output",
            str(tmp_path / "o"),
            "--tokenizer",
            str(tok_dir),
            "--max-length",
            "32",
            "--dtype",
            "int32",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 1 and TokenDataset(tmp_path / "o", tok.hash).meta["dtype"] == "int32"
    rc = main(
        [
            "--stage",
            "pretrain",
            "--input",
            str(tmp_path / "none.jsonl"),
            "--tokenizer",
            str(tok_dir),
            "--output",
            str(tmp_path / "p"),
        ]
    )
    assert rc == 2 and "pretrain mix not found" in capsys.readouterr().err
    pre = write_jsonl(tmp_path / "pre.jsonl", [{"text": CORPUS[0]}])
    assert (
        main(
            [
                "--stage",
                "pretrain",
                "--input",
                str(pre),
                "--tokenizer",
                str(tok_dir),
                "--output",
                str(tmp_path / "p"),
                "--profile",
                "smoke",
                "--layout",
                "padded",
                "--append-eos",
            ]
        )
        == 0
    )
    idx = json.loads((tmp_path / "p" / "index.json").read_text())
    assert (idx["max_length"], idx["layout"], idx["config"]["append_eos"]) == (128, "padded", True)


def test_command_run_from_a_sub_folder_writes_under_the_root(
    tmp_path, tok_dir, monkeypatch, capsys
):
    """Default paths come from the layout (MINILLM_ROOT), not the current directory; a path the
    user types stays relative to where they typed it. The row length defaults to the model's
    context."""
    root, sub = tmp_path / "root", tmp_path / "root" / "deep" / "sub"
    sub.mkdir(parents=True)
    (root / "data" / "processed").mkdir(parents=True)
    write_jsonl(
        root / "data" / "processed" / "pretrain_chinese.jsonl", [{"text": t} for t in CORPUS]
    )
    monkeypatch.setenv("MINILLM_ROOT", str(root))
    monkeypatch.chdir(sub)
    assert cli.main(["tokens", "--stage", "pretrain", "--tokenizer", str(tok_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["path"]) == root / "out" / "tokens" / "pretrain"
    assert (
        TokenDataset(root / "out" / "tokens" / "pretrain").max_length
        == ModelConfig().max_position_embeddings
    )
    assert not (sub / "out").exists()
    # Typed paths: relative to the CWD (here a tokenizer copy and an output next to it).
    shutil.copytree(tok_dir, sub / "tok")
    assert (
        main(["--stage", "pretrain", "--tokenizer", "tok", "--output", "mine", "--max-length", "8"])
        == 0
    )
    assert TokenDataset(sub / "mine").max_length == 8
