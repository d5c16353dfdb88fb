"""Readers: container detection, streaming parsers and record schemas, on real-format samples."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm_core.data import formats as schemas
from minillm_core.data import readers
from minillm_core.data.readers import MixError, NotApplicable, RecordError, Sniff

DATASET = Path(__file__).resolve().parents[2] / "dataset"

# Every shipped sample: (container detected from content, record formats found in it).
SAMPLES = {
    "general_belle_sample.json": ("jsonl", {"alpaca"}),  # Belle: JSON Lines behind .json
    "general_belle_multiturn_sample.json": ("jsonl", {"belle_multiturn"}),
    "general_alpaca_sample.json": ("json_array", {"alpaca"}),  # Alpaca: one pretty array
    "general_sharegpt_sample.jsonl": ("jsonl", {"sharegpt"}),
    "general_messages_sample.jsonl": ("jsonl", {"messages"}),
    "general_openai_messages_sample.jsonl": ("jsonl", {"messages"}),
    "general_firefly_sample.jsonl": ("jsonl", {"firefly"}),
    "general_pretrain_text_sample.jsonl": ("jsonl", {"text"}),
    "knowledge_cmmlu_sample.csv": ("csv", {"mcq"}),
    "knowledge_ceval_sample.jsonl": ("jsonl", {"mcq"}),
    "math_gsm8k_sample.jsonl": ("jsonl", {"math"}),
    "math_word_problems_sample.json": ("json_array", {"math"}),
    "identity_cn_sample.jsonl": ("jsonl", {"messages", "alpaca"}),  # bare arrays + LF rows
    "preference_dpo_messages_sample.jsonl": ("jsonl", {"dpo_messages"}),
    "preference_prompt_pairs_sample.jsonl": ("jsonl", {"dpo_prompt"}),
    "preference_sharegpt_sample.json": ("json_array", {"dpo_conversation"}),
}


def items(path: Path, container: str | None = None) -> list:
    sn = readers.sniff(path, str(path), container)
    return list(readers.iter_items(path, str(path), sn))


def test_every_shipped_sample_is_covered():
    assert {p.name for p in DATASET.iterdir() if p.is_file()} == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_shipped_sample_detected_and_valid(name):
    container, formats = SAMPLES[name]
    path = DATASET / name
    assert readers.sniff(path, name).container == container
    got = items(path)
    assert len(got) >= 3
    seen = set()
    names = {"name": "小白", "author": "测试团队"}
    for line, value in got:
        assert not isinstance(value, RecordError), f"{name}:{line}: {value}"
        value = schemas.fill_placeholders(value, names)
        fmt = schemas.detect_format(value)
        seen.add(fmt)
        out = "dpo" if fmt.startswith("dpo") else "pretrain" if fmt == "text" else "sft"
        fields = schemas.convert(value, fmt, out)
        assert fields and all(fields.values())
    assert seen == formats


def test_json_lines_start_lines_and_csv_multiline_fields():
    rows = items(DATASET / "knowledge_cmmlu_sample.csv")
    # A quoted field holding newlines spans three physical lines; the next row starts after it.
    poem = next((line, v) for line, v in rows if "黄鹂" in v["Question"])
    nxt = rows[rows.index(poem) + 1]
    assert nxt[0] == poem[0] + 3
    comma = next(v for _, v in rows if "1,000" in v["Question"])
    assert comma["Answer"] == "B" and comma["column0"].isdigit()
    assert rows[0][0] == 2  # after the BOM'd header line


def test_json_array_elements_report_their_start_line():
    got = items(DATASET / "math_word_problems_sample.json")
    text = (DATASET / "math_word_problems_sample.json").read_text(encoding="utf-8").splitlines()
    for line, value in got:
        assert text[line - 1].strip() == "{"
        assert value["question"] in "\n".join(text[line - 1 : line + 3])


# ------------------------------------------------------------------------------- containers


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return p


def test_sniff_by_content_not_extension(tmp_path):
    one_line_array = write(tmp_path, "a.jsonl", json.dumps([{"text": "一"}, {"text": "二"}]))
    assert readers.sniff(one_line_array, "a").container == "json_array"
    nanochat = write(
        tmp_path,
        "b.json",
        json.dumps([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}]),
    )
    assert readers.sniff(nanochat, "b").container == "jsonl"
    stream = write(tmp_path, "c.jsonl", '{\n  "text": "一"\n}\n{\n  "text": "二"\n}\n')
    assert readers.sniff(stream, "c").container == "json_stream"
    assert [v["text"] for _, v in items(stream)] == ["一", "二"]
    assert [line for line, _ in items(stream)] == [1, 4]


def test_concatenated_objects_on_one_line(tmp_path):
    p = write(
        tmp_path, "ff.jsonl", '{"input": "甲", "target": "乙"}{"input": "丙", "target": "丁"}\n'
    )
    got = items(p)
    assert [(line, v["input"]) for line, v in got] == [(1, "甲"), (1, "丙")]


def test_bom_and_crlf(tmp_path):
    p = write(
        tmp_path, "x.jsonl", b"\xef\xbb\xbf" + '{"text": "你好"}\r\n{"text": "再见"}\r\n'.encode()
    )
    assert [v for _, v in items(p)] == [{"text": "你好"}, {"text": "再见"}]
    arr = write(tmp_path, "y.json", b"\xef\xbb\xbf[\r\n" + '{"text": "你好"}\r\n]\r\n'.encode())
    assert [v for _, v in items(arr)] == [{"text": "你好"}]


@pytest.mark.parametrize(
    "data,needle",
    [
        (gzip.compress(b'{"text": "x"}\n'), "gzip"),
        (b"PK\x03\x04" + b"\x00" * 40, "zip"),
        (b"PAR1\x00\x00", "Parquet"),
        (b"\x28\xb5\x2f\xfd\x00", "zstd"),
        (b"<!DOCTYPE html>\n<html><body>502 Bad Gateway</body></html>", "HTML"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
            "Git LFS pointer",
        ),
        (
            (
                "\n".join(
                    json.dumps({"text": f"第{i}行中文内容"}, ensure_ascii=False) for i in range(10)
                )
            ).encode("gbk"),
            "GBK",
        ),
        (b'{"text": "a"}\x00\x00\x00', "NUL bytes"),
        (b"just some words without structure\n", "container to 'lines'"),
    ],
)
def test_non_text_sources_are_named(tmp_path, data, needle):
    p = write(tmp_path, "data.jsonl", data)
    with pytest.raises(MixError) as exc:
        readers.sniff(p, "data/chinese/general/data.jsonl")
    assert needle in str(exc.value) and "data/chinese/general/data.jsonl" in str(exc.value)


def test_one_bad_utf8_line_is_not_called_gbk(tmp_path):
    lines = [json.dumps({"text": f"第{i}行"}, ensure_ascii=False).encode() for i in range(20)]
    lines[3] = b'{"text": "\xe4\xb8"}'
    p = write(tmp_path, "x.jsonl", b"\n".join(lines) + b"\n")
    got = items(p)
    assert isinstance(got[3][1], RecordError) and got[3][1].kind == "invalid UTF-8"
    assert got[3][0] == 4 and sum(isinstance(v, RecordError) for _, v in got) == 1


def test_plain_lines_on_request(tmp_path):
    p = write(tmp_path, "t.txt", "第一篇文档。\n\n第二篇文档。\n")
    assert [(line, v["text"]) for line, v in items(p, "lines")] == [
        (1, "第一篇文档。"),
        (3, "第二篇文档。"),
    ]


def test_array_syntax_error_is_fatal_with_line(tmp_path):
    p = write(tmp_path, "a.json", '[\n{"text": "一"},\n{"text": "二" "x"},\n{"text": "三"}\n]\n')
    with pytest.raises(MixError, match=r"a.json:3: invalid JSON"):
        items(p)
    trunc = write(tmp_path, "b.json", '[\n{"text": "一"},\n')
    with pytest.raises(MixError, match="not closed"):
        items(trunc)
    extra = write(tmp_path, "c.json", '[{"text": "一"}]\n{"text": "二"}\n')
    with pytest.raises(MixError, match="after the end"):
        items(extra)


def test_array_bad_utf8_costs_one_element(tmp_path):
    data = b'[\n{"text": "\xe4\xb8\xad"},\n{"text": "\xff\xfe"},\n{"text": "ok"}\n]\n'
    got = items(write(tmp_path, "a.json", data))
    assert got[0][1] == {"text": "中"} and got[2][1] == {"text": "ok"}
    assert isinstance(got[1][1], RecordError) and got[1][0] == 3


def test_overlong_line_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_VALUE_BYTES", 64)
    p = write(tmp_path, "x.jsonl", '{"text": "short"}\n{"text": "' + "长" * 100 + '"}\n')
    with pytest.raises(MixError, match=r"x.jsonl:2: line longer than"):
        items(p)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(json_values, max_size=12), st.integers(1, 17), st.booleans())
def test_stream_parser_matches_json_loads(tmp_path_factory, values, chunk, pretty):
    # Tiny chunks put every element, string and number across chunk edges.
    tmp = tmp_path_factory.mktemp("s")
    p = tmp / "a.json"
    p.write_text(
        json.dumps(values, ensure_ascii=False, indent=2 if pretty else None), encoding="utf-8"
    )
    old = readers._CHUNK
    readers._CHUNK = chunk
    try:
        got = [v for _, v in readers.iter_items(p, "a.json", Sniff("json_array"))]
    finally:
        readers._CHUNK = old
    assert got == values


# ------------------------------------------------------------------------------- schemas


def conv(value, out="sft", fmt=None):
    return schemas.convert(value, fmt or schemas.detect_format(value), out)


def kind_of(value, out="sft", fmt=None) -> str:
    with pytest.raises(RecordError) as exc:
        conv(value, out, fmt)
    return exc.value.kind


def test_belle_multiturn_split_into_turns():
    rec = {
        "instruction": "Human:你好\nAssistant:你好！有什么可以帮你？\nHuman：讲个笑话\nAssistant:",
        "input": "",
        "output": "从前有座山……",
    }
    msgs = conv(rec)["conversations"]
    assert [(m["role"], m["content"]) for m in msgs] == [
        ("user", "你好"),
        ("assistant", "你好！有什么可以帮你？"),
        ("user", "讲个笑话"),
        ("assistant", "从前有座山……"),
    ]


def test_alpaca_input_system_and_history():
    rec = {
        "instruction": "翻译成英文",
        "input": "早上好",
        "output": "Good morning",
        "system": "你是翻译。",
        "history": [["", ""], ["你好", "你好！"]],
    }
    msgs = conv(rec)["conversations"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[3]["content"] == "翻译成英文\n早上好"
    assert kind_of({**rec, "history": [["问", 3]]}) == "non-string content"


def test_sharegpt_roles_and_system():
    rec = {
        "system": "简洁回答。",
        "conversations": [{"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "2"}],
    }
    assert [m["role"] for m in conv(rec)["conversations"]] == ["system", "user", "assistant"]
    bad = {"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]}
    assert kind_of(bad) == "unknown role"


def test_mcq_and_math_rendering():
    mcq = {"question": "1+1=", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "b"}
    assert conv(mcq)["conversations"][1]["content"] == "答案是 B：2"
    assert kind_of({**mcq, "answer": "E"}) == "bad answer"
    assert kind_of({**mcq, "answer": ""}) == "empty content"
    gsm = {"question": "3个苹果加2个？", "answer": "3+2=<<3+2=5>>5\n#### 5"}
    assert conv(gsm)["conversations"][1]["content"] == "3+2=5\n答案：5"
    assert conv({"question": "2*3", "answer": 6})["conversations"][1]["content"] == "6"
    assert conv(gsm, "pretrain")["text"] == "3个苹果加2个？\n3+2=5\n答案：5"


@pytest.mark.parametrize(
    "msgs,kind",
    [
        ([{"role": "assistant", "content": "嗨"}], "bad role order"),
        ([{"role": "user", "content": "嗨"}], "bad role order"),
        (
            [
                {"role": "user", "content": "嗨"},
                {"role": "user", "content": "在吗"},
                {"role": "assistant", "content": "在"},
            ],
            "bad role order",
        ),
        (
            [{"role": "user", "content": "嗨"}, {"role": "assistant", "content": "  "}],
            "empty content",
        ),
        (
            [{"role": "user", "content": ["嗨"]}, {"role": "assistant", "content": "x"}],
            "non-string content",
        ),
        ([{"role": "user", "content": "嗨"}, {"role": "bot", "content": "x"}], "unknown role"),
        ([{"role": "user"}, {"role": "assistant", "content": "x"}], "missing field"),
        (
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "", "tool_calls": "{bad"},
            ],
            "invalid tool JSON",
        ),
        ([], "missing field"),
    ],
)
def test_conversation_errors(msgs, kind):
    assert kind_of({"conversations": msgs}) == kind


def test_tool_turns_accepted():
    msgs = [
        {"role": "user", "content": "天气?"},
        {"role": "assistant", "content": "", "tool_calls": '[{"name": "w"}]'},
        {"role": "tool", "content": '{"t": 20}'},
        {"role": "assistant", "content": "20度"},
    ]
    assert conv({"messages": msgs})["conversations"] == msgs


def test_preference_forms():
    u = {"role": "user", "content": "问"}
    full = {
        "chosen": [u, {"role": "assistant", "content": "好答案"}],
        "rejected": [u, {"role": "assistant", "content": "坏答案"}],
    }
    assert conv(full, "dpo")["chosen"][-1]["content"] == "好答案"
    flat = {"prompt": "问", "system": "", "chosen": "好答案", "rejected": "坏答案"}
    assert conv(flat, "dpo") == conv(full, "dpo")
    sg = {
        "conversations": [{"from": "human", "value": "问"}],
        "chosen": {"from": "gpt", "value": "好答案"},
        "rejected": {"from": "gpt", "value": "坏答案"},
    }
    assert conv(sg, "dpo") == conv(full, "dpo")
    shibing = {
        "question": "问",
        "history": [],
        "response_chosen": "好答案",
        "response_rejected": "坏答案",
    }
    assert conv(shibing, "dpo") == conv(full, "dpo")
    assert kind_of({**flat, "rejected": " 好答案"}, "dpo") == "chosen equals rejected"
    other = {
        "chosen": full["chosen"],
        "rejected": [
            {"role": "user", "content": "别的问题"},
            {"role": "assistant", "content": "坏答案"},
        ],
    }
    assert kind_of(other, "dpo") == "prompt differs"
    assert kind_of({**sg, "chosen": {"from": "human", "value": "x"}}, "dpo") == "bad role order"
    with pytest.raises(NotApplicable):
        conv(full, "sft")


def test_text_has_no_sft_form_and_unknown_keys_refused():
    with pytest.raises(NotApplicable):
        conv({"text": "一段话"}, "sft")
    assert conv({"text": "一段话"}, "pretrain") == {"text": "一段话"}
    assert kind_of({"foo": 1}) == "unrecognised record"
    assert kind_of({"text": ""}, "pretrain") == "empty content"
    assert kind_of({"text": 5}, "pretrain") == "non-string content"


def test_placeholders_filled_or_refused():
    names = {"name": "小白", "author": "某团队"}
    rec = [
        {"role": "user", "content": "你是谁？"},
        {"role": "assistant", "content": "我是{{name}}，由{{ author }}开发。"},
    ]
    assert schemas.fill_placeholders(rec, names)[1]["content"] == "我是小白，由某团队开发。"
    with pytest.raises(RecordError, match=r"\{\{version\}\}"):
        schemas.fill_placeholders({"output": "版本{{version}}"}, names)
    # Single braces, as many published persona files write them, are filled the same way.
    rec = {"output": "我是{name}，由{ author }开发，不是{{name}}的{x"}
    assert schemas.fill_placeholders(rec, names) == {
        "output": "我是小白，由某团队开发，不是小白的{x"
    }
    with pytest.raises(RecordError, match=r"\{version\} has no value") as exc:
        schemas.fill_placeholders([{"content": "版本{version}"}], names)
    assert exc.value.kind == "unfilled placeholder"


def test_corrupt_first_line_still_json_lines(tmp_path):
    p = write(tmp_path, "x.json", '{"text": "被截断\n{"text": "完整"}\n{"text": "也完整"}\n')
    assert readers.sniff(p, "x").container == "jsonl"
    got = items(p)
    assert isinstance(got[0][1], RecordError) and got[0][0] == 1
    assert [v["text"] for _, v in got[1:]] == ["完整", "也完整"]
    # Pretty-printed objects whose indented inner lines are whole objects: still a stream.
    stream = write(
        tmp_path, "s.json", '{\n  "messages": [\n    {"role": "user", "content": "a"}\n  ]\n}\n'
    )
    assert readers.sniff(stream, "s").container == "json_stream"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(tmp_path, constant):
    with pytest.raises(RecordError) as exc:
        readers.parse_jsonl_line('{"text": "a", "score": %s}' % constant)
    assert exc.value.kind == "invalid JSON" and constant in exc.value.detail
    with pytest.raises(RecordError):  # one of several values on a line
        readers.parse_jsonl_line('{"text": "a"} {"text": "b", "w": [%s]}' % constant)
    # In a JSON array the element is refused and the elements after it still read.
    p = tmp_path / "a.json"
    p.write_text('[\n{"text": "a", "w": %s},\n{"text": "b"}\n]\n' % constant, encoding="utf-8")
    (l1, bad), (l2, good) = items(p)
    assert (l1, l2) == (2, 3) and good == {"text": "b"}
    assert isinstance(bad, RecordError) and bad.kind == "invalid JSON"
    with pytest.raises(ValueError):
        readers.strict_loads(constant)


def test_json_error_names_the_column_once():
    with pytest.raises(RecordError) as exc:
        readers.parse_jsonl_line('{"text": "未闭合')
    assert exc.value.detail == "Unterminated string starting at column 10"
    with pytest.raises(RecordError) as exc:
        readers.parse_jsonl_line('{"text": }')
    assert exc.value.detail == "Expecting value at column 10"


def test_metamath_layout_prefers_the_chinese_fields():
    rec = {
        "question": "Natalia sold clips to 48 friends.",
        "answer": "48/2 = 24\n#### 72",
        "question_zh": "娜塔莉亚卖给了48个朋友发夹。",
        "answer_zh": "48/2 = <<48/2=24>>24\n#### 72",
        "answer_only": "72",
        "split": "train",
    }
    assert schemas.detect_format(rec) == "math"
    msgs = conv(rec)["conversations"]
    assert [m["content"] for m in msgs] == ["娜塔莉亚卖给了48个朋友发夹。", "48/2 = 24\n答案：72"]
    only_zh = {"question_zh": "一加一等于几？", "answer_zh": "2"}
    assert schemas.detect_format(only_zh) == "math"
    assert [m["content"] for m in conv(only_zh)["conversations"]] == ["一加一等于几？", "2"]
    # An empty Chinese field falls back to the English one.
    english = {**rec, "question_zh": " ", "answer_zh": None}
    assert [m["content"] for m in conv(english)["conversations"]] == [
        "Natalia sold clips to 48 friends.",
        "48/2 = 24\n答案：72",
    ]
    assert kind_of({"question_zh": "问题", "answer_zh": "#### "}) == "empty content"


# ------------------------------------------------------------------ the fast parse agrees exactly

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)  # beyond 64 bits: orjson would round
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_json_values, st.booleans())
def test_bytes_parse_equals_the_standard_parser(value, ascii_only):
    line = json.dumps(value, ensure_ascii=ascii_only)
    expected = readers.parse_jsonl_line(line)
    got = readers.parse_jsonl_bytes(line.encode("utf-8") + b"\n", 2)
    # repr: 1 and 1.0 (and -0.0 and 0.0) are == but not the same record once written again
    assert repr(got) == repr(expected) and readers.loads_bytes(line.encode()) == expected[0]


@pytest.mark.parametrize(
    "raw, kind",
    [
        (b'{"a": NaN}', "invalid JSON"),
        (b'{"a": "\\ud800"}', "invalid UTF-8"),  # a lone surrogate escape
        (b'{"a": "\xff"}', "invalid UTF-8"),
        (b'{"a": 1', "invalid JSON"),
    ],
)
def test_bytes_parse_refuses_as_the_standard_parser(raw, kind):
    with pytest.raises(RecordError) as exc:
        readers.parse_jsonl_bytes(raw, 3)
    assert exc.value.kind == kind


def test_bytes_parse_keeps_big_integers_bom_and_concatenated_values():
    assert readers.parse_jsonl_bytes(b'{"id": 123456789012345678901234567890}', 2) == [
        {"id": 123456789012345678901234567890}
    ]
    assert readers.parse_jsonl_bytes(b'\xef\xbb\xbf{"a": 1}', 1) == [{"a": 1}]
    assert readers.parse_jsonl_bytes(b'{"a": 1} {"b": 2}\n', 2) == [{"a": 1}, {"b": 2}]
    deep = b"[" * 150 + b"]" * 150
    with pytest.raises(RecordError, match="deeper than"):
        readers.parse_jsonl_bytes(deep, 2)
