"""Batched decoding through the real server: concurrent HTTP requests (streaming and not) share
forwards and each gets the answer it would get alone."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from minillm_cli.serve import ServeConfig, create_app  # noqa: E402
from minillm_cli.serve_engine import Engine  # noqa: E402
from tests.integration.test_serve import running  # noqa: E402
from tests.unit.test_serve_batching import TOK, _model  # noqa: E402

pytestmark = pytest.mark.integration

QUESTIONS = ["hi", "tell me a story", "2+2?", "a longer question about the weather today"]


class Meeting(torch.nn.Module):
    """Wraps a model; the first forward waits until `expected` rows are in the engine, so the
    requests are sure to overlap. Records the rows of every forward."""

    def __init__(self, inner, expected: int):
        super().__init__()
        self.inner, self.config, self.expected = inner, inner.config, expected
        self.engine: Engine | None = None
        self.rows: list[int] = []

    def new_cache(self, batch: int, max_len: int):
        return self.inner.new_cache(batch, max_len)

    def forward(self, ids, cache=None):
        if not self.rows and self.engine is not None:
            deadline = time.monotonic() + 30
            while sum(self.engine.stats().values()) < self.expected:
                assert time.monotonic() < deadline, "the requests did not all arrive"
                time.sleep(0.01)
        self.rows.append(ids.shape[0])
        return self.inner(ids, cache)


def _body(q: str, stream: bool) -> dict:
    return {
        "model": "minillm",
        "messages": [{"role": "user", "content": q}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": stream,
    }


def _answer(url: str, q: str, stream: bool) -> str:
    if not stream:
        r = httpx.post(f"{url}/v1/chat/completions", json=_body(q, False), timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]
    text = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=_body(q, True), timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                text.append(delta.get("content") or "")
    return "".join(text)


def test_concurrent_requests_share_forwards_and_get_their_own_answers():
    model = _model()
    alone = Engine(model, TOK, max_context=128)
    with running(create_app(alone, ServeConfig())) as url:
        want = [_answer(url, q, stream=False) for q in QUESTIONS]
    assert len(set(want)) > 1  # the answers differ: a mix-up would show

    meeting = Meeting(model, expected=len(QUESTIONS))
    eng = Engine(meeting, TOK, max_context=128)
    meeting.engine = eng
    got: dict[int, str] = {}
    with running(create_app(eng, ServeConfig(max_concurrency=4))) as url:
        threads = [
            threading.Thread(
                target=lambda k=k: got.__setitem__(k, _answer(url, QUESTIONS[k], k % 2 == 0))
            )
            for k in range(len(QUESTIONS))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert [got[k] for k in range(len(QUESTIONS))] == want
    assert max(meeting.rows) == len(QUESTIONS)  # all four rows in one forward
