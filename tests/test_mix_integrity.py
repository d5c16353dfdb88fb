"""Data integrity of the mix: decontamination, every file accounted for, size and repeat caps,
control characters, mix_report.json, the dry run, near-duplicates."""

from __future__ import annotations

import json
import random
from pathlib import Path

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
    assert heldout_records(held, "sft", logged.append) == clean
    assert dirty  # held out for SFT, trained on in pretrain (held-out splits differ per output)
    assert f"left out {len(dirty)} held-out records" in logged[0]
    # The pretrain checkpoint never saw the SFT mix: only the pretrain mix counts for it.
    assert set(clean_heldout(out / "pretrain_chinese_heldout.jsonl", "pretrain")[1]) == {
        "pretrain_chinese.jsonl"
    }
