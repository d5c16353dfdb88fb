"""The server as real clients use it: the `openai` Python SDK and LangChain's `ChatOpenAI`, against
uvicorn on a free loopback port (port 0), serving the smoke checkpoint (tests/test_hf_export.py).
Answers are compared with the native model's own greedy generation and logits."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.integration

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from minillm_cli.serve import load_engine  # noqa: E402
from minillm_cli.serve_app import ServeConfig, create_app  # noqa: E402
from minillm_cli.serve_engine import Engine  # noqa: E402
from minillm_core.inference import SamplingParams, complete  # noqa: E402
from minillm_core.train.checkpointer import load_checkpoint  # noqa: E402
from tests.integration.test_serve import MESSAGES, Slow, _wait, running  # noqa: E402
from tests.unit.test_hf_export import TOOL_CONVERSATION, TOOLS, Smoke, smoke_artifacts  # noqa: E402

MODEL = "minillm"


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    return smoke_artifacts(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(smoke: Smoke) -> Engine:
    # The varied checkpoint (its greedy answers change from token to token), at its whole
    # context: the tool conversation's prompt is a few hundred tokens.
    return load_engine(smoke.varied, smoke.tokenizer_dir, ServeConfig(device="cpu"))


@pytest.fixture(scope="module")
def url(engine: Engine):
    with running(create_app(engine, ServeConfig(max_concurrency=2))) as u:
        yield u


@pytest.fixture
def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def _native(smoke: Smoke, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy ids of the varied checkpoint after `prompt` (end token included when produced),
    and the log-softmax each of them was chosen from."""
    model, _ = load_checkpoint(smoke.varied)
    model.eval()
    stops = (smoke.tok.encode_special("<|assistant_end|>"), smoke.tok.bos_token_id)
    ids = complete(model, prompt, n, SamplingParams(stop_ids=stops))
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + ids]))[0, len(prompt) - 1 :].float()
    return ids, list(torch.log_softmax(logits, dim=-1))


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, parsed with prometheus_client's own parser."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# ------------------------------------------------------------------------------ chat completions


def test_chat_logprobs_are_the_models(smoke: Smoke, client):
    prompt = smoke.tok.render_for_completion(MESSAGES)
    ids, lps = _native(smoke, prompt, 8)
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    content = out.choices[0].logprobs.content
    stop = smoke.tok.encode_special("<|assistant_end|>")
    generated = [t for t in ids if t != stop]
    assert len(content) == len(generated)
    for k, (entry, tok) in enumerate(zip(content, generated)):
        assert bytes(entry.bytes) == smoke.tok.token_bytes(tok)
        assert entry.logprob == pytest.approx(float(lps[k][tok]), abs=1e-4)
        top = torch.topk(lps[k], 3)
        assert [bytes(t.bytes) for t in entry.top_logprobs] == [
            smoke.tok.token_bytes(i) for i in top.indices.tolist()
        ]
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)  # greedy
    # Streamed: the same entries, spread over the chunks.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    streamed = [
        e
        for c in stream
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]
    # Without logprobs, none are sent.
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_chat_sampling_choices_and_budget(client):
    kw = {"model": MODEL, "messages": MESSAGES, "max_tokens": 6}
    a = client.chat.completions.create(**kw, top_p=0.9, temperature=1.0, seed=7, n=2)
    b = client.chat.completions.create(**kw, top_p=0.9, temperature=1.0, seed=7, n=2)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    # max_completion_tokens is the newer name of max_tokens and wins over it.
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=20, max_completion_tokens=1, temperature=0
    )
    assert out.usage.completion_tokens == 1


def test_nulls_sdk_dumps_and_tool_history(smoke: Smoke, client):
    history = json.loads(json.dumps(TOOL_CONVERSATION))  # as an application would keep it
    history.append({"role": "user", "content": "上海呢？"})
    out = client.chat.completions.create(
        model=MODEL,
        messages=history,
        tools=TOOLS,
        tool_choice="auto",
        max_tokens=3,
        temperature=0,
        n=None,
        stop=None,
        presence_penalty=None,
        frequency_penalty=None,
        top_p=None,
        seed=None,
        user=None,
    )
    # The prompt is our renderer's (tools block, calls, results), as the exported template's.
    want = smoke.tok.render_for_completion({"messages": history, "tools": TOOLS})
    assert out.usage.prompt_tokens == len(want)
    # The SDK's own answer object, dumped, goes back as history (nulls for refusal, audio, ...).
    history += [out.choices[0].message.model_dump(), {"role": "user", "content": "谢谢"}]
    again = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=2)
    assert again.choices[0].message.role == "assistant"


def test_bad_requests_raise_the_sdks_errors(client):
    with pytest.raises(openai.BadRequestError, match="seed"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=2**70)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model=MODEL, prompt="你好", echo=True)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="你好")


# ----------------------------------------------------------------------------------- completions


