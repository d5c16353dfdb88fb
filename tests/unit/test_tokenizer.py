"""minillm_core.tokenizer: training to a directory, loading, the encode/decode contract, chat
rendering and the reference trainer. Runs with or without the Rust extension."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm_cli import tokenizer as tokenizer_cli
from minillm_core import tokenizer as tk
from minillm_core.config import ConfigError
from minillm_core.tokenizer import (
    SPECIAL_TOKENS,
    TRICKY_TEXT,
    Tokenizer,
    TokenizerConfig,
    TokenizerError,
    check_tokenizer,
    load_tokenizer,
    train_tokenizer,
    trainers,
)
from minillm_core.tokenizer import reference as ref

ZH = (
    "今天天气很好，我们一起去公园散步吧。公园里有很多人，有的在跑步，有的在下棋。"
    "我喜欢读书，也喜欢写字。学习中文需要耐心和时间。机器学习模型需要大量的数据来训练。"
)
EN = "The quick brown fox jumps over the lazy dog. It's 2024, we'll see 12345 numbers. "


@pytest.fixture(scope="module")
def mixes(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("mix")
    pre = d / "pretrain.jsonl"
    with open(pre, "w", encoding="utf-8") as f:
        for i in range(60):
            f.write(
                json.dumps(
                    {"text": f"{ZH[i % 20 :]}{EN}{i} {ZH}", "source": "t"}, ensure_ascii=False
                )
                + "\n"
            )
        f.write("not json\n\n")
    sft = d / "sft.jsonl"
    with open(sft, "w", encoding="utf-8") as f:
        for i in range(10):
            f.write(
                json.dumps(
                    {
                        "conversations": [
                            {"role": "system", "content": "你是一个助手。"},
                            {"role": "user", "content": f"问题{i}：什么是机器学习？"},
                            {
                                "role": "assistant",
                                "content": "机器学习是让计算机从数据中学习规律的方法。",
                            },
                        ]
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    dpo = d / "dpo.jsonl"
    with open(dpo, "w", encoding="utf-8") as f:
        prompt = [{"role": "user", "content": "你好"}]
        f.write(
            json.dumps(
                {
                    "chosen": prompt + [{"role": "assistant", "content": "你好！很高兴见到你。"}],
                    "rejected": prompt + [{"role": "assistant", "content": "嗯。"}],
                },
                ensure_ascii=False,
            )
            + "\n"
        )
    (d / "pretrain_heldout.jsonl").write_text(
        json.dumps({"text": "公园里的花开了，春天来了。"}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    return [pre, sft, dpo]


@pytest.fixture(scope="module")
def trained(mixes, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    cfg = TokenizerConfig(vocab_size=400)
    report = train_tokenizer(cfg, mixes, out, log=lambda m: None)
    return report, load_tokenizer(out)


def test_train_writes_a_loadable_directory(trained):
    report, tok = trained
    d = report.path
    assert sorted(p.name for p in d.iterdir()) == [
        "tokenizer.pkl",
        "tokenizer.tiktoken",
        "tokenizer_meta.json",
    ]
    assert not list(d.parent.glob(".tokenizer.tmp-*"))
    meta = json.loads((d / "tokenizer_meta.json").read_text(encoding="utf-8"))
    assert meta["pattern"] == tk.DEFAULT_PATTERN
    assert meta["special_tokens"] == {s: 391 + i for i, s in enumerate(SPECIAL_TOKENS)}
    assert meta["vocab_size"] == report.vocab_size == tok.get_vocab_size() == 400
    assert meta["hash"] == tok.hash == report.metadata["hash"]
    assert meta["corpus"]["bad_lines"] == 1 and meta["corpus"]["records"] == 71
    for key in ("compression_heldout_zh", "compression_heldout_en", "compression_heldout_mix"):
        assert meta["quality"][key]["bytes_per_token"] > 1.0
    assert check_tokenizer(d) == []


def test_report_metadata_is_json_and_complete(trained):
    report, _ = trained
    md = report.metadata
    json.dumps(md)  # JSON-able for the Dagster UI
    assert md["roundtrip_ok"] is True and md["special_strings_are_plain_text"] is True
    assert 0 <= md["gb2312_level1_single_token_share"] <= 1
    assert 0 < md["top3500_han_single_token_share"] <= 1
    assert md["chars_used"] > 0 and md["docs_used"] > 0 and md["vocab_sample"]
    assert md["trainer"]


def test_dpo_prompt_counted_once():
    rec = {
        "chosen": [{"role": "user", "content": "P"}, {"role": "assistant", "content": "A"}],
        "rejected": [{"role": "user", "content": "P"}, {"role": "assistant", "content": "B"}],
    }
    assert tk.record_texts(rec) == ["P\nA", "B"]
    assert tk.record_texts({"messages": [{"role": "user", "content": "x"}]}) == ["x"]
    assert tk.record_texts([{"role": "user", "content": "bare"}]) == ["bare"]


def test_caps_bound_what_is_read(mixes, tmp_path):
    stats = tk.CorpusStats()
    texts = list(tk.iter_mix_texts(mixes, max_chars_per_doc=50, max_chars_total=700, stats=stats))
    assert all(len(t) <= 50 for t in texts)
    assert sum(map(len, texts)) == stats.chars == 700
    assert stats.cap_reached and stats.docs_truncated > 0


def test_tiny_corpus_stops_early_with_a_valid_smaller_tokenizer(tmp_path):
    mix = tmp_path / "tiny.jsonl"
    mix.write_text(json.dumps({"text": "abcabc 你好"}, ensure_ascii=False) + "\n")
    logs: list[str] = []
    report = train_tokenizer(TokenizerConfig(vocab_size=1024), [mix], tmp_path / "tok", logs.append)
    tok = load_tokenizer(report.path)
    assert report.metadata["stopped_early"] is True
    assert tok.get_vocab_size() == report.vocab_size < 1024
    assert any("ran out of pairs" in line for line in logs)
    assert tok.decode(tok.encode(TRICKY_TEXT)) == TRICKY_TEXT


def test_vocab_size_too_small_is_refused():
    with pytest.raises(ValueError, match="at least 265"):
        TokenizerConfig(vocab_size=264)
    with pytest.raises(ConfigError, match="vocab_size"):
        TokenizerConfig.resolve({"vocab_size": 100})
    with pytest.raises(ValueError, match="pattern does not compile"):
        TokenizerConfig(pattern="(unclosed")


def test_python_fallback_logs_one_line_and_matches_rust(mixes, tmp_path, monkeypatch):
    cfg = TokenizerConfig(vocab_size=350, trainer="auto")
    monkeypatch.setattr(trainers, "rust_module", lambda: None)
    logs: list[str] = []
    py = train_tokenizer(cfg, mixes, tmp_path / "py", logs.append)
    assert [line for line in logs if "not built" in line] == [
        "rustbpe not built; training with the pure-Python reference trainer (slow; "
        "build it with `.venv/bin/pip install ./rustbpe`)"
    ]
    assert py.metadata["trainer"].startswith("bpe_reference")
    monkeypatch.undo()
    if tk.rust_module() is None:
        with pytest.raises(TokenizerError, match="not built"):
            train_tokenizer(cfg.model_copy(update={"trainer": "rust"}), mixes, tmp_path / "r")
        return
    rust = train_tokenizer(cfg.model_copy(update={"trainer": "rust"}), mixes, tmp_path / "rust")
    assert rust.metadata["trainer"].startswith("rustbpe ")
    assert rust.metadata["hash"] == py.metadata["hash"]  # identical tokenizers


def test_load_refuses_tampered_files_and_never_reads_the_pickle(trained, tmp_path):
    import shutil

    src = trained[0].path
    d = tmp_path / "copy"
    shutil.copytree(src, d)
    (d / "tokenizer.pkl").write_bytes(b"not a pickle: loading must not touch it")
    assert load_tokenizer(d).hash == trained[1].hash
    meta = json.loads((d / "tokenizer_meta.json").read_text())
    meta["pattern"] = r"\S+|\s+"
    (d / "tokenizer_meta.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerError, match="hash"):
        load_tokenizer(d)
    assert any("cannot load" in p for p in check_tokenizer(d))
    (d / "tokenizer.tiktoken").write_text("@@@ x\n")
    with pytest.raises(TokenizerError, match="tokenizer.tiktoken:1"):
        load_tokenizer(d)


def test_missing_directory_is_a_clear_error(tmp_path):
    from minillm_core.artifacts import MissingArtifactError

    with pytest.raises(MissingArtifactError, match="tokenizer directory"):
        load_tokenizer(tmp_path / "nope")


# ------------------------------------------------------------------------- encode / decode


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_roundtrip_arbitrary_text(trained, text):
    tok = trained[1]
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(SPECIAL_TOKENS + ("<|endoftext|>", "<|im_start|>")),
            st.text(max_size=10),
        ),
        max_size=8,
    )
)
def test_special_strings_in_text_never_become_special_ids(trained, parts):
    tok = trained[1]
    text = "".join(parts)
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(ids) == text


def test_encode_api(trained):
    tok = trained[1]
    bos = tok.bos_token_id
    assert bos == tok.get_bos_token_id() == tok.encode_special("<|bos|>") == 391
    ids = tok.encode(
        "你好 hello", prepend="<|bos|>", append=tok.encode_special("<|assistant_end|>")
    )
    assert ids[0] == bos and ids[-1] == tok.encode_special("<|assistant_end|>")
    batch = tok.encode(["你好", "hello"], prepend=bos, num_threads=2)
    assert batch == [[bos] + tok.encode("你好"), [bos] + tok.encode("hello")]
    assert tok.decode(ids[1:-1]) == "你好 hello"
    assert tok.id_to_token(bos) == "<|bos|>"
    with pytest.raises(KeyError, match="unknown special token"):
        tok.encode_special("<|eos|>")
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_hash_changes_with_pattern_and_ranks(trained):
    tok = trained[1]
    other = Tokenizer(tok.mergeable_ranks, r"\S+|\s+")
    assert other.hash != tok.hash
    assert Tokenizer(tok.mergeable_ranks, tok.pattern).hash == tok.hash


def test_train_from_iterator_matches_reference():
    texts = [ZH, EN] * 3
    tok = Tokenizer.train_from_iterator(iter(texts), 300 + len(SPECIAL_TOKENS))
    assert tok.mergeable_ranks == ref.mergeable_ranks(ref.train(texts, 300))
    assert tok.get_vocab_size() == 309


# ------------------------------------------------------------------------------ conversations


def _spans(tok, ids, mask):
    """Decoded text of the masked (trained) spans."""
    out, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    if cur:
        out.append(tok.decode(cur))
    return out


def test_render_conversation_masks_exactly_the_assistant_spans(trained):
    tok = trained[1]
    conv = {
        "conversations": [
            {"role": "system", "content": "你是助手。"},
            {"role": "user", "content": "你好<|assistant_start|>"},
            {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2"},
        ]
    }
    ids, mask = tok.render_conversation(conv)
    assert len(ids) == len(mask) and ids[0] == tok.bos_token_id and mask[0] == 0
    assert _spans(tok, ids, mask) == ["你好！<|assistant_end|>", "2<|assistant_end|>"]
    sp = tok.special_tokens
    # The system message is folded into the first user message; no system token exists.
    start = ids.index(sp["<|user_start|>"])
    end = ids.index(sp["<|user_end|>"])
    assert tok.decode(ids[start + 1 : end]) == "你是助手。\n\n你好<|assistant_start|>"
    assert ids.count(sp["<|assistant_start|>"]) == 2  # the literal in user text is plain text
    # The same with "messages" or a bare list; truncation keeps ids and mask aligned.
    assert tok.render_conversation({"messages": conv["conversations"]}) == (ids, mask)
    short = tok.render_conversation(conv["conversations"], max_tokens=5)
    assert short == (ids[:5], mask[:5])


def test_render_tool_parts(trained):
    tok = trained[1]
    ids, mask = tok.render_conversation(
        [
            {"role": "user", "content": "calc"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "ok "},
                    {"type": "python", "text": "1+1"},
                    {"type": "python_output", "text": "2"},
                    {"type": "text", "text": "=2"},
                ],
            },
        ]
    )
    assert _spans(tok, ids, mask) == ["ok <|python_start|>1+1<|python_end|>", "=2<|assistant_end|>"]


def test_render_rejects_bad_conversations(trained):
    tok = trained[1]
    with pytest.raises(ValueError, match="unknown role"):
        tok.render_conversation([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="only allowed first"):
        tok.render_conversation(
            [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]
        )
    with pytest.raises(ValueError, match="non-empty"):
        tok.render_conversation([])


def test_render_for_completion(trained):
    tok = trained[1]
    conv = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "答案"}]
    ids = tok.render_for_completion(conv)
    assert ids[-1] == tok.encode_special("<|assistant_start|>")
    full, _ = tok.render_conversation(conv)
    assert full[: len(ids)] == ids
    assert tok.render_for_completion(conv[:1]) == ids


def test_command_trains_and_checks(mixes, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = tokenizer_cli.main(
        ["--data_path", str(mixes[0]), "--out_dir", str(out), "--vocab_size", "300"]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 300
    assert (
        tokenizer_cli.main(
            ["--data_path", str(mixes[0]), "--out_dir", str(out), "--vocab-size", "10"]
        )
        == 2
    )


def test_nanochat_name_and_error_types():
    from minillm_core.errors import ArtifactError
    from minillm_core.tokenizer import RustBPETokenizer

    assert RustBPETokenizer is Tokenizer
    assert issubclass(TokenizerError, ArtifactError) and issubclass(TokenizerError, RuntimeError)
