"""The one inference layer: the sampler's filters and penalties against hand-computed answers, and
proof that chat, eval, serve and the export's check all sample through it."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from minillm_core import inference
from minillm_core.errors import ConfigError
from minillm_core.inference import Sampler, SamplingParams, complete, generate
from minillm_core.model import MiniLLM, ModelConfig
from minillm_core.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def draws(params: SamplingParams, logits: torch.Tensor = LOGITS, n: int = 400) -> set[int]:
    sampler = Sampler(params)
    return {int(sampler.sample(logits)[0]) for _ in range(n)}


def test_neutral_filters_leave_every_token_possible():
    assert draws(SamplingParams(temperature=1.0, seed=0)) == {0, 1, 2, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert draws(SamplingParams(temperature=1.0, top_p=0.5, seed=0)) == {0}
    assert draws(SamplingParams(temperature=1.0, top_p=0.75, seed=0)) == {0, 1}
    assert draws(SamplingParams(temperature=1.0, top_p=0.9, seed=0)) == {0, 1, 2}


def test_min_p_drops_tokens_below_a_share_of_the_top_one():
    # 0.5 * 0.5 = 0.25: only 0.5 and 0.3 stay
    assert draws(SamplingParams(temperature=1.0, min_p=0.5, seed=0)) == {0, 1}


def test_top_k_then_greedy():
    assert draws(SamplingParams(temperature=1.0, top_k=2, seed=0)) == {0, 1}
    assert draws(SamplingParams(), n=3) == {0}


def test_penalties_change_the_greedy_choice():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    rep = Sampler(SamplingParams(repetition_penalty=2.0))
    rep.observe_prompt(torch.tensor([[0]]), 3)  # 2.0 / 2 = 1.0 < 1.9
    assert int(rep.sample(logits)[0]) == 1
    pres = Sampler(SamplingParams(presence_penalty=0.5))
    pres.observe_prompt(torch.tensor([[2]]), 3)  # the prompt does not count for presence
    assert [int(pres.sample(logits)[0]) for _ in range(3)] == [0, 1, 0]
    freq = Sampler(SamplingParams(frequency_penalty=0.06))
    freq.observe_prompt(torch.tensor([[2]]), 3)
    # 2.0 - 0.06 k vs 1.9 - 0.06 j: token 0 twice, then they alternate
    assert [int(freq.sample(logits)[0]) for _ in range(4)] == [0, 0, 1, 0]


def test_seeded_sampling_repeats_and_bad_settings_are_refused():
    p = SamplingParams(temperature=0.9, top_p=0.9, min_p=0.05, seed=3)
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    a, b = Sampler(p), Sampler(p)
    assert [int(a.sample(logits)[0]) for _ in range(20)] == [
        int(b.sample(logits)[0]) for _ in range(20)
    ]
    for bad in (
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"min_p": -0.1},
        {"temperature": -1.0},
        {"repetition_penalty": 0.0},
        {"top_k": -1},
        {"seed": 2**64},
        {"seed": -(2**63) - 1},
    ):
        with pytest.raises(ConfigError):
            SamplingParams(**bad)


def test_generate_honours_max_context_and_stops():
    torch.manual_seed(0)
    m = MiniLLM(
        ModelConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            initializer_range=0.5,
            max_position_embeddings=32,
        )
    ).eval()
    full = complete(m, [1, 2, 3], 40)
    assert len(full) == 29  # the model's context bounds prompt + output
    assert list(generate(m, [1, 2, 3], 40, max_context=10)) == full[:7]
    stop = full[2]
    out = list(generate(m, [1, 2, 3], 10, SamplingParams(stop_ids=(stop,))))
    assert out == full[: full.index(stop)]
    out = list(generate(m, [1, 2, 3], 10, SamplingParams(stop_ids=(stop,)), include_stop=True))
    assert out == full[: full.index(stop) + 1]


# ------------------------------------------------------------------- one sampler everywhere


class Echo(nn.Module):
    """Greedy output: the byte 'a' forever (any module returning logits can generate)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[..., ord("a")] = 5.0
        return logits


@pytest.fixture
def calls(monkeypatch) -> list[tuple[int, ...]]:
    seen: list[tuple[int, ...]] = []
    real = Sampler.sample

    def spy(self: Sampler, logits: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(logits.shape))
        return real(self, logits)

    monkeypatch.setattr(Sampler, "sample", spy)
    return seen


def test_chat_eval_serve_and_export_all_sample_through_the_one_sampler(calls, tmp_path):
    from minillm_cli import chat, serve_engine
    from minillm_core.eval import scoring
    from minillm_core.export import verify

    tok = Tokenizer({bytes([b]): b for b in range(256)})
    model = Echo(tok.get_vocab_size())

    chat.chat_loop(
        model,
        tok,
        temperature=0.0,
        max_new_tokens=3,
        max_context=64,
        stdout=io.StringIO(),
        prompt="hi",
    )
    assert len(calls) == 3
    s = scoring.generate_samples(
        model,
        tok,
        ["x"],
        chat=False,
        max_new_tokens=4,
        max_seq_len=64,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert s[0]["completion"] == "aaaa" and len(calls) == 7
    engine = serve_engine.Engine(model, tok, max_context=64)
    events = list(engine.events([1, 2], 2, SamplingParams(temperature=0.7, seed=1)))
    assert events[-1] == ("done", "length", 2) and len(calls) == 9

    class Native(MiniLLM):
        pass

    torch.manual_seed(0)
    native = Native(
        ModelConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )

    class HF:  # stands in for transformers' model: returns what the native model generates
        def generate(self, ids, max_new_tokens, eos_token_id, **kw):
            new = complete(
                native,
                ids[0].tolist(),
                max_new_tokens,
                SamplingParams(stop_ids=tuple(eos_token_id)),
            )
            return torch.tensor([ids[0].tolist() + new])

    before = len(calls)
    out: dict = {}
    verify._check_greedy(HF(), native, tok, [tok.get_bos_token_id()], 1e-4, 3, out)
    assert out["greedy_equal"] and len(calls) > before


def test_no_other_module_samples():
    """Only minillm_core/inference.py draws tokens (multinomial) or defines a sampling helper."""
    offenders = []
    for path in sorted((REPO / "minillm_core").rglob("*.py")) + sorted(
        (REPO / "minillm_cli").rglob("*.py")
    ):
        if path == REPO / "minillm_core" / "inference.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "multinomial":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} multinomial")
            if isinstance(node, ast.FunctionDef) and node.name in (
                "sample_next",
                "_pick",
                "stream_tokens",
                "stream",
                "generate",
            ):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} def {node.name}")
    assert not offenders, offenders
    assert inference.Sampler.sample.__module__ == "minillm_core.inference"
