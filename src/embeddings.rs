//! The word embedding matrix EMB [V, d]: clamping (nearest embedding) and rounding (tied head).

use std::path::Path;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};

use crate::error::LoadError;
use crate::manifest::EmbeddingsEntry;

#[derive(Debug, Clone)]
pub struct Embeddings {
    matrix: Array2<f32>,
    /// ||EMB(v)||^2 / 2, precomputed for the L2 argmin of the clamping trick.
    half_sq_norms: Vec<f32>,
}

impl Embeddings {
    pub fn new(matrix: Array2<f32>) -> Self {
        let half_sq_norms = matrix.rows().into_iter().map(|r| r.dot(&r) / 2.0).collect();
        Self { matrix, half_sq_norms }
    }

    /// Read raw little-endian float32 [V, d] as the manifest describes it.
    pub fn load(dir: &Path, entry: &EmbeddingsEntry) -> Result<Self, LoadError> {
        let path = dir.join(&entry.file);
        let [vocab, d] = entry.shape;
        let size = vocab.checked_mul(d).and_then(|n| n.checked_mul(4)).unwrap_or(usize::MAX);
        let bytes = crate::manifest::read_regular(&path, size as u64)?;
        if bytes.len() != size {
            return Err(LoadError::Invalid {
                path,
                what: format!("{} bytes, expected {vocab} x {d} float32 = {size}", bytes.len()),
            });
        }
        let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let what =
                format!("embedding value {i} (word {}, dimension {}) is {}", i / d.max(1), i % d.max(1), values[i]);
            return Err(LoadError::Invalid { path, what });
        }
        let matrix = Array2::from_shape_vec((vocab, d), values)
            .map_err(|e| LoadError::Invalid { path: path.clone(), what: e.to_string() })?;
        let embeddings = Self::new(matrix);
        // rounding compares x.e - |e|^2/2: an infinite |e|^2 makes every word equally far
        if let Some(w) = embeddings.half_sq_norms.iter().position(|n| !n.is_finite()) {
            let what = format!("embedding of word {w} is too large to round to (its squared norm overflows float32)");
            return Err(LoadError::Invalid { path, what });
        }
        Ok(embeddings)
    }

    pub fn vocab_size(&self) -> usize {
        self.matrix.nrows()
    }

    pub fn matrix(&self) -> ArrayView2<'_, f32> {
        self.matrix.view()
    }

    /// Scores <x_i, EMB(v)> for every row i, as one GEMM into a reusable buffer.
    fn dots<'s>(&self, x: ArrayView2<'_, f32>, scratch: &'s mut Array2<f32>) -> &'s mut Array2<f32> {
        if scratch.dim() != (x.nrows(), self.vocab_size()) {
            *scratch = Array2::zeros((x.nrows(), self.vocab_size()));
        }
        general_mat_mul(1.0, &x, &self.matrix.t(), 0.0, scratch);
        scratch
    }

    /// Clamping trick: replace every row of `x0_hat` (one position) by its nearest embedding,
    /// argmin_v ||x - EMB(v)||^2 = argmax_v <x, EMB(v)> - ||EMB(v)||^2 / 2.
    pub fn clamp_rows(&self, x0_hat: ArrayViewMut2<'_, f32>, scratch: &mut Array2<f32>, rules: Constraints<'_>) {
        self.clamp_lanes(x0_hat, scratch, &[Some(rules)]);
    }

    /// Clamping of several sequences: `x0_hat`'s rows split evenly into one block per entry of
    /// `lanes`, each clamped under its own rules (None: left as it is). One GEMM per block, so
    /// that its scores (L x V) are still in cache when they are scanned (a batch of 16 at once
    /// is 4 MB of scores: on one thread 7-8 % of a step went to the host, 5 % this way).
    pub fn clamp_lanes(
        &self,
        mut x0_hat: ArrayViewMut2<'_, f32>,
        scratch: &mut Array2<f32>,
        lanes: &[Option<Constraints<'_>>],
    ) {
        let per_lane = (x0_hat.nrows() / lanes.len().max(1)).max(1);
        let (mut banned, mut chosen) = (Vec::new(), Vec::new());
        for (mut block, rules) in x0_hat.axis_chunks_iter_mut(Axis(0), per_lane).zip(lanes) {
            let Some(rules) = rules else { continue };
            let dots = self.dots(block.view(), scratch);
            chosen.clear();
            for (r, (mut row, mut scores)) in block.rows_mut().into_iter().zip(dots.rows_mut()).enumerate() {
                let Some(scores) = scores.as_slice_mut() else { unreachable!("scratch is row-major") };
                scores.iter_mut().zip(&self.half_sq_norms).for_each(|(s, h)| *s -= h);
                rules.banned(r, &chosen, &mut banned);
                let best = arg_best(scores, &banned);
                chosen.push(best as u32);
                row.assign(&self.matrix.row(best));
            }
        }
    }

    /// Rounding through the tied head: argmax_v <x_i, EMB(v)> per row.
    pub fn round_rows(&self, x: ArrayView2<'_, f32>, scratch: &mut Array2<f32>, rules: Constraints<'_>) -> Vec<u32> {
        let dots = self.dots(x, scratch);
        let mut chosen = Vec::with_capacity(dots.nrows());
        let mut banned = Vec::new();
        for (r, mut scores) in dots.rows_mut().into_iter().enumerate() {
            rules.banned(r, &chosen, &mut banned);
            chosen.push(scores.as_slice_mut().map_or(0, |s| arg_best(s, &banned)) as u32);
        }
        chosen
    }
}

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
    fn banned(&self, r: usize, chosen: &[u32], out: &mut Vec<u32>) {
        out.clear();
        if let Some(true) = self.words_only.get(r % self.words_only.len().max(1)) {
            out.extend_from_slice(self.specials);
        }
        if !self.block_repeats || self.seq_len == 0 {
            return;
        }
        let (start, pos) = (r - r % self.seq_len, r % self.seq_len);
        if self.held.get(pos).is_some_and(Option::is_some) {
            return;
        }
        let word = |k: usize| chosen.get(k).copied().filter(|w| !self.specials.contains(w));
        if pos >= 1 {
            out.extend(word(r - 1));
        }
        if pos >= 2 {
            if let (Some(a), Some(b)) = (word(r - 2), word(r - 1)) {
                // every w that already followed (a, b) in this sequence
                let seen = (start + 2..r).filter(|&k| chosen[k - 2] == a && chosen[k - 1] == b);
                out.extend(seen.filter_map(word));
            }
        }
    }
}

