//! Fakes of the sampler's contracts that record what they were asked, for the sampler's tests
//! and those of the layers above it (the engine's): a denoiser that always predicts one word,
//! a self-conditioned one that counts up, one that mixes x and t, a guide with a constant
//! gradient, and noise that counts its draws.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ndarray::{array, s, Array3};

use super::{Denoiser, Guide, Noise, Target};
use crate::embeddings::Embeddings;
use crate::error::InferenceError;

/// Always predicts the embedding of one word at every position; records the timesteps of every
/// call (kept when the fake is moved into a model: clone `calls` first).
pub struct ConstantWord {
    embedding: Vec<f32>,
    pub calls: Arc<Mutex<Vec<Vec<i64>>>>,
}

impl ConstantWord {
    pub fn new(embedding: Vec<f32>) -> Self {
        Self { embedding, calls: Arc::default() }
    }

    /// Every row's timestep, call after call.
    pub fn timesteps(&self) -> Vec<i64> {
        self.calls.lock().unwrap().concat()
    }
}

impl Denoiser for ConstantWord {
    fn denoise(
        &mut self,
        x: &Array3<f32>,
        t: &[i64],
        prev: Option<&Array3<f32>>,
        out: &mut Array3<f32>,
    ) -> Result<(), InferenceError> {
        assert_eq!(x.dim().0, t.len());
        assert!(prev.is_none(), "a model that is not self-conditioned gets no x0_hat_prev");
        self.calls.lock().unwrap().push(t.to_vec());
        for mut row in out.rows_mut() {
            row.assign(&ndarray::aview1(&self.embedding));
        }
        Ok(())
    }
}

/// A self-conditioned fake: predicts its previous x0_hat plus one; records what it was given.
#[derive(Default)]
pub struct CountingUp {
    pub given: Vec<Array3<f32>>,
}

impl Denoiser for CountingUp {
    fn denoise(
        &mut self,
        _x: &Array3<f32>,
        _t: &[i64],
        prev: Option<&Array3<f32>>,
        out: &mut Array3<f32>,
    ) -> Result<(), InferenceError> {
        let prev = prev.expect("a self-conditioned model gets x0_hat_prev");
        self.given.push(prev.clone());
        out.assign(&prev.mapv(|v| v + 1.0));
        Ok(())
    }

    fn self_conditioned(&self) -> bool {
        true
    }
}

/// d loss / d x = 1 everywhere, loss = the first tag of the target; records (t, x, target) of
/// every row of every call.
#[derive(Default)]
pub struct ConstantGrad {
    pub calls: Vec<Vec<(i64, Array3<f32>, Target)>>,
}

impl Guide for ConstantGrad {
    fn grad(
        &mut self,
        x: &Array3<f32>,
        t: &[i64],
        targets: &[&Target],
        grad: &mut Array3<f32>,
        loss: &mut [f32],
    ) -> Result<(), InferenceError> {
        let rows = (0..t.len()).map(|k| (t[k], x.slice(s![k..k + 1, .., ..]).to_owned(), targets[k].clone()));
        self.calls.push(rows.collect());
        grad.fill(1.0);
        for (l, target) in loss.iter_mut().zip(targets) {
            *l = match target {
                Target::Tags(v) => v[0] as f32,
                Target::Wanted(v) => v[0],
            };
        }
        Ok(())
    }
}

/// Zeros, counting the draws (shared by the lanes of one test).
#[derive(Default, Clone)]
pub struct CountedZeros {
    draws: Arc<AtomicUsize>,
}

impl CountedZeros {
    pub fn draws(&self) -> usize {
        self.draws.load(Ordering::SeqCst)
    }
}

impl Noise for CountedZeros {
    fn fill(&mut self, z: &mut Array3<f32>) {
        self.draws.fetch_add(1, Ordering::SeqCst);
        z.fill(0.0);
    }
}

/// x0_hat = 0.5 x + t / 100 per coordinate: depends on every input, so a row mixed up with
/// another, or fed the wrong t, changes the output.
pub struct Mixing;

impl Denoiser for Mixing {
    fn denoise(
        &mut self,
        x: &Array3<f32>,
        t: &[i64],
        _: Option<&Array3<f32>>,
        out: &mut Array3<f32>,
    ) -> Result<(), InferenceError> {
        for (k, (mut o, x)) in out.outer_iter_mut().zip(x.outer_iter()).enumerate() {
            o.zip_mut_with(&x, |o, &x| *o = 0.5 * x + t[k] as f32 / 100.0);
        }
        Ok(())
    }
}

/// Four words in two dimensions: the origin, (3, 0), (0, 3) and (-3, -3).
pub fn embeddings() -> Embeddings {
    Embeddings::new(array![[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
}
