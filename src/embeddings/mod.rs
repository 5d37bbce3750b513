//! The word embedding matrix EMB [V, d]: clamping (nearest embedding) and rounding (tied head).

use std::path::Path;

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};

use crate::error::LoadError;
use crate::manifest::EmbeddingsEntry;

mod rules;

pub use rules::Constraints;

/// The buffers clamping and rounding reuse from call to call, so that once grown none is
/// allocated per step: one row's scores [V], a row copied when its view is not contiguous, the
/// words a row may not take, and the words chosen so far in a sequence.
#[derive(Debug, Default)]
pub struct Scratch {
    scores: Vec<f32>,
    row: Vec<f32>,
    banned: Vec<u32>,
    chosen: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Embeddings {
    matrix: Array2<f32>,
    /// ||EMB(v)||^2 / 2, precomputed for the L2 argmin of the clamping trick.
    half_sq_norms: Vec<f32>,
    /// EMB^T [d, V], row-major: a row's scores in d vectorised passes.
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

    /// Scores <x, EMB(v)> of one row for every word v, into `scores` (reused): the sums a GEMM
    /// of the rows with EMB^T forms, bit for bit (see [`dots_into`]), without its packing (the
    /// GEMM of a sequence's 64 rows took 1.8x the instructions, callgrind).
    fn dots<'s>(&self, x: ArrayView1<'_, f32>, row: &mut Vec<f32>, scores: &'s mut Vec<f32>) -> &'s mut [f32] {
        let x = x.as_slice().unwrap_or_else(|| {
            row.clear();
            row.extend(x.iter());
            row
        });
        scores.resize(self.vocab_size(), 0.0); // every score is written, none read
        let Some(columns) = self.transposed.as_slice() else { unreachable!("EMB^T is built row-major") };
        dots_into(x, columns, scores);
        scores
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
    /// fit the rows); without, it scores every word of every row.
    pub fn clamp_lanes(
        &self,
        mut x0_hat: ArrayViewMut2<'_, f32>,
        scratch: &mut Scratch,
        lanes: &[Option<Constraints<'_>>],
        nearest: Option<Nearest<'_>>,
    ) {
        let per_lane = (x0_hat.nrows() / lanes.len().max(1)).max(1);
        let nearest = nearest.filter(|n| n.k > 0 && Some(n.ids.len()) == x0_hat.nrows().checked_mul(n.k));
        let Scratch { scores, row: copy, banned, chosen } = scratch;
        for (b, (mut block, rules)) in x0_hat.axis_chunks_iter_mut(Axis(0), per_lane).zip(lanes).enumerate() {
            let Some(rules) = rules else { continue };
            chosen.clear();
            for (r, row) in block.rows().into_iter().enumerate() {
                let listed = nearest.and_then(|n| {
                    let first = (b * per_lane + r) * n.k;
                    self.first_allowed(&n.ids[first..first + n.k], |w| rules.bans(r, chosen, w))
                });
                let best = listed.unwrap_or_else(|| {
                    let scores = self.dots(row, copy, scores);
                    scores.iter_mut().zip(&self.half_sq_norms).for_each(|(s, h)| *s -= h);
                    rules.banned(r, chosen, banned);
                    arg_best(scores, banned)
                });
                chosen.push(best as u32);
            }
            // the copies after the choices, in a loop of their own, so that its loads of EMB
            // (out of the caches after an engine call) overlap: in the loop above they were
            // half of this function's own time (perf)
            for (mut row, &w) in block.rows_mut().into_iter().zip(chosen.iter()) {
                row.assign(&self.matrix.row(w as usize));
            }
        }
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

    /// Rounding through the tied head: argmax_v <x_i, EMB(v)> per row.
    pub fn round_rows(&self, x: ArrayView2<'_, f32>, scratch: &mut Scratch, rules: Constraints<'_>) -> Vec<u32> {
        let Scratch { scores, row: copy, banned, .. } = scratch;
        let mut chosen = Vec::with_capacity(x.nrows());
        for (r, row) in x.rows().into_iter().enumerate() {
            let scores = self.dots(row, copy, scores);
            rules.banned(r, &chosen, banned);
            chosen.push(arg_best(scores, banned) as u32);
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

/// scores[j] = <x, EMB(j)> for every word j, from EMB^T [d, V] (`columns`, row-major): from
/// zero, one term per dimension in order, fused (one rounding) where matrixmultiply's GEMM
/// kernel fuses them (x86-64 with AVX2 and FMA, aarch64), so that these are its sums exactly.
fn dots_into(x: &[f32], columns: &[f32], scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { dots_fma(x, columns, scores) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked just above.
        return unsafe { dots_avx(x, columns, scores) };
    }
    dots_portable::<{ cfg!(target_arch = "aarch64") }>(x, columns, scores)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_fma(x: &[f32], columns: &[f32], scores: &mut [f32]) {
    dots_portable::<true>(x, columns, scores)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn dots_avx(x: &[f32], columns: &[f32], scores: &mut [f32]) {
    dots_portable::<false>(x, columns, scores)
}

/// `WORDS` words at a time, their sums over the d rows of EMB^T kept in registers and added in
/// the order of one pass per dimension (so the same sums as that pass), each term x_k e
/// `FUSED` (mul_add) or not, then the last few words one pass per dimension; a row view and a
/// dot per word cost 10x as much.
#[inline(always)]
fn dots_portable<const FUSED: bool>(x: &[f32], columns: &[f32], scores: &mut [f32]) {
    const WORDS: usize = 32;
    let term = |s: f32, xk: f32, e: f32| if FUSED { xk.mul_add(e, s) } else { s + xk * e };
    let v = scores.len();
    let full = v - v % WORDS;
    for (j, block) in scores[..full].chunks_exact_mut(WORDS).enumerate() {
        let mut acc = [0.0; WORDS];
        for (&xk, column) in x.iter().zip(columns.chunks_exact(v)) {
            let column = &column[j * WORDS..(j + 1) * WORDS];
            acc.iter_mut().zip(column).for_each(|(s, &e)| *s = term(*s, xk, e));
        }
        block.copy_from_slice(&acc);
    }
    scores[full..].fill(0.0);
    for (&xk, column) in x.iter().zip(columns.chunks_exact(v.max(1))) {
        scores[full..].iter_mut().zip(&column[full..]).for_each(|(s, &e)| *s = term(*s, xk, e));
    }
}

/// Index of the largest score (the first one on ties; 0 when none is above -inf), skipping
/// the banned indices (overwritten with -inf). A lane-wise max the compiler vectorises, then
/// one vectorised pass a chunk for the chunk that holds it, and its position there.
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
    let Some(chunk) = scores.chunks(LANES).position(|c| c.iter().fold(false, |found, &s| found | (s == max))) else {
        return 0;
    };
    let within = scores[chunk * LANES..].iter().position(|&s| s == max).unwrap_or(0);
    chunk * LANES + within
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
            // from scores that are not zero: every one is overwritten
            let start: Vec<f32> = (0..v).map(|j| j as f32 / 7.0 - 3.0).collect();
            let (mut plain, mut fused) = (vec![0.0; v], vec![0.0; v]);
            for (&xk, column) in x.iter().zip(columns.rows()) {
                plain.iter_mut().zip(column).for_each(|(s, &e)| *s += xk * e);
                fused.iter_mut().zip(column).for_each(|(s, &e)| *s = xk.mul_add(e, *s));
            }
            let columns = columns.as_slice().unwrap();
            let (mut unfused_blocks, mut fused_blocks) = (start.clone(), start);
            dots_portable::<false>(&x, columns, &mut unfused_blocks);
            dots_portable::<true>(&x, columns, &mut fused_blocks);
            assert_eq!(unfused_blocks, plain, "{v} words, d {d}");
            assert_eq!(fused_blocks, fused, "{v} words, d {d}");
        }
    }

    #[test]
    fn a_rows_scores_are_the_gemms_bit_for_bit() {
        // what rounding and host clamping scored with before (ndarray's GEMM, matrixmultiply's
        // kernels): the same sums, so the same words on every tie
        for (v, d, rows) in [(1013, 16, 64), (37, 19, 5), (16, 3, 1)] {
            let emb = Embeddings::new(noise(v, d, 7));
            let x = noise(rows, d, 3);
            let mut gemm = Array2::zeros((rows, v));
            ndarray::linalg::general_mat_mul(1.0, &x, &emb.matrix.t(), 0.0, &mut gemm);
            let (mut copy, mut scores) = (Vec::new(), Vec::new());
            for (r, row) in x.rows().into_iter().enumerate() {
                assert_eq!(
                    emb.dots(row, &mut copy, &mut scores),
                    gemm.row(r).as_slice().unwrap(),
                    "{v} x {d}, row {r}"
                );
            }
            // a row that is no contiguous slice (a column of x^T) is copied, with the same sums
            let xt = x.t().as_standard_layout().into_owned();
            assert_eq!(emb.dots(xt.column(0), &mut copy, &mut scores), gemm.row(0).as_slice().unwrap());
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
