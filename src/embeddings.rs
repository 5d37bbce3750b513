//! The word embedding matrix EMB [V, d]: clamping (nearest embedding) and rounding (tied head).

use std::path::Path;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::error::LoadError;
use crate::manifest::EmbeddingsEntry;

#[derive(Debug, Clone)]
pub struct Embeddings {
    matrix: Array2<f32>,
    /// ||EMB(v)||^2, precomputed for the L2 argmin of the clamping trick.
    sq_norms: Vec<f32>,
}

impl Embeddings {
    pub fn new(matrix: Array2<f32>) -> Self {
        let sq_norms = matrix.rows().into_iter().map(|r| r.dot(&r)).collect();
        Self { matrix, sq_norms }
    }

    /// Read raw little-endian float32 [V, d] as the manifest describes it.
    pub fn load(dir: &Path, entry: &EmbeddingsEntry) -> Result<Self, LoadError> {
        let path = dir.join(&entry.file);
        let bytes = std::fs::read(&path).map_err(|source| LoadError::Io { path: path.clone(), source })?;
        let [vocab, d] = entry.shape;
        if bytes.len() != vocab * d * 4 {
            return Err(LoadError::Invalid {
                path,
                what: format!("{} bytes, expected {vocab} x {d} float32 = {}", bytes.len(), vocab * d * 4),
            });
        }
        let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let matrix =
            Array2::from_shape_vec((vocab, d), values).map_err(|e| LoadError::Invalid { path, what: e.to_string() })?;
        Ok(Self::new(matrix))
    }

    pub fn dim(&self) -> usize {
        self.matrix.ncols()
    }

    pub fn vocab_size(&self) -> usize {
        self.matrix.nrows()
    }

    pub fn matrix(&self) -> ArrayView2<'_, f32> {
        self.matrix.view()
    }

    /// Scores <x_i, EMB(v)> for every row i, as one GEMM into a reusable buffer.
    fn dots<'s>(&self, x: ArrayView2<'_, f32>, scratch: &'s mut Array2<f32>) -> &'s Array2<f32> {
        if scratch.dim() != (x.nrows(), self.vocab_size()) {
            *scratch = Array2::zeros((x.nrows(), self.vocab_size()));
        }
        general_mat_mul(1.0, &x, &self.matrix.t(), 0.0, scratch);
        scratch
    }

    /// Clamping trick: replace every row of `x0_hat` (one position) by its nearest embedding,
    /// argmin_v ||x - EMB(v)||^2 = argmin_v ||EMB(v)||^2 - 2 <x, EMB(v)>.
    pub fn clamp_rows(&self, mut x0_hat: ArrayViewMut2<'_, f32>, scratch: &mut Array2<f32>, words: WordsOnly<'_>) {
        let dots = self.dots(x0_hat.view(), scratch);
        for (r, (mut row, scores)) in x0_hat.rows_mut().into_iter().zip(dots.rows()).enumerate() {
            let scores = scores.iter().zip(&self.sq_norms).map(|(dot, n)| 2.0 * dot - n);
            let v = arg_best(scores, words.banned(r));
            row.assign(&self.matrix.row(v));
        }
    }

    /// Rounding through the tied head: argmax_v <x_i, EMB(v)> per row.
    pub fn round_rows(&self, x: ArrayView2<'_, f32>, scratch: &mut Array2<f32>, words: WordsOnly<'_>) -> Vec<u32> {
        let dots = self.dots(x, scratch);
        dots.rows().into_iter().enumerate().map(|(r, s)| arg_best(s.iter().copied(), words.banned(r)) as u32).collect()
    }
}

/// Positions that must be words (inside a fixed length): PAD, START and END are not
/// candidates there, when clamping or rounding. Rows are positions of [B * L] latents.
#[derive(Debug, Clone, Copy, Default)]
pub struct WordsOnly<'a> {
    /// Per position of a sequence, [L]; empty = no constraint.
    pub positions: &'a [bool],
    pub specials: &'a [u32],
}

impl WordsOnly<'_> {
    fn banned(&self, row: usize) -> &[u32] {
        match self.positions.get(row % self.positions.len().max(1)) {
            Some(true) => self.specials,
            _ => &[],
        }
    }
}

/// Index of the largest score (the first one on ties), skipping the banned indices.
fn arg_best(scores: impl Iterator<Item = f32>, banned: &[u32]) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, s) in scores.enumerate() {
        if s > best.1 && !banned.contains(&(i as u32)) {
            best = (i, s);
        }
    }
    best.0
}
