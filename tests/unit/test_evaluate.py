"""Evaluation metrics against known answers, with tiny hand-built models (no training).

The tokenizer here is a real `Tokenizer` with no merges (256 byte tokens + the special tokens),
or with one merge for a 3-byte Chinese character, so byte counts are known exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from minillm_cli import eval as cli
from minillm_core.errors import DataError, TokenizerMismatchError
from minillm_core.eval import checks, config, data, metrics, results, run, scoring
from minillm_core.tokenizer import Tokenizer

NI = "你".encode()  # 3 bytes


def byte_tokenizer(merge_ni: bool = False) -> Tokenizer:
    ranks = {bytes([b]): b for b in range(256)}
    if merge_ni:
        ranks[NI[:2]] = 256  # a merge needs its parts; ranks stay contiguous
        ranks[NI] = 257
    return Tokenizer(ranks)


class Uniform(nn.Module):
    """Logits all zero: every token has probability 1/V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, self.vocab)


class Counting(nn.Module):
    """Puts logit `a` on (input + 1) % V, 0 elsewhere: p(next = x+1) = e^a / (e^a + V - 1)."""

    def __init__(self, vocab: int, a: float):
        super().__init__()
        self.vocab, self.a = vocab, a

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, self.vocab)
        return logits.scatter(2, ((ids + 1) % self.vocab).unsqueeze(-1), self.a)


class Favourite(nn.Module):
    """Prefers one token everywhere (logit 5), then a second one (logit 2)."""

    def __init__(self, vocab: int, first: int, second: int):
        super().__init__()
        self.vocab, self.first, self.second = vocab, first, second

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[..., self.first] = 5.0
        logits[..., self.second] = 2.0
        return logits


