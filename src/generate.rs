//! A generation request: validated, split into batches, sampled and decoded.

use crate::error::{GenerateError, RequestError};
use crate::model::Model;
use crate::sampler::{initial_noise, sequence_rng, Method, SampleOptions, Sampler, Timing};
use crate::schedule::Diffusion;

#[derive(Debug, Clone)]
pub struct Request {
    pub steps: usize,
    pub method: Method,
    pub clamp: bool,
    pub seed: u64,
    pub num: usize,
    pub batch: usize,
}

impl Request {
    pub fn validate(&self, t_max: usize, max_batch: usize) -> Result<(), RequestError> {
        if self.steps == 0 || self.steps > t_max {
            return Err(RequestError::Steps {
                got: self.steps,
                max: t_max,
            });
        }
        if let Method::Ddim { eta } = self.method {
            if !(0.0..=1.0).contains(&eta) {
                return Err(RequestError::Eta(eta));
            }
        }
        if self.num == 0 {
            return Err(RequestError::Zero { what: "num" });
        }
        if self.batch == 0 {
            return Err(RequestError::Zero { what: "batch" });
        }
        if self.batch > max_batch {
            return Err(RequestError::Batch {
                got: self.batch,
                max: max_batch,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Generated {
    pub index: usize,
    pub text: String,
    pub tokens: Vec<String>,
    pub ids: Vec<u32>,
    /// Timing of the batch this sequence was generated in.
    pub timing: Timing,
}

/// Generate `num` sequences in batches of `batch`; sequence k always uses random stream (seed, k).
pub fn generate(model: &mut Model, request: &Request) -> Result<Vec<Generated>, GenerateError> {
    request.validate(model.manifest.diffusion.t, model.max_batch())?;
    let diffusion = Diffusion::respaced(&model.manifest.diffusion, request.steps)?;
    let (seq_len, d) = (model.manifest.model.seq_len, model.manifest.model.d);
    let options = SampleOptions {
        method: request.method,
        clamp: request.clamp,
    };
    let mut results = Vec::with_capacity(request.num);
    for first in (0..request.num).step_by(request.batch) {
        let indices: Vec<usize> = (first..(first + request.batch).min(request.num)).collect();
        let mut rngs: Vec<_> = indices.iter().map(|&k| sequence_rng(request.seed, k as u64)).collect();
        let x_t = initial_noise(&mut rngs, seq_len, d);
        let mut sampler = Sampler {
            denoiser: &mut model.denoiser,
            embeddings: &model.embeddings,
            diffusion: &diffusion,
            options,
        };
        let sampled = sampler.sample(x_t, &mut rngs, None)?;
        for (k, ids) in indices.into_iter().zip(sampled.tokens) {
            let content: Vec<u32> = model.vocab.content_ids(&ids).collect();
            results.push(Generated {
                index: k,
                text: model.vocab.decode(&ids),
                tokens: content.iter().map(|&i| model.vocab.token(i)).collect(),
                ids,
                timing: sampled.timing.clone(),
            });
        }
    }
    Ok(results)
}
