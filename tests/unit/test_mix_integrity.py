"""Data integrity of the mix: decontamination, every file accounted for, size and repeat caps,
control characters, mix_report.json, the dry run, near-duplicates."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm_core.data import CategoryConfig, MixConfig, build_mix, check_mix
from minillm_core.data.check import check_mix_counts
from minillm_core.data.decontam import (
    WindowIndex,
    clean_heldout,
    record_text,
    window_hashes,
)
from minillm_core.eval.data import heldout_records


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def hanzi(rng: random.Random, n: int) -> str:
    return "".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(n))


def conv(q: str, a: str) -> dict:
    return {"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def config(tmp_path: Path, target: int, outputs=("sft",), **kw) -> MixConfig:
    cat = CategoryConfig(sources=["general/*.jsonl"], target=target, outputs=list(outputs))
    return MixConfig(
        sources_dir=tmp_path / "src",
        samples_dir=tmp_path / "none",
        categories={"general": cat},
        **kw,
    )


def windows(rec: dict, keys: tuple[str, ...], w: int = 50) -> set[str]:
    """The reference: every 50-character substring of the normalised text, as strings."""
    t = record_text({k: rec[k] for k in keys})
    return {t[i : i + w] for i in range(len(t) - w + 1)}


def leaky_corpus(tmp_path: Path, n: int = 60) -> Path:
    """n long conversations, and for each a second one quoting 60 of its characters (with
    other spacing and full-width punctuation), so whichever is held out, its twin must go."""
    rng = random.Random(7)
    rows, leaks = [], []
    for i in range(n):
        q, a = hanzi(rng, 40), hanzi(rng, 45) + "," + hanzi(rng, 44)
        rows.append(conv(q + "?", a))
        quote = a[10:70].replace(",", "，")  # full-width: the same after NFKC
        leaks.append(conv(f"引用{i}？" + hanzi(rng, 20), "他说：\n  " + quote + "  。"))
    return jsonl(tmp_path / "src/general/a.jsonl", rows + leaks)


def test_window_hash_matches_substring_equality():
    rng = random.Random(1)
    text = hanzi(rng, 120) + "abc" + hanzi(rng, 30)
    h = window_hashes(text, 50)
    assert len(h) == len(text) - 49
    for i in (0, 17, len(text) - 50):
        assert window_hashes("前缀" + text[i : i + 50] + "后", 50)[2] == h[i]
    assert len(set(h.tolist())) == len(h)  # distinct windows, distinct hashes
    idx = WindowIndex(50)
    idx.add({"text": text})
    idx.freeze()
    assert idx.overlaps({"text": "x" + text[30:80]})
    assert not idx.overlaps({"text": text[30:79]})  # 49 characters: no full window
    # The batched test agrees with the per-record one, and a window split across two
    # consecutive texts of a batch is not a hit.
    short = text[:20]
    idx.add({"text": short})
    idx.freeze()
    batch = ["无关" * 40, "y" + text[60:110], "开头" + text[100:125], text[125:150] + "结尾", short]
    assert idx.hits(batch) == [i for i, t in enumerate(batch) if idx.overlaps({"text": t})]
    assert idx.hits(batch) == [1, 4]


def test_training_records_sharing_a_window_with_heldout_are_dropped(tmp_path):
    src = leaky_corpus(tmp_path)
    r = build_mix(
        config(tmp_path, 1000, heldout_fraction=0.2, max_repeat=100), "sft", tmp_path / "o"
    )
    m = r.metadata
    held = lines(r.heldout_path)
    train = lines(r.path)
    assert m["decontam_window"] == 50 and len(held) == m["heldout_per_category"]["general"] >= 20
    held_w = set().union(*(windows(x, ("conversations",)) for x in held))
    assert all(not windows(x, ("conversations",)) & held_w for x in train)
    # The reference count: source records not held out that share a window with one that is.
    held_lines = {x["source"]["line"] for x in held}
    expect = sum(
        1
        for i, x in enumerate(lines(src), 1)
        if i not in held_lines and windows(x, ("conversations",)) & held_w
    )
    assert m["contaminated_total"] == m["contaminated_per_file"][str(src)] == expect > 0
    assert not held_lines & {x["source"]["line"] for x in train}
    # A quota below the pool: only drawn records are checked, hits excluded and the draw
    # repeated, so the training file is clean all the same and the count is at most the above.
    small = build_mix(config(tmp_path, 30, heldout_fraction=0.2), "sft", tmp_path / "small")
    held_w = set().union(*(windows(x, ("conversations",)) for x in lines(small.heldout_path)))
    assert small.records == 30
    assert all(not windows(x, ("conversations",)) & held_w for x in lines(small.path))
    assert 0 < small.metadata["contaminated_total"] <= expect
    assert m["valid_per_category"]["general"] == 120
    assert check_mix_counts(r.path, "sft")[1] == {"heldout_twins": 0, "window_overlaps": 0}
    off = build_mix(
        config(tmp_path, 1000, heldout_fraction=0.2, max_repeat=100, decontam_window=0),
        "sft",
        tmp_path / "off",
    )
    assert "contaminated_total" not in off.metadata
    problems, counts = check_mix_counts(off.path, "sft")
    assert counts["window_overlaps"] > 0  # checked at the default window all the same
    assert "shares a 50-character window" in problems[0]


def test_check_reports_a_window_overlap(tmp_path):
    leaky_corpus(tmp_path)
    r = build_mix(config(tmp_path, 50, heldout_fraction=0.1), "sft", tmp_path / "o")
    assert check_mix(r.path, "sft") == []
    h = lines(r.heldout_path)[0]
    text = record_text({"conversations": h["conversations"]})
    leak = conv("新的问题", "转述：" + text[5:70])
    leak["source"] = {"file": "x.jsonl", "line": 1, "category": "general"}
    with open(r.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(leak, ensure_ascii=False) + "\n")
    problems, counts = check_mix_counts(r.path, "sft")
    assert counts == {"heldout_twins": 0, "window_overlaps": 1}
    assert any(
        "shares a 50-character window with a record in sft_chinese_heldout.jsonl" in p
        for p in problems
    )


def test_eval_scores_only_heldout_records_clean_of_every_seen_mix(tmp_path):
    rng = random.Random(3)
    rows = [conv(hanzi(rng, 30), hanzi(rng, 60)) for _ in range(40)]
    # Text records feed pretrain only, so the two outputs draw their held-out splits apart.
    jsonl(tmp_path / "src/general/a.jsonl", [{"text": hanzi(rng, 80)} for _ in range(9)] + rows)
    out = tmp_path / "processed"
    for output in ("pretrain", "sft"):
        build_mix(
            config(tmp_path, 30, outputs=("pretrain", "sft"), heldout_fraction=0.25, seed=5),
            output,
            out,
        )
    held = out / "sft_chinese_heldout.jsonl"
    clean, dropped = clean_heldout(held, "sft")
    pre_w = set().union(*(windows(x, ("text",)) for x in lines(out / "pretrain_chinese.jsonl")))
    dirty = [x for x in lines(held) if windows(x, ("conversations",)) & pre_w]
    assert dropped == {"pretrain_chinese.jsonl": len(dirty), "sft_chinese.jsonl": 0}
    assert len(clean) == len(lines(held)) - len(dirty)
    assert all(not windows(x, ("conversations",)) & pre_w for x in clean)
    logged: list[str] = []
    assert heldout_records(held, "sft", logged.append) == (clean, len(dirty))
    assert dirty  # held out for SFT, trained on in pretrain (held-out splits differ per output)
    assert f"left out {len(dirty)} held-out records" in logged[0]
    # The pretrain checkpoint never saw the SFT mix: only the pretrain mix counts for it.
    assert set(clean_heldout(out / "pretrain_chinese_heldout.jsonl", "pretrain")[1]) == {
        "pretrain_chinese.jsonl"
    }


# ------------------------------------------------------------------ every file accounted for


def chat(i: int, prefix: str = "问题") -> dict:
    return conv(f"{prefix}{i}", f"回答{i}")


def test_unmatched_file_warned_with_globs_and_mapped_by_config(tmp_path):
    jsonl(tmp_path / "src/general/a.jsonl", [chat(i) for i in range(5)])
    belle = jsonl(tmp_path / "src/belle_cn.jsonl", [chat(i, "贝儿") for i in range(4)])
    logged: list[str] = []
    r = build_mix(config(tmp_path, 10), "sft", tmp_path / "o", log=logged.append)
    warning = next(x for x in logged if "belle_cn.jsonl" in x)
    assert "used by no category" in warning and "general: general/*.jsonl" in warning
    assert 'files: {"belle_cn.jsonl": "general"}' in warning
    assert r.metadata["unmatched_files"] == ["belle_cn.jsonl"]
    assert str(belle) not in r.metadata["records_per_file"]
    mapped = config(tmp_path, 10, files={"belle_cn.jsonl": "general"})
    logged.clear()
    r = build_mix(mapped, "sft", tmp_path / "m", log=logged.append)
    assert r.metadata["unmatched_files"] == [] and not any("no category" in x for x in logged)
    assert r.metadata["valid_per_category"]["general"] == 9
    with pytest.raises(Exception, match="unknown category 'nope'"):
        config(tmp_path, 10, files={"belle_cn.jsonl": "nope"})


def test_empty_and_zero_record_files_named(tmp_path):
    jsonl(tmp_path / "src/general/a.jsonl", [chat(i) for i in range(5)])
    empty = tmp_path / "src/general/empty.jsonl"
    empty.write_bytes(b"")
    texts = jsonl(tmp_path / "src/general/texts.jsonl", [{"text": "只有正文"}])
    logged: list[str] = []
    r = build_mix(config(tmp_path, 4), "sft", tmp_path / "o", log=logged.append)
    assert r.metadata["empty_files"] == [str(empty)]
    assert r.metadata["zero_record_files"] == [str(texts)]
    assert f"mix sft: warning: {empty}: empty (no records)" in logged
    assert f"mix sft: warning: {texts}: no record usable for sft" in logged
    rep = json.loads((tmp_path / "o/mix_report.json").read_text())["sft"]
    assert rep["empty_files"] == [str(empty)]
    assert rep["no_form_for_output"] == {str(texts): {"records": 1, "first_lines": [1]}}


# ------------------------------------------------------------------ size, repeats, controls


def test_giant_record_dropped_named_and_resampling_capped(tmp_path):
    rows = [chat(i) for i in range(3)] + [conv("长文", "很" * 200_000)]
    src = jsonl(tmp_path / "src/general/a.jsonl", rows)
    logged: list[str] = []
    cfg = config(tmp_path, 16_000, heldout_min=1)
    from minillm_core.model import ModelConfig

    context = ModelConfig.model_fields["max_position_embeddings"].default
    assert cfg.max_record_chars == context * 16  # 16 characters a position of the context
    r = build_mix(cfg, "sft", tmp_path / "o", log=logged.append)
    m = r.metadata
    assert m["dropped_per_file"] == {str(src): {"too long": 1}} and m["dropped_total"] == 1
    assert max(len(json.dumps(x)) for x in lines(r.path)) < 1000
    # Two training records, each at most max_repeat (10) times: 20 records, not 16,000.
    assert r.records == 20 and m["quota_unmet"] == {"general": {"quota": 16_000, "drawn": 20}}
    assert any("at most max_repeat=10 times, so 20 records instead of 16000" in x for x in logged)
    rep = json.loads((tmp_path / "o/mix_report.json").read_text())["sft"]
    assert rep["bad_lines"] == [
        {
            "file": str(src),
            "line": 4,
            "reason": "too long",
            "detail": "200002 characters > max_record_chars 8192",
        }
    ]
    assert rep["quota_unmet"] == m["quota_unmet"]
    assert check_mix(r.path, "sft") == []
    r = build_mix(
        config(tmp_path, 100, max_record_chars=300_000, max_repeat=2), "sft", tmp_path / "b"
    )
    assert r.metadata["dropped_total"] == 0 and r.records == 6


def test_control_characters_stripped_and_counted(tmp_path):
    rows = [
        conv("正常\t问题\r\n", "回答"),
        conv("带\x00空字符", "回\x1b[31m答\x7f"),
        conv("问\x07题", "答\x0b案"),
    ]
    src = jsonl(tmp_path / "src/general/a.jsonl", rows)
    r = build_mix(config(tmp_path, 6, heldout_min=0), "sft", tmp_path / "o")
    out = (tmp_path / "o/sft_chinese.jsonl").read_text(encoding="utf-8")
    for ch in "\x00\x1b\x7f\x07\x0b":
        assert json.dumps(ch)[1:-1] not in out and ch not in out
    texts = {x["conversations"][1]["content"] for x in lines(r.path) + lines(r.heldout_path)}
    assert texts == {"回答", "回[31m答", "答案"}
    assert r.metadata["control_chars_stripped"] == {str(src): 2}


# ------------------------------------------------------------------ reporting and dry run


def test_every_bad_line_in_mix_report(tmp_path):
    good = [json.dumps(chat(i), ensure_ascii=False) for i in range(100)]
    bad = ['{"conversations": [', "NaN", '{"text": Infinity}', "[1, 2", '{"a": 1}', "{", '"x"', "]"]
    raw = good[:50] + bad + good[50:]
    src = tmp_path / "src/general/a.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text("\n".join(raw) + "\n", encoding="utf-8")
    logged: list[str] = []
    build_mix(config(tmp_path, 20), "sft", tmp_path / "o", log=logged.append)
    rep = json.loads((tmp_path / "o/mix_report.json").read_text())
    assert set(rep) == {"sft"}
    bad_lines = rep["sft"]["bad_lines"]
    assert [b["line"] for b in bad_lines] == list(range(51, 59))
    assert all(b["file"] == str(src) and b["reason"] for b in bad_lines)
    assert sum(rep["sft"]["counts_per_reason"].values()) == 8
    assert rep["sft"]["counts_per_source"] == {str(src): rep["sft"]["counts_per_reason"]}
    assert any(x.startswith("mix sft: skipped per reason: invalid JSON:") for x in logged)
    # Another output's build adds its own section beside this one.
    jsonl(tmp_path / "src/general/t.jsonl", [{"text": "正文"}])
    build_mix(config(tmp_path, 20, outputs=("pretrain", "sft")), "pretrain", tmp_path / "o")
    assert set(json.loads((tmp_path / "o/mix_report.json").read_text())) == {"sft", "pretrain"}


def test_dry_run_reports_every_failing_file(tmp_path, capsys):
    from minillm_cli.mix import main as mix_main

    for name in ("a", "b"):
        jsonl(tmp_path / f"src/general/{name}.jsonl", [chat(i) for i in range(5)])
        with open(tmp_path / f"src/general/{name}.jsonl", "a") as f:
            f.write("not json\n{broken\n")
    jsonl(tmp_path / "src/general/c.jsonl", [chat(i) for i in range(5)])
    cfg_file = tmp_path / "mix.json"
    cfg_file.write_text(
        json.dumps(
            {
                "categories": {
                    "general": {"sources": ["general/*.jsonl"], "target": 5, "outputs": ["sft"]}
                },
                "allow_samples": False,
            }
        )
    )
    argv = ["--dry-run", "--config", str(cfg_file), "--sources-dir", str(tmp_path / "src")]
    assert mix_main([*argv, "--outputs", "sft"]) == 1
    out = capsys.readouterr().out
    assert "dry run: 2 failures:" in out
    for name in ("a", "b"):
        assert f"{tmp_path}/src/general/{name}.jsonl: 2 of 7 records are bad" in out
        assert f"skipped {tmp_path}/src/general/{name}.jsonl:7: invalid JSON" in out
    assert f"{tmp_path}/src/general/c.jsonl: jsonl" in out


# ------------------------------------------------------------------ Chinese fields, test splits


def test_metamath_layout_and_test_rows_without_answers(tmp_path):
    rows = [
        {
            "question": "Natalia sold clips to 48 friends.",
            "question_zh": f"娜塔莉亚卖给了{i}个朋友发夹。",
            "answer": "She sold 48. #### 48",
            "answer_zh": f"她卖了{i}个。#### {i}",
        }
        for i in range(6)
    ]
    test_rows = [
        {"question": "哪个正确？", "A": "甲", "B": "乙", "C": "丙", "D": "丁", "answer": ""},
        {"question_zh": "一加一等于几？", "answer_zh": None},
    ]
    src = jsonl(tmp_path / "src/general/m.jsonl", rows + test_rows)
    r = build_mix(config(tmp_path, 5, max_bad_fraction=0.5), "sft", tmp_path / "o")
    got = lines(r.path) + lines(r.heldout_path)
    assert len({x["source"]["line"] for x in got}) == 6
    for x in got:
        user, answer = (m["content"] for m in x["conversations"])
        assert user.startswith("娜塔莉亚") and "Natalia" not in user
        assert answer.startswith("她卖了") and "答案：" in answer
    assert r.metadata["skipped"] == {str(src): {"empty content": 1, "missing field": 1}}


# ------------------------------------------------------------------ near-duplicates


def test_near_duplicates_dropped_with_minhash_lsh(tmp_path):
    rng = random.Random(11)
    originals = [conv(hanzi(rng, 40), hanzi(rng, 200)) for _ in range(20)]
    near = []
    for o in originals[:8]:  # one character changed in the answer
        a = o["conversations"][1]["content"]
        near.append(conv(o["conversations"][0]["content"], a[:100] + "改" + a[101:]))
    far = [
        conv(hanzi(rng, 40), o["conversations"][1]["content"][:100] + hanzi(rng, 100))
        for o in originals[8:12]
    ]
    a = jsonl(tmp_path / "src/general/a.jsonl", originals)
    b = jsonl(tmp_path / "src/general/b.jsonl", near + far + [originals[15]])
    on = config(tmp_path, 100, near_dedup=True, decontam_window=0, max_repeat=100)
    r = build_mix(on, "sft", tmp_path / "on")
    m = r.metadata
    assert m["near_duplicates_per_file"] == {str(b): 8} and m["near_duplicates_total"] == 8
    assert m["duplicates_per_file"] == {str(b): 1}  # the exact copy counts as exact
    kept = {
        (Path(x["source"]["file"]).name, x["source"]["line"])
        for x in lines(r.path) + lines(r.heldout_path)
    }
    assert kept == {("a.jsonl", i) for i in range(1, 21)} | {("b.jsonl", i) for i in range(9, 13)}
    rep = json.loads((tmp_path / "on/mix_report.json").read_text())["sft"]
    assert rep["near_duplicates_total"] == 8
    off = build_mix(
        config(tmp_path, 100, decontam_window=0, max_repeat=100), "sft", tmp_path / "off"
    )
    assert "near_duplicates_total" not in off.metadata and off.metadata["duplicates_total"] == 1


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(
            "你好，：！（）；？．１２Ａａ ～…\u3000\u00a0\uff5e\u2026\u0301e\u1100\u1161\ufb01"
        )
    )
)
def test_dedup_normalisation_is_nfkc(text):
    from minillm_core.data.dedup import _nfkc

    assert _nfkc(text) == unicodedata.normalize("NFKC", text)


@pytest.mark.parametrize(
    "raw, may",
    [
        (rb'{"t": "a\u0007b"}', True),
        (rb'{"t": "a\bb"}', True),
        (rb'{"t": "a\fb"}', True),
        (b'{"t": "a\x7fb"}', True),
        (rb'{"t": "line\nline\ttab \"q\" \\ \u4e2d"}', False),
    ],
)
def test_line_control_check(raw, may):
    from minillm_core.data.policy import line_may_have_controls

    assert line_may_have_controls(raw) is may


def test_lsh_candidates_below_the_threshold_are_kept():
    """LSH banding makes some pairs well below the threshold candidates (13 of 200 pairs at a
    Jaccard of about 0.69, 2 at 0.58, without the check); the signature check keeps them."""
    from minillm_core.data.neardup import NearDup

    rng = random.Random(0)

    def pairs(edit_fraction: float) -> int:
        nd, dropped = NearDup(0.8, seed=0), 0
        for _ in range(200):
            a = [chr(0x4E00 + rng.randrange(3000)) for _ in range(400)]
            b = list(a)
            for i in rng.sample(range(400), int(400 * edit_fraction)):
                b[i] = chr(0x4E00 + rng.randrange(3000))
            assert not nd.seen({"text": "".join(a)})
            dropped += nd.seen({"text": "".join(b)})
        return dropped

    assert pairs(0.04) == 0 and pairs(0.06) == 0  # Jaccard about 0.69 and 0.58
    assert pairs(0.005) >= 190  # about 0.95: near-duplicates, still dropped
