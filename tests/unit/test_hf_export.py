"""HuggingFace export: the exported folder loads in transformers (no remote code) and computes
what the native model computes; its tokenizer and chat template give our ids.

The checkpoints are the smoke profile's (a tokenizer trained on the shipped samples, a model of
the smoke shape trained two steps), plus a random model of the same shape initialised with a
larger spread, whose greedy output varies from token to token (the two-step model repeats one
token, which would make a greedy comparison weak)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from the hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from minillm_cli import export as export_cli  # noqa: E402
from minillm_core import export as hf_export  # noqa: E402
from minillm_core.errors import MiniLLMError  # noqa: E402
from minillm_core.export import ExportConfig, ExportError, export_hf, verify  # noqa: E402
from minillm_core.inference import SamplingParams, complete  # noqa: E402
from minillm_core.model import MiniLLM, ModelConfig  # noqa: E402
from minillm_core.tokenizer import TRICKY_TEXT, Tokenizer, load_tokenizer  # noqa: E402
from minillm_core.train.checkpointer import load_checkpoint, save_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SMOKE_SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@dataclass
class Smoke:
    tokenizer_dir: Path
    checkpoint: Path  # trained two steps on the smoke mix
    varied: Path  # random init, std 0.2: greedy output changes from token to token
    tok: Tokenizer


_BUILT: dict[str, Smoke] = {}


def smoke_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    """Build the smoke artifacts once per test session (shared with tests/integration/test_serve.py)."""
    if "smoke" in _BUILT:
        return _BUILT["smoke"]
    from minillm_core.data import MixConfig, build_mix
    from minillm_core.tokenizer import TokenizerConfig, train_tokenizer
    from minillm_core.tokens import TensorConfig, export_tokens
    from minillm_core.train import TrainConfig, train

    root = tmp_path_factory.mktemp("hf_smoke")
    (root / "sources").mkdir()
    quiet = lambda m: None  # noqa: E731
    mix_cfg = MixConfig(
        sources_dir=root / "sources",
        samples_dir=REPO / "dataset",
        max_records={"pretrain": 64, "sft": 16, "dpo": 8},
    )
    mixes = [build_mix(mix_cfg, s, root / "processed", log=quiet) for s in ("pretrain", "sft")]
    train_tokenizer(
        TokenizerConfig(vocab_size=1024), [m.path for m in mixes], root / "tokenizer", log=quiet
    )
    tok = load_tokenizer(root / "tokenizer")
    export_tokens(
        TensorConfig(max_length=128),
        "pretrain",
        mixes[0].path,
        root / "tokenizer",
        root / "tokens",
        log=quiet,
    )
    train(
        TrainConfig(
            stage="pretrain",
            data_path=str(root / "tokens"),
            out_dir=str(root / "ckpt"),
            max_steps=2,
            batch_size=4,
            accumulation_steps=1,
            epochs=1,
            learning_rate=3e-3,
            log_interval=1,
        ),
        ModelConfig(vocab_size=tok.get_vocab_size(), **SMOKE_SHAPE),
        log=quiet,
    )
    torch.manual_seed(0)
    varied = MiniLLM(
        ModelConfig(vocab_size=tok.get_vocab_size(), initializer_range=0.2, **SMOKE_SHAPE)
    )
    save_checkpoint(
        root / "varied", varied, {"stage": "test", "step": 0, "tokenizer_hash": tok.hash}
    )
    _BUILT["smoke"] = Smoke(root / "tokenizer", root / "ckpt", root / "varied", tok)
    return _BUILT["smoke"]


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    return smoke_artifacts(tmp_path_factory)


@pytest.fixture(scope="session")
def exported(smoke: Smoke, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The varied checkpoint exported without the built-in verification (the tests below check
    it independently)."""
    out = tmp_path_factory.mktemp("hf_out") / "hf"
    export_hf(smoke.varied, smoke.tokenizer_dir, out, ExportConfig(verify="never"))
    return out


def _transformers():
    return pytest.importorskip("transformers")


def _load_hf(path: Path):
    transformers = _transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()


def _batch(tok: Tokenizer, vocab: int) -> torch.Tensor:
    prompt = tok.render_for_completion(
        [
            {"role": "system", "content": "你是一个助手。"},
            {"role": "user", "content": "介绍一下北京，123 😀"},
        ]
    )
    rand = torch.randint(0, vocab, (2, len(prompt)), generator=torch.Generator().manual_seed(1))
    return torch.cat([torch.tensor([prompt]), rand])