def test_completions_are_the_models_continuation(smoke: Smoke, client):
    prompt = [smoke.tok.bos_token_id, *smoke.tok.encode("北京是")]
    ids, lps = _native(smoke, prompt, 8)
    out = client.completions.create(
        model=MODEL, prompt="北京是", max_tokens=8, temperature=0, logprobs=2
    )
    choice = out.choices[0]
    specials = set(smoke.tok.special_tokens.values())
    stops = (smoke.tok.encode_special("<|assistant_end|>"), smoke.tok.bos_token_id)
    generated = [t for t in ids if t not in stops]  # the tokens logprobs are reported for
    text = smoke.tok.decode([t for t in generated if t not in specials])  # no control tokens
    assert out.object == "text_completion" and choice.text == text
    assert out.usage.prompt_tokens == len(prompt) and out.usage.completion_tokens == len(ids)
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == len(generated)
    for k, tok in enumerate(generated):
        assert lp.token_logprobs[k] == pytest.approx(float(lps[k][tok]), abs=1e-4)
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    streamed = client.completions.create(
        model=MODEL, prompt="北京是", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text
    # Several prompts, n each: OpenAI's order, choice index = prompt * n + j.
    many = client.completions.create(
        model=MODEL, prompt=["北京是", "你好"], n=2, max_tokens=3, temperature=0
    )
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text == choice.text[: len(many.choices[0].text)]


TEXT = {"model": MODEL, "prompt": "你好", "max_tokens": 2}


@pytest.mark.parametrize(
    "body, needle",
    [
        ({**TEXT, "prompt": [1, 2, 3]}, "prompt"),
        ({**TEXT, "prompt": []}, "1 to 16 prompts"),
        ({**TEXT, "prompt": ["a"] * 17}, "1 to 16 prompts"),
        ({**TEXT, "logprobs": 21}, "logprobs"),
        ({**TEXT, "logprobs": True, "echo": True}, "echo"),
        ({**TEXT, "suffix": "。"}, "suffix"),
        ({**TEXT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**TEXT, "max_tokens": 10**6}, "maximum context length"),
        ({**TEXT, "n": 9}, "n"),
        ({**TEXT, "seed": 2**64}, "seed"),
        ({"model": MODEL}, "prompt"),
    ],
)
def test_completions_refusals_are_400s(url: str, body, needle):
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_completions_take_nulls_and_an_empty_prompt(url: str):
    nulls = dict.fromkeys(["n", "stop", "seed", "logprobs", "echo", "suffix", "top_p", "user"])
    r = httpx.post(f"{url}/v1/completions", json={**TEXT, **nulls, "max_tokens": None}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 16  # OpenAI's default max_tokens
    r = httpx.post(f"{url}/v1/completions", json={**TEXT, "prompt": ""}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 1  # <|bos|> alone


# --------------------------------------------------------------------- cancellation and metrics


def test_a_client_leaving_is_counted_and_frees_the_slot(engine: Engine):
    slow = Slow(engine.model, 0.05)  # 100 tokens would take 5 s
    eng = Engine(slow, engine.tokenizer, max_context=engine.max_context)
    with running(create_app(eng, ServeConfig(max_concurrency=1, max_queue=0))) as u:
        client = openai.OpenAI(base_url=f"{u}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=100, temperature=0, stream=True
        )
        for _ in stream:
            if slow.produced:
                break  # a first token is out: hang up
        stream.close()
        _wait(lambda: _metrics(u)[("minillm_cancelled_requests_total", ())] == 1, "not counted")
        _wait(lambda: httpx.get(f"{u}/health").json()["running"] == 0, "slot not released")
        assert slow.produced < 40  # generation stopped soon after the hang-up
        # The slot is free: the next request runs (max_queue 0 would refuse it otherwise).
        out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
        assert out.choices[0].finish_reason in ("stop", "length")


def test_metrics_in_prometheus_text_format(smoke: Smoke, engine: Engine):
    with running(create_app(engine, ServeConfig())) as u:
        client = openai.OpenAI(base_url=f"{u}/v1", api_key="unused", max_retries=0)
        out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        client.completions.create(model=MODEL, prompt="你好", max_tokens=2)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=-(2**64))
        assert httpx.get(f"{u}/health").json() == {
            "status": "ok",
            "model": MODEL,
            "running": 0,
            "waiting": 0,
        }
        r = httpx.get(f"{u}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        m = _metrics(u)

    def requests(endpoint: str, status: str) -> float:
        key = ("minillm_requests_total", (("endpoint", endpoint), ("status", status)))
        return m.get(key, 0)

    assert requests("/v1/chat/completions", "200") == 1
    assert requests("/v1/chat/completions", "400") == 1
    assert requests("/v1/completions", "200") == 1
    assert requests("/health", "200") == 1
    prompt = len(smoke.tok.render_for_completion(MESSAGES)) + 1 + len(smoke.tok.encode("你好"))
    assert m[("minillm_prompt_tokens_total", ())] == prompt
    completion = out.usage.completion_tokens + 2
    assert m[("minillm_completion_tokens_total", ())] <= completion
    assert m[("minillm_time_to_first_token_seconds_count", ())] == 2
    assert m[("minillm_queue_requests", (("state", "running"),))] == 0
    assert m[("minillm_queue_requests", (("state", "waiting"),))] == 0
    assert m[("minillm_cancelled_requests_total", ())] == 0


def test_metrics_registries_are_per_app(engine: Engine):
    a, b = create_app(engine), create_app(engine)
    assert a.state.metrics.registry is not b.state.metrics.registry


# -------------------------------------------------------------------------------------- LangChain


def test_langchain_chat_openai_with_its_defaults(url: str):
    lc = pytest.importorskip("langchain_openai")
    llm = lc.ChatOpenAI(model=MODEL, base_url=f"{url}/v1", api_key="unused", max_retries=0)
    answer = llm.invoke("你好")
    assert isinstance(answer.content, str) and answer.response_metadata["finish_reason"]
    pieces = list(llm.stream([("system", "简短回答"), ("human", "介绍一下北京")]))
    assert pieces and all(isinstance(p.content, str) for p in pieces)
