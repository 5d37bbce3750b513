//! A generation request: validated, split into batches, sampled and decoded.

use crate::controls::{plan, ControlRequest, Plan};
use crate::embeddings::WordsOnly;
use crate::error::{GenerateError, RequestError};
use crate::guidance::{BoundGuide, Guide, Target};
use crate::mbr;
use crate::model::Model;
pub use crate::overrides::GuideOverrides;
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
    pub controls: ControlRequest,
    pub guide: GuideOverrides,
    /// Minimum Bayes risk: draw this many samples per output and keep the consensus one (1 = off).
    pub mbr: usize,
    /// Stop with [`GenerateError::Deadline`] once this instant has passed.
    pub deadline: Option<std::time::Instant>,
}

impl Request {
    pub fn validate(&self, t_max: usize, max_batch: usize) -> Result<(), RequestError> {
        if self.steps == 0 || self.steps > t_max {
            return Err(RequestError::Steps { got: self.steps, max: t_max });
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
        if self.mbr == 0 {
            return Err(RequestError::Zero { what: "mbr" });
        }
        if self.batch > max_batch {
            return Err(RequestError::Batch { got: self.batch, max: max_batch });
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
/// With `mbr` = S > 1, output k is the consensus of samples k*S..(k+1)*S.
pub fn generate(model: &mut Model, request: &Request) -> Result<Vec<Generated>, GenerateError> {
    request.validate(model.manifest.diffusion.t, model.max_batch())?;
    if request.mbr == 1 {
        return generate_samples(model, request);
    }
    let samples = generate_samples(model, &Request { num: request.num * request.mbr, mbr: 1, ..request.clone() })?;
    let outputs = samples.chunks(request.mbr).enumerate().map(|(k, group)| {
        let tokens: Vec<Vec<String>> = group.iter().map(|g| g.tokens.clone()).collect();
        Generated { index: k, ..group[mbr::select(&tokens)].clone() }
    });
    Ok(outputs.collect())
}

fn generate_samples(model: &mut Model, request: &Request) -> Result<Vec<Generated>, GenerateError> {
    let plan: Plan = plan(&request.controls, &model.manifest, &model.vocab)?;
    let diffusion = Diffusion::respaced(&model.manifest.diffusion, request.steps)?;
    let (seq_len, d) = (model.manifest.model.seq_len, model.manifest.model.d);
    let options = SampleOptions { method: request.method, clamp: request.clamp };
    let mut targets: Vec<(&str, Target)> = [
        plan.pos_tags.clone().map(|t| ("pos", Target::Tags(t))),
        plan.content_wanted.clone().map(|w| ("content", Target::Wanted(w))),
    ]
    .into_iter()
    .flatten()
    .collect();
    targets.extend(plan.spans.iter().map(|s| ("spans", Target::Tags(s.clone()))));
    let mut guided: Vec<&str> = targets.iter().map(|(name, _)| *name).collect();
    guided.dedup();
    request.guide.check(&guided)?;
    let defaults: Vec<_> = guided.iter().map(|name| (*name, model.manifest.controls[*name].defaults)).collect();
    let guide_opts = request.guide.options(&defaults);
    let st = model.manifest.special_tokens;
    let specials = [st.pad, st.unk, st.start, st.end];
    let mut results = Vec::with_capacity(request.num);
    for first in (0..request.num).step_by(request.batch) {
        let indices: Vec<usize> = (first..(first + request.batch).min(request.num)).collect();
        let mut rngs: Vec<_> = indices.iter().map(|&k| sequence_rng(request.seed, k as u64)).collect();
        let x_t = initial_noise(&mut rngs, seq_len, d);
        let mut bound: Vec<BoundGuide> = Vec::new();
        for (name, session) in model.guides.iter_mut() {
            let mine: Vec<Target> = targets.iter().filter(|(n, _)| n == name).map(|(_, t)| t.clone()).collect();
            if !mine.is_empty() {
                let mut guide = BoundGuide::with_targets(session, mine);
                guide.weight = request.guide.weight.get(name).unwrap_or(1.0) as f32;
                bound.push(guide);
            }
        }
        let mut sampler = Sampler::new(&mut model.denoiser, &model.embeddings, &diffusion, options);
        sampler.guides = bound.iter_mut().map(|g| g as &mut dyn Guide).collect();
        sampler.guide_options = guide_opts;
        sampler.held = &plan.held;
        sampler.words_only = WordsOnly { positions: &plan.words_only, specials: &specials };
        sampler.deadline = request.deadline;
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
