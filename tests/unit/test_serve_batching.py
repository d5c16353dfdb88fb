"""Batched decoding in the server's Engine: rows of concurrent requests share each forward, on a
small random MiniLLM (float32, CPU) with a byte-level tokenizer."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch

from minillm_cli.serve_engine import Engine
from minillm_core.inference import PackedLinear, SamplingParams, generate
from minillm_core.model import MiniLLM, ModelConfig
from minillm_core.tokenizer import Tokenizer

TOK = Tokenizer({bytes([b]): b for b in range(256)})
END = TOK.encode_special("<|assistant_end|>")


def _model(seed: int = 0) -> MiniLLM:
    torch.manual_seed(seed)
    # GQA (2 key heads for 4 query heads); a large init: greedy output changes token to token.
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    cfg = ModelConfig(
        vocab_size=TOK.get_vocab_size(),
        max_position_embeddings=128,
        initializer_range=0.2,
        **shape,
    )
    return MiniLLM(cfg).eval()


@pytest.fixture(scope="module")
def model() -> MiniLLM:
    return _model()


PROMPTS = [list(b"hello"), list(b"a much longer prompt, twenty-nine"), list(b"x"), list(b"abc de")]
# No stop id can end these early: every row runs its full budget.
NO_STOP = SamplingParams(stop_ids=(9999,))


def _tokens(events) -> list[int]:
    return [e[1]["id"] for e in events if e[0] == "token"]


def _single(model: MiniLLM, prompt: list[int], n: int, params: SamplingParams) -> list[int]:
    return list(generate(model, prompt, n, params, include_stop=True))


class Gated(torch.nn.Module):
    """Wraps a model; each forward waits for a step permit, so the test decides when the batch
    advances and can count its forwards and rows."""

    def __init__(self, inner: MiniLLM):
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.permits = threading.Semaphore(0)
        self.calls: list[int] = []  # rows in each forward
        self.free_run = False

    def new_cache(self, batch: int, max_len: int):
        return self.inner.new_cache(batch, max_len)

    def forward(self, ids, cache=None):
        if not self.free_run:
            assert self.permits.acquire(timeout=30), "no permit"
        self.calls.append(ids.shape[0])
        return self.inner(ids, cache)


def _collect(gen, into: list) -> threading.Thread:
    t = threading.Thread(target=lambda: into.extend(gen), daemon=True)
    t.start()
    return t


def _wait(pred, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_batched_greedy_equals_single_greedy_with_rows_joining_at_different_steps(model):
    gated = Gated(model)
    eng = Engine(gated, TOK, max_context=128, max_batch=8)
    budgets = [12, 9, 15, 6]
    results: list[list] = [[] for _ in PROMPTS]
    threads = []
    for k, (prompt, n) in enumerate(zip(PROMPTS, budgets, strict=True)):
        threads.append(_collect(eng.events(prompt, n, NO_STOP, logprobs=0), results[k]))
        _wait(lambda k=k: eng.stats()["running"] + eng.stats()["waiting"] == k + 1, "submitted")
        for _ in range(3):  # this row's prefill and two batched steps before the next joins
            gated.permits.release()
    gated.free_run = True
    for _ in range(100):
        gated.permits.release()
    for t in threads:
        t.join(30)
    assert max(gated.calls) == 4  # the four rows did share forwards
    for prompt, n, events in zip(PROMPTS, budgets, results, strict=True):
        assert _tokens(events) == _single(model, prompt, n, NO_STOP)
        assert events[-1] == ("done", "length", n)
    _wait(lambda: eng.stats() == {"running": 0, "waiting": 0}, "rows released")


def test_seeded_sampling_does_not_depend_on_the_batch(model):
    params = SamplingParams(temperature=1.0, top_k=50, seed=1234, stop_ids=(9999,))
    alone = Engine(model, TOK, max_context=128)
    want = _tokens(alone.events(PROMPTS[0], 20, params, logprobs=0))
    assert want == _single(model, PROMPTS[0], 20, params)  # the one sampler, same draws

    eng = Engine(model, TOK, max_context=128)
    others: list[list] = [[] for _ in range(3)]
    companions = [
        _collect(eng.events(p, 30, SamplingParams(temperature=0.8, seed=k, stop_ids=(9999,))), o)
        for k, (p, o) in enumerate(zip(PROMPTS[1:], others, strict=True))
    ]
    got = _tokens(eng.events(PROMPTS[0], 20, params, logprobs=0))
    for t in companions:
        t.join(30)
    assert got == want
    assert all(o[-1][0] == "done" for o in others)


def test_n_choices_are_rows_of_one_batch(model):
    gated = Gated(model)
    gated.free_run = True
    eng = Engine(gated, TOK, max_context=128)
    params = [SamplingParams(temperature=1.0, seed=s, stop_ids=(9999,)) for s in (1, 2, 3)]
    events = list(eng.choices(PROMPTS[0], 8, params, logprobs=0))
    assert 3 in gated.calls  # decoded together
    for i, p in enumerate(params):
        mine = [e[1:] for e in events if e[0] == i]
        assert _tokens(mine) == _single(model, PROMPTS[0], 8, p)
        assert mine[-1] == ("done", "length", 8)


def test_cancel_frees_the_slot_within_one_step(model):
    gated = Gated(model)
    eng = Engine(gated, TOK, max_context=128)
    cancel = threading.Event()
    a, b = [], []
    ta = _collect(eng.events(PROMPTS[0], 50, NO_STOP, cancel=cancel), a)
    tb = _collect(eng.events(PROMPTS[1], 6, NO_STOP), b)
    _wait(lambda: sum(eng.stats().values()) == 2, "submitted")
    for _ in range(4):  # both prefills and two shared steps
        gated.permits.release()
    _wait(lambda: len(gated.calls) == 4, "four forwards")
    cancel.set()
    gated.permits.release()  # at most the step in flight still carries the cancelled row
    _wait(lambda: len(gated.calls) == 5, "fifth forward")
    gated.permits.release()
    _wait(lambda: len(gated.calls) == 6, "sixth forward")
    assert gated.calls[-1] == 1  # the next step decodes b alone
    gated.free_run = True
    gated.permits.release()
    ta.join(30)
    tb.join(30)
    assert a[-1][0] == "done" and a[-1][2] < 50
    assert b[-1] == ("done", "length", 6)


def test_closing_the_generator_frees_the_slot(model):
    eng = Engine(model, TOK, max_context=128, max_batch=1)
    it = eng.events(PROMPTS[0], 100, NO_STOP)
    next(it)
    it.close()
    _wait(lambda: eng.stats()["running"] == 0, "the slot was not freed")
    # The one slot serves the next request.
    assert list(eng.events(PROMPTS[2], 3, NO_STOP))[-1] == ("done", "length", 3)


def test_many_threads_at_once_each_get_their_own_answer(model):
    eng = Engine(model, TOK, max_context=128, max_batch=4)  # more requests than slots: some wait
    jobs = [(PROMPTS[k % 4][: 1 + k], 5 + k) for k in range(12)]
    results: list[list] = [[] for _ in jobs]
    threads = [
        _collect(eng.events(p, n, NO_STOP, logprobs=2), r)
        for (p, n), r in zip(jobs, results, strict=True)
    ]
    for t in threads:
        t.join(60)
    for (p, n), events in zip(jobs, results, strict=True):
        assert _tokens(events) == _single(model, p, n, NO_STOP)
        infos = [e[1] for e in events if e[0] == "token"]
        assert all(len(i["top"]) == 2 and i["top"][0][1] >= i["logprob"] for i in infos)
    assert eng.stats() == {"running": 0, "waiting": 0}


def test_stop_ids_end_a_row_and_the_others_go_on(model):
    free = _single(model, PROMPTS[1], 20, NO_STOP)
    stop = free[5]  # the 6th greedy token of this prompt ends its row
    first = free.index(stop)
    params = SamplingParams(stop_ids=(stop,))
    eng = Engine(model, TOK, max_context=128)
    other: list = []
    t = _collect(eng.events(PROMPTS[0], 20, NO_STOP), other)
    events = list(eng.events(PROMPTS[1], 20, params, logprobs=0))
    t.join(30)
    assert _tokens(events) == free[:first]  # no token event for the stop id
    assert events[-1] == ("done", "stop", first + 1)  # which is counted
    assert other[-1] == ("done", "length", 20)


def test_logprobs_come_from_the_raw_logits(model):
    eng = Engine(model, TOK, max_context=128)
    params = SamplingParams(temperature=0.7, repetition_penalty=1.3, seed=3, stop_ids=(9999,))
    events = list(eng.events(PROMPTS[0], 4, params, logprobs=3))
    infos = [e[1] for e in events if e[0] == "token"]
    ids = PROMPTS[0] + [i["id"] for i in infos]
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    for step, info in enumerate(infos):
        row = lp[len(PROMPTS[0]) - 1 + step]
        assert info["logprob"] == pytest.approx(float(row[info["id"]]), abs=1e-4)
        top = torch.topk(row, 3)
        assert [i for i, _ in info["top"]] == top.indices.tolist()
    # Token events come before their text; stop-free rows run to the budget.
    assert events[0][0] == "token" and events[-1] == ("done", "length", 4)


def test_a_failing_forward_reaches_every_reader_and_the_loop_goes_on(model):
    class Failing(Gated):
        def forward(self, ids, cache=None):
            if ids.shape[1] == 1 and not self.free_run:
                raise RuntimeError("device lost")
            return self.inner(ids, cache)

    failing = Failing(model)
    eng = Engine(failing, TOK, max_context=128)
    with pytest.raises(RuntimeError, match="device lost"):
        list(eng.events(PROMPTS[0], 5, NO_STOP))
    failing.free_run = True
    assert list(eng.events(PROMPTS[0], 5, NO_STOP))[-1] == ("done", "length", 5)


def test_bfloat16_on_cpu_serves_with_packed_linears(model):
    bf = copy.deepcopy(model).to(torch.bfloat16)
    ids = torch.tensor([PROMPTS[1]])
    with torch.inference_mode():
        want = bf(ids).float()
    eng = Engine(bf, TOK, max_context=128)  # packs bf's linears when oneDNN has bfloat16
    packed = [m for m in bf.modules() if isinstance(m, PackedLinear)]
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert not packed
        return
    assert len(packed) == 7 * model.config.num_hidden_layers + 1  # q k v o gate up down, head
    assert bf.lm_head.weight is bf.model.embed_tokens.weight  # still tied
    with torch.inference_mode():
        got = bf(ids).float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    rows: list[list] = [[] for _ in PROMPTS]
    threads = [_collect(eng.events(p, 6, NO_STOP), r) for p, r in zip(PROMPTS, rows, strict=True)]
    for t in threads:
        t.join(30)
    assert all(r[-1] == ("done", "length", 6) for r in rows)
