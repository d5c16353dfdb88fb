//! Pre-tokenization: cutting text into chunks that BPE never merges across.
//!
//! The default pattern (nanochat's variant of GPT-4's, `\p{N}{1,2}`) and GPT-4's own (`\p{N}{1,3}`)
//! are matched by a hand-written scanner; any other pattern goes through `fancy-regex`.
//!
//! Why: splitting and counting dominate training time. `fancy-regex` must run these patterns on its
//! backtracking VM (they use possessive quantifiers and a look-ahead), which re-tries up to seven
//! alternatives at every chunk. The scanner decides each chunk from its first one or two characters
//! and walks the text once. It is verified equal to `fancy-regex` in the unit tests below (fixed
//! tricky cases plus randomized strings over an alphabet of every character class that matters)
//! and, from Python, against the `regex` module and tiktoken.
//!
//! The pattern, alternative by alternative (first alternative that matches wins):
//! 1. `'(?i:[sdmt]|ll|ve|re)`         English contractions ('s 'd 'm 't 'll 've 're, any case)
//! 2. `[^\r\n\p{L}\p{N}]?+\p{L}+`     a letter run, with at most one leading non-letter (" hello")
//! 3. `\p{N}{1,2}`                    one or two digits
//! 4. ` ?[^\s\p{L}\p{N}]++[\r\n]*`   punctuation/symbols (optionally after a space) + newlines
//! 5. `\s*[\r\n]`                     whitespace up to and including the last newline of the run
//! 6. `\s+(?!\S)`                     whitespace, leaving the last space to the next chunk
//! 7. `\s+`                           whatever whitespace is left
//!
//! Every position starts a match (some alternative always applies), so the chunks tile the text.

use crate::unicode::{bmp_table, class_of_astral, LETTER, NUMBER, SPACE};

/// nanochat's split pattern (GPT-4's with `\p{N}{1,2}`): the project's default.
pub const DEFAULT_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
/// GPT-4's split pattern (cl100k_base), also matched by the hand-written scanner.
pub const GPT4_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// A compiled split pattern.
pub enum Splitter {
    /// The hand-written scanner for the GPT-4-style pattern with `\p{N}{1,max_digits}`.
    Fast(Fast),
    /// Any other pattern.
    Regex(fancy_regex::Regex),
}

impl Splitter {
    pub fn new(pattern: &str) -> Result<Self, String> {
        Ok(match pattern {
            DEFAULT_PATTERN => Splitter::Fast(Fast::new(2)),
            GPT4_PATTERN => Splitter::Fast(Fast::new(3)),
            _ => Splitter::Regex(
                fancy_regex::Regex::new(pattern)
                    .map_err(|e| format!("invalid split pattern {pattern:?}: {e}"))?,
            ),
        })
    }

    /// A splitter that always uses the regex engine (the tests compare it with the scanner).
    pub fn regex_only(pattern: &str) -> Result<Self, String> {
        fancy_regex::Regex::new(pattern)
            .map(Splitter::Regex)
            .map_err(|e| format!("invalid split pattern {pattern:?}: {e}"))
    }

    pub fn is_fast(&self) -> bool {
        matches!(self, Splitter::Fast(_))
    }

    /// Call `f` on each chunk of `text`, in order.
    pub fn for_each<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) -> Result<(), String> {
        match self {
            Splitter::Fast(fast) => {
                let b = text.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    let j = fast.chunk_end(b, i);
                    f(&text[i..j]);
                    i = j;
                }
                Ok(())
            }
            Splitter::Regex(re) => {
                for m in re.find_iter(text) {
                    let m = m.map_err(|e| format!("split pattern failed on a text: {e}"))?;
                    f(m.as_str());
                }
                Ok(())
            }
        }
    }

    /// The chunks of `text` as a vector (tests and the Python `split` helper).
    pub fn split<'a>(&self, text: &'a str) -> Result<Vec<&'a str>, String> {
        let mut out = Vec::new();
        self.for_each(text, |c| out.push(c))?;
        Ok(out)
    }
}

