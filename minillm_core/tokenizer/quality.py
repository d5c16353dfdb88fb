"""What a trained tokenizer is worth: the figures the tokenizer asset shows (round trip,
compression on held-out text, coverage of common Chinese characters, a vocabulary sample) and
the asset check (`check_tokenizer`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minillm_core.errors import ArtifactError
from minillm_core.schema import SPECIAL_TOKENS
from minillm_core.tokenizer.core import (
    META_FILE,
    PICKLE_FILE,
    RANKS_FILE,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)
from minillm_core.tokenizer.corpus import record_texts

# A fixed text that exercises what breaks tokenizers: Chinese, full-width punctuation, emoji
# (multi-codepoint, with ZWJ and skin tone), digit runs, mixed scripts and whitespace runs.
TRICKY_TEXT = (
    "你好，世界！今天是2024年12月31日，气温-3.5℃。「引号」『书名』（括号）【方括号】……——\n"
    "Hello,   world!\t\tTabs\tand  spaces   \n\n\n  leading and trailing   \r\n"
    "Emoji: 😀👍🏽👨‍👩‍👧‍👦🇨🇳 ❤️ 数字1234567890 ０１２３全角ＡＢＣ\u3000全角空格\n"
    "代码: for i in range(10): print(i ** 2)  # 注释\n"
    "Ünïcödé naïve café — “quotes” ‘single’ ½ ² ∑ ∞ 🤖<|bos|><|assistant_end|>"
)

# Held-out text for the compression figures: written for this module, so it is never in any
# training corpus. Compression on the mix's own held-out split is reported too when it exists.
HELDOUT_ZH = (
    "清晨的小镇还笼罩在薄雾里，街角的早餐铺已经升起了热气。老板一边擀面，一边和熟客聊着昨晚的雨。"
    "孩子们背着书包跑过石板路，笑声在巷子里回荡。图书馆的管理员打开窗户，让新鲜的空气吹进阅览室，"
    "她把归还的图书按照编号一本本放回书架。午后，阳光穿过梧桐树的叶子，在地上洒下斑驳的光影。"
    "退休的工程师坐在长椅上，用手机学习新的编程语言，他说学习永远不嫌晚。傍晚时分，河边的广场上"
    "响起了音乐，人们跳舞、散步、聊天，小贩推着车卖冰糖葫芦和烤红薯。夜深了，城市渐渐安静下来，"
    "只有便利店的灯还亮着，店员整理着货架，准备迎接第二天的忙碌。科学研究表明，规律的作息和适量的"
    "运动有助于保持身心健康，而阅读可以拓宽视野、培养耐心。"
)
HELDOUT_EN = (
    "The morning train was late again, so the commuters gathered under the station roof and "
    "watched the rain drift across the tracks. A student reviewed her notes on thermodynamics, "
    "while an old man explained to his grandson how the signals worked before computers took "
    "over. When the train finally arrived, everyone squeezed inside, shaking water from their "
    "umbrellas. In the city, the library opened at nine; its volunteers sorted returned books, "
    "repaired torn pages and answered questions about local history. Researchers have found that "
    "regular sleep, a balanced diet and moderate exercise improve both memory and mood, and that "
    "reading for twenty minutes a day can widen one's vocabulary considerably over a year."
)


# GB2312 level 1: the 3,755 most frequently used Chinese characters of the GB2312 standard
# (rows 16-55), derived from Python's codec so no list has to be shipped. A fixed, corpus-independent
# yardstick for "common Chinese characters are single tokens".
def gb2312_level1() -> list[str]:
    chars = []
    for row in range(0xB0, 0xD8):
        for col in range(0xA1, 0xFF):
            try:
                chars.append(bytes([row, col]).decode("gb2312"))
            except UnicodeDecodeError:
                pass  # row 55 ends at 0xF9
    return chars


def _is_han(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2FFFF


def compression(tok: Tokenizer, text: str) -> dict[str, float]:
    n = max(len(tok.encode(text)), 1)
    return {
        "bytes_per_token": round(len(text.encode("utf-8")) / n, 4),
        "chars_per_token": round(len(text) / n, 4),
        "tokens": n,
    }


def single_token_share(tok: Tokenizer, chars: Sequence[str]) -> float:
    if not chars:
        return 0.0
    return round(sum(len(tok.encode(c)) == 1 for c in chars) / len(chars), 4)


def _heldout_texts(paths: Sequence[Path], limit_chars: int = 2_000_000) -> str:
    out: list[str] = []
    size = 0
    for p in paths:
        with open(p, "rb") as f:
            for line in f:
                try:
                    texts = record_texts(json.loads(line))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                for t in texts:
                    out.append(t)
                    size += len(t)
                if size >= limit_chars:
                    return "\n".join(out)
    return "\n".join(out)


def quality_metadata(
    tok: Tokenizer, han_counts: Counter | None = None, heldout_paths: Sequence[Path] = ()
) -> dict[str, Any]:
    """The figures the tokenizer asset shows: round trip, compression, coverage, a vocab sample."""
    ids = tok.encode(TRICKY_TEXT)
    md: dict[str, Any] = {
        "roundtrip_ok": tok.decode(ids) == TRICKY_TEXT,
        "roundtrip_tokens": len(ids),
        "special_strings_are_plain_text": not (set(ids) & set(tok.special_tokens.values())),
        "compression_heldout_zh": compression(tok, HELDOUT_ZH),
        "compression_heldout_en": compression(tok, HELDOUT_EN),
    }
    if heldout_paths:
        text = _heldout_texts(heldout_paths)
        if text:
            md["compression_heldout_mix"] = compression(tok, text)
    level1 = gb2312_level1()
    md["gb2312_level1_single_token_share"] = single_token_share(tok, level1)
    if han_counts:
        top = [c for c, _ in sorted(han_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3500]]
        md["top3500_han_single_token_share"] = single_token_share(tok, top)
        md["top3500_han_distinct_in_sample"] = len(top)
    md.update(_vocab_sample(tok))
    return md


def _vocab_sample(tok: Tokenizer) -> dict[str, Any]:
    """A decoded sample of the learned tokens: evenly spaced over the merge ranks, plus the
    longest Chinese tokens (what the vocabulary learned about Chinese words)."""
    md: dict[str, Any] = {}
    n = len(tok.mergeable_ranks)
    if n > 256:
        step = max((n - 256) // 24, 1)
        # [rank, token]; a token that is not whole UTF-8 (part of a character) shows its bytes.
        md["vocab_sample"] = [[r, _show_token(tok.token_bytes(r))] for r in range(256, n, step)]
        han_tokens = []
        for b, r in tok.mergeable_ranks.items():
            try:
                s = b.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if s and all(_is_han(c) for c in s) and len(s) > 1:
                han_tokens.append((-len(s), r, s))
        md["longest_chinese_tokens"] = [s for _, _, s in sorted(han_tokens)[:20]]
        md["multi_char_chinese_tokens"] = len(han_tokens)
    return md


def _show_token(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return repr(b)


def check_tokenizer(directory: Path | str) -> list[str]:
    """Problems with a tokenizer directory (empty list = healthy): for the asset check."""
    problems: list[str] = []
    d = Path(directory)
    for name in (RANKS_FILE, META_FILE, PICKLE_FILE):
        if not (d / name).is_file():
            problems.append(f"missing {name}")
    try:
        tok = load_tokenizer(d)
    except (TokenizerError, ArtifactError, OSError, ValueError) as exc:
        return problems + [f"cannot load: {exc}"]
    meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    if meta.get("vocab_size") != tok.get_vocab_size():
        problems.append(f"meta vocab_size {meta.get('vocab_size')} != {tok.get_vocab_size()}")
    if set(tok.special_tokens) != set(SPECIAL_TOKENS):
        problems.append(f"special tokens differ from the project's: {sorted(tok.special_tokens)}")
    ids = tok.encode(TRICKY_TEXT)
    if tok.decode(ids) != TRICKY_TEXT:
        problems.append("round trip failed on the fixed tricky text")
    if set(ids) & set(tok.special_tokens.values()):
        problems.append("special-token strings in text were encoded as control tokens")
    for ch in "的一是在不了有和人这中大为上个国我以要他":
        if len(tok.encode(ch)) != 1 and tok.get_vocab_size() >= 2000:
            problems.append(f"common character {ch!r} is not a single token")
            break
    return problems
