//! Character classes used by the hand-written splitter: `\p{L}`, `\p{N}` and `\s`.
//!
//! The ranges come from `regex-syntax` (the parser behind the `regex` and `fancy-regex` crates),
//! so the hand-written matcher classifies every character exactly as the regex engine does — the
//! same Unicode version, the same definition of `\s` (the Unicode `White_Space` property). A
//! 64 KiB table answers the Basic Multilingual Plane (all of Chinese, ASCII, punctuation) with one
//! load; characters above U+FFFF (emoji, rare Han) fall back to a binary search.

use regex_syntax::hir::{Class, HirKind};
use std::sync::OnceLock;

pub const LETTER: u8 = 1;
pub const NUMBER: u8 = 2;
pub const SPACE: u8 = 4;

struct Tables {
    bmp: Vec<u8>,
    letters: Vec<(u32, u32)>,
    numbers: Vec<(u32, u32)>,
    spaces: Vec<(u32, u32)>,
}

fn ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("a Unicode class parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("{pattern} parsed to {other:?}, not a Unicode class"),
    }
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let letters = ranges(r"\p{L}");
        let numbers = ranges(r"\p{N}");
        let spaces = ranges(r"\s");
        let mut bmp = vec![0u8; 0x10000];
        for (list, bit) in [(&letters, LETTER), (&numbers, NUMBER), (&spaces, SPACE)] {
            for &(lo, hi) in list.iter() {
                if lo > 0xFFFF {
                    break;
                }
                for c in lo..=hi.min(0xFFFF) {
                    bmp[c as usize] |= bit;
                }
            }
        }
        Tables {
            bmp,
            letters,
            numbers,
            spaces,
        }
    })
}

fn in_ranges(list: &[(u32, u32)], c: u32) -> bool {
    // Index of the first range starting after c; c is in the one before it, if anywhere.
    let i = list.partition_point(|&(lo, _)| lo <= c);
    i > 0 && c <= list[i - 1].1
}

/// The class bits of `c` (LETTER, NUMBER, SPACE; 0 for everything else).
#[inline(always)]
pub fn class_of(c: u32) -> u8 {
    let t = tables();
    if c < 0x10000 {
        t.bmp[c as usize]
    } else {
        class_of_astral(c)
    }
}

/// The BMP table (0x10000 entries), for hot loops that keep the reference instead of asking the
/// `OnceLock` per character.
pub fn bmp_table() -> &'static [u8] {
    &tables().bmp
}

/// Class of a character above U+FFFF (binary search).
#[cold]
pub fn class_of_astral(c: u32) -> u8 {
    let t = tables();
    let mut k = 0;
    if in_ranges(&t.letters, c) {
        k |= LETTER;
    }
    if in_ranges(&t.numbers, c) {
        k |= NUMBER;
    }
    if in_ranges(&t.spaces, c) {
        k |= SPACE;
    }
    k
}

/// Force the tables to be built (so the first timed call does not pay for it).
pub fn init() {
    tables();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_common_characters() {
        assert_eq!(class_of('a' as u32), LETTER);
        assert_eq!(class_of('中' as u32), LETTER);
        assert_eq!(class_of('7' as u32), NUMBER);
        assert_eq!(class_of('½' as u32), NUMBER);
        assert_eq!(class_of(' ' as u32), SPACE);
        assert_eq!(class_of('\u{3000}' as u32), SPACE); // ideographic space
        assert_eq!(class_of('\u{85}' as u32), SPACE);
        assert_eq!(class_of('，' as u32), 0);
        assert_eq!(class_of('😀' as u32), 0);
        assert_eq!(class_of(0x20000), LETTER); // CJK Extension B
        assert_eq!(class_of(0x1D7CE), NUMBER); // mathematical bold digit zero
    }
}
