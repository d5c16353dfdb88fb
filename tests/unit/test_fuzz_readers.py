"""Hypothesis-generated hostile input through every reader: JSON Lines, CSV, JSON arrays, JSON
streams and plain lines. Lines are random bytes, deep nesting, huge lines, wrong types, lone
surrogates (escaped and as raw bytes), huge numbers, and valid records of every shape mixed in.

For every file: no exception other than a `MixError` naming `file:line` (a whole-file refusal,
for containers that cannot be read past a syntax error); every line of JSON Lines is accounted
for (kept, not applicable to the output, or reported as bad with its line); the scan's totals
equal what the readers yielded; a mix built from the file writes only valid UTF-8 JSON whose
`source.line` points at a line that held a valid record. Sizes are bounded (a line is at most
~200 KB, a file ~60 lines) and each example is timed, so a hang fails instead of blocking CI.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm_core.data import CategoryConfig, MixConfig, build_mix, readers
from minillm_core.data.readers import MixError, RecordError, Sniff
from minillm_core.data.scan import Converter, FileScan, count_item, scan_file
from tests.faults_helpers import count

EXAMPLES = int(os.environ.get("MINILLM_FUZZ_EXAMPLES", "60"))
PER_EXAMPLE_S = 20.0  # generous on a loaded 2-core machine; a hang blows through it

VALID = [
    {"text": "今天天气很好，我们去公园散步。"},
    {
        "conversations": [
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"},
        ]
    },
    {"conversations": [{"from": "human", "value": "1+1=?"}, {"from": "gpt", "value": "2"}]},
    {"instruction": "翻译", "input": "hello", "output": "你好"},
    {"input": "写一首诗", "target": "床前明月光"},
    {"question": "中国首都？", "A": "北京", "B": "上海", "C": "广州", "D": "深圳", "answer": "A"},
    {"question": "2+3", "answer": "2+3=<<2+3=5>>5\n#### 5"},
    {
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "rejected": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "go away"},
        ],
    },
    {"prompt": "问题", "chosen": "好回答", "rejected": "坏回答"},
]
WRONG_TYPES = [
    {"text": 123},
    {"text": None},
    {"text": ["a"]},
    {"conversations": "not a list"},
    {"conversations": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
    {"conversations": [{"role": "wizard", "content": "x"}]},
    {"instruction": [], "output": {}},
    {"chosen": "same", "rejected": "same", "prompt": "p"},
    [1, 2, 3],
    "just a string",
    42,
    None,
    {"question": "q", "A": 1, "B": "b", "C": "c", "D": "d", "answer": "E"},
    {},
    {"messages": [{"role": "user", "content": "x"}]},
    {"history": 5, "instruction": "i", "output": "o"},
]

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_json_line = st.one_of(
    st.sampled_from(VALID).map(lambda v: json.dumps(v, ensure_ascii=False)),
    st.sampled_from(WRONG_TYPES).map(json.dumps),
    st.builds(lambda t: json.dumps({"text": t}, ensure_ascii=False), _text),
    st.builds(
        lambda u, a: json.dumps(
            {
                "conversations": [
                    {"role": "user", "content": u},
                    {"role": "assistant", "content": a},
                ]
            },
            ensure_ascii=False,
        ),
        _text,
        _text,
    ),
)
_hostile_line = st.one_of(
    st.binary(max_size=120).map(lambda b: b.replace(b"\n", b" ")),  # random bytes
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),  # deep nesting
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(1, 200_000).map(lambda n: json.dumps({"text": "长" * n}, ensure_ascii=False)),
    st.integers(1, 200_000).map(lambda n: "x" * n),  # huge non-JSON line
    st.sampled_from(
        [
            '{"text": "\\ud800"}',
            '{"text": "a\\udfffb"}',
            '["\\udc80"]',  # lone surrogates
            '{"conversations": [{"role": "user", "content": "\\ud83d"}, '
            '{"role": "assistant", "content": "ok"}]}',
            '{"text": "\\ud83d\\ude00 a valid pair"}',
        ]
    ),
    st.just(b'{"text": "\xed\xa0\x80 CESU surrogate bytes"}'),
    st.just(b'{"text": "\xff\xfe bad utf-8"}'),
    st.integers(4301, 20_000).map(lambda n: '{"text": "n", "x": ' + "9" * n + "}"),  # huge number
    st.just('{"a": 1}{"text": "two objects on one line"}'),
    st.just('{"text": NaN}'),
    st.just(""),
    st.just("   "),
    st.just("\ufeff{}"),
)
_line = st.one_of(_json_line, _hostile_line).map(
    lambda x: x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")
)


def _cfg(tmp: Path, name: str, container: str | None = None, fmt: str | None = None) -> MixConfig:
    overrides = {name: {"container": container, "format": fmt}} if container or fmt else {}
    cat = CategoryConfig(sources=[name], target=5, outputs=["pretrain", "sft"], overrides=overrides)
    pref = CategoryConfig(sources=[name], target=5, outputs=["dpo"], overrides=overrides)
    return MixConfig(
        sources_dir=tmp,
        samples_dir=tmp / "none",
        allow_samples=False,
        categories={"general": cat, "preference": pref},
        max_bad_fraction=1.0,
        heldout_min=0,
        heldout_fraction=0.0,
    )


_LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+): ")


def _items(path: Path, sniff: Sniff) -> tuple[list[tuple[int, object]], str | None]:
    """Everything the reader yields, and the fatal MixError message if the file ends in one."""
    out: list[tuple[int, object]] = []
    try:
        for line, value in readers.iter_items(path, str(path), sniff):
            out.append((line, value))
    except MixError as exc:
        return out, str(exc)
    return out, None


def _sniff_refusal(path: Path, container: str) -> str | None:
    """The message of a whole-file refusal (binary data, GBK, an HTML page), which names the file."""
    try:
        readers.sniff(path, str(path), container)
    except MixError as exc:
        assert str(exc).startswith(f"{path}: "), exc
        count("files_refused_with_file_line")
        return str(exc)
    return None


def _classify(items, output: str, cfg: MixConfig, category: str) -> dict[str, int]:
    """valid / not applicable / bad per item, through the mix's own converter."""
    fs = FileScan(Path("x"), "x", category, Sniff("jsonl"), None)
    conv = Converter(cfg, category, output)
    for line, value in items:
        count_item(fs, conv, line, value)  # raises on anything but RecordError/NotApplicable
    return {"valid": fs.valid, "na": fs.not_applicable, "bad": sum(fs.bad.values())}