/// Index of the largest score (the first one on ties; 0 when none is above -inf), skipping
/// the banned indices (overwritten with -inf). A lane-wise max the compiler vectorises, then
/// one scan for its position.
fn arg_best(scores: &mut [f32], banned: &[u32]) -> usize {
    const LANES: usize = 16;
    for &b in banned {
        if let Some(s) = scores.get_mut(b as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = scores.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &s) in lanes.iter_mut().zip(chunk) {
            *m = if s > *m { s } else { *m };
        }
    }
    let max = lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &s| if s > m { s } else { m });
    if max == f32::NEG_INFINITY {
        return 0;
    }
    scores.iter().position(|&s| s == max).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(scores: &[f32], banned: &[u32]) -> usize {
        let mut best = (0, f32::NEG_INFINITY);
        for (i, &s) in scores.iter().enumerate() {
            if s > best.1 && !banned.contains(&(i as u32)) {
                best = (i, s);
            }
        }
        best.0
    }

    #[test]
    fn arg_best_matches_a_plain_scan_with_ties_bans_and_nan() {
        for n in [1, 15, 16, 17, 100, 1013] {
            for seed in 0..20u32 {
                // Few distinct values, so ties are common.
                let mut scores: Vec<f32> = (0..n).map(|i| (((i as u32 * 2654435761) ^ seed) % 7) as f32).collect();
                if seed % 5 == 0 {
                    scores[n / 2] = f32::NAN;
                }
                let banned: Vec<u32> = if seed % 2 == 0 { vec![0, 3, (n as u32) / 3] } else { vec![] };
                let expected = naive(&scores, &banned);
                assert_eq!(arg_best(&mut scores.clone(), &banned), expected, "n {n} seed {seed}");
            }
        }
        assert_eq!(arg_best(&mut [f32::NEG_INFINITY; 3], &[]), 0);
    }

    #[test]
    fn blocking_repeats_bans_the_previous_word_and_a_seen_trigram() {
        // 4 words on a line; every row is nearest to word 1 unless banned
        let emb = Embeddings::new(Array2::from_shape_vec((4, 1), vec![0.0, 1.0, 0.9, -5.0]).unwrap());
        let x = Array2::from_shape_vec((6, 1), vec![1.0; 6]).unwrap();
        let rules = Constraints { block_repeats: true, seq_len: 6, specials: &[0], ..Constraints::default() };
        let mut scratch = Array2::zeros((0, 0));
        // 1 2 1 2, then after (1, 2) word 1 was seen and 2 just came: the next best, 0 (a special
        // token, banned only inside a fixed length); after it nothing is banned
        assert_eq!(emb.round_rows(x.view(), &mut scratch, rules), vec![1, 2, 1, 2, 0, 1]);
        let plain = Constraints { block_repeats: false, ..rules };
        assert_eq!(emb.round_rows(x.view(), &mut scratch, plain), vec![1; 6]);
        // a new sequence starts fresh, and special tokens may repeat
        let two = Constraints { seq_len: 3, ..rules };
        assert_eq!(emb.round_rows(x.view(), &mut scratch, two), vec![1, 2, 1, 1, 2, 1]);
        let pads = Array2::from_shape_vec((3, 1), vec![0.0; 3]).unwrap();
        assert_eq!(emb.round_rows(pads.view(), &mut scratch, two), vec![0, 0, 0]);
        // a held word stays, whatever came before it
        let held = [None, Some(1), None];
        assert_eq!(emb.round_rows(x.view(), &mut scratch, Constraints { held: &held, ..two }), vec![1, 1, 2, 1, 1, 2]);
    }

    #[test]
    fn clamping_picks_the_nearest_embedding() {
        let emb = Embeddings::new(Array2::from_shape_vec((3, 2), vec![0.0, 0.0, 1.0, 0.0, 10.0, 10.0]).unwrap());
        let mut x = Array2::from_shape_vec((3, 2), vec![0.6, 0.1, 0.4, 0.0, 7.0, 6.0]).unwrap();
        emb.clamp_rows(x.view_mut(), &mut Array2::zeros((0, 0)), Constraints::default());
        assert_eq!(x.into_raw_vec_and_offset().0, vec![1.0, 0.0, 0.0, 0.0, 10.0, 10.0]);
    }
}
