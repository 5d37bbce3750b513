//! One reverse-diffusion step, named after the distributions it samples (improved-diffusion
//! `gaussian_diffusion.py`): `i` indexes the (respaced) schedule, `x` holds x_i on entry and
//! x_{i-1} on return, `mean` the mean of p(x_{i-1} | x_i) (guidance pulls towards it), and
//! `noise` is z ~ N(0, I), given by the caller (None: no noise, as at i = 0); and one step of
//! classifier guidance on x_{i-1} ([`guidance_update`]).

use ndarray::{ArrayView1, ArrayView3, ArrayViewMut1, ArrayViewMut3, Zip};

use super::{GuideOptions, Method};
use crate::schedule::Diffusion;

/// x_t ~ q(x_t | x_0) = N(sqrt(abar) x_0, (1 - abar) I), for one position.
pub fn q_sample(x0: ArrayView1<f32>, alpha_bar: f64, noise: ArrayView1<f32>, mut x_t: ArrayViewMut1<f32>) {
    let (scale, sd) = (alpha_bar.sqrt() as f32, (1.0 - alpha_bar).max(0.0).sqrt() as f32);
    Zip::from(&mut x_t).and(x0).and(noise).for_each(|x, &x0, &z| *x = scale * x0 + sd * z);
}

/// The coefficients of the mean of q(x_{i-1} | x_i, x_0 = x0_hat): coef1 x0_hat + coef2 x_i
/// (Ho et al. 2020, Eq. 7).
pub fn q_posterior_mean(d: &Diffusion, i: usize) -> impl Fn(f32, f32) -> f32 {
    let (coef1, coef2) = (d.posterior_mean_coef1[i] as f32, d.posterior_mean_coef2[i] as f32);
    move |x0, xt| coef1 * x0 + coef2 * xt
}

/// DDPM: x_{i-1} = q_posterior_mean + sigma z, sigma^2 = the fixed-large model variance.
pub fn p_sample(
    d: &Diffusion,
    i: usize,
    x0_hat: ArrayView3<f32>,
    noise: Option<ArrayView3<f32>>,
    x: ArrayViewMut3<f32>,
    mean: ArrayViewMut3<f32>,
) {
    add_noise(x, mean, x0_hat, q_posterior_mean(d, i), sigma(Method::Ddpm, d, i), noise);
}

/// One classifier-guidance step on x = x_{i-1} (Diffusion-LM section 5.2): descend
/// sum(weighted control losses) + lambda ||x - mean||^2 / sigma^2, where `grad` is the losses'
/// gradient, `mean` and sigma^2 (the model variance) those of p(x_{i-1} | x_i); the fluency
/// term's gradient is 2 lambda (x - mean) / sigma^2. Each coordinate moves by lr * g / |g| (what
/// an Adagrad re-created every step, as in the reference code, does first); no Langevin noise.
pub fn guidance_update(
    d: &Diffusion,
    i: usize,
    opts: &GuideOptions,
    grad: ArrayView3<f32>,
    mean: ArrayView3<f32>,
    mut x: ArrayViewMut3<f32>,
) {
    let fluency = (2.0 * opts.lambda / d.model_variance[i].max(1e-12)) as f32;
    let lr = opts.lr as f32;
    Zip::from(&mut x).and(grad).and(mean).for_each(|x, &g, &mu| {
        let g = g + fluency * (*x - mu);
        *x -= lr * g / (g.abs() + 1e-10);
    });
}

/// DDIM (Song et al. 2021, Eq. 12) with eps recovered from the x0 prediction:
/// eps = (x_i - sqrt(abar) x0_hat) / sqrt(1 - abar),
/// x_{i-1} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
pub fn ddim_sample(
    d: &Diffusion,
    i: usize,
    eta: f64,
    x0_hat: ArrayView3<f32>,
    noise: Option<ArrayView3<f32>>,
    x: ArrayViewMut3<f32>,
    mean: ArrayViewMut3<f32>,
) {
    let (ab, ab_prev) = (d.alpha_bar[i], d.alpha_bar_prev[i]);
    let sigma = sigma(Method::Ddim { eta }, d, i);
    let (sqrt_ab, inv_sqrt_1mab) = (ab.sqrt() as f32, (1.0 / (1.0 - ab).sqrt()) as f32);
    let (sqrt_ab_prev, c_eps) = (ab_prev.sqrt() as f32, (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt() as f32);
    let mean_of = |x0: f32, xt: f32| {
        let eps = (xt - sqrt_ab * x0) * inv_sqrt_1mab;
        sqrt_ab_prev * x0 + c_eps * eps
    };
    add_noise(x, mean, x0_hat, mean_of, sigma, noise);
}

/// The noise scale sigma of step i (0 at the last step, i = 0).
pub fn sigma(method: Method, d: &Diffusion, i: usize) -> f64 {
    if i == 0 {
        return 0.0;
    }
    match method {
        Method::Ddpm => d.model_variance[i].sqrt(),
        Method::Ddim { eta } => {
            let (ab, ab_prev) = (d.alpha_bar[i], d.alpha_bar_prev[i]);
            eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt()
        }
    }
}

/// x_{i-1} = mean + sigma z (z = `noise`, none: x_{i-1} = mean), where `mean` takes
/// mean_of(x0_hat, x_i) at each value: one pass over the arrays.
fn add_noise(
    mut x: ArrayViewMut3<f32>,
    mut mean: ArrayViewMut3<f32>,
    x0_hat: ArrayView3<f32>,
    mean_of: impl Fn(f32, f32) -> f32,
    sigma: f64,
    noise: Option<ArrayView3<f32>>,
) {
    let scale = sigma as f32;
    match noise.filter(|_| sigma > 0.0) {
        Some(z) => Zip::from(&mut x).and(&mut mean).and(x0_hat).and(z).for_each(|x, m, &x0, &z| {
            *m = mean_of(x0, *x);
            *x = *m + scale * z;
        }),
        None => Zip::from(&mut x).and(&mut mean).and(x0_hat).for_each(|x, m, &x0| {
            *m = mean_of(x0, *x);
            *x = *m;
        }),
    }
}
