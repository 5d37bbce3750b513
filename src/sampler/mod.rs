//! Reverse diffusion: respaced DDPM / DDIM(eta) with the clamping trick and classifier
//! guidance. The model is reached only through this layer's contracts, [`Denoiser`] and
//! [`Guide`] (implemented over ONNX Runtime in `crate::ort`, and by fakes in the tests), and
//! the noise through [`Noise`]; the step math is in [`step`].

pub mod step;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use ndarray::{Array2, Array3, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::embeddings::{Constraints, Embeddings};
use crate::error::{GenerateError, InferenceError, RequestError};
use crate::schedule::Diffusion;

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
}

/// "Given x and t, give d loss / d x": what the sampler needs from a control.
pub trait Guide {
    /// Adds `weight * d loss / d x` at x [B, L, d], timestep t, into `grad`.
    fn add_grad(&mut self, x: &Array3<f32>, t: &[i64], grad: &mut Array3<f32>) -> Result<(), InferenceError>;
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
            seq.iter_mut().for_each(|v| *v = StandardNormal.sample(rng));
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

/// Where the time of one generation went.
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
}

pub struct Sampled {
    pub x0: Array3<f32>,
    /// Rounded token ids, [B][L].
    pub tokens: Vec<Vec<u32>>,
    pub timing: Timing,
}

pub struct Sampler<'a, D: Denoiser> {
    pub denoiser: &'a mut D,
    pub embeddings: &'a Embeddings,
    pub diffusion: &'a Diffusion,
    pub options: SampleOptions,
    /// Controls whose loss gradients steer x_{t-1}; their losses add.
    pub guides: Vec<&'a mut dyn Guide>,
    pub guide_options: GuideOptions,
    /// Token held at each position (infill words, START/END/PAD of a fixed length).
    pub held: &'a [Option<u32>],
    /// What clamping and rounding may pick (words only inside a fixed length, repeats blocked).
    pub constraints: Constraints<'a>,
    /// Give up with [`GenerateError::Deadline`] when a step would start after this instant.
    pub deadline: Option<Instant>,
}

impl<'a, D: Denoiser> Sampler<'a, D> {
    /// An unguided sampler holding no position.
    pub fn new(
        denoiser: &'a mut D,
        embeddings: &'a Embeddings,
        diffusion: &'a Diffusion,
        options: SampleOptions,
    ) -> Self {
        Self {
            denoiser,
            embeddings,
            diffusion,
            options,
            guides: Vec::new(),
            guide_options: GuideOptions::default(),
            held: &[],
            constraints: Constraints::default(),
            deadline: None,
        }
    }
}

