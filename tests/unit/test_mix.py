"""The data mix: quotas, sampling, held-out split, traceability, bad input, atomic outputs, CLI."""

from __future__ import annotations

import json
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from minillm_cli.main import main as minillm_main
from minillm_cli.mix import main as mix_main
from minillm_core.artifacts import sidecar_path
from minillm_core.config import ConfigError
from minillm_core.data import (
    OUTPUTS,
    CategoryConfig,
    MixConfig,
    MixError,
    build_mix,
    check_mix,
    quotas,
)
from minillm_core.data.sampling import sample_sorted
from minillm_core.data.spool import Spool
from minillm_core.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
SMOKE = {"pretrain": 64, "sft": 16, "dpo": 8}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def final_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def jsonl(path: Path, rows: list, raw_lines: list[bytes] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)
    path.write_bytes(data + b"".join(x + b"\n" for x in raw_lines or []))
    return path


def chat(i: int, prefix: str = "问题") -> dict:
    return {
        "conversations": [
            {"role": "user", "content": f"{prefix}{i}"},
            {"role": "assistant", "content": f"回答{i}"},
        ]
    }


def one_category(tmp_path: Path, target: int, outputs=("sft",), **kw) -> MixConfig:
    cat = CategoryConfig(sources=["general/*.jsonl"], target=target, outputs=list(outputs))
    return MixConfig(
        sources_dir=tmp_path / "src",
        samples_dir=tmp_path / "none",
        categories={"general": cat},
        **kw,
    )


# ------------------------------------------------------------------------------- quotas


def test_quota_defaults_and_smoke_caps():
    cfg = MixConfig()
    assert quotas(cfg, "sft") == {
        "general": 460_000,
        "knowledge": 100_000,
        "math": 8_000,
        "identity": 1_000,
    }
    assert quotas(cfg, "dpo") == {"preference": 60_000}
    capped = MixConfig(max_records=SMOKE)
    for out, cap in SMOKE.items():
        q = quotas(capped, out)
        total = sum(n * capped.categories[c].repeat for c, n in q.items())
        assert cap - 2 <= total <= cap and all(n >= 1 for n in q.values()), (out, q)
    q = quotas(capped, "pretrain")
    assert q["general"] > q["knowledge"] > q["math"]  # proportional to 460K : 100K : 8K


# ------------------------------------------------------------------------------- shipped samples


@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("mix")
    cfg = MixConfig(
        sources_dir=out / "no-user-data", samples_dir=ROOT / "dataset", max_records=SMOKE
    )
    return cfg, out, {o: build_mix(cfg, o, out) for o in OUTPUTS}


def test_smoke_build_on_shipped_samples(smoke_build):
    cfg, out, reports = smoke_build
    for output, r in reports.items():
        assert r.path == out / f"{output}_chinese.jsonl" and r.path.is_file()
        assert r.heldout_path.is_file() and sidecar_path(r.path).is_file()
        rows = lines(r.path)
        assert len(rows) == r.records == sum(r.metadata["records_per_category"].values())
        assert r.records <= SMOKE[output] and r.heldout_records >= 1
        assert check_mix(r.path, output) == []
        assert check_mix(r.heldout_path, output) == []
        assert r.metadata["shipped_samples_used"] is True
        assert set(r.metadata["samples_categories"]) == set(quotas(cfg, output))
        json.dumps(r.metadata)  # JSON-able for the UI
        for row in rows:
            assert set(row["source"]) == {"file", "line", "category"}
            # Relative to the checkout (the samples ship with it): relocatable artifacts.
            assert row["source"]["file"].startswith("dataset/")
            assert (ROOT / row["source"]["file"]).is_file()
        side = json.loads(sidecar_path(r.path).read_text(encoding="utf-8"))
        assert all(f.startswith("dataset/") for f in side["inputs"]), side["inputs"]
        assert side["config"]["samples_dir"] == "dataset"
    sft = lines(reports["sft"].path)
    ident = [r for r in sft if r["source"]["category"] == "identity"]
    assert len(ident) == 2 and ident[0] == ident[1]  # identity appears twice
    assert "{{" not in json.dumps(ident, ensure_ascii=False)
    assert "MiniLLM" in json.dumps(ident, ensure_ascii=False)