def _check_scan(path: Path, cfg: MixConfig, items, fatal: str | None) -> None:
    for output, category in (("pretrain", "general"), ("sft", "general"), ("dpo", "preference")):
        if fatal:
            with pytest.raises(MixError) as err:
                scan_file(path, str(path), path.parent, cfg, category, output)
            assert str(err.value) == fatal
            continue
        expect = _classify(items, output, cfg, category)
        fs = scan_file(path, str(path), path.parent, cfg, category, output)
        got = {"valid": fs.valid, "na": fs.not_applicable, "bad": sum(fs.bad.values())}
        assert got == expect, (output, got, expect)
        assert fs.items == len(items)
        for example in fs.examples:  # every reported bad record names file:line
            m = _LOCATED.match(example)
            assert m and m["file"] == str(path), example
        count("records_classified", fs.items)


def _check_build(tmp: Path, cfg: MixConfig, good_lines: set[int]) -> None:
    """A mix built from the file: valid UTF-8 JSON out, each record from a line that held one."""
    for output in ("pretrain", "sft", "dpo"):
        try:
            report = build_mix(cfg, output, tmp / "out")
        except MixError as exc:
            assert "no records usable" in str(exc) or "no category" in str(exc), exc
            continue
        for path in (report.path, report.heldout_path):
            for raw in path.read_bytes().splitlines():
                rec = json.loads(raw.decode("utf-8"))
                assert rec["source"]["line"] in good_lines or not good_lines, rec["source"]
        count("mixes_built")