impl<D: Denoiser> Sampler<'_, D> {
    /// Denoise from `x` = x_T down to x_0, then round. Noise is drawn from `noise` once per
    /// step that needs it (i > 0, and sigma > 0 or a held position); held positions take
    /// q_sample of their word with the same z. `trace` collects the model's x0_hat per step.
    pub fn sample(
        &mut self,
        mut x: Array3<f32>,
        noise: &mut dyn Noise,
        mut trace: Option<&mut Vec<Array3<f32>>>,
    ) -> Result<Sampled, GenerateError> {
        let start = Instant::now();
        if !x.is_standard_layout() {
            x = x.as_standard_layout().into_owned(); // every buffer below is row-major
        }
        let (b, l, d) = x.dim();
        let mut x0_hat = Array3::zeros((b, l, d));
        let mut mean = Array3::zeros((b, l, d));
        let mut z = Array3::zeros((b, l, d));
        let mut grad = Array3::zeros((b, l, d));
        let mut scratch = Array2::zeros((0, 0));
        let mut t = vec![0i64; b];
        // self-conditioning: the previous raw x0_hat, zeros before the first step
        let mut x0_hat_prev = self.denoiser.self_conditioned().then(|| Array3::zeros((b, l, d)));
        let n = self.diffusion.num_steps();
        let mut timing = Timing { steps: n, ..Timing::default() };
        let last_unguided = n - 1 - self.guide_options.guided_steps(n);
        let guided = !self.guides.is_empty() && self.guide_options.steps > 0;
        let holds = self.held.iter().any(Option::is_some);
        // x_T is N(0, I): its own values are the first z of the held positions
        if holds {
            let x_t = x.clone();
            self.hold(&mut x, self.diffusion.alpha_bar[n - 1], &x_t);
        }
        let no_noise = Array3::zeros(if holds { (b, l, d) } else { (0, 0, 0) });
        for i in (0..n).rev() {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(GenerateError::Deadline { done: n - 1 - i, steps: n });
            }
            t.fill(self.diffusion.timestep_map[i]);
            let call = Instant::now();
            self.denoiser.denoise(&x, &t, x0_hat_prev.as_ref(), &mut x0_hat)?;
            timing.denoiser += call.elapsed();
            if let Some(prev) = x0_hat_prev.as_mut() {
                prev.assign(&x0_hat);
            }
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(x0_hat.clone());
            }
            if self.options.clamp {
                self.embeddings.clamp_rows(flat_mut(&mut x0_hat), &mut scratch, self.constraints);
            }
            let draw = i > 0 && (holds || step::sigma(self.options.method, self.diffusion, i) > 0.0);
            if draw {
                noise.fill(&mut z);
            }
            let z = draw.then_some(&z);
            match self.options.method {
                Method::Ddpm => step::p_sample(self.diffusion, i, &x0_hat, z, &mut x, &mut mean),
                Method::Ddim { eta } => step::ddim_sample(self.diffusion, i, eta, &x0_hat, z, &mut x, &mut mean),
            }
            if guided && i > last_unguided {
                t.fill(self.diffusion.timestep_map[i - 1]);
                let call = Instant::now();
                self.guide(&mut x, &mean, self.diffusion.model_variance[i], &t, &mut grad, (n - 1 - i, n))?;
                timing.guidance += call.elapsed();
            }
            if !x.iter().all(|v| v.is_finite()) {
                return Err(GenerateError::NonFinite { step: n - i, steps: n });
            }
            if holds {
                // at i = 0 (no z), abar_prev = 1: held positions become their words exactly
                self.hold(&mut x, self.diffusion.alpha_bar_prev[i], z.unwrap_or(&no_noise));
            }
        }
        let tokens = self.embeddings.round_rows(flat(&x), &mut scratch, self.constraints);
        timing.total = start.elapsed();
        Ok(Sampled { tokens: tokens.chunks(l).map(<[u32]>::to_vec).collect(), x0: x, timing })
    }

    /// K steps on x_{t-1} against sum(control losses) + lambda * ||x - mu||^2 / sigma^2; each
    /// update is lr * g / |g| per coordinate, what an Adagrad re-created every step does first.
    fn guide(
        &mut self,
        x: &mut Array3<f32>,
        mean: &Array3<f32>,
        variance: f64,
        t: &[i64],
        grad: &mut Array3<f32>,
        step: (usize, usize),
    ) -> Result<(), GenerateError> {
        let opts = self.guide_options;
        let fluency = (2.0 * opts.lambda / variance.max(1e-12)) as f32;
        let lr = opts.lr as f32;
        for _ in 0..opts.steps {
            grad.fill(0.0);
            for guide in self.guides.iter_mut() {
                // no request outlives its deadline by more than one graph call
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(GenerateError::Deadline { done: step.0, steps: step.1 });
                }
                guide.add_grad(x, t, grad)?;
            }
            ndarray::Zip::from(&mut *x).and(&*grad).and(mean).for_each(|x, &g, &mu| {
                let g = g + fluency * (*x - mu);
                *x -= lr * g / (g.abs() + 1e-10);
            });
        }
        Ok(())
    }

    /// Held positions sit at q_sample(EMB(w), abar, z): exactly EMB(w) once abar = 1, so they
    /// round back to w.
    fn hold(&self, x: &mut Array3<f32>, alpha_bar: f64, z: &Array3<f32>) {
        let emb = self.embeddings.matrix();
        for (mut seq, z_seq) in x.axis_iter_mut(Axis(0)).zip(z.axis_iter(Axis(0))) {
            for (pos, token) in self.held.iter().enumerate() {
                if let Some(w) = token {
                    step::q_sample(emb.row(*w as usize), alpha_bar, z_seq.row(pos), seq.row_mut(pos));
                }
            }
        }
    }
}

fn flat(x: &Array3<f32>) -> ndarray::ArrayView2<'_, f32> {
    let (b, l, d) = x.dim();
    x.view().into_shape_with_order((b * l, d)).expect("the sampler keeps its arrays row-major")
}

fn flat_mut(x: &mut Array3<f32>) -> ndarray::ArrayViewMut2<'_, f32> {
    let (b, l, d) = x.dim();
    x.view_mut().into_shape_with_order((b * l, d)).expect("the sampler keeps its arrays row-major")
}