def test_outputs_are_byte_identical_across_runs(smoke_build, tmp_path):
    cfg, out, reports = smoke_build
    for output, r in reports.items():
        again = build_mix(cfg, output, tmp_path)
        for a, b in (
            (r.path, again.path),
            (r.heldout_path, again.heldout_path),
            (sidecar_path(r.path), sidecar_path(again.path)),
        ):
            assert a.read_bytes() == b.read_bytes(), a.name
    other = build_mix(cfg.model_copy(update={"seed": 7}), "pretrain", tmp_path / "s7")
    assert other.path.read_bytes() != reports["pretrain"].path.read_bytes()


def test_sidecar_records_inputs_and_config(smoke_build):
    cfg, out, reports = smoke_build
    meta = json.loads(sidecar_path(reports["dpo"].path).read_text(encoding="utf-8"))
    assert meta["config"]["seed"] == 42 and meta["counts"]["records"] == reports["dpo"].records
    assert all(len(v["sha256"]) == 64 for v in meta["inputs"].values())
    assert {v["category"] for v in meta["inputs"].values()} == {"preference"}


def test_original_fields_kept_and_clashes_renamed(smoke_build):
    cfg, out, _ = smoke_build
    full = cfg.model_copy(
        update={
            "max_records": {},
            "heldout_min": 0,
            "heldout_fraction": 0.0,
            "categories": {
                "preference": cfg.categories["preference"].model_copy(update={"target": 29})
            },
        }
    )
    rows = lines(build_mix(full, "dpo", out / "full").path)
    flat = [r for r in rows if "prompt_pairs" in r["source"]["file"]]
    assert flat and all(
        r["original_source"] == "minillm-handwritten" and r["prompt"] and r["id"].startswith("pp-")
        for r in flat
    )
    sg = [r for r in rows if "sharegpt" in r["source"]["file"]]
    assert sg and all(r["original_chosen"]["from"] == "gpt" and r["conversations"] for r in sg)
    assert len({(r["source"]["file"], r["source"]["line"]) for r in rows}) == 29  # all of them


# ------------------------------------------------------------------------------- sampling


def test_more_records_than_quota_sampled_without_replacement(tmp_path):
    jsonl(tmp_path / "src/general/a.jsonl", [chat(i) for i in range(300)])
    cfg = one_category(tmp_path, 50, heldout_fraction=0.1, heldout_min=1)
    r = build_mix(cfg, "sft", tmp_path / "out")
    keys = [row["source"]["line"] for row in lines(r.path)]
    assert len(keys) == 50 and len(set(keys)) == 50
    assert r.metadata["repeat_factors"]["general"] == 1.0
    held = {row["source"]["line"] for row in lines(r.heldout_path)}
    assert len(held) == 5 and not held & set(keys)
    assert keys != sorted(keys)  # shuffled, not in file order


def test_fewer_records_resampled_and_heldout_disjoint(tmp_path):
    jsonl(tmp_path / "src/general/a.jsonl", [chat(i) for i in range(7)])
    jsonl(tmp_path / "src/general/b.jsonl", [chat(i, "另一个") for i in range(3)])
    cfg = one_category(tmp_path, 100, heldout_min=2, max_repeat=13)
    r = build_mix(cfg, "sft", tmp_path / "out")
    rows = lines(r.path)
    counts = Counter((x["source"]["file"], x["source"]["line"]) for x in rows)
    held = {(x["source"]["file"], x["source"]["line"]) for x in lines(r.heldout_path)}
    assert len(rows) == 100 and len(held) == 2 and not held & set(counts)
    assert len(counts) == 8 and set(counts.values()) <= {12, 13}  # 100 over 8: 12 or 13 each
    assert r.metadata["repeat_factors"]["general"] == 12.5
    assert r.metadata["records_per_file"] == {
        k: v for k, v in Counter(x["source"]["file"] for x in rows).items()
    }
    assert check_mix(r.path, "sft") == []


