//! Reverse diffusion: respaced DDPM / DDIM(eta) with the clamping trick, driven through the
//! [`Denoiser`] trait so that tests can run it on a fake model.

use std::time::{Duration, Instant};

use ndarray::{Array2, Array3, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::embeddings::{Embeddings, WordsOnly};
use crate::error::{GenerateError, InferenceError};
use crate::guidance::Guide;
use crate::schedule::Diffusion;

/// "Given x_t and t, give x0_hat": what the sampler needs from a model.
pub trait Denoiser {
    /// `x` is x_t [B, L, d], `t` the model timestep per sequence; writes x0_hat [B, L, d] into `out`.
    fn denoise(&mut self, x: &Array3<f32>, t: &[i64], out: &mut Array3<f32>) -> Result<(), InferenceError>;
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Ancestral sampling from q(x_{t-1} | x_t, x0_hat) with the fixed-large variance.
    Ddpm,
    /// DDIM; eta = 0 is deterministic, eta = 1 has DDPM's posterior variance.
    Ddim { eta: f64 },
}

#[derive(Debug, Clone, Copy)]
pub struct SampleOptions {
    pub method: Method,
    pub clamp: bool,
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

/// One random stream per sequence: the same (seed, index) gives the same sequence in any batch.
pub fn sequence_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// x_T ~ N(0, I), drawn per sequence from its own stream.
pub fn initial_noise(rngs: &mut [ChaCha8Rng], seq_len: usize, d: usize) -> Array3<f32> {
    let mut x = Array3::zeros((rngs.len(), seq_len, d));
    fill_normal(&mut x, rngs);
    x
}

fn fill_normal(x: &mut Array3<f32>, rngs: &mut [ChaCha8Rng]) {
    for (mut seq, rng) in x.axis_iter_mut(Axis(0)).zip(rngs.iter_mut()) {
        seq.iter_mut().for_each(|v| *v = StandardNormal.sample(rng));
    }
}

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
    /// Positions inside a fixed length, which clamping and rounding keep to words.
    pub words_only: WordsOnly<'a>,
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
        let guide_options = GuideOptions { steps: 0, lambda: 0.0, lr: 0.0, skip_last: 0.1 };
        Self {
            denoiser,
            embeddings,
            diffusion,
            options,
            guides: Vec::new(),
            guide_options,
            held: &[],
            words_only: WordsOnly::default(),
            deadline: None,
        }
    }
}

