//! Jaro-Winkler similarity of two ASCII words, in integers (parts per million), without allocating.
//!
//! Jaro counts the letters two words share within a window of half the longer word, and how many of those are out of
//! order; Winkler adds weight to a shared start of up to four letters (names differ less at their start). 1 000 000
//! is equal, 0 nothing shared.

/// Similarity in parts per million.
pub const ONE: u32 = 1_000_000;

/// Words are compared on their first 64 bytes (no name word is longer).
const MAX: usize = 64;

/// The Jaro-Winkler similarity of `a` and `b` (prefix scale 0.1, prefix of at most four, applied above a Jaro
/// similarity of 0.7 as Winkler did), in parts per million.
pub fn jaro_winkler(a: &[u8], b: &[u8]) -> u32 {
    Against::new(b).jaro_winkler(a)
}

/// The Jaro similarity, in parts per million.
pub fn jaro(a: &[u8], b: &[u8]) -> u32 {
    Against::new(b).jaro(a)
}

/// One word, `b`, ready to be compared with many: where each of its bytes stands, as bit sets (words are compared on
/// at most 64 bytes), so that finding the first unmatched occurrence of a letter within the window is one mask and one
/// trailing-zero count, not a scan of the window. Built once, it serves every comparison with `b`.
pub struct Against<'b> {
    word: &'b [u8],
    positions: [u64; 256],
}

impl<'b> Against<'b> {
    /// Prepares `b` (its first 64 bytes).
    pub fn new(b: &'b [u8]) -> Against<'b> {
        let word = &b[..b.len().min(MAX)];
        let mut positions = [0u64; 256];
        for (j, &y) in word.iter().enumerate() {
            positions[usize::from(y)] |= 1 << j;
        }
        Against { word, positions }
    }

    /// [`jaro_winkler`] of `a` and this word.
    pub fn jaro_winkler(&self, a: &[u8]) -> u32 {
        let jaro = self.jaro(a);
        if jaro <= 700_000 {
            return jaro;
        }
        let prefix = a.iter().zip(self.word).take(4).take_while(|(x, y)| x == y).count() as u64;
        // jaro + prefix × 0.1 × (1 − jaro)
        let boost = prefix * u64::from(ONE - jaro) / 10;
        jaro + u32::try_from(boost).unwrap_or(0)
    }

    /// [`jaro`] of `a` and this word.
    pub fn jaro(&self, a: &[u8]) -> u32 {
        let (a, b) = (&a[..a.len().min(MAX)], self.word);
        if a.is_empty() && b.is_empty() {
            return ONE;
        }
        if a.is_empty() || b.is_empty() {
            return 0;
        }
        if a == b {
            return ONE;
        }
        let window = (a.len().max(b.len()) / 2).saturating_sub(1);
        // Which letters of each word are matched.
        let (mut a_matched, mut b_matched) = (0u64, 0u64);
        for (i, &x) in a.iter().enumerate() {
            let lo = i.saturating_sub(window);
            let hi = (i + window + 1).min(b.len());
            if lo >= hi {
                break;
            }
            let width = hi - lo;
            let in_window = if width >= 64 { u64::MAX } else { ((1u64 << width) - 1) << lo };
            let free = self.positions[usize::from(x)] & !b_matched & in_window;
            if free != 0 {
                a_matched |= 1 << i;
                b_matched |= 1 << free.trailing_zeros();
            }
        }
        let matches = u64::from(a_matched.count_ones());
        if matches == 0 {
            return 0;
        }
        // Transpositions: matched letters of a and b, taken in order, that differ, halved.
        let mut out_of_order = 0u64;
        let (mut ai, mut bi) = (a_matched, b_matched);
        while ai != 0 {
            let (i, j) = (ai.trailing_zeros() as usize, bi.trailing_zeros() as usize);
            if a[i] != b[j] {
                out_of_order += 1;
            }
            ai &= ai - 1;
            bi &= bi - 1;
        }
        let t = out_of_order / 2;
        let one = u64::from(ONE);
        let sum = one * matches / a.len() as u64 + one * matches / b.len() as u64 + one * (matches - t) / matches;
        u32::try_from(sum / 3).unwrap_or(ONE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The classic examples (Winkler 1990): MARTHA/MARHTA 0.961, DWAYNE/DUANE 0.84, DIXON/DICKSONX 0.813.
        let thousandths = |a: &[u8], b: &[u8]| (jaro_winkler(a, b) + 500) / 1_000;
        assert_eq!(thousandths(b"martha", b"marhta"), 961);
        assert_eq!(thousandths(b"dwayne", b"duane"), 840);
        assert_eq!(thousandths(b"dixon", b"dicksonx"), 813);
        assert_eq!(jaro_winkler(b"same", b"same"), ONE);
        assert_eq!(jaro_winkler(b"abc", b"xyz"), 0);
        assert_eq!(jaro_winkler(b"", b"x"), 0);
    }

    #[test]
    fn it_agrees_with_strsim() {
        let words = ["hugo", "chavez", "chavex", "frias", "rafael", "mohammed", "muhamad", "al", "assad", "asad", "a"];
        for a in words {
            for b in words {
                let ours = i64::from(jaro_winkler(a.as_bytes(), b.as_bytes()));
                #[allow(clippy::float_arithmetic)]
                let theirs = (strsim::jaro_winkler(a, b) * 1e6).round() as i64;
                assert!((ours - theirs).abs() <= 2, "{a} / {b}: {ours} against {theirs}");
            }
        }
    }

    #[test]
    fn it_agrees_with_strsim_on_many_random_words() {
        // Few letters, so that words share many and transpose some; lengths up to 40.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let word = |next: &mut dyn FnMut() -> u64| -> String {
            let len = 1 + (next() % 40) as usize;
            (0..len).map(|_| b"aeinorst"[(next() % 8) as usize] as char).collect()
        };
        for _ in 0..20_000 {
            let (a, b) = (word(&mut next), word(&mut next));
            // At a Jaro similarity of exactly 0.7 strsim's floats land either side of the boost's threshold: compare
            // the Jaro similarity there.
            let exact = jaro(a.as_bytes(), b.as_bytes()) == 700_000;
            let ours = i64::from(if exact {
                jaro(a.as_bytes(), b.as_bytes())
            } else {
                jaro_winkler(a.as_bytes(), b.as_bytes())
            });
            #[allow(clippy::float_arithmetic)]
            let theirs =
                ((if exact { strsim::jaro(&a, &b) } else { strsim::jaro_winkler(&a, &b) }) * 1e6).round() as i64;
            assert!((ours - theirs).abs() <= 2, "{a} / {b}: {ours} against {theirs}");
        }
    }
}