def test_pretrain_and_sft_hold_out_the_same_records(tmp_path):
    jsonl(tmp_path / "src/general/a.jsonl", [chat(i) for i in range(200)])
    cfg = one_category(tmp_path, 100, outputs=("pretrain", "sft"), heldout_fraction=0.05)
    p = build_mix(cfg, "pretrain", tmp_path / "out")
    s = build_mix(cfg, "sft", tmp_path / "out")
    held_p = {x["source"]["line"] for x in lines(p.heldout_path)}
    assert held_p == {x["source"]["line"] for x in lines(s.heldout_path)}
    assert not held_p & {x["source"]["line"] for x in lines(s.path)}
    assert lines(p.path)[0]["text"].startswith("问题")


def test_plain_text_feeds_pretrain_only(tmp_path):
    jsonl(tmp_path / "src/general/t.jsonl", [{"text": f"文档{i}"} for i in range(5)])
    cfg = one_category(tmp_path, 4, outputs=("pretrain", "sft"))
    assert len(lines(build_mix(cfg, "pretrain", tmp_path / "o").path)) == 4
    with pytest.raises(MixError, match=r"category 'general': no records usable for sft.*5 valid"):
        build_mix(cfg, "sft", tmp_path / "o")


# ------------------------------------------------------------------------------- bad input

BAD_LINES = [
    (b'{"conversations": [{"role": "user", "content": "x"}', "invalid JSON"),
    (
        b'{"conversations": [{"role": "user", "content": "\xff\xfe"}, '
        b'{"role": "assistant", "content": "y"}]}',
        "invalid UTF-8",
    ),
    (b'{"instruction": "x"}', "unrecognised record"),
    (b'{"instruction": "x", "output": null}', "missing field"),
    (
        b'{"conversations": [{"role": "assistant", "content": "y"}, '
        b'{"role": "user", "content": "x"}]}',
        "bad role order",
    ),
    (
        b'{"conversations": [{"role": "user", "content": ""}, '
        b'{"role": "assistant", "content": "y"}]}',
        "empty content",
    ),
    (
        b'{"conversations": [{"role": "user", "content": 3}, '
        b'{"role": "assistant", "content": "y"}]}',
        "non-string content",
    ),
]


def test_bad_records_skipped_counted_and_located(tmp_path):
    src = jsonl(
        tmp_path / "src/general/a.jsonl",
        [chat(i) for i in range(20)],
        [raw for raw, _ in BAD_LINES],
    )
    cfg = one_category(tmp_path, 10, max_bad_fraction=0.3)
    logs: list[str] = []
    r = build_mix(cfg, "sft", tmp_path / "out", log=logs.append)
    display = str(tmp_path / "src" / "general" / "a.jsonl")
    assert r.metadata["skipped"][display] == {kind: 1 for _, kind in BAD_LINES}
    assert r.metadata["skipped_total"] == len(BAD_LINES)
    assert r.metadata["skipped_examples"][0].startswith(f"{display}:21: invalid JSON")
    assert r.metadata["skipped_examples"][1].startswith(f"{display}:22: invalid UTF-8")
    assert any(f"{display}:23: unrecognised record" in x for x in logs)
    assert src.is_file() and r.records == 10


def test_dpo_chosen_equal_rejected_skipped(tmp_path):
    good = [{"prompt": f"问{i}", "chosen": "好", "rejected": "坏"} for i in range(10)]
    cat = CategoryConfig(sources=["p.jsonl"], target=5, outputs=["dpo"])
    jsonl(tmp_path / "src/p.jsonl", good + [{"prompt": "问", "chosen": "同", "rejected": "同"}])
    cfg = MixConfig(sources_dir=tmp_path / "src", categories={"preference": cat})
    r = build_mix(cfg, "dpo", tmp_path / "out")
    assert r.metadata["skipped_examples"] == [
        f"{tmp_path / 'src' / 'p.jsonl'}:11: chosen equals rejected: the final assistant turns "
        "are identical"
    ]


