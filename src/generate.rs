//! A generation request: validated, split into batches, sampled and decoded.

use std::time::Instant;

use ndarray::Array3;

use crate::controls::{plan, ControlRequest, Plan};
use crate::embeddings::Constraints;
use crate::error::{GenerateError, RequestError};
use crate::mbr;
use crate::model::Model;
use crate::ort::{BoundGuide, Target};
pub use crate::overrides::GuideOverrides;
use crate::sampler::{Guide, Method, SampleOptions, Sampler, SequenceNoise, Timing};
use crate::schedule::Diffusion;

#[derive(Debug, Clone)]
pub struct Request {
    pub steps: usize,
    pub method: Method,
    pub clamp: bool,
    pub seed: u64,
    pub num: usize,
    pub batch: usize,
    pub controls: ControlRequest,
    pub guide: GuideOverrides,
    /// Minimum Bayes risk: draw this many samples per output and keep the consensus one (1 = off).
    pub mbr: usize,
    /// No word right after itself and no word 3-gram twice, when clamping and rounding (on by
    /// default: it takes repeats from about 20 % of sentences to none, see models/e2e/README.md).
    pub block_repeats: bool,
    /// Best-of-N: draw this many samples per output and keep the one whose final latent the
    /// guided controls' classifiers score best (lowest summed loss at t = 0) (1 = off).
    pub rerank: usize,
    /// Stop with [`GenerateError::Deadline`] once this instant has passed.
    pub deadline: Option<Instant>,
}

impl Default for Request {
    /// One sentence, 200 DDPM steps with clamping and repeats blocked, seed 0, no controls.
    fn default() -> Self {
        Self {
            steps: 200,
            method: Method::Ddpm,
            clamp: true,
            seed: 0,
            num: 1,
            batch: 1,
            controls: ControlRequest::default(),
            guide: GuideOverrides::default(),
            mbr: 1,
            rerank: 1,
            block_repeats: true,
            deadline: None,
        }
    }
}

/// What a request may ask for: the model's bounds, and a caller's cap on samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// T, the most denoising steps.
    pub t_max: usize,
    /// The most sequences per denoiser call.
    pub max_batch: usize,
    /// The most samples (num x mbr, or num x rerank) per request.
    pub max_samples: usize,
}

/// The most samples one request may draw, whoever asks (a server caps it lower).
pub const MAX_SAMPLES: usize = 100_000;
/// The most guidance graph calls one batch of a request may cost (guided steps x K x calls per
/// step: one per classifier control and one per span), checked before it starts.
pub const MAX_GUIDANCE_CALLS: usize = 20_000;

impl Limits {
    /// The model's bounds, and at most [`MAX_SAMPLES`] samples.
    pub fn of(model: &Model) -> Self {
        Self { t_max: model.manifest.diffusion.t, max_batch: model.max_batch(), max_samples: MAX_SAMPLES }
    }
}

impl Request {
    /// The one check of a request's numbers, for the CLI and the server alike.
    pub fn validate(&self, limits: &Limits) -> Result<(), RequestError> {
        if self.steps == 0 || self.steps > limits.t_max {
            return Err(RequestError::Steps { got: self.steps, max: limits.t_max });
        }
        if let Method::Ddim { eta } = self.method {
            if !(0.0..=1.0).contains(&eta) {
                return Err(RequestError::Eta(eta));
            }
        }
        for (what, value) in [("num", self.num), ("batch", self.batch), ("mbr", self.mbr), ("rerank", self.rerank)] {
            if value == 0 {
                return Err(RequestError::Zero { what });
            }
        }
        if self.mbr > 1 && self.rerank > 1 {
            return Err(RequestError::MbrAndRerank);
        }
        if self.batch > limits.max_batch {
            return Err(RequestError::Batch { got: self.batch, max: limits.max_batch });
        }
        let per_output = self.samples_per_output();
        let too_many = RequestError::Samples { num: self.num, per_output, max: limits.max_samples };
        match self.num.checked_mul(per_output) {
            Some(samples) if samples <= limits.max_samples => Ok(()),
            _ => Err(too_many),
        }
    }

