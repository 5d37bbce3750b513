//! The noise schedule and its respacing to a step budget, in f64
//! (improved-diffusion `gaussian_diffusion.py` / `respace.py`).

use crate::error::RequestError;
use crate::manifest::DiffusionInfo;

/// abar(s) = 1 - sqrt(s + offset), s = t / T (the "sqrt" schedule of Diffusion-LM).
fn sqrt_alpha_bar_fn(s: f64, offset: f64) -> f64 {
    1.0 - (s + offset).sqrt()
}

/// beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta) for t = 0..T-1.
pub fn sqrt_betas(t_max: usize, offset: f64, max_beta: f64) -> Vec<f64> {
    let n = t_max as f64;
    (0..t_max)
        .map(|t| {
            let ratio = sqrt_alpha_bar_fn((t + 1) as f64 / n, offset) / sqrt_alpha_bar_fn(t as f64 / n, offset);
            (1.0 - ratio).min(max_beta)
        })
        .collect()
}

pub fn cumprod_alphas(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

/// `steps` timesteps evenly spaced over 0..T-1 (improved-diffusion `space_timesteps`).
pub fn respaced_timesteps(t_max: usize, steps: usize) -> Result<Vec<usize>, RequestError> {
    if steps == 0 || steps > t_max {
        return Err(RequestError::Steps { got: steps, max: t_max });
    }
    if steps == 1 {
        return Ok(vec![0]);
    }
    let stride = (t_max - 1) as f64 / (steps - 1) as f64;
    let mut kept: Vec<usize> = (0..steps).map(|i| (i as f64 * stride).round_ties_even() as usize).collect();
    kept.dedup();
    Ok(kept)
}

/// The training schedule's abar_t for t = 0..T-1, computed once per model: what every
/// request's respacing reads.
#[derive(Debug, Clone)]
pub struct FullSchedule {
    alpha_bar: Vec<f64>,
}

impl FullSchedule {
    pub fn of(info: &DiffusionInfo) -> Self {
        Self { alpha_bar: cumprod_alphas(&Diffusion::full_betas(info)) }
    }

    pub fn alpha_bar(&self) -> &[f64] {
        &self.alpha_bar
    }

    /// The schedule respaced to `steps` (betas recomputed over the kept timesteps).
    pub fn respaced(&self, steps: usize) -> Result<Diffusion, RequestError> {
        let kept = respaced_timesteps(self.alpha_bar.len(), steps)?;
        let mut last = 1.0;
        let betas = kept
            .iter()
            .map(|&t| {
                let beta = 1.0 - self.alpha_bar[t] / last; // beta_i = 1 - abar_{t_i} / abar_{t_(i-1)}
                last = self.alpha_bar[t];
                beta
            })
            .collect();
        Ok(Diffusion::new(betas, kept.iter().map(|&t| t as i64).collect()))
    }
}

/// Posterior coefficients of a (respaced) schedule, indexed by sampling step i.
#[derive(Debug, Clone)]
pub struct Diffusion {
    pub betas: Vec<f64>,
    /// Step i -> the model's timestep t.
    pub timestep_map: Vec<i64>,
    pub alpha_bar: Vec<f64>,
    pub alpha_bar_prev: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    pub posterior_variance: Vec<f64>,
    /// "Fixed large" variance of the reference: posterior variance at step 0, beta after.
    pub model_variance: Vec<f64>,
}

impl Diffusion {
    pub fn new(betas: Vec<f64>, timestep_map: Vec<i64>) -> Self {
        let alpha_bar = cumprod_alphas(&betas);
        let alpha_bar_prev: Vec<f64> =
            std::iter::once(1.0).chain(alpha_bar.iter().copied()).take(betas.len()).collect();
        let n = betas.len();
        let (mut coef1, mut coef2, mut var) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let (b, ab, ab_prev) = (betas[i], alpha_bar[i], alpha_bar_prev[i]);
            // q(x_{t-1} | x_t, x0) = N(coef1 x0 + coef2 x_t, beta_t (1 - abar_{t-1}) / (1 - abar_t))
            coef1.push(b * ab_prev.sqrt() / (1.0 - ab));
            coef2.push((1.0 - ab_prev) * (1.0 - b).sqrt() / (1.0 - ab));
            var.push(b * (1.0 - ab_prev) / (1.0 - ab));
        }
        let model_variance =
            (0..n).map(|i| if i == 0 { var.get(1).copied().unwrap_or(var[0]) } else { betas[i] }).collect();
        Self {
            betas,
            timestep_map,
            alpha_bar,
            alpha_bar_prev,
            posterior_mean_coef1: coef1,
            posterior_mean_coef2: coef2,
            posterior_variance: var,
            model_variance,
        }
    }

    /// The full training schedule of a manifest.
    pub fn full_betas(info: &DiffusionInfo) -> Vec<f64> {
        sqrt_betas(info.num_timesteps, info.schedule_param.offset, info.schedule_param.max_beta)
    }

    /// The schedule respaced to `steps` (betas recomputed over the kept timesteps).
    pub fn respaced(info: &DiffusionInfo, steps: usize) -> Result<Self, RequestError> {
        FullSchedule::of(info).respaced(steps)
    }

    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ModelVariance, Schedule, ScheduleParam};

    fn info(t: usize) -> DiffusionInfo {
        let param = ScheduleParam { offset: 1e-4, max_beta: 0.999 };
        let alpha_bar = cumprod_alphas(&sqrt_betas(t, param.offset, param.max_beta));
        DiffusionInfo {
            schedule: Schedule::Sqrt,
            schedule_param: param,
            num_timesteps: t,
            model_variance: ModelVariance::FixedLarge,
            alpha_bar,
        }
    }

    /// The respaced schedule of every budget 1..=T is a valid diffusion: the model's real
    /// timesteps, first 0 and last T - 1, betas in (0, 1), a falling alpha_bar, finite posterior.
    #[test]
    fn every_budget_from_1_to_t_is_a_valid_schedule() {
        let t = 2000;
        let info = info(t);
        for steps in 1..=t {
            let d = Diffusion::respaced(&info, steps).unwrap();
            assert_eq!(d.num_steps(), steps, "budget {steps}");
            assert_eq!(d.timestep_map[0], 0);
            if steps > 1 {
                assert_eq!(d.timestep_map[steps - 1], t as i64 - 1, "budget {steps}");
            }
            assert!(d.timestep_map.windows(2).all(|w| w[0] < w[1]), "budget {steps}: timesteps not increasing");
            assert!(d.betas.iter().all(|&b| b > 0.0 && b < 1.0), "budget {steps}: beta out of (0, 1)");
            assert!(d.alpha_bar.windows(2).all(|w| w[1] < w[0]), "budget {steps}: alpha_bar not falling");
            let finite = d.posterior_mean_coef1.iter().chain(&d.posterior_mean_coef2).all(|c| c.is_finite());
            // step 0 adds no noise; a lone step's posterior variance is 0 (abar_prev = 1)
            assert!(finite && d.model_variance.iter().skip(1).all(|&v| v > 0.0), "budget {steps}");
            assert!(d.model_variance[0] >= 0.0 && (steps == 1 || d.model_variance[0] > 0.0), "budget {steps}");
            let full_ab = d.timestep_map.iter().map(|&k| info.alpha_bar[k as usize]);
            assert!(d.alpha_bar.iter().zip(full_ab).all(|(a, b)| (a - b).abs() < 1e-12), "budget {steps}");
        }
        assert!(Diffusion::respaced(&info, 0).is_err() && Diffusion::respaced(&info, t + 1).is_err());
    }
}