def test_too_many_bad_records_fail_and_write_nothing(tmp_path):
    jsonl(
        tmp_path / "src/general/a.jsonl", [chat(i) for i in range(5)], [raw for raw, _ in BAD_LINES]
    )
    out = tmp_path / "out"
    with pytest.raises(MixError) as exc:
        build_mix(one_category(tmp_path, 3), "sft", out)
    msg = str(exc.value)
    assert "a.jsonl: 7 of 12 records are bad" in msg and "max_bad_fraction 10%" in msg
    assert "a.jsonl:6: invalid JSON" in msg
    assert isinstance(exc.value, DataError) and exc.value.file.endswith("general/a.jsonl")
    assert final_files(out) == []


def test_bom_and_crlf_sources(tmp_path):
    p = tmp_path / "src/general/a.jsonl"
    p.parent.mkdir(parents=True)
    p.write_bytes(
        b"\xef\xbb\xbf" + b"".join(json.dumps(chat(i)).encode() + b"\r\n" for i in range(6))
    )
    r = build_mix(one_category(tmp_path, 4), "sft", tmp_path / "out")
    assert r.records == 4 and r.metadata["skipped_total"] == 0


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"\x1f\x8b\x08\x00" + b"\x00" * 20, "gzip"),
        (b"<html><head><title>404</title></head></html>", "HTML"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", "Git LFS"),
    ],
)
def test_non_text_source_fails_naming_file(tmp_path, data, needle):
    jsonl(tmp_path / "src/general/good.jsonl", [chat(i) for i in range(5)])
    (tmp_path / "src/general/bad.jsonl").write_bytes(data)
    out = tmp_path / "out"
    with pytest.raises(MixError, match=needle) as exc:
        build_mix(one_category(tmp_path, 3), "sft", out)
    assert "bad.jsonl" in str(exc.value) and final_files(out) == []
    assert exc.value.file == str(tmp_path / "src/general/bad.jsonl") and exc.value.line is None


def test_category_without_files_names_category_and_glob(tmp_path):
    with pytest.raises(
        MixError,
        match=r"category 'general': no files match general/\*\.jsonl "
        r"under .*src nor under .*none",
    ):
        build_mix(one_category(tmp_path, 3), "sft", tmp_path / "out")
    cfg = MixConfig(sources_dir=tmp_path, allow_samples=False)
    with pytest.raises(MixError, match="category 'general'.*general/\\*\\*/\\*\\.json\\*"):
        build_mix(cfg, "pretrain", tmp_path / "out")


def test_user_files_replace_samples_per_category(tmp_path):
    jsonl(
        tmp_path / "src/math/m.jsonl",
        [{"question": f"{i}+1=?", "answer": f"#### {i + 1}"} for i in range(10)],
    )
    cfg = MixConfig(sources_dir=tmp_path / "src", samples_dir=ROOT / "dataset", max_records=SMOKE)
    r = build_mix(cfg, "pretrain", tmp_path / "out")
    assert "math" not in r.metadata["samples_categories"]
    assert set(r.metadata["samples_categories"]) == {"general", "knowledge"}
    maths = [x for x in lines(r.path) if x["source"]["category"] == "math"]
    assert maths and all(x["source"]["file"].endswith("m.jsonl") for x in maths)


