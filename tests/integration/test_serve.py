"""The OpenAI-compatible server, driven over real HTTP (uvicorn on a free 127.0.0.1 port) with
httpx and the `openai` client, on the smoke checkpoint (see tests/unit/test_hf_export.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from minillm_cli import serve, serve_engine  # noqa: E402
from minillm_cli.serve import load_engine  # noqa: E402
from minillm_cli.serve_app import ServeConfig, create_app  # noqa: E402
from minillm_cli.serve_engine import Engine  # noqa: E402
from minillm_core.inference import SamplingParams, complete  # noqa: E402
from minillm_core.tokenizer import Tokenizer  # noqa: E402
from minillm_core.train.checkpointer import load_checkpoint  # noqa: E402
from tests.unit.test_hf_export import Smoke, smoke_artifacts  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    return smoke_artifacts(tmp_path_factory)


@contextmanager
def running(app) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def engine(smoke: Smoke) -> Engine:
    # The varied checkpoint: its greedy answers change from token to token.
    return load_engine(
        smoke.varied, smoke.tokenizer_dir, ServeConfig(device="cpu", max_context=128)
    )


@pytest.fixture(scope="module")
def url(engine: Engine) -> Iterator[str]:
    with running(create_app(engine, ServeConfig(max_concurrency=2, max_body_bytes=4096))) as u:
        yield u


def sse_events(response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def native_greedy(smoke: Smoke, messages, n: int) -> tuple[str, list[int], str]:
    model, _ = load_checkpoint(smoke.varied)
    stops = [smoke.tok.encode_special("<|assistant_end|>"), smoke.tok.bos_token_id]
    ids = complete(
        model, smoke.tok.render_for_completion(messages), n, SamplingParams(stop_ids=tuple(stops))
    )
    finish = "stop" if ids and ids[-1] in stops else "length"
    text_ids = ids[:-1] if finish == "stop" else ids
    return smoke.tok.decode(text_ids), ids, finish


MESSAGES = [
    {"role": "system", "content": "你是一个助手。"},
    {"role": "user", "content": "你好，介绍一下你自己"},
]


# ------------------------------------------------------------------------------------- answers


def test_models(url: str):
    r = httpx.get(f"{url}/v1/models")
    assert r.status_code == 200
    data = r.json()["data"]
    assert [m["id"] for m in data] == ["minillm"] and data[0]["object"] == "model"
    assert httpx.get(f"{url}/v1/models/minillm").json()["id"] == "minillm"
    r = httpx.get(f"{url}/v1/models/gpt-4")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_non_streaming_greedy_is_the_models_generation(smoke: Smoke, url: str):
    r = httpx.post(
        f"{url}/v1/chat/completions",
        timeout=60,
        json={"model": "minillm", "messages": MESSAGES, "max_tokens": 12, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    text, ids, finish = native_greedy(smoke, MESSAGES, 12)
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert choice["message"] == {"role": "assistant", "content": text}
    assert choice["finish_reason"] == finish
    prompt = len(smoke.tok.render_for_completion(MESSAGES))
    assert body["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": len(ids),
        "total_tokens": prompt + len(ids),
    }


def test_streaming_gives_the_same_text_in_chunks(smoke: Smoke, url: str):
    req = {
        "model": "minillm",
        "messages": MESSAGES,
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=req, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    text, ids, finish = native_greedy(smoke, MESSAGES, 12)
    assert "".join(content) == text
    assert sum(1 for piece in content if piece) > 1  # streamed, not sent in one piece
    assert chunks[-2]["choices"][0]["finish_reason"] == finish
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(ids)


def test_seeded_sampling_repeats(url: str):
    req = {
        "model": "minillm",
        "messages": MESSAGES,
        "max_tokens": 10,
        "temperature": 1.0,
        "seed": 7,
    }
    a = httpx.post(f"{url}/v1/chat/completions", json=req, timeout=60).json()
    b = httpx.post(f"{url}/v1/chat/completions", json=req, timeout=60).json()
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    for seed in (2**64 - 1, -(2**63)):  # the ends of the range the generator takes
        r = httpx.post(f"{url}/v1/chat/completions", json={**req, "seed": seed}, timeout=60)
        assert r.status_code == 200, r.text


def test_top_p_is_nucleus_sampling(smoke: Smoke, url: str):
    """top_p < 1 is accepted (UIs and LangChain send 0.9), seeded, and a tiny top_p keeps only
    the likeliest token: the greedy answer, whatever the temperature."""
    req = {
        "model": "minillm",
        "messages": MESSAGES,
        "max_tokens": 10,
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 3,
    }
    a = httpx.post(f"{url}/v1/chat/completions", json=req, timeout=60)
    b = httpx.post(f"{url}/v1/chat/completions", json=req, timeout=60)
    assert a.status_code == 200, a.text
    assert a.json()["choices"][0]["message"] == b.json()["choices"][0]["message"]
    nucleus = httpx.post(
        f"{url}/v1/chat/completions", timeout=60, json={**req, "top_p": 1e-6, "top_k": 0}
    )
    text, _, _ = native_greedy(smoke, MESSAGES, 10)
    assert nucleus.json()["choices"][0]["message"]["content"] == text


def test_penalties_go_to_the_one_sampler(smoke: Smoke, url: str):
    """Greedy with penalties over HTTP gives what `complete` gives with the same settings (a
    negative presence penalty favours repeats, so the answer differs from plain greedy)."""
    body = {
        "model": "minillm",
        "messages": MESSAGES,
        "max_tokens": 12,
        "temperature": 0,
        "presence_penalty": -2,
        "frequency_penalty": 0.5,
        "repetition_penalty": 1.3,
    }
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    model, _ = load_checkpoint(smoke.varied)
    stops = (smoke.tok.encode_special("<|assistant_end|>"), smoke.tok.bos_token_id)
    params = SamplingParams(
        presence_penalty=-2, frequency_penalty=0.5, repetition_penalty=1.3, stop_ids=stops
    )
    ids = complete(model, smoke.tok.render_for_completion(MESSAGES), 12, params)
    assert isinstance(ids, list)
    want = smoke.tok.decode([i for i in ids if i not in stops])
    assert r.json()["choices"][0]["message"]["content"] == want
    assert want != native_greedy(smoke, MESSAGES, 12)[0]  # the penalties changed the answer


def test_n_choices(smoke: Smoke, url: str):
    greedy = {"model": "minillm", "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "n": 2}
    body = httpx.post(f"{url}/v1/chat/completions", json=greedy, timeout=60).json()
    text, ids, _ = native_greedy(smoke, MESSAGES, 8)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in body["choices"]] == [text, text]
    assert body["usage"]["completion_tokens"] == 2 * len(ids)
    sampled = {**greedy, "temperature": 1.0, "seed": 11, "n": 3}
    a = httpx.post(f"{url}/v1/chat/completions", json=sampled, timeout=60).json()["choices"]
    b = httpx.post(f"{url}/v1/chat/completions", json=sampled, timeout=60).json()["choices"]
    assert a == b and len({c["message"]["content"] for c in a}) > 1  # reproducible, distinct
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", timeout=60, json={**sampled, "stream": True}
    ) as r:
        chunks = [json.loads(e) for e in sse_events(r)[:-1]]
    streamed = [
        "".join(
            c["choices"][0]["delta"].get("content", "")
            for c in chunks
            if c["choices"][0]["index"] == i
        )
        for i in range(3)
    ]
    assert streamed == [c["message"]["content"] for c in a]


def test_openai_client(smoke: Smoke, url: str):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["minillm"]
    text, _, finish = native_greedy(smoke, MESSAGES, 10)
    out = client.chat.completions.create(
        model="minillm", messages=MESSAGES, max_tokens=10, temperature=0
    )
    assert out.choices[0].message.content == text and out.choices[0].finish_reason == finish
    stream = client.chat.completions.create(
        model="minillm", messages=MESSAGES, max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(model="minillm", messages=MESSAGES, max_tokens=10_000)


# ------------------------------------------------------------------------------------ rejections


def _post(url: str, body, **kw) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30, **kw)
    return httpx.post(
        f"{url}/v1/chat/completions",
        content=body,
        timeout=30,
        headers={"content-type": "application/json"},
        **kw,
    )


OK = {"model": "minillm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b'{"model": "minillm", "messages": [', 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        ([1, 2], 400, "JSON object"),
        ({"model": "minillm"}, 400, "messages"),
        ({**OK, "messages": []}, 400, "messages"),
        ({**OK, "messages": [{"role": "user", "content": 5}]}, 400, "messages"),
        ({**OK, "messages": [{"role": "wizard", "content": "x"}]}, 400, "unknown role"),
        ({**OK, "messages": [{"role": "system", "content": "x"}]}, 400, "followed by a user"),
        ({**OK, "max_tokens": 0}, 400, "max_tokens"),
        ({**OK, "max_tokens": "many"}, 400, "max_tokens"),
        ({**OK, "temperature": 3}, 400, "temperature"),
        ({**OK, "top_p": 0}, 400, "top_p"),
        ({**OK, "seed": 2**70}, 400, "seed"),
        ({**OK, "seed": -(2**63) - 1}, 400, "seed"),
        ({**OK, "top_p": 1.5}, 400, "top_p"),
        ({**OK, "n": 0}, 400, "n"),
        ({**OK, "n": 9}, 400, "n"),
        ({**OK, "presence_penalty": 2.5}, 400, "presence_penalty"),
        ({**OK, "repetition_penalty": 0}, 400, "repetition_penalty"),
        ({**OK, "top_logprobs": 2}, 400, "top_logprobs needs logprobs"),
        ({**OK, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
        ({**OK, "tool_choice": "required"}, 400, "does not parse tool calls"),
        ({**OK, "response_format": {"type": "json_object"}}, 400, "response_format"),
        ({**OK, "logit_bias": {"1": 5}}, 400, "logit_bias"),
        (
            {
                **OK,
                "messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}],
            },
            400,
            "tool_call_id",
        ),
        ({**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        (
            {
                **OK,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "这是什么？"},
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,AAAA"},
                            },
                        ],
                    }
                ],
            },
            400,
            "reads text only",
        ),
        ({**OK, "model": "gpt-4o"}, 404, "does not exist"),
        ({**OK, "max_tokens": 10_000}, 400, "maximum context length is 128"),
        (
            {**OK, "messages": [{"role": "user", "content": "长" * 300}]},
            400,
            "maximum context length",
        ),
        ({**OK, "messages": [{"role": "user", "content": "x" * 5000}]}, 413, "exceeds 4096"),
    ],
)
def test_malformed_requests_are_refused(url: str, body, status, needle):
    r = _post(url, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]


def test_defaults_and_openai_spellings_are_accepted(url: str):
    body = {
        **OK,
        "messages": [
            {"role": "developer", "content": "简短回答"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "me"},
        ],
        "n": 1,
        "top_p": 1,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "logprobs": False,
        "max_completion_tokens": 3,
        "user": "u1",
        "stop": "。",
    }
    r = _post(url, body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 3


def test_nulls_mean_not_given(url: str):
    """Optional fields sent as null, as clients and the SDK's own dumps send them."""
    body = {
        **OK,
        "n": None,
        "tools": None,
        "tool_choice": None,
        "response_format": None,
        "logit_bias": None,
        "stop": None,
        "stream": None,
        "stream_options": None,
        "temperature": None,
        "top_p": None,
        "seed": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "logprobs": None,
        "top_logprobs": None,
        "user": None,
        "max_tokens": None,
        "max_completion_tokens": 2,
    }
    r = _post(url, body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2
    assert _post(url, {**OK, "tools": [{"type": "function"}]}).status_code == 400  # not null


def test_unknown_fields_are_ignored_and_logged_once(url: str, caplog):
    """Fields of newer API versions or other servers: ignored (OpenAI accepts what its SDKs send),
    each name logged once so a typo shows in the log."""
    caplog.set_level("WARNING", logger="minillm.serve")
    body = {**OK, "frobnicate": True, "service_tier": "auto", "store": False}
    body["messages"] = [{"role": "user", "content": "hi", "annotations": []}]
    assert _post(url, body).status_code == 200
    assert _post(url, body).status_code == 200
    logged = [r.getMessage() for r in caplog.records if r.name == "minillm.serve"]
    for name in ("frobnicate", "service_tier", "store", "messages[].annotations"):
        assert sum(repr(name) in m for m in logged) == 1, (name, logged)


def test_sdk_dumped_messages_are_accepted(url: str):
    openai = pytest.importorskip("openai")
    from openai.types.chat import ChatCompletionMessage

    dumped = ChatCompletionMessage(role="assistant", content="你好！").model_dump()
    assert {"refusal", "audio", "function_call", "tool_calls"} <= dumped.keys()
    messages = [{"role": "user", "content": "hi"}, dumped, {"role": "user", "content": "再见"}]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    out = client.chat.completions.create(
        model="minillm", messages=messages, max_tokens=2, temperature=0
    )
    assert out.choices[0].message.role == "assistant"
    again = out.choices[0].message.model_dump()  # the SDK's own answer, sent back as history
    r = _post(url, {**OK, "messages": [*messages, again, {"role": "user", "content": "x"}]})
    assert r.status_code == 200, r.text


def test_context_errors_name_the_openai_code(url: str):
    r = _post(url, {**OK, "max_tokens": 10_000})
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "max_tokens"


def test_unknown_route_and_method(url: str):
    assert httpx.get(f"{url}/v1/nothing").status_code == 404
    assert httpx.get(f"{url}/v1/chat/completions").status_code == 405
    assert httpx.get(f"{url}/v1/completions").status_code == 405


def test_api_key(engine: Engine):
    with running(create_app(engine, ServeConfig(api_key="s3cret"))) as u:
        assert httpx.get(f"{u}/v1/models").status_code == 401
        assert (
            httpx.get(f"{u}/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        )
        assert (
            httpx.get(f"{u}/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code
            == 200
        )
        assert httpx.get(f"{u}/health").status_code == 200


# ---------------------------------------------------------------------------------- concurrency


class Wrapped(torch.nn.Module):
    """A model seen through `step`, called before each of its forward passes (one per token)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def new_cache(self, batch: int, max_len: int):
        return self.inner.new_cache(batch, max_len)

    def step(self, cache) -> None:
        pass

    def forward(self, ids, cache=None):
        self.step(cache)
        return self.inner(ids, cache)


class Held(Wrapped):
    """Wraps a model; every generation waits for `release` before its first token."""

    def __init__(self, model):
        super().__init__(model)
        self.release = threading.Event()

    def step(self, cache) -> None:
        assert self.release.wait(30)


def _health(u: str) -> dict:
    return httpx.get(f"{u}/health").json()


def _wait(pred, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_concurrency_is_bounded_and_slots_come_back(smoke: Smoke, engine: Engine):
    held = Held(engine.model)
    eng = Engine(held, engine.tokenizer, max_context=engine.max_context)
    with running(create_app(eng, ServeConfig(max_concurrency=1, max_queue=1))) as u:
        results: dict[str, httpx.Response] = {}
        threads = [
            threading.Thread(target=lambda k=k: results.__setitem__(k, _post(u, OK)))
            for k in ("a", "b")
        ]
        for t in threads:
            t.start()
        _wait(
            lambda: _health(u)["running"] == 1 and _health(u)["waiting"] == 1,
            "one request running, one waiting",
        )
        r = _post(u, OK)  # a third has no room
        assert r.status_code == 429 and r.json()["error"]["code"] == "server_busy"
        assert httpx.get(f"{u}/v1/models").status_code == 200  # the loop still answers
        held.release.set()
        for t in threads:
            t.join(30)
        assert [results[k].status_code for k in ("a", "b")] == [200, 200]
        assert _health(u)["running"] == 0 and _post(u, OK).status_code == 200


class Slow(Wrapped):
    """Wraps a model; each token takes `delay` seconds. Counts the tokens it produced."""

    def __init__(self, model, delay: float):
        super().__init__(model)
        self.delay, self.produced = delay, 0

    def step(self, cache) -> None:
        time.sleep(self.delay)
        self.produced += 1


def test_a_client_leaving_mid_stream_stops_generation_and_frees_its_slot(engine: Engine):
    slow = Slow(engine.model, 0.05)  # 100 tokens would take 5 s
    eng = Engine(slow, engine.tokenizer, max_context=engine.max_context)
    with running(create_app(eng, ServeConfig(max_concurrency=1, max_queue=0))) as u:
        # Greedy on the varied model, this prompt runs the full 100 tokens without an end token.
        req = {**OK, "max_tokens": 100, "temperature": 0, "stream": True}
        t0 = time.monotonic()
        with httpx.stream("POST", f"{u}/v1/chat/completions", json=req, timeout=30) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            while '"content": ""' in next(lines) or not slow.produced:
                pass  # wait for a first token; then hang up
        _wait(lambda: _health(u)["running"] == 0, "the slot was not released")
        assert time.monotonic() - t0 < 3.0
        assert slow.produced < 40, slow.produced  # generation stopped soon after the hang-up
        assert _post(u, OK).status_code == 200


def test_a_client_leaving_a_non_streaming_request_stops_generation(engine: Engine):
    slow = Slow(engine.model, 0.05)  # 100 tokens would take 5 s
    eng = Engine(slow, engine.tokenizer, max_context=engine.max_context)
    with running(create_app(eng, ServeConfig(max_concurrency=1, max_queue=0))) as u:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
            httpx.post(
                f"{u}/v1/chat/completions",
                timeout=0.5,
                json={**OK, "max_tokens": 100, "temperature": 0},
            )
        _wait(lambda: _health(u)["running"] == 0, "the slot was not released")
        assert time.monotonic() - t0 < 3.0
        assert slow.produced < 40, slow.produced  # generation stopped soon after the hang-up
        assert _post(u, OK).status_code == 200


class Broken(Wrapped):
    """Wraps a model; fails after its first token (a device error in the middle of an answer)."""

    def step(self, cache) -> None:
        if cache.length > 0:  # past the prompt: the first token is out
            raise RuntimeError("device lost")


def test_a_failing_generation_is_a_500_and_frees_its_slot(engine: Engine):
    eng = Engine(Broken(engine.model), engine.tokenizer, max_context=engine.max_context)
    with running(create_app(eng, ServeConfig(max_concurrency=1, max_queue=0))) as u:
        r = _post(u, {**OK, "max_tokens": 8})
        assert r.status_code == 500 and "device lost" in r.json()["error"]["message"]
        with httpx.stream(
            "POST",
            f"{u}/v1/chat/completions",
            timeout=30,
            json={**OK, "max_tokens": 8, "stream": True},
        ) as r:
            events = sse_events(r)
        assert r.status_code == 200  # the headers had gone out: the error comes in-band
        assert "device lost" in json.loads(events[-1])["error"]["message"]
        assert "[DONE]" not in events
        _wait(lambda: _health(u)["running"] == 0, "the slot was not released")


# ---------------------------------------------------------------------- text release and stops


class Script(torch.nn.Module):
    """A model whose greedy output is fixed tokens after a one-token prompt (then the end token)."""

    def __init__(self, tok: Tokenizer, reply: bytes, max_position_embeddings: int = 512):
        super().__init__()
        self.tokens = list(reply) + [tok.encode_special("<|assistant_end|>")]
        self.vocab = tok.get_vocab_size()
        self.config = type("C", (), {"max_position_embeddings": max_position_embeddings})()

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[0, -1, self.tokens[ids.shape[1] - 1]] = 10.0
        return logits


def _byte_engine(reply: str) -> Engine:
    tok = Tokenizer({bytes([b]): b for b in range(256)})
    return Engine(Script(tok, reply.encode("utf-8")), tok, max_context=512)


def _run(eng: Engine, n: int = 100, stops=()) -> tuple[list[str], str, int]:
    events = list(eng.events([0], n, SamplingParams(), stops=stops))
    return [e[1] for e in events[:-1]], events[-1][1], events[-1][2]


def test_pieces_are_whole_characters():
    pieces, finish, n = _run(_byte_engine("a你b"))
    assert pieces == ["a", "你", "b"] and finish == "stop" and n == 6
    pieces, finish, n = _run(_byte_engine("a你b"), n=3)  # cut inside 你: the bytes still come out
    assert "".join(pieces) == "a\ufffd" and finish == "length" and n == 3


def test_control_tokens_never_reach_the_content():
    tok = Tokenizer({bytes([b]): b for b in range(256)})
    start, end = tok.encode_special("<|python_start|>"), tok.encode_special("<|python_end|>")
    script = Script(tok, b"")
    script.tokens = [*b"a", start, *b"b", end, *b"c", tok.encode_special("<|assistant_end|>")]
    pieces, finish, n = _run(Engine(script, tok, max_context=512))
    assert "".join(pieces) == "abc" and finish == "stop" and n == 6  # counted, not shown


def test_engine_logprobs_contract():
    """With logprobs=k, each generated token but the end token is announced before its text:
    its id, its log-softmax under the raw logits, and the top k."""
    eng = _byte_engine("中a")  # 3 bytes of one character, then "a", then the end token
    plain = list(eng.events([0], 100, SamplingParams(temperature=2.0, top_k=1)))
    assert not any(e[0] == "token" for e in plain)
    events = list(eng.events([0], 100, SamplingParams(temperature=2.0, top_k=1), logprobs=2))
    kinds = [e[0] for e in events]
    assert kinds == ["token", "token", "token", "text", "token", "text", "done"]
    assert [e[1] for e in events if e[0] == "text"] == ["中", "a"]
    infos = [e[1] for e in events if e[0] == "token"]
    assert [i["id"] for i in infos] == list("中a".encode())
    # Script's logits: 10 for the scripted token, 0 for the other 255 + specials.
    vocab = eng.tokenizer.get_vocab_size()
    want = float(torch.log_softmax(torch.tensor([10.0] + [0.0] * (vocab - 1)), 0)[0])
    for i in infos:
        assert i["logprob"] == pytest.approx(want, abs=1e-5)  # raw: temperature not applied
        assert len(i["top"]) == 2 and i["top"][0] == (i["id"], pytest.approx(want, abs=1e-5))
    assert all(i["top"] == [] for i in _tokens(eng, logprobs=0))
    assert events[-1] == plain[-1] == ("done", "stop", 5)


def _tokens(eng: Engine, logprobs: int) -> list[dict]:
    return [
        e[1] for e in eng.events([0], 100, SamplingParams(), logprobs=logprobs) if e[0] == "token"
    ]


class GatedScript(Script):
    """A Script whose decode loop waits at its second step until `gate` is set: a generation is
    certainly still running while the test looks at it, however the threads are scheduled."""

    def __init__(self, tok: Tokenizer, reply: bytes):
        super().__init__(tok, reply)
        self.gate = threading.Event()

    def forward(self, ids):
        if ids.shape[1] > 1:
            assert self.gate.wait(20), "the test never opened the gate"
        return super().forward(ids)


def test_engine_stats_count_running_generations():
    tok = Tokenizer({bytes([b]): b for b in range(256)})
    model = GatedScript(tok, b"ab")
    eng = Engine(model, tok, max_context=512)
    it = eng.events([0], 100, SamplingParams())
    assert eng.stats() == {"running": 0, "waiting": 0}
    next(it)
    assert eng.stats() == {"running": 1, "waiting": 0}
    it.close()
    model.gate.set()
    # The decode loop drops a closed row at its next step.
    deadline = time.monotonic() + 20
    while eng.stats() != {"running": 0, "waiting": 0}:
        assert time.monotonic() < deadline, eng.stats()
        time.sleep(0.005)


def test_stop_strings_cut_the_answer_and_are_never_sent():
    pieces, finish, _ = _run(_byte_engine("hello world, bye"), stops=["o w"])
    assert "".join(pieces) == "hell" and finish == "stop"
    # A prefix of a stop string is held back until it is clearly not one.
    pieces, finish, _ = _run(_byte_engine("ab ac ad"), stops=["a d", "ad"])
    assert "".join(pieces) == "ab ac " and finish == "stop"
    pieces, finish, _ = _run(_byte_engine("xyz"), stops=["zz"])
    assert "".join(pieces) == "xyz" and finish == "stop"  # ended by the end token


def test_release_rule():
    assert serve_engine._release("abc", ["cd"], final=False) == ("ab", "c", False)
    assert serve_engine._release("abc", ["cd"], final=True) == ("abc", "", False)
    assert serve_engine._release("xcdy", ["cd", "y"], final=False) == ("x", "", True)
    assert serve_engine._release("abc", [], final=False) == ("abc", "", False)


# -------------------------------------------------------------------------------------- command


def test_serve_command_end_to_end(smoke: Smoke):
    """`scripts/serve.py` (= `minillm serve`) in its own process, asked over HTTP, then stopped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "scripts" / "serve.py"),
            "--checkpoint",
            str(smoke.checkpoint),
            "--tokenizer",
            str(smoke.tokenizer_dir),
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, proc.stdout.read()
            try:
                return httpx.get(f"{url}/health").status_code == 200
            except httpx.TransportError:
                return False

        _wait(up, "the server did not come up", timeout=60)
        r = _post(url, {**OK, "temperature": 0})
        assert r.status_code == 200 and r.json()["model"] == "minillm"
    finally:
        proc.terminate()
        proc.wait(15)


def test_port_0_prints_the_port_it_bound(smoke: Smoke):
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "scripts" / "serve.py"),
            "--checkpoint",
            str(smoke.checkpoint),
            "--tokenizer",
            str(smoke.tokenizer_dir),
            "--port",
            "0",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        for line in proc.stdout:
            if line.startswith("minillm serve: model"):
                break
        else:
            pytest.fail(f"no start line; exit code {proc.wait()}")
        url = line.split()[-1]
        assert url.startswith("http://127.0.0.1:") and not url.startswith("http://127.0.0.1:0/")
        base = url.removesuffix("/v1")

        def up() -> bool:
            try:
                return httpx.get(f"{base}/health").status_code == 200
            except httpx.TransportError:
                return False

        _wait(up, "the server did not come up on the printed port", timeout=60)
        assert httpx.get(f"{url}/models").json()["data"][0]["id"] == "minillm"
    finally:
        proc.terminate()
        proc.wait(15)


def test_command_refuses_a_missing_checkpoint(tmp_path: Path, capsys):
    assert serve.main(["--checkpoint", str(tmp_path / "nope"), "--tokenizer", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