def _timed(fn):
    t0 = time.monotonic()
    fn()
    elapsed = time.monotonic() - t0
    assert elapsed < PER_EXAMPLE_S, f"took {elapsed:.1f}s: a reader is too slow or hangs"


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@FUZZ
@given(lines=st.lists(_line, min_size=1, max_size=40))
def test_jsonl_every_line_kept_or_reported(tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("jsonl")
    path = tmp / "f.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = _cfg(tmp, "f.jsonl", container="jsonl")

    def run():
        count("jsonl_lines_fuzzed", len(lines))
        count("fuzzed_files")
        try:  # what the mix does first: a file of binary data is refused whole, by name
            readers.sniff(path, str(path), "jsonl")
        except MixError as exc:
            assert str(exc).startswith(f"{path}: "), exc
            count("files_refused_with_file_line")
            with pytest.raises(MixError):
                scan_file(path, str(path), path.parent, cfg, "general", "pretrain")
            return
        items, fatal = _items(path, Sniff("jsonl"))
        assert fatal is None, fatal  # JSON Lines never gives up on a file of bounded lines
        # Every non-blank line yields at least one item (a value or its error), in order.
        non_blank = [i for i, raw in enumerate(lines, 1) if raw.strip(b" \t\r\n\x0b\x0c")]
        seen = sorted({line for line, _ in items})
        assert seen == non_blank, (seen, non_blank)
        for _line, value in items:
            if isinstance(value, RecordError):
                assert value.kind in ("invalid JSON", "invalid UTF-8"), value
        _check_scan(path, cfg, items, None)
        good = {line for line, v in items if not isinstance(v, RecordError)}
        _check_build(tmp, cfg, good)

    _timed(run)


_cell = st.one_of(
    _text,
    st.text(max_size=10).map(lambda s: s + ',"\n'),
    st.integers(1, 200_000).map(lambda n: "长" * n),
    st.sampled_from(["A", "E", ""]),
)


@FUZZ
@given(
    rows=st.lists(
        st.one_of(
            st.lists(_cell, min_size=1, max_size=8),
            st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" ")),
        ),
        min_size=1,
        max_size=25,
    ),
    header=st.sampled_from([["question", "A", "B", "C", "D", "answer"], ["text", "note"]]),
)
def test_csv_rows_kept_or_reported(tmp_path_factory, rows, header):
    import csv
    import io

    tmp = tmp_path_factory.mktemp("csv")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    body = buf.getvalue().encode()
    for row in rows:
        if isinstance(row, bytes):
            body += row + b"\n"
        else:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(row)
            body += buf.getvalue().encode("utf-8")
    path = tmp / "f.csv"
    path.write_bytes(body)
    n_lines = body.count(b"\n")
    cfg = _cfg(tmp, "f.csv", container="csv")

    def run():
        items, fatal = _items(path, Sniff("csv"))
        if fatal:
            m = _LOCATED.match(fatal)
            assert m and m["file"] == str(path) and 1 <= int(m["line"]) <= n_lines + 1, fatal
            count("files_refused_with_file_line")
        lines_ = [line for line, _ in items]
        assert lines_ == sorted(lines_) and all(2 <= x <= n_lines for x in lines_), lines_
        _check_scan(path, cfg, items, _sniff_refusal(path, "csv") or fatal)
        count("csv_rows_fuzzed", len(rows))
        count("fuzzed_files")

    _timed(run)


@FUZZ
@given(
    elements=st.lists(
        st.one_of(
            _json_line.map(str.encode),
            _hostile_line.map(
                lambda x: x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")
            ),
        ),
        min_size=1,
        max_size=20,
    ),
    array=st.booleans(),
    truncate=st.booleans(),
)
def test_json_array_and_stream_kept_or_refused_with_file_line(
    tmp_path_factory, elements, array, truncate
):
    tmp = tmp_path_factory.mktemp("arr")
    body = (b"[\n" + b",\n".join(elements) + b"\n]\n") if array else b"\n".join(elements) + b"\n"
    if truncate:
        body = body[: len(body) // 2]
    path = tmp / "f.json"
    path.write_bytes(body)
    container = "json_array" if array else "json_stream"
    cfg = _cfg(tmp, "f.json", container=container)

    def run():
        items, fatal = _items(path, Sniff(container))
        if fatal:
            m = _LOCATED.match(fatal)
            assert m and m["file"] == str(path), fatal
            assert 1 <= int(m["line"]) <= body.count(b"\n") + 1, fatal
            count("files_refused_with_file_line")
        _check_scan(path, cfg, items, _sniff_refusal(path, container) or fatal)
        count("json_elements_fuzzed", len(elements))
        count("fuzzed_files")

    _timed(run)


@FUZZ
@given(lines=st.lists(_line, min_size=1, max_size=30))
def test_plain_lines_container_and_sniffing(tmp_path_factory, lines):
    """The `lines` container keeps every non-blank valid-UTF-8 line as a text; sniffing an
    arbitrary file either picks a container or refuses it with a message naming the file."""
    tmp = tmp_path_factory.mktemp("lines")
    path = tmp / "f.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")

    def run():
        items, fatal = _items(path, Sniff("lines"))
        assert fatal is None
        assert len({line for line, _ in items}) == len(items)
        for _line, value in items:
            assert isinstance(value, (dict, RecordError))
        try:
            sn = readers.sniff(path, str(path))
        except MixError as exc:
            assert str(exc).startswith(str(path)), exc
            count("files_refused_with_file_line")
        else:
            items, fatal = _items(path, sn)
            assert fatal is None or fatal.startswith(f"{path}:"), fatal
        count("plain_lines_fuzzed", len(lines))
        count("fuzzed_files")

    _timed(run)
