//! The word embedding matrix EMB [V, d]: clamping (nearest embedding) and rounding (tied head).

use std::path::Path;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};

use crate::error::LoadError;
use crate::manifest::EmbeddingsEntry;

mod rules;

pub use rules::Constraints;

/// The buffers clamping and rounding reuse from call to call, so that once grown none is
/// allocated per step: the GEMM's scores [rows, V], one row's scores [V], the words a row may
/// not take, and the words chosen so far in a sequence.
#[derive(Debug, Default)]
pub struct Scratch {
    dots: Array2<f32>,
    scores: Vec<f32>,
    banned: Vec<u32>,
    chosen: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Embeddings {
    matrix: Array2<f32>,
    /// ||EMB(v)||^2 / 2, precomputed for the L2 argmin of the clamping trick.
    half_sq_norms: Vec<f32>,
    /// EMB^T [d, V], row-major: a single row's scores in d vectorised passes.
    transposed: Array2<f32>,
}

impl Embeddings {
    pub fn new(matrix: Array2<f32>) -> Self {
        let matrix = matrix.as_standard_layout().into_owned();
        let half_sq_norms = matrix.rows().into_iter().map(|r| r.dot(&r) / 2.0).collect();
        let transposed = matrix.t().as_standard_layout().into_owned();
        Self { matrix, half_sq_norms, transposed }
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
    fn dots<'s>(&self, x: ArrayView2<'_, f32>, dots: &'s mut Array2<f32>) -> &'s mut Array2<f32> {
        if dots.dim() != (x.nrows(), self.vocab_size()) {
            *dots = Array2::zeros((x.nrows(), self.vocab_size()));
        }
        general_mat_mul(1.0, &x, &self.matrix.t(), 0.0, dots);
        dots
    }

    /// Clamping trick: replace every row of `x0_hat` (one position) by its nearest embedding,
    /// argmin_v ||x - EMB(v)||^2 = argmax_v <x, EMB(v)> - ||EMB(v)||^2 / 2.
    pub fn clamp_rows(&self, x0_hat: ArrayViewMut2<'_, f32>, scratch: &mut Scratch, rules: Constraints<'_>) {
        self.clamp_lanes(x0_hat, scratch, &[Some(rules)], None);
    }

    /// Clamping of several sequences: `x0_hat`'s rows split evenly into one block per entry of
    /// `lanes`, each clamped under its own rules (None: left as it is). With `nearest` (the
    /// engine's search, one list per row) each row takes the first word of its list the rules
    /// allow, and scores every word itself only when they ban them all (or the list does not
    /// fit the rows); without, one GEMM per block, so that its scores (L x V) are still in cache
    /// when they are scanned (a batch of 16 at once is 4 MB of scores: on one thread 7-8 % of a
    /// step went to the host, 5 % this way).
    pub fn clamp_lanes(
        &self,
        mut x0_hat: ArrayViewMut2<'_, f32>,
        scratch: &mut Scratch,
        lanes: &[Option<Constraints<'_>>],
        nearest: Option<Nearest<'_>>,
    ) {
        let per_lane = (x0_hat.nrows() / lanes.len().max(1)).max(1);
        let nearest = nearest.filter(|n| n.k > 0 && Some(n.ids.len()) == x0_hat.nrows().checked_mul(n.k));
        let Scratch { dots, scores, banned, chosen } = scratch;
        let d = self.matrix.ncols();
        for (b, (mut block, rules)) in x0_hat.axis_chunks_iter_mut(Axis(0), per_lane).zip(lanes).enumerate() {
            let Some(rules) = rules else { continue };
            chosen.clear();
            if let (Some(n), Some(rows)) = (nearest, block.as_slice_mut()) {
                for (r, row) in rows.chunks_exact_mut(d.max(1)).enumerate() {
                    let first = (b * per_lane + r) * n.k;
                    let best = self.first_allowed(&n.ids[first..first + n.k], |w| rules.bans(r, chosen, w));
                    let best = best.unwrap_or_else(|| {
                        rules.banned(r, chosen, banned);
                        self.nearest_row(row, banned, scores)
                    });
                    chosen.push(best as u32);
                    row.copy_from_slice(self.word(best));
                }
                continue;
            }
            let dots = self.dots(block.view(), dots);
            for (r, (mut row, mut scores)) in block.rows_mut().into_iter().zip(dots.rows_mut()).enumerate() {
                let Some(scores) = scores.as_slice_mut() else { unreachable!("scratch is row-major") };
                scores.iter_mut().zip(&self.half_sq_norms).for_each(|(s, h)| *s -= h);
                rules.banned(r, chosen, banned);
                let best = arg_best(scores, banned);
                chosen.push(best as u32);
                row.assign(&self.matrix.row(best));
            }
        }
    }

    /// EMB(w), w < V.
    fn word(&self, w: usize) -> &[f32] {
        let d = self.matrix.ncols();
        let Some(matrix) = self.matrix.as_slice() else { unreachable!("EMB is kept row-major") };
        &matrix[w * d..(w + 1) * d]
    }

    /// The first of `candidates` not banned; None when none is allowed, or when one is no word of
    /// this vocabulary (the list cannot be trusted then).
    fn first_allowed(&self, candidates: &[i64], bans: impl Fn(u32) -> bool) -> Option<usize> {
        for &w in candidates {
            let w = usize::try_from(w).ok().filter(|&w| w < self.vocab_size())?;
            if !bans(w as u32) {
                return Some(w);
            }
        }
        None
    }

    /// The clamping trick's choice for one row, every word scored (into `scores`, reused), for
    /// the 2-3 % of rows whose nearest word repeat blocking bans.
    fn nearest_row(&self, x: &[f32], banned: &[u32], scores: &mut Vec<f32>) -> usize {
        scores.clear();
        scores.extend(self.half_sq_norms.iter().map(|h| -h));
        let Some(columns) = self.transposed.as_slice() else { unreachable!("EMB^T is built row-major") };
        add_dots(x, columns, scores);
        arg_best(scores, banned)
    }

    /// Rounding through the tied head: argmax_v <x_i, EMB(v)> per row.
    pub fn round_rows(&self, x: ArrayView2<'_, f32>, scratch: &mut Scratch, rules: Constraints<'_>) -> Vec<u32> {
        let Scratch { dots, banned, .. } = scratch;
        let dots = self.dots(x, dots);
        let mut chosen = Vec::with_capacity(dots.nrows());
        for (r, mut scores) in dots.rows_mut().into_iter().enumerate() {
            rules.banned(r, &chosen, banned);
            chosen.push(scores.as_slice_mut().map_or(0, |s| arg_best(s, banned)) as u32);
        }
        chosen
    }
}

/// The ids of the `k` word embeddings nearest to x0_hat at every position of a [B, L, d] batch,
/// nearest first (`ids` is [B, L, k], row-major): the clamping trick's search when the engine
/// does it ([`crate::sampler::Denoiser::nearest`]).
#[derive(Debug, Clone, Copy)]
pub struct Nearest<'a> {
    pub k: usize,
    pub ids: &'a [i64],
}

/// scores[j] += <x, EMB(j)> for every word j, from EMB^T [d, V] (`columns`, row-major), with
/// AVX2 where the CPU has it (the build's baseline is SSE2; the same sums either way).
fn add_dots(x: &[f32], columns: &[f32], scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { add_dots_avx2(x, columns, scores) };
    }
    add_dots_portable(x, columns, scores)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_dots_avx2(x: &[f32], columns: &[f32], scores: &mut [f32]) {
    add_dots_portable(x, columns, scores)
}

/// `WORDS` words at a time, their sums over the d rows of EMB^T kept in registers and added in
/// the order of one pass per dimension (so the same sums as that pass), then the last few words
/// one pass per dimension; a row view and a dot per word cost 10x as much.
#[inline(always)]
fn add_dots_portable(x: &[f32], columns: &[f32], scores: &mut [f32]) {
    const WORDS: usize = 16;
    let v = scores.len();
    let full = v - v % WORDS;
    for (j, block) in scores[..full].chunks_exact_mut(WORDS).enumerate() {
        let mut acc = [0.0; WORDS];
        acc.copy_from_slice(block);
        for (&xk, column) in x.iter().zip(columns.chunks_exact(v)) {
            let column = &column[j * WORDS..(j + 1) * WORDS];
            acc.iter_mut().zip(column).for_each(|(s, &e)| *s += xk * e);
        }
        block.copy_from_slice(&acc);
    }
    for (&xk, column) in x.iter().zip(columns.chunks_exact(v.max(1))) {
        scores[full..].iter_mut().zip(&column[full..]).for_each(|(s, &e)| *s += xk * e);
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
    fn blocked_dot_products_are_the_sums_of_one_pass_per_dimension() {
        for (v, d) in [(0, 3), (5, 3), (16, 16), (40, 4), (1013, 16), (37, 19)] {
            let columns = noise(d, v, 11);
            let x: Vec<f32> = noise(1, d, 5).into_raw_vec_and_offset().0;
            let start: Vec<f32> = (0..v).map(|j| j as f32 / 7.0 - 3.0).collect();
            let mut expected = start.clone();
            for (&xk, column) in x.iter().zip(columns.rows()) {
                expected.iter_mut().zip(column).for_each(|(s, &e)| *s += xk * e);
            }
            let columns = columns.as_slice().unwrap();
            let (mut portable, mut dispatched) = (start.clone(), start);
            add_dots_portable(&x, columns, &mut portable);
            add_dots(&x, columns, &mut dispatched);
            assert_eq!(portable, expected, "{v} words, d {d}");
            assert_eq!(dispatched, expected, "{v} words, d {d}");
        }
    }

    #[test]
    fn blocking_repeats_bans_the_previous_word_and_a_seen_trigram() {
        // 4 words on a line; every row is nearest to word 1 unless banned
        let emb = Embeddings::new(Array2::from_shape_vec((4, 1), vec![0.0, 1.0, 0.9, -5.0]).unwrap());
        let x = Array2::from_shape_vec((6, 1), vec![1.0; 6]).unwrap();
        let rules = Constraints { block_repeats: true, seq_len: 6, specials: &[0], ..Constraints::default() };
        let mut scratch = Scratch::default();
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

    /// A pseudo-random [n, d] matrix with values in [-2, 2).
    fn noise(n: usize, d: usize, seed: u32) -> Array2<f32> {
        let v = (0..n * d).map(|i| ((i as u32 * 2654435761 ^ seed) % 4000) as f32 / 1000.0 - 2.0).collect();
        Array2::from_shape_vec((n, d), v).unwrap()
    }

    /// What an engine's clamping head gives: each row's k best words by the clamping score.
    fn ranked(emb: &Embeddings, x: &Array2<f32>, k: usize) -> Vec<i64> {
        let mut ids = Vec::new();
        for row in x.rows() {
            let scores: Vec<f32> = emb.matrix.dot(&row).iter().zip(&emb.half_sq_norms).map(|(s, h)| s - h).collect();
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            ids.extend(order[..k].iter().map(|&w| w as i64));
        }
        ids
    }

    #[test]
    fn clamping_from_the_engines_nearest_words_equals_the_hosts_under_every_rule() {
        for d in [4, 16, 19] {
            clamping_from_the_engines_nearest_words_equals_the_hosts(d);
        }
    }

    fn clamping_from_the_engines_nearest_words_equals_the_hosts(d: usize) {
        let (vocab, seq_len, lanes) = (40, 12, 3);
        let emb = Embeddings::new(noise(vocab, d, 7));
        // few distinct directions, so neighbours repeat and the rules ban the nearest often
        let x = noise(lanes * seq_len, d, 3).mapv(|v| (v * 2.0).round() / 2.0);
        let words_only = [false, true, true, true, true, true, true, true, false, false, false, false];
        let specials = [0, 1, 2, 3];
        let held = [Some(2), None, None, Some(9), None, None, None, None, None, None, None, None];
        let rules =
            Constraints { words_only: &words_only, specials: &specials, block_repeats: true, seq_len, held: &held };
        let plain = Constraints { seq_len, ..Constraints::default() };
        let per_lane = [Some(rules), None, Some(plain)];
        let mut scratch = Scratch::default();
        let mut host = x.clone();
        emb.clamp_lanes(host.view_mut(), &mut scratch, &per_lane, None);
        assert_ne!(host, x, "the host clamped");
        for k in [1, 3, vocab] {
            let ids = ranked(&emb, &x, k);
            let mut engine = x.clone();
            emb.clamp_lanes(engine.view_mut(), &mut scratch, &per_lane, Some(Nearest { k, ids: &ids }));
            assert_eq!(engine, host, "k {k}");
        }
        // ids that are no words of this vocabulary, or a list that does not fit the rows: the host scores them
        let mut wrong = ranked(&emb, &x, 2);
        wrong.iter_mut().step_by(2).for_each(|w| *w = if *w % 2 == 0 { -1 } else { vocab as i64 });
        for (k, ids) in [(2, &wrong[..]), (1, &wrong[..5])] {
            let mut engine = x.clone();
            emb.clamp_lanes(engine.view_mut(), &mut scratch, &per_lane, Some(Nearest { k, ids }));
            assert_eq!(engine, host, "k {k}, {} ids", ids.len());
        }
    }

    #[test]
    fn clamping_takes_the_engines_word_when_its_rules_allow_it() {
        // the engine's word need not be the host's nearest: the sampler trusts the graph's search
        let emb = Embeddings::new(Array2::from_shape_vec((3, 1), vec![0.0, 1.0, 5.0]).unwrap());
        let mut x = Array2::from_shape_vec((2, 1), vec![0.9, 4.8]).unwrap();
        let ids = [2, 0];
        emb.clamp_lanes(
            x.view_mut(),
            &mut Scratch::default(),
            &[Some(Constraints::default())],
            Some(Nearest { k: 1, ids: &ids }),
        );
        assert_eq!(x.into_raw_vec_and_offset().0, vec![5.0, 0.0]);
    }

    #[test]
    fn clamping_picks_the_nearest_embedding() {
        let emb = Embeddings::new(Array2::from_shape_vec((3, 2), vec![0.0, 0.0, 1.0, 0.0, 10.0, 10.0]).unwrap());
        let mut x = Array2::from_shape_vec((3, 2), vec![0.6, 0.1, 0.4, 0.0, 7.0, 6.0]).unwrap();
        emb.clamp_rows(x.view_mut(), &mut Scratch::default(), Constraints::default());
        assert_eq!(x.into_raw_vec_and_offset().0, vec![1.0, 0.0, 0.0, 0.0, 10.0, 10.0]);
    }
}