    /// Samples drawn for each output: mbr or rerank (at most one of them above 1).
    pub fn samples_per_output(&self) -> usize {
        self.mbr.max(self.rerank)
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
    /// The guided controls' summed, weighted classifier loss at t = 0 on the final latent
    /// (None without a classifier control).
    pub control_loss: Option<f32>,
}

/// Generate `num` sequences in batches of `batch`; sequence k always uses random stream (seed, k).
/// With `mbr` or `rerank` = S > 1, output k is chosen from samples k*S..(k+1)*S: their consensus
/// (MBR) or the one the control classifiers score best.
pub fn generate(model: &mut Model, request: &Request) -> Result<Vec<Generated>, GenerateError> {
    request.validate(&Limits::of(model))?;
    let per_output = request.samples_per_output();
    if request.rerank > 1 && targets(&plan(&request.controls, &model.manifest, &model.vocab)?).is_empty() {
        return Err(RequestError::RerankWithoutClassifier.into());
    }
    if per_output == 1 {
        return generate_samples(model, request);
    }
    let all = Request { num: request.num * per_output, mbr: 1, rerank: 1, ..request.clone() };
    let samples = generate_samples(model, &all)?;
    let outputs = samples.chunks(per_output).enumerate().map(|(k, group)| {
        let best = if request.rerank > 1 {
            let loss = |g: &Generated| g.control_loss.unwrap_or(0.0);
            (0..group.len()).min_by(|&a, &b| loss(&group[a]).total_cmp(&loss(&group[b]))).unwrap_or(0)
        } else {
            let tokens: Vec<Vec<String>> = group.iter().map(|g| g.tokens.clone()).collect();
            mbr::select(&tokens)
        };
        Generated { index: k, ..group[best].clone() }
    });
    Ok(outputs.collect())
}

/// The guidance targets of a plan, by control name (several spans: several targets).
fn targets(plan: &Plan) -> Vec<(&'static str, Target)> {
    let mut targets: Vec<(&str, Target)> = [
        plan.pos_tags.clone().map(|t| ("pos", Target::Tags(t))),
        plan.content_wanted.clone().map(|w| ("content", Target::Wanted(w))),
    ]
    .into_iter()
    .flatten()
    .collect();
    targets.extend(plan.spans.iter().map(|s| ("spans", Target::Tags(s.clone()))));
    targets
}

fn generate_samples(model: &mut Model, request: &Request) -> Result<Vec<Generated>, GenerateError> {
    let plan: Plan = plan(&request.controls, &model.manifest, &model.vocab)?;
    let diffusion = Diffusion::respaced(&model.manifest.diffusion, request.steps)?;
    let (seq_len, d) = (model.manifest.model.seq_len, model.manifest.model.d);
    let options = SampleOptions { method: request.method, clamp: request.clamp };
    let targets = targets(&plan);
    let mut guided: Vec<&str> = targets.iter().map(|(name, _)| *name).collect();
    guided.dedup();
    request.guide.check(&guided)?;
    let defaults: Vec<_> = guided.iter().map(|name| (*name, model.manifest.controls[*name].defaults)).collect();
    let guide_opts = request.guide.options(&defaults);
    let guided_steps = guide_opts.guided_steps(diffusion.num_steps());
    let calls = [guided_steps, guide_opts.steps, targets.len()].iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    if calls.is_none_or(|c| c > MAX_GUIDANCE_CALLS) {
        return Err(RequestError::GuidanceCost { calls: calls.unwrap_or(usize::MAX), max: MAX_GUIDANCE_CALLS }.into());
    }
    let st = model.manifest.special_tokens;
    let specials = [st.pad, st.unk, st.start, st.end];
    let mut results = Vec::with_capacity(request.num);
    for first in (0..request.num).step_by(request.batch) {
        let indices: Vec<usize> = (first..(first + request.batch).min(request.num)).collect();
        let mut noise = SequenceNoise::new(request.seed, indices.iter().map(|&k| k as u64));
        let x_t = noise.x_t(seq_len, d);
        let mut bound: Vec<BoundGuide> = Vec::new();
        for (name, session) in model.guides.iter_mut() {
            let mine: Vec<Target> = targets.iter().filter(|(n, _)| n == name).map(|(_, t)| t.clone()).collect();
            if !mine.is_empty() {
                let weight = request.guide.weight.get(name).unwrap_or(1.0) as f32;
                bound.push(BoundGuide::new(session, &mine, weight));
            }
        }
        let mut sampler = Sampler::new(&mut model.denoiser, &model.embeddings, &diffusion, options);
        sampler.guides = bound.iter_mut().map(|g| g as &mut dyn Guide).collect();
        sampler.guide_options = guide_opts;
        sampler.held = &plan.held;
        sampler.constraints = Constraints {
            words_only: &plan.words_only,
            specials: &specials,
            block_repeats: request.block_repeats,
            seq_len,
            held: &plan.held,
        };
        sampler.deadline = request.deadline;
        let sampled = sampler.sample(x_t, &mut noise, None)?;
        let control_loss = final_control_loss(&mut bound, &sampled.x0)?;
        for (n, (k, ids)) in indices.into_iter().zip(sampled.tokens).enumerate() {
            let content: Vec<u32> = model.vocab.content_ids(&ids).collect();
            results.push(Generated {
                index: k,
                text: model.vocab.decode(&ids),
                tokens: content.iter().map(|&i| model.vocab.token(i)).collect(),
                ids,
                timing: sampled.timing.clone(),
                control_loss: control_loss.as_ref().map(|l| l[n]),
            });
        }
    }
    Ok(results)
}

/// Per sequence, the guided controls' weighted losses added, at t = 0 on the final latent x0.
fn final_control_loss(guides: &mut [BoundGuide], x0: &Array3<f32>) -> Result<Option<Vec<f32>>, GenerateError> {
    if guides.is_empty() {
        return Ok(None);
    }
    let (t, mut grad) = (vec![0i64; x0.dim().0], Array3::zeros(x0.dim()));
    let mut total = vec![0.0f32; x0.dim().0];
    for guide in guides.iter_mut() {
        guide.add_grad(x0, &t, &mut grad)?;
        total.iter_mut().zip(&guide.last_loss).for_each(|(s, l)| *s += guide.weight * l);
    }
    Ok(Some(total))
}