def row(ids: list[int], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


CPU = dict(device=torch.device("cpu"), dtype=torch.float32)


# ------------------------------------------------------------------------------- loss and bpb


def test_uniform_logits_give_ln_vocab_loss_and_matching_bits_per_byte():
    tok = byte_tokenizer()
    v = tok.get_vocab_size()
    bos = tok.get_bos_token_id()
    text = list("hello 世界".encode())  # 12 one-byte tokens
    rows = [
        row([bos] + text, text + [bos]),  # the last target is special (0 bytes)
        row([bos] + text[:3], text[:3] + [-100]),
    ]  # an ignored position
    m = scoring.score_loss(
        Uniform(v),
        rows,
        pad_id=bos,
        batch_size=2,
        token_bytes=metrics.token_byte_lengths(tok),
        **CPU,
    )
    assert m["tokens"] == 12 + 1 + 3
    assert m["loss"] == pytest.approx(math.log(v), rel=1e-6)
    assert m["perplexity"] == pytest.approx(v, rel=1e-5)
    # Every non-special target spells exactly one byte: bits per byte is log2(V) bits per token.
    assert m["bytes"] == 15
    assert m["bits_per_byte"] == pytest.approx(math.log2(v), rel=1e-6)


def test_bits_per_byte_counts_the_bytes_a_token_spells():
    tok = byte_tokenizer(merge_ni=True)
    v = tok.get_vocab_size()
    (ni,) = tok.encode("你")
    a = tok.encode("a")[0]
    bos = tok.get_bos_token_id()
    # Targets: 你 (3 bytes), a (1 byte), <|bos|> (special, 0 bytes, left out of bits per byte).
    rows = [row([bos, ni, a], [ni, a, bos])]
    m = scoring.score_loss(
        Uniform(v),
        rows,
        pad_id=bos,
        batch_size=1,
        token_bytes=metrics.token_byte_lengths(tok),
        **CPU,
    )
    assert m["loss"] == pytest.approx(math.log(v))
    assert m["bits_per_byte"] == pytest.approx(2 * math.log(v) / (math.log(2) * 4))


def test_labels_are_aligned_with_inputs_not_shifted_again():
    v, a = 50, 3.0
    model = Counting(v, a)
    ids = list(range(10, 20))
    expected = -math.log(math.exp(a) / (math.exp(a) + v - 1))
    m = scoring.score_loss(
        model, [row(ids, [i + 1 for i in ids])], pad_id=0, batch_size=1, token_bytes=None, **CPU
    )
    assert m["loss"] == pytest.approx(expected, rel=1e-6)
    assert "bits_per_byte" not in m  # no byte table, no made-up number


def test_padding_does_not_change_the_loss():
    v = 50
    model = Counting(v, 2.0)
    short, long_ = row([1, 2], [2, 3]), row([5, 6, 7, 8, 9], [6, 7, 8, 9, 10])
    alone = [
        scoring.score_loss(model, [r], pad_id=0, batch_size=1, token_bytes=None, **CPU)["loss"]
        for r in (short, long_)
    ]
    both = scoring.score_loss(
        model, [short, long_], pad_id=0, batch_size=2, token_bytes=None, **CPU
    )
    assert both["loss"] == pytest.approx((2 * alone[0] + 5 * alone[1]) / 7)


# ----------------------------------------------------------------------------------- preference


def test_preference_metrics_hand_built():
    pc = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    pr = torch.tensor([-2.0, -1.0, -3.0, -9.0])
    rc = torch.tensor([-1.5, -1.5, -3.0, -4.0])
    rr = torch.tensor([-1.5, -1.5, -3.0, -5.0])
    m = metrics.preference_metrics(pc, pr, rc, rr, beta=0.1)
    # log-ratio margins: (0.5 - -0.5)=1, (-0.5 - 0.5)=-1, 0 (a tie is a miss), (0 - -4)=4
    assert m["preference_accuracy"] == pytest.approx(2 / 4)
    assert m["reward_margin"] == pytest.approx(0.1 * (1 - 1 + 0 + 4) / 4)
    assert m["chosen_reward"] == pytest.approx(0.1 * (0.5 - 0.5 + 0 + 0) / 4)
    assert m["chosen_logp"] == pytest.approx(-2.5)
    assert m["rejected_logp"] == pytest.approx(-15 / 4)


def test_score_preferences_with_models():
    v = 40
    policy, reference = Counting(v, 4.0), Uniform(v)
    counting = [3, 4, 5, 6]  # what the policy predicts
    scrambled = [3, 9, 1, 7]
    prompt_mask = [-100]  # the first target belongs to the prompt

    def seq(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(ids[:-1]), torch.tensor(prompt_mask + ids[2:])

    rows = []
    for chosen, rejected in ((counting, scrambled), (scrambled, counting)):
        ci, cl = seq(chosen)
        ri, rl = seq(rejected)
        rows.append(
            {
                "chosen_input_ids": ci,
                "chosen_labels": cl,
                "rejected_input_ids": ri,
                "rejected_labels": rl,
            }
        )
    m = scoring.score_preferences(policy, reference, rows, pad_id=0, batch_size=2, beta=0.5, **CPU)
    assert m["preference_accuracy"] == pytest.approx(0.5)
    lp_hit = math.log(math.exp(4) / (math.exp(4) + v - 1))
    lp_miss = math.log(1 / (math.exp(4) + v - 1))
    assert m["chosen_logp"] == pytest.approx((2 * lp_hit + 2 * lp_miss) / 2, rel=1e-5)
    assert m["reward_margin"] == pytest.approx(0.0, abs=1e-5)  # +d and -d


# ------------------------------------------------------------------------------ multiple choice


def test_mc_pick_takes_the_highest_likelihood():
    assert metrics.mc_pick(torch.tensor([-3.0, -1.2, -1.5, -9.0])) == 1
    assert metrics.mc_pick([-2.0, -2.0, -2.0]) == 0  # ties: the first option


def _mc_record(gold_answer: str) -> dict:
    return {
        "conversations": [
            {"role": "user", "content": MC_Q},
            {"role": "assistant", "content": gold_answer},
        ]
    }


MC_Q = "下列哪个城市是中国的首都？\nA. 上海\nB. 北京\nC. 广州\nD. 深圳"


@pytest.mark.parametrize(
    "answers", [("B. 北京", "A", "B"), ("答案是 B：北京", "答案是 A：上海", "答案是 B：北京")]
)
def test_multiple_choice_picks_the_highest_letter_likelihood(answers):
    tok = byte_tokenizer()
    v = tok.get_vocab_size()
    # Likes "B" most and "A" second, everywhere: it answers B, whatever the lead-in.
    model = Favourite(v, first=tok.encode("B")[0], second=tok.encode("A")[0])
    items = data.mc_items([_mc_record(a) for a in answers], tok, 512, 10)
    assert [gold for _, _, gold in items] == [1, 0, 1]
    assert all(len(opts) == 4 for _, opts, _ in items)
    m = scoring.score_multiple_choice(model, items, pad_id=0, batch_size=3, **CPU)
    assert m == {
        "mc_accuracy": pytest.approx(2 / 3),
        "mc_chance": pytest.approx(0.25),
        "mc_items": 3.0,
    }


def test_mc_scores_each_option_from_the_end_of_the_prompt_with_padding():
    v = 30

    class LastTokenEcho(nn.Module):  # prefers the token equal to the current input token
        def forward(self, ids):
            return torch.zeros(*ids.shape, v).scatter(2, ids.unsqueeze(-1), 3.0)

    items = [
        ([5, 6, 11], [[10], [11], [12]], 1),
        ([7, 12], [[10], [11], [12]], 2),
        ([1, 2, 3, 4, 10], [[10], [11], [12]], 0),
        # two-token continuations: the sum over both tokens decides
        ([1, 2], [[2, 9], [2, 2], [3, 3]], 1),
    ]
    m = scoring.score_multiple_choice(LastTokenEcho(), items, pad_id=0, batch_size=4, **CPU)
    assert m["mc_accuracy"] == 1.0
    assert m["mc_chance"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "question,answer,expected",
    [
        ("问题\nA. 甲\nB. 乙\nC. 丙\nD. 丁", "C", (["A", "B", "C", "D"], "C", "")),
        ("问题\n(A) 甲\n(B) 乙", "答案", None),  # no letter stated
        ("问题\nA、甲\nB、乙\nC、丙", "(B) 乙", (["A", "B", "C"], "B", "(")),
        ("问题 without options", "D", (["A", "B", "C", "D"], "D", "")),
        ("问题\nA. 甲\nB. 乙", "D", None),  # D is not an option
        ("问题\nA. 甲\nB. 乙", "答案是 B：乙", (["A", "B"], "B", "答案是 ")),
        ("问题\nA. 甲\nB. 乙", "Beijing", None),  # not a letter answer
    ],
)
def test_parse_mc_item(question, answer, expected):
    conv = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    item = metrics.parse_mc_item(conv)
    if expected is None:
        assert item is None
    else:
        assert (item.letters, item.gold, item.lead) == expected
        assert item.prompt == conv[:1]


# ------------------------------------------------------------------------------ identity probes


def test_identity_scores():
    probes = {"你是谁？": "name", "谁开发了你？": "author"}
    samples = [
        {"prompt": "你是谁？", "completion": "我是minillm，一个小助手"},
        {"prompt": "谁开发了你？", "completion": "我是由OpenAI开发的ChatGPT"},
        {"prompt": "1加1等于几？", "completion": "2"},
    ]
    m = metrics.identity_scores(
        samples, probes, "MiniLLM", "张三", config.DEFAULT_FOREIGN_IDENTITIES
    )
    assert m == {
        "identity_name": 1.0,
        "identity_author": 0.0,
        "identity_score": 0.5,
        "identity_foreign": 1.0,
    }
    assert samples[0]["passed"] is True and samples[1]["passed"] is False
    assert "passed" not in samples[2]


def test_own_name_is_not_a_foreign_identity():
    m = metrics.identity_scores(
        [{"prompt": "你是谁？", "completion": "我是MiniMind"}],
        {"你是谁？": "name"},
        "MiniMind",
        "jingyaogong",
        ["MiniMind", "Qwen"],
    )
    assert m["identity_name"] == 1.0 and m["identity_foreign"] == 0.0


# -------------------------------------------------------------------------------------- checks


def test_check_eval_smoke_and_gpu_thresholds():
    good = {
        "loss": 2.5,
        "perplexity": math.exp(2.5),
        "bits_per_byte": 1.1,
        "identity_score": 1.0,
        "identity_foreign": 0.0,
    }
    assert checks.check_eval(good, checks.eval_thresholds("smoke", "sft")) == []
    assert checks.check_eval(good, checks.eval_thresholds("gpu", "sft")) == []
    bad = {**good, "identity_score": 0.5, "loss": float("nan"), "mc_accuracy": 1.5}
    problems = checks.check_eval(bad, checks.eval_thresholds("gpu", "sft"))
    assert any(p.startswith("loss: not finite") for p in problems)
    assert any(p.startswith("mc_accuracy:") and "valid range" in p for p in problems)
    assert any(p.startswith("identity_score:") and "below" in p for p in problems)
    # Smoke only checks finite and in range, so the weak identity passes there.
    smoke = checks.check_eval(
        {**good, "identity_score": 0.0}, checks.eval_thresholds("smoke", "sft")
    )
    assert smoke == []
    # A threshold on a metric that was not produced is a failure, not a silent pass.
    assert checks.check_eval(
        {"loss": 1.0, "perplexity": math.e}, {"identity_score": (1.0, None)}
    ) == ["identity_score: missing (threshold 1.0..None)"]


# ---------------------------------------------------------------------------- the results file


def test_append_jsonl_writes_one_valid_line_and_repairs_a_torn_one(tmp_path):
    f = tmp_path / "tf" / "eval_results.jsonl"
    results.append_jsonl(f, {"stage": "pretrain", "metrics": {"loss": 1.0}, "text": "中文"})
    assert f.read_text(encoding="utf-8").count("\n") == 1
    with open(f, "a", encoding="utf-8") as fh:
        fh.write('{"stage": "torn')  # a writer killed mid-line
    results.append_jsonl(f, {"stage": "sft"})
    assert [r["stage"] for r in results.read_results(f)] == ["pretrain", "sft"]
    with pytest.raises(ValueError):  # NaN is not JSON: refuse rather than write a bad line
        results.append_jsonl(f, {"loss": float("nan")})
    assert len(results.read_results(f)) == 2


def test_print_latest_shows_the_last_n(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    for i, stage in enumerate(["pretrain", "sft", "dpo", "pretrain"]):
        results.append_jsonl(
            f,
            {
                "timestamp": f"2026-01-0{i + 1}T00:00:00",
                "stage": stage,
                "checkpoint": f"/x/out/{stage}",
                "step": i,
                "metrics": {"loss": 1.0 + i},
            },
        )
    text = results.print_latest(f, n=3)
    assert capsys.readouterr().out.strip() == text
    body = text.splitlines()[2:]
    assert [r.split("|")[2].strip() for r in body] == ["sft", "dpo", "pretrain"]
    assert "| 4.0000 |" in body[-1]
    assert results.print_latest(tmp_path / "none.jsonl").startswith("no evaluations")


def test_a_bad_heldout_line_is_a_data_error_naming_file_and_line(tmp_path):
    f = tmp_path / "h.jsonl"
    f.write_text('{"text": "ok"}\n\n[1]\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(data.read_jsonl(f))
    assert (err.value.file, err.value.line) == (str(f), 3)


def test_eval_length_is_the_models_context_and_never_more():
    from minillm_core.errors import ConfigError
    from minillm_core.model import MiniLLM, ModelConfig

    model = MiniLLM(
        ModelConfig(
            vocab_size=300,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
        )
    )
    assert run.eval_length(None, model) == 64
    assert run.eval_length(32, model) == 32
    with pytest.raises(ConfigError, match="exceeds the model's context 64"):
        run.eval_length(65, model)
    assert run.eval_length(None, Uniform(8)) == 512  # no config: a default model's context


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results.write_tensorboard(tmp_path / "eval", "sft", {"loss": 2.0, "mc_accuracy": 0.5}, step=12)
    acc = EventAccumulator(str(tmp_path / "eval"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"eval/sft/loss", "eval/sft/mc_accuracy"}
    (e,) = acc.Scalars("eval/sft/loss")
    assert (e.step, e.value) == (12, 2.0)


def test_table_aligns_chinese_by_display_width():
    t = results.format_table(("prompt", "x"), [("你是谁？", 1.5), ("ab", 2.0)]).splitlines()
    assert len({results._width(line) for line in t}) == 1


# -------------------------------------------------------------------------------------- config


def test_config_defaults_point_at_the_heldout_split(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILLM_ROOT", str(tmp_path / "proj"))
    monkeypatch.delenv("TF_DIR", raising=False)
    for stage in ("pretrain", "sft", "dpo"):
        cfg = config.EvalConfig(stage=stage)
        assert (
            cfg.data_path
            == tmp_path / "proj" / "data" / "processed" / f"{stage}_chinese_heldout.jsonl"
        )
        assert cfg.checkpoint == tmp_path / "proj" / "out" / stage
        assert cfg.results_file == tmp_path / "tf_dir" / "eval_results.jsonl"
        assert cfg.tensorboard_dir == tmp_path / "tf_dir" / "eval"
    assert config.EvalConfig(stage="dpo").reference_checkpoint == tmp_path / "proj" / "out" / "sft"
    assert config.EvalConfig(stage="sft").reference_checkpoint is None


def test_config_takes_every_profile_preset():
    from minillm_core.profiles import PROFILES, preset

    for profile in PROFILES:
        cfg = config.EvalConfig.resolve(preset(profile, "eval"), {"stage": "sft"})
        assert cfg.stage == "sft"


def test_command_line_flags_keep_the_seed_spellings(tmp_path):
    p = cli.build_parser()
    a = p.parse_args(
        [
            "--stage",
            "sft",
            "--data_path",
            "x.jsonl",
            "--max-seq-len",
            "64",
            "--batch_size",
            "2",
            "--results-file",
            str(tmp_path / "r.jsonl"),
            "--device",
            "cpu",
            "--tensorboard-dir",
            "",
            "--max_samples",
            "3",
            "--checkpoint",
            "ck",
        ]
    )
    assert (a.stage, a.data_path, a.max_seq_len, a.batch_size, a.max_samples) == (
        "sft",
        Path("x.jsonl"),
        64,
        2,
        3,
    )
    assert cli.main(["--summary", "2", "--results-file", str(tmp_path / "r.jsonl")]) == 0


# ---------------------------------------------------------------------------------- generation


def test_greedy_samples_are_deterministic_and_stop():
    tok = byte_tokenizer()
    v = tok.get_vocab_size()
    model = Counting(v, 1.0)  # greedy: each next token is the previous + 1
    s = scoring.generate_samples(
        model, tok, ["abc"], chat=False, max_new_tokens=4, max_seq_len=64, **CPU
    )
    assert s == [{"prompt": "abc", "completion": "defg", "kind": "continuation"}]
    # In chat mode the prompt ends with <|assistant_start|>; the next id is <|assistant_end|>,
    # a stop id, so the answer is empty.
    assert tok.encode_special("<|assistant_start|>") + 1 == tok.encode_special("<|assistant_end|>")
    s = scoring.generate_samples(
        model, tok, ["你是谁？"], chat=True, max_new_tokens=4, max_seq_len=64, **CPU
    )
    assert s[0]["completion"] == ""


# ------------------------------------------------------- whole evaluations on hand-made data


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    return path


def _conv(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


HELDOUT = {
    "pretrain": [{"text": "今天天气很好。", "source": "t"}, {"text": "abc", "source": "t"}],
    "sft": [
        {"conversations": _conv("你好", "你好！"), "source": {"category": "general"}},
        {"conversations": _conv(MC_Q, "B. 北京"), "source": {"category": "knowledge"}},
        {"conversations": _conv(MC_Q, "A"), "source": {"category": "knowledge"}},
    ],
    "dpo": [{"chosen": _conv("1+1=?", "2"), "rejected": _conv("1+1=?", "3"), "source": "t"}],
}


def _cfg(tmp_path: Path, stage: str, **kw) -> config.EvalConfig:
    return config.EvalConfig(
        stage=stage,
        checkpoint=tmp_path / "ckpt",
        data_path=_write_jsonl(tmp_path / f"{stage}_chinese_heldout.jsonl", HELDOUT[stage]),
        results_file=tmp_path / "tf" / "eval_results.jsonl",
        tensorboard_dir=tmp_path / "tf" / "eval",
        max_new_tokens=3,
        device="cpu",
        dtype="float32",
        **kw,
    )


def test_run_eval_pretrain_uniform_model(tmp_path):
    tok = byte_tokenizer()
    v = tok.get_vocab_size()
    m, samples = run.run_eval(_cfg(tmp_path, "pretrain"), Uniform(v), tok)
    text_bytes = len("今天天气很好。".encode()) + 3
    assert m["tokens"] == text_bytes  # BOS + text, each byte a target, BOS never a target
    assert m["loss"] == pytest.approx(math.log(v))
    assert m["bits_per_byte"] == pytest.approx(math.log2(v))
    assert [s["prompt"] for s in samples] == config.DEFAULT_CONTINUATIONS


def test_run_eval_sft_scores_mc_and_identity(tmp_path):
    tok = byte_tokenizer()
    v = tok.get_vocab_size()
    model = Favourite(v, first=tok.encode("B")[0], second=tok.encode("A")[0])
    m, samples = run.run_eval(_cfg(tmp_path, "sft", max_samples=5), model, tok)
    assert (m["mc_accuracy"], m["mc_chance"], m["mc_items"]) == (0.5, 0.25, 2.0)
    assert m["identity_score"] == 0.0  # "BBB" names nobody
    assert {s["completion"] for s in samples} == {"BBB"}
    assert [s["prompt"] for s in samples] == config.DEFAULT_PROMPTS
    assert math.isfinite(m["loss"]) and m["loss"] > 0


def test_run_eval_dpo_needs_a_reference_and_scores_pairs(tmp_path):
    tok = byte_tokenizer()
    v = tok.get_vocab_size()
    cfg = _cfg(tmp_path, "dpo")
    with pytest.raises(ValueError, match="reference"):
        run.run_eval(cfg, Uniform(v), tok)
    two = tok.encode("2")[0]
    policy = Favourite(v, first=two, second=tok.encode_special("<|assistant_end|>"))
    m, _ = run.run_eval(cfg, policy, tok, reference=Uniform(v))
    assert m["preference_accuracy"] == 1.0 and m["reward_margin"] > 0
    assert m["chosen_logp"] > m["rejected_logp"]


def _tiny_checkpoint(tmp_path: Path, tok: Tokenizer, name: str, seed: int) -> Path:
    from minillm_core.model import MiniLLM, ModelConfig
    from minillm_core.train.checkpointer import save_checkpoint

    torch.manual_seed(seed)
    model = MiniLLM(
        ModelConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    return save_checkpoint(
        tmp_path / name, model, {"stage": name, "step": 5, "tokenizer_hash": tok.hash}
    )


def test_evaluate_end_to_end_appends_one_line_per_stage(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tok = byte_tokenizer()
    tok.save(tmp_path / "tokenizer")
    for stage in ("pretrain", "sft", "dpo"):
        ckpt = _tiny_checkpoint(tmp_path, tok, stage, seed=len(stage))
        ref = _tiny_checkpoint(tmp_path, tok, "ref", seed=0) if stage == "dpo" else None
        cfg = _cfg(tmp_path, stage).model_copy(
            update={
                "checkpoint": ckpt,
                "reference_checkpoint": ref,
                "tokenizer_dir": tmp_path / "tokenizer",
            }
        )
        report = run.evaluate(cfg)
        assert checks.check_eval(report, checks.eval_thresholds("smoke", stage)) == []
        weights = ckpt / "model.safetensors"
        assert report.results_line["checkpoint_sha256"] == run.sha256_file(weights)
        assert report.metadata["table_md"] == report.table_markdown
    out = capsys.readouterr().out
    assert "bits_per_byte" in out and "preference_accuracy" in out and "chance 0.25" in out
    lines = (tmp_path / "tf" / "eval_results.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["stage"] for x in lines] == ["pretrain", "sft", "dpo"]
    acc = EventAccumulator(str(tmp_path / "tf" / "eval"))
    acc.Reload()
    assert {
        "eval/pretrain/bits_per_byte",
        "eval/sft/mc_accuracy",
        "eval/dpo/preference_accuracy",
    } <= set(acc.Tags()["scalars"])
    # The same evaluation twice gives the same numbers (greedy, seeded, file order).
    again = run.evaluate(cfg)
    assert again.metrics == report.metrics and again.samples == report.samples


def test_evaluate_refuses_a_checkpoint_of_another_tokenizer(tmp_path):
    tok = byte_tokenizer()
    other = byte_tokenizer(merge_ni=True)
    other.save(tmp_path / "tokenizer")
    ckpt = _tiny_checkpoint(tmp_path, tok, "pretrain", seed=0)
    cfg = _cfg(tmp_path, "pretrain").model_copy(
        update={"checkpoint": ckpt, "tokenizer_dir": tmp_path / "tokenizer"}
    )
    with pytest.raises(TokenizerMismatchError, match="tokenizer"):
        run.evaluate(cfg)
    assert not cfg.results_file.exists()


def test_command_reports_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    rc = cli.main(
        [
            "--stage",
            "pretrain",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--data-path",
            str(_write_jsonl(tmp_path / "h.jsonl", HELDOUT["pretrain"])),
            "--results-file",
            str(tmp_path / "r.jsonl"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("minillm eval: pretrain checkpoint not found")
    assert not (tmp_path / "r.jsonl").exists()


def test_command_runs_and_checks_with_a_profile(tmp_path, capsys):
    tok = byte_tokenizer()
    tok.save(tmp_path / "tokenizer")
    ckpt = _tiny_checkpoint(tmp_path, tok, "pretrain", seed=0)
    data = _write_jsonl(tmp_path / "pretrain_chinese_heldout.jsonl", HELDOUT["pretrain"])
    rc = cli.main(
        [
            "--stage",
            "pretrain",
            "--checkpoint",
            str(ckpt),
            "--data_path",
            str(data),
            "--tokenizer-dir",
            str(tmp_path / "tokenizer"),
            "--profile",
            "smoke",
            "--results-file",
            str(tmp_path / "r.jsonl"),
            "--tensorboard-dir",
            "",
            "--max-seq-len",
            "16",
            "--max-samples",
            "1",
            "--batch-size",
            "1",
        ]
    )
    assert rc == 0
    (line,) = results.read_results(tmp_path / "r.jsonl")
    assert line["config"]["max_new_tokens"] == 16  # the smoke preset under the flags
    assert line["config"]["max_seq_len"] == 16 and line["config"]["max_samples"] == 1
    assert line["metrics"]["tokens"] == 16  # one row, cut at 16 positions
    assert not (tmp_path / "eval").exists()


def test_identity_match_ignores_spacing_case_and_full_width():
    m = metrics.identity_scores(
        [{"prompt": "谁开发了你？", "completion": "我由ｍｉｎｉｌｌｍ开源社区开发。"}],
        {"谁开发了你？": "author"},
        "MiniLLM",
        "MiniLLM 开源社区",
        [],
    )
    assert m["identity_author"] == 1.0


# ------------------------------------------------- held-out data: only it is read, never trained


def test_evaluation_opens_only_the_heldout_file(tmp_path, monkeypatch):
    import builtins

    tok = byte_tokenizer()
    cfg = _cfg(tmp_path, "sft")
    train = {"conversations": _conv("训练集里的问题", "训练集里的回答")}
    _write_jsonl(tmp_path / "sft_chinese.jsonl", [train] * 3)  # the training mix beside it
    opened: list[Path] = []
    real_open = builtins.open

    def spy(file, *a, **kw):
        opened.append(Path(file).resolve())
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy)
    run.run_eval(cfg, Uniform(tok.get_vocab_size()), tok)
    monkeypatch.undo()
    data_files = {p for p in opened if p.suffix == ".jsonl"}
    # The training mix beside it is read only to leave out held-out records that overlap it
    # (minillm_core.data.decontam.clean_heldout); every scored record is a held-out one.
    assert data_files == {cfg.data_path.resolve(), (tmp_path / "sft_chinese.jsonl").resolve()}


def _sources(root: Path) -> Path:
    """Small, distinct source files for every default category (no record repeats another)."""
    src = root / "sources"
    gen = [
        {
            "conversations": _conv(
                f"第{i}个问题：请介绍第{i}号城市。", f"第{i}号城市很美丽，人口众多。"
            )
        }
        for i in range(40)
    ]
    know = [
        {
            "question": f"第{i}题：哪个是正确的选项？",
            "A": f"甲{i}",
            "B": f"乙{i}",
            "C": f"丙{i}",
            "D": f"丁{i}",
            "answer": "ABCD"[i % 4],
        }
        for i in range(20)
    ]
    math_ = [
        {"question": f"第{i}道算术：{i}加{i}等于几？", "answer": str(2 * i)} for i in range(10)
    ]
    ident = [
        {
            "conversations": _conv(
                f"第{i}次问：你是谁？", f"我是{{{{name}}}}，由{{{{author}}}}开发（{i}）。"
            )
        }
        for i in range(6)
    ]
    pref = [
        {
            "chosen": _conv(f"第{i}个偏好问题？", f"好的回答{i}。"),
            "rejected": _conv(f"第{i}个偏好问题？", f"差的回答{i}。"),
        }
        for i in range(20)
    ]
    for name, recs in (
        ("general", gen),
        ("knowledge", know),
        ("math", math_),
        ("identity", ident),
        ("preference", pref),
    ):
        _write_jsonl(src / f"{name}.jsonl", recs)
    return src


def _stream_text(ds, tok) -> str:
    """Decode a packed pretrain token directory back to its text stream (rows overlap by one)."""
    ids: list[int] = []
    for i in range(len(ds)):
        r = ds[i]
        if not ids:
            ids.append(int(r["input_ids"][0]))
        ids.extend(int(x) for x in r["labels"] if x != -100)
    return tok.decode(ids)


def test_heldout_split_is_disjoint_from_every_training_tensor(tmp_path):
    from minillm_core.data import MixConfig, build_mix
    from minillm_core.tokens import TensorConfig, TokenDataset, encode_record, export_tokens

    src = _sources(tmp_path)
    (tmp_path / "samples").mkdir()
    # Capped like the smoke profile (the default quotas would repeat 40 records 460,000 times).
    mix_cfg = MixConfig(
        sources_dir=src,
        samples_dir=tmp_path / "samples",
        max_records={"pretrain": 64, "sft": 32, "dpo": 16},
        heldout_fraction=0.2,
        model_name="小明",
        model_author="明明工作室",
    )
    processed = tmp_path / "processed"
    reports = {
        s: build_mix(mix_cfg, s, processed, log=lambda m: None) for s in ("pretrain", "sft", "dpo")
    }
    # Disjointness does not depend on the merges: a merge-free tokenizer saves a training run.
    tok = byte_tokenizer()
    tok.save(tmp_path / "tokenizer")
    tcfg = TensorConfig(max_length=512)
    for stage, report in reports.items():
        heldout = list(data.read_jsonl(report.heldout_path))
        assert heldout, f"{stage}: the mix holds nothing out"
        export_tokens(
            tcfg,
            stage,
            report.path,
            tmp_path / "tokenizer",
            tmp_path / "tokens" / stage,
            log=lambda m: None,
        )
        ds = TokenDataset(tmp_path / "tokens" / stage, expected_tokenizer_hash=tok.hash)
        first_trained = next(data.read_jsonl(report.path))
        if stage == "pretrain":
            stream = _stream_text(ds, tok)
            assert first_trained["text"] in stream  # the search does find what was trained
            for rec in heldout:
                assert rec["text"] not in stream, rec["source"]
            continue
        key = "input_ids" if stage == "sft" else "chosen_input_ids"
        trained = {tuple(ds[i][key].tolist()) for i in range(len(ds))}
        assert tuple(encode_record(stage, first_trained, tok, tcfg)[key].tolist()) in trained
        for rec in heldout:
            row = encode_record(stage, rec, tok, tcfg)
            assert row is not None
            assert tuple(row[key].tolist()) not in trained, rec["source"]
        if stage == "sft":
            # The mix's knowledge questions ("答案是 C：丙10") are what the MC metric parses.
            knowledge = [r for r in heldout if data.category(r) == "knowledge"]
            assert knowledge and data.mc_items(knowledge, tok, 512, 10)


def test_metrics_table_notes_chance_and_shows_counts_as_integers():
    t = results.metrics_table({"loss": 1.0, "tokens": 12.0, "mc_accuracy": 0.5, "mc_chance": 0.25})
    rows = {
        r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:4]] for r in t.splitlines()[2:]
    }
    assert rows == {
        "loss": ["1.0000", "nats per target token"],
        "tokens": ["12", ""],
        "mc_accuracy": ["0.5000", "chance 0.25"],
    }


def test_bfloat16_autocast_scores_close_to_float32():
    # The gpu profile evaluates under bf16 autocast; on CPU the same code path runs (slowly).
    from minillm_core.model import MiniLLM, ModelConfig

    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = MiniLLM(
        ModelConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    ).eval()
    ids = [tok.get_bos_token_id(), *tok.encode("今天天气很好")]
    rows = [row(ids[:-1], ids[1:])]
    cpu = torch.device("cpu")
    m32, m16 = (
        scoring.score_loss(
            model, rows, pad_id=0, batch_size=1, device=cpu, dtype=d, token_bytes=None
        )
        for d in (torch.float32, torch.bfloat16)
    )
    assert m16["loss"] == pytest.approx(m32["loss"], rel=2e-2)
    s = scoring.generate_samples(
        model,
        tok,
        ["你好"],
        chat=True,
        max_new_tokens=4,
        max_seq_len=64,
        device=cpu,
        dtype=torch.bfloat16,
    )
    assert s[0]["kind"] == "chat" and isinstance(s[0]["completion"], str)