/// Decode the UTF-8 character starting at byte `i` of a valid `str`: (code point, byte length).
#[inline(always)]
fn decode(b: &[u8], i: usize) -> (u32, usize) {
    let x = b[i];
    if x < 0x80 {
        (x as u32, 1)
    } else if x < 0xE0 {
        ((((x & 0x1F) as u32) << 6) | (b[i + 1] & 0x3F) as u32, 2)
    } else if x < 0xF0 {
        (
            (((x & 0x0F) as u32) << 12)
                | (((b[i + 1] & 0x3F) as u32) << 6)
                | (b[i + 2] & 0x3F) as u32,
            3,
        )
    } else {
        (
            (((x & 0x07) as u32) << 18)
                | (((b[i + 1] & 0x3F) as u32) << 12)
                | (((b[i + 2] & 0x3F) as u32) << 6)
                | (b[i + 3] & 0x3F) as u32,
            4,
        )
    }
}

pub struct Fast {
    bmp: &'static [u8],
    max_digits: usize,
}

impl Fast {
    fn new(max_digits: usize) -> Self {
        Fast {
            bmp: bmp_table(),
            max_digits,
        }
    }

    #[inline(always)]
    fn class(&self, c: u32) -> u8 {
        if c < 0x10000 {
            self.bmp[c as usize]
        } else {
            class_of_astral(c)
        }
    }

    #[inline(always)]
    fn letters_end(&self, b: &[u8], mut j: usize) -> usize {
        while j < b.len() {
            let (c, l) = decode(b, j);
            if self.class(c) & LETTER == 0 {
                break;
            }
            j += l;
        }
        j
    }