def test_failure_while_writing_leaves_no_output(tmp_path, monkeypatch):
    jsonl(tmp_path / "src/general/a.jsonl", [chat(i) for i in range(20)])
    out = tmp_path / "out"
    build_mix(one_category(tmp_path, 5), "sft", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr(Spool, "write", boom)
    with pytest.raises(OSError):
        build_mix(one_category(tmp_path, 7), "sft", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old build intact


def test_identity_placeholders_unfilled_refused(tmp_path):
    cat = CategoryConfig(
        sources=["identity*.jsonl"], target=2, outputs=["sft"], fill_placeholders=True
    )
    rows = [
        [
            {"role": "user", "content": "你是谁"},
            {"role": "assistant", "content": "我是{{name}}，作者{{author}}"},
        ]
    ] * 9
    rows.append(
        [{"role": "user", "content": "版本"}, {"role": "assistant", "content": "{{version}}"}]
    )
    jsonl(tmp_path / "src/identity_conversations.jsonl", rows)
    cfg = MixConfig(
        sources_dir=tmp_path / "src",
        categories={"identity": cat},
        model_name="小明",
        model_author="某实验室",
    )
    r = build_mix(cfg, "sft", tmp_path / "out")
    assert r.metadata["skipped"] == {
        str(tmp_path / "src/identity_conversations.jsonl"): {"unfilled placeholder": 1}
    }
    assert lines(r.path)[0]["conversations"][1]["content"] == "我是小明，作者某实验室"
    with pytest.raises(ConfigError, match="model_name"):
        MixConfig.resolve({"model_name": ""})


# ------------------------------------------------------------------------------- checks


def test_check_mix_finds_problems(tmp_path):
    jsonl(tmp_path / "src/general/a.jsonl", [chat(i) for i in range(30)])
    r = build_mix(one_category(tmp_path, 10), "sft", tmp_path / "out")
    rows = lines(r.path)
    rows[0]["conversations"][1]["content"] = ""
    del rows[1]["source"]
    held = lines(r.heldout_path)[0]
    rows[2]["source"] = held["source"]  # a training record that is also held out
    rows.pop()
    r.path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
    problems = "\n".join(check_mix(r.path, "sft"))
    assert ":1: empty content" in problems
    assert ":2: missing or malformed source" in problems
    assert ":3:" in problems and "is also in sft_chinese_heldout.jsonl" in problems
    assert "9 records, the sidecar says 10" in problems
    dpo = tmp_path / "dpo.jsonl"
    u = {"role": "user", "content": "问"}
    dpo.write_text(
        json.dumps(
            {
                "chosen": [u, {"role": "assistant", "content": "同"}],
                "rejected": [u, {"role": "assistant", "content": "同"}],
                "source": {"file": "f", "line": 1, "category": "p"},
            }
        )
        + "\n"
    )
    got = check_mix(dpo, "dpo")
    assert "chosen equals rejected" in got[0] and "missing sidecar" in got[1]


# ------------------------------------------------------------------------------- streaming


def test_memory_flat_as_sources_grow(tmp_path):
    # Same quota, 10x the records: the peak of Python allocations must not follow the input.
    peaks = []
    for n in (3_000, 30_000):
        src = tmp_path / f"s{n}"
        jsonl(src / "general/a.jsonl", [chat(i) for i in range(n)])
        cfg = one_category(tmp_path, 500).model_copy(update={"sources_dir": src})
        tracemalloc.start()
        build_mix(cfg, "sft", tmp_path / f"o{n}")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] * 1.3 + (256 << 10), peaks


# ------------------------------------------------------------------------------- command


def test_dry_run_prints_formats_counts_samples(capsys):
    assert (
        mix_main(
            [
                "--dry-run",
                "--outputs",
                "sft",
                "--show",
                "1",
                "--samples-dir",
                str(ROOT / "dataset"),
                "--sources-dir",
                "/nonexistent",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "general_belle_sample.json: jsonl, alpaca x12; valid 12" in out
    assert "knowledge_cmmlu_sample.csv: csv, mcq x17" in out
    assert "(shipped samples)" in out and '"conversations"' in out


def test_command_with_yaml_config_and_errors(tmp_path, capsys):
    jsonl(tmp_path / "src/general/a.jsonl", [chat(i) for i in range(20)])
    conf = tmp_path / "mix.yaml"
    conf.write_text(
        f"mix:\n  sources_dir: {tmp_path / 'src'}\n  seed: 3\n  categories:\n"
        "    general: {sources: ['general/*.jsonl'], target: 6, outputs: [sft]}\n",
        encoding="utf-8",
    )
    assert (
        mix_main(["--config", str(conf), "--outputs", "sft", "--output-dir", str(tmp_path / "out")])
        == 0
    )
    assert len(lines(tmp_path / "out/sft_chinese.jsonl")) == 6
    assert (
        mix_main(
            ["--config", str(conf), "--outputs", "pretrain", "--output-dir", str(tmp_path / "o2")]
        )
        == 1
    )
    assert "no category feeds 'pretrain'" in capsys.readouterr().err
    conf.write_text("seed: [1\n", encoding="utf-8")
    assert mix_main(["--config", str(conf)]) == 1
    assert "cannot parse" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"max_bad_fraction": 2, "colour": 1}), encoding="utf-8")
    assert mix_main(["--config", str(bad), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "max_bad_fraction" in err and "colour" in err


def test_command_from_a_subfolder_writes_under_the_root(tmp_path, monkeypatch):
    root = tmp_path / "root"
    jsonl(root / "data/chinese/general/a.jsonl", [chat(i) for i in range(20)])
    conf = tmp_path / "mix.json"
    conf.write_text(
        json.dumps(
            {
                "seed": 3,
                "categories": {
                    "general": {"sources": ["general/*.jsonl"], "target": 6, "outputs": ["sft"]}
                },
            }
        ),
        encoding="utf-8",
    )
    sub = tmp_path / "elsewhere/sub"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    monkeypatch.setenv("MINILLM_ROOT", str(root))
    assert minillm_main(["mix", "--config", str(conf), "--outputs", "sft"]) == 0
    assert len(lines(root / "data/processed/sft_chinese.jsonl")) == 6
    assert sorted(p.name for p in sub.iterdir()) == []
    # A path typed on the command line stays relative to where it was typed.
    assert (
        minillm_main(
            ["mix", "--config", "../../mix.json", "--outputs", "sft", "--output-dir", "mine"]
        )
        == 0
    )
    assert len(lines(sub / "mine/sft_chinese.jsonl")) == 6


def test_file_in_two_categories_refused(tmp_path):
    jsonl(tmp_path / "src/general/a.jsonl", [chat(i) for i in range(5)])
    cats = {
        n: CategoryConfig(sources=["general/*.jsonl"], target=2, outputs=["sft"])
        for n in ("general", "other")
    }
    cfg = MixConfig(sources_dir=tmp_path / "src", categories=cats)
    with pytest.raises(
        MixError, match="a.jsonl: matched by the globs of both categories 'general' and 'other'"
    ):
        build_mix(cfg, "sft", tmp_path / "out")


def test_sample_sorted_is_uniform_distinct_and_seeded():
    import random

    draws = [sample_sorted(random.Random(i), 10, 3) for i in range(3000)]
    assert all(len(set(d.tolist())) == 3 and list(d) == sorted(d) for d in draws)
    freq = Counter(x for d in draws for x in d.tolist())
    assert set(freq) == set(range(10)) and max(freq.values()) < 1.15 * min(freq.values())
    assert (sample_sorted(random.Random(1), 1000, 1000) == list(range(1000))).all()
    assert list(sample_sorted(random.Random(5), 50, 7)) == list(
        sample_sorted(random.Random(5), 50, 7)
    )


def test_per_source_overrides(tmp_path):
    (tmp_path / "src/general").mkdir(parents=True)
    (tmp_path / "src/general/web.txt").write_text(
        "第一篇。\n\n第二篇。\n第三篇。\n", encoding="utf-8"
    )
    jsonl(
        tmp_path / "src/general/qa.jsonl",
        [{"question": f"问{i}", "answer": f"答{i}"} for i in range(3)],
    )
    cat = CategoryConfig(
        sources=["general/*"],
        target=6,
        outputs=["pretrain"],
        overrides={
            "*.txt": {"container": "lines", "format": "text"},
            "qa.jsonl": {"format": "alpaca"},
        },
    )
    cfg = MixConfig(
        sources_dir=tmp_path / "src",
        categories={"general": cat},
        heldout_min=0,
        heldout_fraction=0.0,
        max_bad_fraction=1.0,
    )
    r = build_mix(cfg, "pretrain", tmp_path / "out")
    docs = ["第一篇。", "第二篇。", "第三篇。"]
    assert sorted(x["text"] for x in lines(r.path)) == sorted(docs * 2)
    qa = str(tmp_path / "src/general/qa.jsonl")
    assert r.metadata["skipped"][qa] == {"missing field": 3}  # forced alpaca: no instruction
    assert r.metadata["containers_per_file"][str(tmp_path / "src/general/web.txt")] == "lines"
    with pytest.raises(ConfigError, match="unknown format 'alpacca'"):
        MixConfig.resolve(
            {
                "categories": {
                    "g": {"sources": ["*"], "target": 1, "outputs": ["sft"], "format": "alpacca"}
                }
            }
        )


def test_non_finite_numbers_never_reach_the_output(tmp_path):
    src = tmp_path / "src/general/a.jsonl"
    jsonl(
        src,
        [chat(i) for i in range(30)],
        [
            b'{"conversations": [{"role": "user", "content": "q"}, '
            b'{"role": "assistant", "content": "a"}], "score": NaN}',
            b'{"text": "t", "weight": -Infinity}',
        ],
    )
    r = build_mix(one_category(tmp_path, 10), "sft", tmp_path / "out")
    assert r.metadata["skipped"] == {str(src): {"invalid JSON": 2}}
    assert r.metadata["skipped_examples"] == [
        f"{src}:31: invalid JSON: NaN is not valid JSON (no NaN or Infinity)",
        f"{src}:32: invalid JSON: -Infinity is not valid JSON (no NaN or Infinity)",
    ]
    assert b"NaN" not in r.path.read_bytes() and check_mix(r.path, "sft") == []
    # A NaN that got into a mix by other means is reported by the check.
    with open(r.path, "ab") as f:
        f.write(
            r.path.read_bytes().splitlines()[0].replace(b'"source"', b'"w": NaN, "source"') + b"\n"
        )
    assert any("invalid JSON" in p for p in check_mix(r.path, "sft"))


def test_identity_single_brace_placeholders_filled_others_refused_at_file_line(tmp_path):
    cat = CategoryConfig(
        sources=["identity*.jsonl"], target=30, outputs=["sft"], fill_placeholders=True
    )
    rows = [
        [
            {"role": "user", "content": f"你是谁{i}"},
            {"role": "assistant", "content": "我是{name}，作者{ author }"},
        ]
        for i in range(20)
    ]
    rows.append(
        [
            {"role": "user", "content": "谁做的"},
            {"role": "assistant", "content": "{author}做的{model}"},
        ]
    )
    src = jsonl(tmp_path / "src/identity_conversations.jsonl", rows)
    cfg = MixConfig(
        sources_dir=tmp_path / "src",
        categories={"identity": cat},
        model_name="小明",
        model_author="某实验室",
    )
    r = build_mix(cfg, "sft", tmp_path / "out")
    assert r.metadata["skipped"] == {str(src): {"unfilled placeholder": 1}}
    assert r.metadata["skipped_examples"] == [
        f"{src}:21: unfilled placeholder: {{model}} has no value in the mix config "
        "(model_name / model_author)"
    ]
    assert {m["conversations"][1]["content"] for m in lines(r.path)} == {"我是小明，作者某实验室"}


# ------------------------------------------------------------------------------- dedup


def spellings(i: int) -> list[dict]:
    """One conversation four ways: as is, with a `source` field, with other whitespace, and with
    full-width punctuation and digits where the first has half-width ones."""
    base = {
        "conversations": [
            {"role": "user", "content": f"问题{i}: 为什么?"},
            {"role": "assistant", "content": f"因为 {i}, 所以!"},
        ]
    }
    spaced = {
        "conversations": [
            {"role": "user", "content": f"  问题{i}:   为什么?\n"},
            {"role": "assistant", "content": f"因为\t{i},  所以!"},
        ]
    }
    wide = str(i).translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789"})
    full = {
        "conversations": [
            {"role": "user", "content": f"问题{wide}： 为什么？"},
            {"role": "assistant", "content": f"因为 {wide}， 所以！"},
        ]
    }
    return [base, {**base, "source": "某个数据集"}, spaced, full]


def test_exact_duplicates_dropped_in_four_spellings_across_files(tmp_path):
    a = jsonl(tmp_path / "src/general/a.jsonl", [r for i in range(10) for r in spellings(i)])
    b = jsonl(
        tmp_path / "src/general/b.jsonl",
        [spellings(i)[3] for i in range(5)] + [chat(i, "另一个") for i in range(5)],
    )
    r = build_mix(one_category(tmp_path, 1000), "sft", tmp_path / "out")
    m = r.metadata
    assert m["duplicates_per_file"] == {str(a): 30, str(b): 5} and m["duplicates_total"] == 35
    assert (
        m["duplicates_per_category"] == {"general": 35} and m["valid_per_category"]["general"] == 50
    )
    assert r.records == 140  # 14 distinct training records, each at most max_repeat=10 times
    assert m["quota_unmet"] == {"general": {"quota": 1000, "drawn": 140}}
    assert m["distinct_per_category"]["general"] + r.heldout_records == 15
    assert sidecar_path(r.path).is_file()
    assert json.loads(sidecar_path(r.path).read_text())["metadata"]["duplicates_total"] == 35
    # The first occurrence is the one kept: a.jsonl's first spelling, line 1 + 4 i.
    firsts = {
        (x["source"]["file"], x["source"]["line"]) for x in lines(r.path) + lines(r.heldout_path)
    }
    assert firsts == {(str(a), 1 + 4 * i) for i in range(10)} | {(str(b), 6 + i) for i in range(5)}
    off = build_mix(one_category(tmp_path, 10, dedup=False), "sft", tmp_path / "off")
    assert off.metadata["valid_per_category"]["general"] == 50
    assert "duplicates_total" not in off.metadata


def test_no_heldout_record_has_a_twin_in_training(tmp_path):
    from minillm_core.data.dedup import content_key

    jsonl(tmp_path / "src/general/a.jsonl", [r for i in range(40) for r in spellings(i)])
    for output in ("sft", "pretrain"):
        r = build_mix(
            one_category(tmp_path, 20, outputs=(output,), heldout_fraction=0.3),
            output,
            tmp_path / output,
        )
        key = "conversations" if output == "sft" else "text"
        held = {content_key({key: x[key]}) for x in lines(r.heldout_path)}
        train = {content_key({key: x[key]}) for x in lines(r.path)}
        assert len(held) == r.heldout_records >= 6 and not held & train


def test_duplicates_across_categories_kept_in_the_first(tmp_path):
    jsonl(tmp_path / "src/general/a.jsonl", [chat(i) for i in range(6)])
    jsonl(tmp_path / "src/math/m.jsonl", [chat(i) for i in range(3, 9)])
    cats = {
        n: CategoryConfig(sources=[f"{n}/*.jsonl"], target=100, outputs=["sft"])
        for n in ("general", "math")
    }
    r = build_mix(
        MixConfig(sources_dir=tmp_path / "src", samples_dir=tmp_path / "none", categories=cats),
        "sft",
        tmp_path / "out",
    )
    assert r.metadata["duplicates_per_category"] == {"general": 0, "math": 3}
    where = {
        (x["conversations"][0]["content"], Path(x["source"]["file"]).name)
        for x in lines(r.path) + lines(r.heldout_path)
    }
    assert where == {(f"问题{i}", "a.jsonl" if i < 6 else "m.jsonl") for i in range(9)}


def test_check_reports_a_heldout_twin(tmp_path):
    jsonl(tmp_path / "src/general/a.jsonl", [r for i in range(10) for r in spellings(i)])
    r = build_mix(one_category(tmp_path, 8, heldout_min=2), "sft", tmp_path / "out")
    assert check_mix(r.path, "sft") == []
    twin = lines(r.heldout_path)[0]
    twin["conversations"][0]["content"] = " " + twin["conversations"][0]["content"] + "  "
    twin["source"] = {"file": "other.jsonl", "line": 1, "category": "general"}
    with open(r.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(twin, ensure_ascii=False) + "\n")
    assert (
        f"{r.path}:9: same content as a record in sft_chinese_heldout.jsonl (a held-out twin)"
        in check_mix(r.path, "sft")
    )