# ------------------------------------------------------------------------------------ the model


def test_exported_logits_equal_native(smoke: Smoke, exported: Path):
    native, _ = load_checkpoint(smoke.varied)
    hf = _load_hf(exported)
    assert type(hf).__name__ == "LlamaForCausalLM"
    batch = _batch(smoke.tok, native.config.vocab_size)
    with torch.inference_mode():
        want, got = native(batch), hf(input_ids=batch).logits
    assert want.abs().max() > 1.0  # logits large enough that a mapping error shows
    assert torch.allclose(got, want, rtol=0, atol=1e-4), float((got - want).abs().max())


def test_a_wrong_mapping_is_caught(smoke: Smoke, exported: Path, tmp_path: Path):
    """The comparison is not hollow: the default RoPE base of transformers (10,000 instead of
    ours) still loads, and must be detected, by the test's comparison and by the exporter's."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.pop("rope_theta")
    cfg.pop("rope_parameters")
    (bad / "config.json").write_text(json.dumps(cfg))
    native, _ = load_checkpoint(smoke.varied)
    batch = _batch(smoke.tok, native.config.vocab_size)
    with torch.inference_mode():
        diff = float((_load_hf(bad)(input_ids=batch).logits - native(batch)).abs().max())
    assert diff > 1e-2
    with pytest.raises(ExportError, match="logits differ"):
        hf_export.verify_export(bad, native, smoke.tok, atol=1e-4, new_tokens=4)


def test_greedy_generation_equal(smoke: Smoke, exported: Path):
    native, _ = load_checkpoint(smoke.varied)
    hf = _load_hf(exported)
    prompt = smoke.tok.render_for_completion([{"role": "user", "content": "介绍一下你自己"}])
    stops = [smoke.tok.encode_special("<|assistant_end|>"), smoke.tok.bos_token_id]
    want = complete(native, prompt, 16, SamplingParams(stop_ids=tuple(stops)))
    # The stop ids come from the export's generation_config.json; only greedy is asked for.
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        got = hf.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16
        )[0, len(prompt) :].tolist()
    assert got == want
    assert len(want) == 16 and len(set(want)) > 4  # a varied sequence, not one token repeated


def test_tied_head_is_stored_once_and_retied(smoke: Smoke, exported: Path):
    from safetensors import safe_open

    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and "auto_map" not in cfg
    hf = _load_hf(exported)
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()


def test_config_maps_every_shape_field(smoke: Smoke, exported: Path):
    native, _ = load_checkpoint(smoke.varied)
    c = native.config
    hf = _load_hf(exported).config
    assert (
        hf.hidden_size,
        hf.intermediate_size,
        hf.num_hidden_layers,
        hf.num_attention_heads,
        hf.num_key_value_heads,
        hf.head_dim,
        hf.rms_norm_eps,
        hf.vocab_size,
        hf.max_position_embeddings,
    ) == (
        c.hidden_size,
        c.ffn_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.kv_heads,
        c.head_dim,
        c.rms_norm_eps,
        c.vocab_size,
        c.max_position_embeddings,
    )
    theta = (
        hf.rope_parameters["rope_theta"] if getattr(hf, "rope_parameters", None) else hf.rope_theta
    )
    assert theta == c.rope_theta


def test_exported_context_is_the_trained_context(smoke: Smoke, tmp_path: Path):
    """config.json's max_position_embeddings is the context the model trained at (its config's
    one sequence length), not a larger default; the tokenizer's model_max_length follows it."""
    torch.manual_seed(0)
    model = MiniLLM(
        ModelConfig(
            vocab_size=smoke.tok.get_vocab_size(), max_position_embeddings=96, **SMOKE_SHAPE
        )
    )
    save_checkpoint(
        tmp_path / "ckpt", model, {"stage": "sft", "step": 1, "tokenizer_hash": smoke.tok.hash}
    )
    export_hf(tmp_path / "ckpt", smoke.tokenizer_dir, tmp_path / "hf", ExportConfig(verify="never"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    tok_config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["max_position_embeddings"] == 96 == tok_config["model_max_length"]


def test_untied_model_exports_its_head(smoke: Smoke, tmp_path: Path):
    torch.manual_seed(1)
    model = MiniLLM(
        ModelConfig(
            vocab_size=smoke.tok.get_vocab_size(),
            tie_word_embeddings=False,
            initializer_range=0.2,
            intermediate_size=96,
            **SMOKE_SHAPE,
        )
    )
    save_checkpoint(tmp_path / "ckpt", model, {"tokenizer_hash": smoke.tok.hash})
    report = export_hf(
        tmp_path / "ckpt", smoke.tokenizer_dir, tmp_path / "hf", ExportConfig(verify="never")
    )
    hf = _load_hf(report.path)
    assert hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr()
    batch = _batch(smoke.tok, model.config.vocab_size)
    with torch.inference_mode():
        assert torch.allclose(hf(input_ids=batch).logits, model(batch), rtol=0, atol=1e-4)


# -------------------------------------------------------------------------------- the tokenizer

TRICKY = [
    TRICKY_TEXT.replace("<|bos|>", "").replace("<|assistant_end|>", ""),
    "你好，世界！今天是2024年12月31日。",
    "数字 1234567890 12 3 45678",
    "emoji 😀👍🏽👨‍👩‍👧‍👦🇨🇳❤️ 混合 mixed",
    "   leading\n\n\n\ttabs  and   runs of   spaces   ",
    "\r\n\r\n \u3000全角空格\u3000 ",
    "It's we'll THEY'RE don't",
    "",
]


def test_hf_tokenizer_gives_our_ids(smoke: Smoke, exported: Path):
    transformers = _transformers()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    for text in TRICKY:
        ids = smoke.tok.encode(text)
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf_tok(text)["input_ids"] == ids  # adds no BOS of its own, as ours
        assert hf_tok.decode(ids) == text
    # Literal special-token strings: HF makes them control tokens (what its chat template needs),
    # ours keeps them as text; split_special_tokens=True gives ours (documented difference).
    assert hf_tok(TRICKY_TEXT, add_special_tokens=False)["input_ids"] != smoke.tok.encode(
        TRICKY_TEXT
    )
    assert hf_tok(TRICKY_TEXT, add_special_tokens=False, split_special_tokens=True)[
        "input_ids"
    ] == smoke.tok.encode(TRICKY_TEXT)
    assert hf_tok.bos_token_id == smoke.tok.bos_token_id
    assert hf_tok.eos_token_id == smoke.tok.encode_special("<|assistant_end|>")


def test_merges_reproduce_tiktoken_on_arbitrary_text(smoke: Smoke):
    """The `tokenizers` document alone (no transformers) against tiktoken, on random text."""
    tokenizers = pytest.importorskip("tokenizers")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    hf = tokenizers.Tokenizer.from_str(json.dumps(hf_export.tokenizer_json(smoke.tok)))
    alphabet = st.sampled_from(
        list("你好世界的一是在不了 \n\t\r0123456789abcABC'.,!？。😀é\u3000")
        + ["👍🏽", "\u200d", "ll", "'s"]
    )

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.lists(alphabet, max_size=40).map("".join))
    def check(text: str) -> None:
        assert hf.encode(text, add_special_tokens=False).ids == smoke.tok.encode(text)

    check()
    # Every learned token is reached through its recovered merges.
    for b in smoke.tok.mergeable_ranks:
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert hf.encode(s, add_special_tokens=False).ids == smoke.tok.encode(s)


def test_merges_are_pairs_of_lower_ranks(smoke: Smoke):
    ranks = smoke.tok.mergeable_ranks
    merges = hf_export.recover_merges(ranks)
    assert len(merges) == len(ranks) - 256
    for a, b in merges:
        assert ranks[a] < ranks[a + b] and ranks[b] < ranks[a + b]
    # A table that is not a BPE vocabulary is refused, not converted wrongly.
    broken = {bytes([i]): i for i in range(256)} | {b"abc": 256}
    with pytest.raises(ExportError, match="not the merge of two"):
        hf_export.recover_merges(broken)


def test_byte_table_is_gpt2s():
    table = hf_export.bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


# ----------------------------------------------------------------------------- the chat template

# The export's own self-check conversations, plus cases it does not need to check itself.
CONVERSATIONS = hf_export.CHECK_CONVERSATIONS + [
    [{"from": "human", "value": "旧格式"}, {"from": "gpt", "value": "好的"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": None}],
]


def _ids(encoded) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template, 4.x a list.
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
def test_chat_template_gives_our_ids(smoke: Smoke, exported: Path, conv):
    transformers = _transformers()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    assert (
        _ids(hf_tok.apply_chat_template(conv, tokenize=True))
        == smoke.tok.render_conversation(conv, max_tokens=10**9)[0]
    )
    assert _ids(
        hf_tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
    ) == smoke.tok.render_for_completion(conv)


@pytest.mark.parametrize(
    "conv, message",
    [
        ([{"role": "system", "content": "s"}], "must be followed by a user message"),
        (
            [{"role": "user", "content": "u"}, {"role": "system", "content": "s"}],
            "only allowed first",
        ),
        ([{"role": "wizard", "content": "w"}], "unknown role"),
    ],
)
def test_chat_template_refuses_what_we_refuse(smoke: Smoke, exported: Path, conv, message):
    transformers = _transformers()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    with pytest.raises(ValueError, match=message):
        smoke.tok.render_conversation(conv)
    with pytest.raises(Exception, match=message):
        hf_tok.apply_chat_template(conv, tokenize=False)


# A function-calling exchange in OpenAI's shapes: tool definitions, an assistant turn of calls
# only (content null), the tool's answer, and the final reply.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "查询城市天气",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
]
TOOL_CONVERSATION = [
    {"role": "system", "content": "你是一个助手。"},
    {"role": "user", "content": "北京天气怎么样？"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "北京"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "晴，25°C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
    {"role": "assistant", "content": "北京现在晴，25°C。"},
]


def test_tool_conversation_renders_identically(smoke: Smoke, exported: Path):
    transformers = _transformers()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    conv = {"messages": TOOL_CONVERSATION, "tools": TOOLS}
    ids, mask = smoke.tok.render_conversation(conv, max_tokens=10**9)
    assert _ids(hf_tok.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=True)) == ids
    prompt = smoke.tok.render_for_completion(conv)
    got = hf_tok.apply_chat_template(
        TOOL_CONVERSATION[:-1], tools=TOOLS, tokenize=True, add_generation_prompt=True
    )
    assert _ids(got) == prompt
    text = smoke.tok.decode(ids)
    # What the model reads: the tools as JSON lines, its own calls as python spans.
    assert '"name": "get_weather"' in text and "查询城市天气" in text
    assert (
        '<|python_start|>{"name": "get_weather", "arguments": "{\\"city\\": \\"北京\\"}"}' in text
    )
    assert "<|output_start|>晴，25°C<|output_end|>" in text
    # The calls are trained on (mask 1); the tool's answers are not.
    calls = [i for i, t in enumerate(ids) if t == smoke.tok.encode_special("<|python_start|>")]
    outputs = [i for i, t in enumerate(ids) if t == smoke.tok.encode_special("<|output_start|>")]
    assert len(calls) == 2 and all(mask[i] for i in calls)
    assert len(outputs) == 2 and not any(mask[i] for i in outputs)
    # Without tools, nothing of the block is rendered; tool calls on a user message are refused.
    assert "# Tools" not in smoke.tok.decode(smoke.tok.render_for_completion(TOOL_CONVERSATION))
    bad = [{"role": "user", "content": "x", "tool_calls": TOOL_CONVERSATION[2]["tool_calls"]}]
    with pytest.raises(ValueError, match="only an assistant message carries tool_calls"):
        smoke.tok.render_conversation(bad)
    with pytest.raises(Exception, match="only an assistant message carries tool_calls"):
        hf_tok.apply_chat_template(bad, tokenize=False)


MASK_CONVERSATIONS = [
    *hf_export.CHECK_CONVERSATIONS[1:],  # the first has no answer: no SFT row
    TOOL_CONVERSATION,
    [
        {"role": "user", "content": "第一轮"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "第二轮"},
        {"role": "assistant", "content": [{"type": "text", "text": "好 😀"}]},
        {"role": "user", "content": "第三轮"},
        {"role": "assistant", "content": "再见。"},
    ],
]


@pytest.mark.parametrize("conv", MASK_CONVERSATIONS, ids=range(len(MASK_CONVERSATIONS)))
def test_assistant_mask_is_the_sft_loss_mask(smoke: Smoke, exported: Path, conv):
    """transformers' assistant-token mask (TRL's assistant_only_loss) marks exactly the tokens
    the tokens stage trains SFT on."""
    from minillm_core.tokens import TensorConfig, encode_record

    transformers = _transformers()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    out = hf_tok.apply_chat_template(
        conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    row = encode_record("sft", {"conversations": conv}, smoke.tok, TensorConfig(max_length=4096))
    assert row is not None
    ids, hf_mask = list(out["input_ids"]), list(out["assistant_masks"])
    assert ids[:-1] == row["input_ids"].tolist()
    # The row's loss mask is the mask of the predicted tokens: positions 1.. of the sequence.
    assert hf_mask[0] == 0 and hf_mask[1:] == row["loss_mask"].tolist()
    assert sum(hf_mask) > 0


# ------------------------------------------------------------------------------- the export verb


def test_export_verifies_and_reports(smoke: Smoke, tmp_path: Path):
    _transformers()
    out = tmp_path / "hf"
    report = export_hf(smoke.checkpoint, smoke.tokenizer_dir, out)
    md = report.metadata
    assert report.path == out and md["verified"] is True
    assert 0 <= md["max_abs_logit_diff"] <= 1e-4 and md["greedy_equal"] is True
    assert md["parameters"] == load_checkpoint(smoke.checkpoint)[0].num_parameters()
    assert set(md["files"]) >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    }
    assert sorted(p.name for p in out.iterdir()) == md["files"]
    json.dumps(md)  # JSON-able, for the asset's metadata
    side = json.loads((out / hf_export.EXPORT_META).read_text())
    assert side["tokenizer_hash"] == smoke.tok.hash and side["verification"]["verified"]


def test_failed_verification_keeps_the_previous_export(smoke: Smoke, tmp_path: Path):
    _transformers()
    out = tmp_path / "hf"
    export_hf(smoke.varied, smoke.tokenizer_dir, out, ExportConfig(verify="never"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportError, match="logits differ"):
        # No float32 implementation is this exact: the check must fail, and fail cleanly.
        export_hf(smoke.checkpoint, smoke.tokenizer_dir, out, ExportConfig(atol=1e-12))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary left behind


def test_bfloat16_export(smoke: Smoke, tmp_path: Path):
    _transformers()
    report = export_hf(
        smoke.varied, smoke.tokenizer_dir, tmp_path / "hf", ExportConfig(dtype="bfloat16")
    )
    assert report.metadata["verified"] and report.metadata["max_abs_logit_diff"] <= 1e-4
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    f32 = (smoke.varied / "model.safetensors").stat().st_size
    assert (tmp_path / "hf" / "model.safetensors").stat().st_size < 0.6 * f32


def test_refuses_another_tokenizer(smoke: Smoke, tmp_path: Path):
    Tokenizer({bytes([b]): b for b in range(256)}).save(tmp_path / "bytes")
    with pytest.raises(ExportError, match="another tokenizer") as err:
        export_hf(smoke.varied, tmp_path / "bytes", tmp_path / "hf", ExportConfig(verify="never"))
    assert isinstance(err.value, MiniLLMError)  # one hierarchy: the CLI and assets catch it
    assert not (tmp_path / "hf").exists()


def test_chat_template_is_the_shipped_jinja_file():
    from importlib import resources

    text = resources.files("minillm_core.export").joinpath("chat_template.jinja").read_text("utf-8")
    template = hf_export.chat_template()
    assert "\n" not in template and "{#" not in template
    assert "{%- macro text_of(c) -%}" in text and template.startswith("{%- macro text_of(c) -%}")


def test_command(smoke: Smoke, tmp_path: Path, capsys):
    rc = export_cli.main(
        [
            "--checkpoint",
            str(smoke.varied),
            "--tokenizer",
            str(smoke.tokenizer_dir),
            "--out",
            str(tmp_path / "hf"),
            "--verify",
            "never",
        ]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(tmp_path / "hf")
    rc = export_cli.main(
        [
            "--checkpoint",
            str(tmp_path / "missing"),
            "--tokenizer",
            str(smoke.tokenizer_dir),
            "--out",
            str(tmp_path / "hf2"),
        ]
    )
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_without_transformers_the_export_is_written_unverified(
    smoke: Smoke, tmp_path: Path, monkeypatch
):
    monkeypatch.setattr(verify, "_transformers", lambda: None)
    messages: list[str] = []
    report = export_hf(smoke.varied, smoke.tokenizer_dir, tmp_path / "hf", log=messages.append)
    assert report.metadata["verified"] is False and "max_abs_logit_diff" not in report.metadata
    assert any("not verified" in m for m in messages)
    with pytest.raises(ExportError, match="needs transformers"):
        export_hf(
            smoke.varied, smoke.tokenizer_dir, tmp_path / "hf2", ExportConfig(verify="always")
        )
    assert not (tmp_path / "hf2").exists()