    /// End (exclusive byte index) of the chunk that starts at byte `i` (`i < b.len()`).
    pub fn chunk_end(&self, b: &[u8], i: usize) -> usize {
        let n = b.len();
        let (c, cl) = decode(b, i);
        let k = self.class(c);

        // 1. Contractions. Case-insensitive in Unicode: 's' also matches U+017F (long s).
        if c == '\'' as u32 && i + 1 < n {
            let (c2, l2) = decode(b, i + 1);
            if matches!(
                c2,
                0x73 | 0x53 | 0x64 | 0x44 | 0x6D | 0x4D | 0x74 | 0x54 | 0x17F
            ) {
                return i + 1 + l2;
            }
            if i + 2 < n && c2 < 0x80 {
                let c3 = b[i + 2] as u32;
                // ASCII letters fold with | 0x20; no other byte folds onto l, v, e or r.
                match (c2 | 0x20, c3 | 0x20) {
                    (0x6C, 0x6C) | (0x76, 0x65) | (0x72, 0x65) => return i + 3,
                    _ => {}
                }
            }
        }

        // 2. A letter run, optionally after one character that is not \r, \n, letter or number.
        if k & LETTER != 0 {
            return self.letters_end(b, i + cl);
        }
        if k & NUMBER == 0 && c != '\r' as u32 && c != '\n' as u32 && i + cl < n {
            let (c2, l2) = decode(b, i + cl);
            if self.class(c2) & LETTER != 0 {
                return self.letters_end(b, i + cl + l2);
            }
        }

        // 3. One to max_digits numbers.
        if k & NUMBER != 0 {
            let mut j = i + cl;
            let mut digits = 1;
            while digits < self.max_digits && j < n {
                let (c2, l2) = decode(b, j);
                if self.class(c2) & NUMBER == 0 {
                    break;
                }
                j += l2;
                digits += 1;
            }
            return j;
        }

        // 4. Optional space, a run of symbols (class 0: not space, letter or number), newlines.
        let p = if c == ' ' as u32 { i + 1 } else { i };
        if p < n {
            let (cp, lp) = decode(b, p);
            if self.class(cp) == 0 {
                let mut j = p + lp;
                while j < n {
                    let (c2, l2) = decode(b, j);
                    if self.class(c2) != 0 {
                        break;
                    }
                    j += l2;
                }
                while j < n && (b[j] == b'\r' || b[j] == b'\n') {
                    j += 1;
                }
                return j;
            }
        }

        // 5-7. Whitespace (c is whitespace: every other class returned above).
        debug_assert!(k & SPACE != 0);
        let mut j = i;
        let mut last_newline = None;
        let mut last_start = i;
        while j < n {
            let (c2, l2) = decode(b, j);
            if self.class(c2) & SPACE == 0 {
                break;
            }
            if c2 == '\r' as u32 || c2 == '\n' as u32 {
                last_newline = Some(j);
            }
            last_start = j;
            j += l2;
        }
        if let Some(nl) = last_newline {
            return nl + 1; // 5. \s*[\r\n]
        }
        if j == n || last_start == i {
            return j; // 6. at the end of the text (no \S follows), or 7. a single space
        }
        last_start // 6. leave the run's last space to start the next chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair(Splitter, Splitter);

    fn pair(pattern: &str) -> Pair {
        let fast = Splitter::new(pattern).unwrap();
        assert!(fast.is_fast());
        Pair(fast, Splitter::regex_only(pattern).unwrap())
    }

    impl Pair {
        fn check(&self, text: &str) {
            assert_eq!(
                self.0.split(text).unwrap(),
                self.1.split(text).unwrap(),
                "text: {text:?}"
            );
        }
    }

    const CASES: &[&str] = &[
        "",
        "Hello, world! It's 12345 o'clock; we'LL've 'Re 'S 'x 'ſ 'ſt",
        "你好，世界！今天是2024年12月31日。「引号」……——\n",
        "  leading\t\ttabs   and   spaces   \n\n\n  trailing   ",
        "a\r\n\r\nb \n c\u{3000}\u{3000}中文\u{a0}x\u{85}y",
        "😀👍🏽👨‍👩‍👧‍👦 emoji!!! ?? ... \n",
        "١٢٣ Ⅻ ½²³ ０１２３ 𝟎𝟏𝟐 𠀀𠀁 \u{2028}\u{2029}",
        "x   ",
        "   ",
        "\n",
        " \n ",
        "'",
        "''",
        "'l",
        "'ll",
        " 'll",
        "a'b",
        "1'2",
        "(hello) [world] {foo} <|bos|> <|assistant_end|>\n\n",
        "tab\tbefore\tletters \t\u{b}\u{c}x \u{1c}\u{1d}\u{1e}\u{1f}y",
    ];

    #[test]
    fn fixed_cases_match_regex() {
        let (d, g) = (pair(DEFAULT_PATTERN), pair(GPT4_PATTERN));
        for text in CASES {
            d.check(text);
            g.check(text);
        }
    }

    #[test]
    fn chunks_tile_the_text() {
        let s = Splitter::new(DEFAULT_PATTERN).unwrap();
        for text in CASES {
            assert_eq!(s.split(text).unwrap().concat(), *text);
        }
    }

    #[test]
    fn random_strings_match_regex() {
        // Every class that matters: ASCII letters/digits/punctuation, contraction letters, the
        // apostrophe, all kinds of whitespace and newlines, Han, full-width forms, other numbers,
        // emoji and combining marks, astral letters and digits.
        let alphabet: Vec<char> = "aZsSdDmMtTlLvVeErR'’ 0123 \t\n\r\u{b}\u{c}\u{85}\u{a0}\u{3000}\u{2028}\u{1c}中文字，。！？「」０１ＡＢ½Ⅻ١😀👍\u{200d}\u{301}𠀀𝟎ſK.,;:!?-_()[]{}<>|/\\\"#$%^&*~`+="
            .chars()
            .collect();
        let mut state: u64 = 0x9E3779B97F4A7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (d, g) = (pair(DEFAULT_PATTERN), pair(GPT4_PATTERN));
        for _ in 0..50_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            d.check(&text);
            g.check(&text);
        }
    }

    #[test]
    fn custom_pattern_uses_the_regex_engine() {
        let s = Splitter::new(r"\w+|\s+|[^\w\s]+").unwrap();
        assert!(!s.is_fast());
        assert_eq!(s.split("ab, cd").unwrap(), vec!["ab", ",", " ", "cd"]);
        assert!(Splitter::new("(unclosed").is_err());
    }
}
