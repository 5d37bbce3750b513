//! Reverse diffusion: respaced DDPM / DDIM(eta) with the clamping trick and classifier
//! guidance, scheduled per iteration: a [`Batch`] holds sequences ([`Lane`]s) of any requests,
//! each at its own step of its own schedule ([`Course`]), and advances them all by one step per
//! denoiser call. The model is reached only through this layer's contracts, [`Denoiser`] and
//! [`Guide`] (implemented over ONNX Runtime in `crate::ort`, and by fakes in the tests), and
//! the noise through [`Noise`]; the step math, guidance's update included, is in [`step`].

mod batch;
#[cfg(test)]
pub(crate) mod fakes;
mod guide;
mod lane;
pub mod step;
#[cfg(test)]
mod tests;

pub use batch::{sample_all, Batch};
pub use lane::{Course, Finished, GuideTarget, Lane, Progress, Sampled, Target};

pub use crate::embeddings::Nearest;

use std::path::PathBuf;
use std::time::Duration;

use ndarray::{Array3, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{InferenceError, RequestError};

/// "Given x_t and t, give x0_hat": what the sampler needs from a model.
pub trait Denoiser {
    /// `x` is x_t [B, L, d], `t` the model timestep per sequence; writes x0_hat [B, L, d] into
    /// `out`. A self-conditioned model also reads `x0_hat_prev`, its previous raw prediction.
    fn denoise(
        &mut self,
        x: &Array3<f32>,
        t: &[i64],
        x0_hat_prev: Option<&Array3<f32>>,
        out: &mut Array3<f32>,
    ) -> Result<(), InferenceError>;

    /// Whether `denoise` reads `x0_hat_prev` (self-conditioning); the sampler then keeps it.
    fn self_conditioned(&self) -> bool {
        false
    }

    /// The clamping trick's search done by the engine in the last `denoise` call, when the
    /// model does it: each position's nearest word embeddings to x0_hat. None by default (the
    /// sampler then scores every word itself).
    fn nearest(&self) -> Option<Nearest<'_>> {
        None
    }

    /// Whether `denoise` does the clamping trick's search ([`Denoiser::nearest`] after a call).
    fn nearest_on_engine(&self) -> bool {
        false
    }

    /// Finish the profile of the calls so far, where the implementation keeps one (sessions
    /// opened to profile): the files written. None by default; the sampler never asks.
    fn end_profiling(&mut self) -> Result<Vec<PathBuf>, InferenceError> {
        Ok(Vec::new())
    }
}

/// "Given x, t and a target, give the loss and d loss / d x": what the sampler needs from a
/// control's classifier. Every row has its own timestep and target, so sequences of different
/// requests share a call.
pub trait Guide {
    /// For row k of x [n, L, d]: loss(x_k, t[k], targets[k]) into `loss[k]` and its gradient
    /// w.r.t. x_k into `grad[k]` (both overwritten).
    fn grad(
        &mut self,
        x: &Array3<f32>,
        t: &[i64],
        targets: &[&Target],
        grad: &mut Array3<f32>,
        loss: &mut [f32],
    ) -> Result<(), InferenceError>;

    /// As [`Denoiser::end_profiling`].
    fn end_profiling(&mut self) -> Result<Vec<PathBuf>, InferenceError> {
        Ok(Vec::new())
    }
}

/// Where the Gaussian noise comes from: each call fills `z` [B, L, d] with N(0, I) draws.
pub trait Noise {
    fn fill(&mut self, z: &mut Array3<f32>);
}

/// One random stream per sequence: the same (seed, index) gives the same sequence in any batch.
pub struct SequenceNoise {
    rngs: Vec<ChaCha8Rng>,
}

impl SequenceNoise {
    pub fn new(seed: u64, indices: impl IntoIterator<Item = u64>) -> Self {
        let rngs = indices
            .into_iter()
            .map(|index| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(index);
                rng
            })
            .collect();
        Self { rngs }
    }

    /// x_T ~ N(0, I), [B, seq_len, d], the first draw of each stream.
    pub fn x_t(&mut self, seq_len: usize, d: usize) -> Array3<f32> {
        let mut x = Array3::zeros((self.rngs.len(), seq_len, d));
        self.fill(&mut x);
        x
    }
}

impl Noise for SequenceNoise {
    fn fill(&mut self, z: &mut Array3<f32>) {
        for (mut seq, rng) in z.axis_iter_mut(Axis(0)).zip(self.rngs.iter_mut()) {
            // over a slice (lanes are row-major) the ziggurat and ChaCha's buffer inline: 46
            // instructions a draw under callgrind, 65 through ndarray's element iterator
            match seq.as_slice_mut() {
                Some(seq) => seq.iter_mut().for_each(|v| *v = StandardNormal.sample(rng)),
                None => seq.iter_mut().for_each(|v| *v = StandardNormal.sample(rng)),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Ancestral sampling from q(x_{t-1} | x_t, x0_hat) with the fixed-large variance.
    Ddpm,
    /// DDIM; eta = 0 is deterministic, eta = 1 has DDPM's posterior variance.
    Ddim { eta: f64 },
}

impl Method {
    /// From a sampler name ("ddpm", "ddim") and an optional eta (DDIM only, default 0).
    pub fn parse(sampler: &str, eta: Option<f64>) -> Result<Self, RequestError> {
        match (sampler, eta) {
            ("ddim", eta) => Ok(Method::Ddim { eta: eta.unwrap_or(0.0) }),
            ("ddpm", None) => Ok(Method::Ddpm),
            ("ddpm", Some(_)) => Err(RequestError::EtaWithoutDdim),
            (other, _) => Err(RequestError::Sampler(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct SampleOptions {
    pub method: Method,
    pub clamp: bool,
}

/// No guidance in this last fraction of the steps (Diffusion-LM's reference code).
pub const GUIDE_SKIP_LAST: f64 = 0.1;

/// Classifier guidance after each denoising step (Diffusion-LM section 5.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuideOptions {
    /// K gradient steps on x_{t-1} per diffusion step.
    pub steps: usize,
    /// Weight of the fluency term lambda * ||x - mu||^2 / sigma^2.
    pub lambda: f64,
    /// Step size; each update is lr * g / |g| per coordinate (a fresh Adagrad's first step).
    pub lr: f64,
    /// No guidance in this last fraction of the steps.
    pub skip_last: f64,
}

impl GuideOptions {
    /// Of `n` sampling steps, how many are guided: steps i = n-1 down to floor(n * skip_last) + 1.
    pub fn guided_steps(&self, n: usize) -> usize {
        n.saturating_sub(1 + (n as f64 * self.skip_last).floor() as usize)
    }
}

impl Default for GuideOptions {
    fn default() -> Self {
        Self { steps: 0, lambda: 0.0, lr: 0.0, skip_last: GUIDE_SKIP_LAST }
    }
}

/// Where the time of one sequence went: its share of every batched call it was part of.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub total: Duration,
    pub denoiser: Duration,
    /// Time in the guidance graphs and their updates.
    pub guidance: Duration,
    pub steps: usize,
}

impl Timing {
    pub fn per_step(&self) -> Duration {
        self.total / self.steps.max(1) as u32
    }

    pub fn host(&self) -> Duration {
        self.total.saturating_sub(self.denoiser + self.guidance)
    }

    /// The sum of several sequences' shares (a request's time).
    pub fn add(&mut self, other: &Timing) {
        self.total += other.total;
        self.denoiser += other.denoiser;
        self.guidance += other.guidance;
        self.steps = self.steps.max(other.steps);
    }
}
