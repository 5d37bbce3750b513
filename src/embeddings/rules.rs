//! What clamping and rounding may pick at each position: no special token inside a fixed
//! length, no word right after itself, no word 3-gram twice, held words always allowed.

/// What clamping and rounding may pick at each row of [B * L] latents (row r is position
/// r % L of sequence r / L).
#[derive(Debug, Clone, Copy, Default)]
pub struct Constraints<'a> {
    /// Per position of a sequence, [L]: inside a fixed length, where PAD, START and END
    /// (`specials`) are not candidates; empty = no such positions.
    pub words_only: &'a [bool],
    pub specials: &'a [u32],
    /// No word right after itself, and no word 3-gram twice in a sequence (special tokens
    /// exempt), like n-gram blocking in autoregressive decoding; needs `seq_len`.
    pub block_repeats: bool,
    pub seq_len: usize,
    /// Per position, [L]: a word the request holds there (infill template, START, END, PAD),
    /// never banned; empty = none.
    pub held: &'a [Option<u32>],
}

impl Constraints<'_> {
    /// The words row `r` may not take, given the words `chosen` for rows 0..r.
    pub(super) fn banned(&self, r: usize, chosen: &[u32], out: &mut Vec<u32>) {
        out.clear();
        if self.words_only_at(r) {
            out.extend_from_slice(self.specials);
        }
        out.extend(self.repeats(r, chosen));
    }

    /// Whether [`Self::banned`] would list `w` for row `r`, without building the list: the
    /// check of an engine's candidate, once per row and step.
    pub(super) fn bans(&self, r: usize, chosen: &[u32], w: u32) -> bool {
        if self.specials.contains(&w) {
            return self.words_only_at(r); // special tokens never count as repeats
        }
        // what `repeats` lists, asked of one word: the 3-gram scan as one pass over the words
        let Some((start, pos)) = self.repeats_blocked_at(r) else { return false };
        let Some(previous) = (pos >= 1).then(|| self.word(chosen, r - 1)).flatten() else { return false };
        if previous == w {
            return true;
        }
        let Some(before) = (pos >= 2).then(|| self.word(chosen, r - 2)).flatten() else { return false };
        let seen = chosen.get(start..r).unwrap_or_default();
        let Some(n) = seen.len().checked_sub(2).filter(|&n| n > 0) else { return false };
        // every window checked, no early exit, so that the compiler vectorises it (a row's
        // scan is up to L - 2 windows, and it runs once per row and step)
        let (a, b, c) = (&seen[..n], &seen[1..n + 1], &seen[2..n + 2]);
        let seen_before = |((&a, &b), &c): ((&u32, &u32), &u32)| u32::from((a == before) & (b == previous) & (c == w));
        a.iter().zip(b).zip(c).fold(0, |any, g| any | seen_before(g)) != 0
    }

    /// The words repeat blocking bans at row r: the word before it, and every word that already
    /// followed the two before it in this sequence (none where r holds a word).
    fn repeats<'c>(&'c self, r: usize, chosen: &'c [u32]) -> impl Iterator<Item = u32> + 'c {
        let word = move |k: usize| self.word(chosen, k);
        let (start, pos) = self.repeats_blocked_at(r).unwrap_or((r, 0));
        let previous = if pos >= 1 { word(r - 1) } else { None };
        let bigram = if pos >= 2 { word(r - 2).zip(previous) } else { None };
        let seen = bigram.into_iter().flat_map(move |(a, b)| {
            (start + 2..r).filter(move |&k| chosen[k - 2] == a && chosen[k - 1] == b).filter_map(word)
        });
        previous.into_iter().chain(seen)
    }

    fn words_only_at(&self, r: usize) -> bool {
        self.words_only.get(r % self.words_only.len().max(1)) == Some(&true)
    }

    /// (first row of r's sequence, r's position in it) when repeat blocking applies at row r:
    /// it is on and r holds no word.
    fn repeats_blocked_at(&self, r: usize) -> Option<(usize, usize)> {
        if !self.block_repeats || self.seq_len == 0 {
            return None;
        }
        let (start, pos) = (r - r % self.seq_len, r % self.seq_len);
        (!self.held.get(pos).is_some_and(Option::is_some)).then_some((start, pos))
    }

    /// The word chosen at row k, unless it is a special token (those may repeat).
    fn word(&self, chosen: &[u32], k: usize) -> Option<u32> {
        chosen.get(k).copied().filter(|w| !self.specials.contains(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_words_ban_agrees_with_the_list_of_banned_words() {
        let (seq_len, vocab) = (9, 6u32);
        let words_only = [false, true, true, true, true, true, true, false, false];
        let held = [Some(2), None, None, None, Some(4), None, None, None, None];
        let mut state = 12345u32;
        let mut next = move || {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 16) % vocab
        };
        let mut banned = Vec::new();
        for case in 0..200 {
            let rules = Constraints {
                words_only: if case % 3 == 0 { &[] } else { &words_only },
                specials: &[0, 1],
                block_repeats: case % 4 != 0,
                seq_len,
                held: if case % 2 == 0 { &[] } else { &held },
            };
            // two sequences of few distinct words, so repeats and seen 3-grams are common
            let chosen: Vec<u32> = (0..2 * seq_len).map(|_| next() % 3 + u32::from(case % 5 == 0)).collect();
            for r in 0..chosen.len() {
                rules.banned(r, &chosen[..r], &mut banned);
                for w in 0..vocab {
                    assert_eq!(rules.bans(r, &chosen[..r], w), banned.contains(&w), "case {case} row {r} word {w}");
                }
            }
        }
    }
}