impl<D: Denoiser> Sampler<'_, D> {
    /// Denoise from `x_t` (= x_T) down to x_0, then round. `trace` collects the model's x0_hat per step.
    pub fn sample(
        &mut self,
        mut x: Array3<f32>,
        rngs: &mut [ChaCha8Rng],
        mut trace: Option<&mut Vec<Array3<f32>>>,
    ) -> Result<Sampled, GenerateError> {
        let start = Instant::now();
        if !x.is_standard_layout() {
            x = x.as_standard_layout().into_owned(); // every buffer below is row-major
        }
        let (b, l, d) = x.dim();
        let mut x0_hat = Array3::zeros((b, l, d));
        let mut mean = Array3::zeros((b, l, d));
        let mut noise = Array3::zeros((b, l, d));
        let mut grad = Array3::zeros((b, l, d));
        let mut scratch = Array2::zeros((0, 0));
        let mut t = vec![0i64; b];
        let n = self.diffusion.num_steps();
        let mut timing = Timing { steps: n, ..Timing::default() };
        let last_guided = (n as f64 * self.guide_options.skip_last).floor() as usize;
        self.hold(&mut x, self.diffusion.alpha_bar[n - 1], rngs);
        for i in (0..n).rev() {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(GenerateError::Deadline { done: n - 1 - i, steps: n });
            }
            t.fill(self.diffusion.timestep_map[i]);
            let call = Instant::now();
            self.denoiser.denoise(&x, &t, &mut x0_hat)?;
            timing.denoiser += call.elapsed();
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(x0_hat.clone());
            }
            if self.options.clamp {
                self.embeddings.clamp_rows(flat_mut(&mut x0_hat), &mut scratch, self.words_only);
            }
            let sigma = self.step_mean(i, &x, &x0_hat, &mut mean);
            x.assign(&mean);
            if i > 0 && sigma > 0.0 {
                fill_normal(&mut noise, rngs);
                x.scaled_add(sigma as f32, &noise);
            }
            if i > last_guided && !self.guides.is_empty() && self.guide_options.steps > 0 {
                t.fill(self.diffusion.timestep_map[i - 1]);
                let call = Instant::now();
                self.guide(&mut x, &mean, self.diffusion.model_variance[i], &t, &mut grad)?;
                timing.guidance += call.elapsed();
            }
            self.hold(&mut x, self.diffusion.alpha_bar_prev[i], rngs);
        }
        let tokens = self.embeddings.round_rows(flat(&x), &mut scratch, self.words_only);
        timing.total = start.elapsed();
        Ok(Sampled { tokens: tokens.chunks(l).map(<[u32]>::to_vec).collect(), x0: x, timing })
    }

    /// The mean of x_{i-1} given x_i and x0_hat, into `mean`; returns the noise scale sigma.
    fn step_mean(&self, i: usize, x: &Array3<f32>, x0_hat: &Array3<f32>, mean: &mut Array3<f32>) -> f64 {
        let s = self.diffusion;
        let (coef_x0, coef_xt, sigma) = match self.options.method {
            // posterior_mean = coef1 * x0_hat + coef2 * x_t; sigma^2 = model_variance
            Method::Ddpm => (s.posterior_mean_coef1[i], s.posterior_mean_coef2[i], s.model_variance[i].sqrt()),
            Method::Ddim { eta } => {
                let (ab, ab_prev) = (s.alpha_bar[i], s.alpha_bar_prev[i]);
                // eps = (x_t / sqrt(abar) - x0_hat) / sqrt(1/abar - 1)
                // x_{t-1} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z
                let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt();
                let c_eps = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt() / (1.0 / ab - 1.0).sqrt();
                (ab_prev.sqrt() - c_eps, c_eps / ab.sqrt(), sigma)
            }
        };
        let (coef_x0, coef_xt) = (coef_x0 as f32, coef_xt as f32);
        ndarray::Zip::from(mean).and(x0_hat).and(x).for_each(|m, &x0, &xt| *m = coef_x0 * x0 + coef_xt * xt);
        if i == 0 {
            0.0
        } else {
            sigma
        }
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
    ) -> Result<(), InferenceError> {
        let opts = self.guide_options;
        let fluency = (2.0 * opts.lambda / variance.max(1e-12)) as f32;
        let lr = opts.lr as f32;
        for _ in 0..opts.steps {
            grad.fill(0.0);
            for guide in self.guides.iter_mut() {
                guide.add_grad(x, t, grad)?;
            }
            ndarray::Zip::from(&mut *x).and(&*grad).and(mean).for_each(|x, &g, &mu| {
                let g = g + fluency * (*x - mu);
                *x -= lr * g / (g.abs() + 1e-10);
            });
        }
        Ok(())
    }

    /// Held positions sit at their noised embedding, sqrt(abar) EMB(w) + sqrt(1 - abar) z:
    /// exactly EMB(w) once abar = 1, so they round back to w.
    fn hold(&self, x: &mut Array3<f32>, alpha_bar: f64, rngs: &mut [ChaCha8Rng]) {
        if self.held.iter().all(Option::is_none) {
            return;
        }
        let (scale, noise) = (alpha_bar.sqrt() as f32, (1.0 - alpha_bar).max(0.0).sqrt() as f32);
        let emb = self.embeddings.matrix();
        for (mut seq, rng) in x.axis_iter_mut(Axis(0)).zip(rngs.iter_mut()) {
            for (pos, token) in self.held.iter().enumerate() {
                if let Some(w) = token {
                    for (v, &e) in seq.row_mut(pos).iter_mut().zip(emb.row(*w as usize)) {
                        let z: f32 = StandardNormal.sample(rng);
                        *v = scale * e + noise * z;
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    /// A fake model that always predicts the embedding of one word at every position.
    struct ConstantWord {
        embedding: Vec<f32>,
        calls: Vec<i64>,
    }

    impl Denoiser for ConstantWord {
        fn denoise(&mut self, x: &Array3<f32>, t: &[i64], out: &mut Array3<f32>) -> Result<(), InferenceError> {
            assert_eq!(x.dim().0, t.len());
            self.calls.push(t[0]);
            for mut row in out.rows_mut() {
                row.assign(&ndarray::aview1(&self.embedding));
            }
            Ok(())
        }
    }

    fn embeddings() -> Embeddings {
        Embeddings::new(array![[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    }

    fn diffusion(steps: usize) -> Diffusion {
        let betas: Vec<f64> = (0..steps).map(|i| 0.01 + 0.5 * i as f64 / steps as f64).collect();
        Diffusion::new(betas, (0..steps as i64).map(|t| t * 10).collect())
    }

    fn run(method: Method, clamp: bool, word: usize) -> (Sampled, Vec<i64>) {
        let emb = embeddings();
        let mut fake = ConstantWord { embedding: emb.matrix().row(word).to_vec(), calls: Vec::new() };
        let diff = diffusion(6);
        let mut rngs: Vec<_> = (0..3).map(|k| sequence_rng(5, k)).collect();
        let x_t = initial_noise(&mut rngs, 4, 2);
        let mut sampler = Sampler::new(&mut fake, &emb, &diff, SampleOptions { method, clamp });
        let sampled = sampler.sample(x_t, &mut rngs, None).unwrap();
        (sampled, fake.calls)
    }

    #[test]
    fn visits_every_step_from_the_noisiest_and_lands_on_x0_hat() {
        for method in [Method::Ddpm, Method::Ddim { eta: 0.0 }, Method::Ddim { eta: 1.0 }] {
            for clamp in [true, false] {
                let (sampled, calls) = run(method, clamp, 2);
                assert_eq!(calls, vec![50, 40, 30, 20, 10, 0], "{method:?}");
                assert_eq!(sampled.tokens, vec![vec![2; 4]; 3], "{method:?} clamp={clamp}");
                assert!(sampled.x0.iter().zip([0.0f32, 3.0].iter().cycle()).all(|(a, b)| (a - b).abs() < 1e-5));
                assert_eq!(sampled.timing.steps, 6);
            }
        }
    }

    #[test]
    fn a_column_major_x_t_is_accepted() {
        use ndarray::ShapeBuilder;
        let emb = embeddings();
        let mut fake = ConstantWord { embedding: emb.matrix().row(1).to_vec(), calls: Vec::new() };
        let diff = diffusion(3);
        let mut rngs: Vec<_> = (0..2).map(|k| sequence_rng(1, k)).collect();
        let x_t = Array3::from_shape_fn((2, 4, 2).f(), |(b, l, d)| (b + l + d) as f32);
        let options = SampleOptions { method: Method::Ddpm, clamp: true };
        let sampled = Sampler::new(&mut fake, &emb, &diff, options).sample(x_t, &mut rngs, None).unwrap();
        assert_eq!(sampled.tokens, vec![vec![1; 4]; 2]);
    }

    #[test]
    fn sequence_streams_do_not_depend_on_the_batch() {
        let mut batch: Vec<_> = (0..3).map(|k| sequence_rng(9, k)).collect();
        let mut alone = [sequence_rng(9, 2)];
        let together = initial_noise(&mut batch, 4, 2);
        let single = initial_noise(&mut alone, 4, 2);
        assert_eq!(together.index_axis(Axis(0), 2), single.index_axis(Axis(0), 0));
        assert_ne!(together.index_axis(Axis(0), 0), together.index_axis(Axis(0), 1));
    }

    #[test]
    fn clamping_picks_the_nearest_and_rounding_the_largest_dot_product() {
        let emb = embeddings();
        let mut x: Array2<f32> = array![[2.0, 0.5], [0.2, 0.1], [-1.0, -2.5]];
        let mut scratch = Array2::zeros((0, 0));
        emb.clamp_rows(x.view_mut(), &mut scratch, WordsOnly::default());
        assert_eq!(x, array![[3.0, 0.0], [0.0, 0.0], [-3.0, -3.0]]);
        // <x, EMB>: the origin word never wins a dot product against a positive one
        assert_eq!(
            emb.round_rows(array![[0.2, 0.1], [-0.1, -0.2]].view(), &mut scratch, WordsOnly::default()),
            vec![1, 3]
        );
    }
}
