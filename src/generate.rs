//! A generation request: validated, turned into a [`Course`] and its sequences, and its outputs
//! decoded and chosen from its samples; the engine ([`crate::engine`]) samples them.

use std::sync::Arc;
use std::time::Instant;

use crate::controls::{plan, ControlRequest, Plan};
use crate::error::{ControlError, GenerateError, RequestError};
use crate::mbr;
use crate::model::Model;
pub use crate::overrides::GuideOverrides;
use crate::rerank::{self, LanguageModel, RerankBy};
use crate::sampler::{Course, GuideTarget, Lane, Method, SampleOptions, Sampled, SequenceNoise, Target, Timing};
use crate::text::Vocab;

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
    /// Best-of-N: draw this many samples per output and keep the best by `rerank_by` (1 = off).
    pub rerank: usize,
    /// What rerank compares (see [`crate::rerank`]); None: the classifiers when a classifier
    /// control is guided, else fluency under the model's language model.
    pub rerank_by: Option<RerankBy>,
    /// Stop with [`GenerateError::Deadline`] once this instant has passed.
    pub deadline: Option<Instant>,
    /// Report where each sequence stands every this many steps (streaming); None: never.
    pub report_every: Option<usize>,
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
            rerank_by: None,
            block_repeats: true,
            deadline: None,
            report_every: None,
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
        Self { t_max: model.manifest.diffusion.num_timesteps, max_batch: model.max_batch(), max_samples: MAX_SAMPLES }
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
        if let Some(every) = self.report_every.filter(|&k| k == 0 || k > self.steps) {
            return Err(RequestError::Every { got: every, steps: self.steps });
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

    /// The default reporting interval of a streaming request: about 20 reports per request.
    pub fn default_every(steps: usize) -> usize {
        steps.div_ceil(20).max(1)
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
    /// The ids of `tokens` (the words, without PAD, START and END).
    pub words: Vec<u32>,
    /// Every position's id, special tokens included.
    pub ids: Vec<u32>,
    /// This sequence's share of the batched calls it was part of.
    pub timing: Timing,
    /// The guided controls' summed, weighted classifier loss at t = 0 on the final latent
    /// (None without a classifier control).
    pub control_loss: Option<f32>,
    /// Mean next-token NLL of the sentence under the model's language model, when a rerank by
    /// fluency asked it (exp of it is the lm-score).
    pub lm_nll: Option<f32>,
}

impl Generated {
    pub fn of(vocab: &Vocab, lane: &Lane, sampled: Sampled) -> Self {
        let content: Vec<u32> = vocab.content_ids(&sampled.tokens).collect();
        Self {
            index: lane.index,
            text: vocab.decode(&sampled.tokens),
            tokens: content.iter().map(|&i| vocab.token(i)).collect(),
            words: content,
            ids: sampled.tokens,
            timing: lane.timing.clone(),
            control_loss: sampled.control_loss,
            lm_nll: None,
        }
    }
}

/// Sequence `index` of a request: x_T from its own random stream (seed, index).
pub fn lane(model: &Model, owner: u64, course: &Arc<Course>, seed: u64, index: usize) -> Lane {
    let (seq_len, d) = (model.manifest.model.seq_len, model.manifest.model.d);
    let mut noise = SequenceNoise::new(seed, [index as u64]);
    let x_t = noise.x_t(seq_len, d);
    let self_conditioned = model.denoiser.self_conditioned();
    Lane::new(owner, index, Arc::clone(course), x_t, Box::new(noise), &model.embeddings, self_conditioned)
}

/// The outputs of a request from its samples in index order: each output's S samples reduced
/// to one by MBR or rerank (S = 1: the samples themselves). A rerank by fluency scores every
/// sample with `lm` first (one call per output's group).
pub fn choose(
    request: &Request,
    mut samples: Vec<Generated>,
    mut lm: Option<&mut dyn LanguageModel>,
) -> Result<Vec<Generated>, GenerateError> {
    let per_output = request.samples_per_output();
    if per_output == 1 {
        return Ok(samples);
    }
    let by = RerankBy::resolve(request.rerank_by, samples.iter().any(|g| g.control_loss.is_some()));
    let mut outputs = Vec::with_capacity(samples.len() / per_output);
    for (k, group) in samples.chunks_mut(per_output).enumerate() {
        let best = if request.rerank > 1 {
            if by.uses_lm() {
                let lm = lm.as_deref_mut().ok_or(RequestError::RerankWithoutLm)?;
                let nll = lm.mean_nll(&group.iter().map(|g| g.words.as_slice()).collect::<Vec<_>>())?;
                group.iter_mut().zip(nll).for_each(|(g, v)| g.lm_nll = Some(v));
            }
            rerank::best(&group.iter().map(|g| rerank::score(by, g.control_loss, g.lm_nll)).collect::<Vec<_>>())
        } else {
            let tokens: Vec<Vec<String>> = group.iter().map(|g| g.tokens.clone()).collect();
            mbr::select(&tokens)
        };
        outputs.push(Generated { index: k, ..group[best].clone() });
    }
    Ok(outputs)
}

/// What every sequence of a (validated) request shares: its respaced schedule, sampler,
/// guidance terms (checked against the manifest's controls and the cost cap), held positions
/// and clamping rules, and deadline.
pub fn course(model: &Model, request: &Request) -> Result<Course, GenerateError> {
    let plan: Plan = plan(&request.controls, &model.manifest, &model.vocab)?;
    let diffusion = model.schedule.respaced(request.steps)?;
    let named = targets(&plan);
    if request.rerank > 1 {
        let has_classifier = !named.is_empty();
        RerankBy::resolve(request.rerank_by, has_classifier).check(has_classifier, model.teacher.is_some())?;
    }
    let mut guided: Vec<&str> = named.iter().map(|(name, _)| *name).collect();
    guided.dedup();
    request.guide.check(&guided)?;
    let defaults: Vec<_> = guided.iter().map(|name| (*name, model.manifest.controls[*name].defaults)).collect();
    let guide_options = request.guide.options(&defaults);
    let guided_steps = guide_options.guided_steps(diffusion.num_steps());
    let calls = [guided_steps, guide_options.steps, named.len()].iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    if calls.is_none_or(|c| c > MAX_GUIDANCE_CALLS) {
        return Err(RequestError::GuidanceCost { calls: calls.unwrap_or(usize::MAX), max: MAX_GUIDANCE_CALLS }.into());
    }
    let mut targets = Vec::with_capacity(named.len());
    for (name, target) in named {
        let have = || model.manifest.controls.keys().cloned().collect::<Vec<_>>().join(", ");
        let guide = model.guide_index(name).ok_or_else(|| ControlError::Missing(name, have()))?;
        let weight = request.guide.weight.get(name).unwrap_or(1.0) as f32;
        targets.push(GuideTarget { guide, target, weight });
    }
    let st = model.manifest.special_tokens;
    Ok(Course {
        diffusion,
        options: SampleOptions { method: request.method, clamp: request.clamp },
        guide_options,
        targets,
        held: plan.held,
        words_only: plan.words_only,
        specials: vec![st.pad, st.unk, st.start, st.end],
        block_repeats: request.block_repeats,
        deadline: request.deadline,
        report_every: request.report_every,
    })
}

/// The guidance targets of a plan, by control name (several spans: several targets).
fn targets(plan: &Plan) -> Vec<(&'static str, Target)> {
    let mut targets: Vec<(&str, Target)> = [
        plan.pos_tags.clone().map(|t| ("pos", Target::Tags(t))),
        plan.content_wanted.clone().map(|w| ("content", Target::Wanted(w))),
        plan.tree.clone().map(|t| ("tree", Target::Tags(t))),
    ]
    .into_iter()
    .flatten()
    .collect();
    targets.extend(plan.spans.iter().map(|s| ("spans", Target::Tags(s.clone()))));
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A language model that finds a sequence as surprising as its first word id.
    struct ByFirstWord(usize);

    impl LanguageModel for ByFirstWord {
        fn mean_nll(&mut self, sequences: &[&[u32]]) -> Result<Vec<f32>, crate::error::InferenceError> {
            self.0 += 1;
            Ok(sequences.iter().map(|s| s.first().map_or(0.0, |&w| w as f32)).collect())
        }
    }

    fn sample(first: u32, control_loss: Option<f32>) -> Generated {
        let timing = Timing::default();
        let text = format!("w{first}");
        Generated {
            index: 9,
            text,
            tokens: vec![],
            words: vec![first],
            ids: vec![],
            timing,
            control_loss,
            lm_nll: None,
        }
    }

    #[test]
    fn choose_reranks_each_group_by_what_it_was_asked() {
        let fluency = Request { num: 2, rerank: 3, ..Request::default() };
        let samples =
            vec![sample(5, None), sample(2, None), sample(7, None), sample(4, None), sample(9, None), sample(3, None)];
        let mut lm = ByFirstWord(0);
        let out = choose(&fluency, samples.clone(), Some(&mut lm)).unwrap();
        let texts: Vec<&str> = out.iter().map(|g| g.text.as_str()).collect();
        assert_eq!((texts, lm.0), (vec!["w2", "w3"], 2), "one language model call per output");
        assert_eq!((out[0].index, out[1].index, out[1].lm_nll), (0, 1, Some(3.0)));
        assert_eq!(choose(&fluency, samples, None).unwrap_err().to_string(), RequestError::RerankWithoutLm.to_string());

        let guided = vec![sample(1, Some(9.0)), sample(6, Some(1.0)), sample(3, Some(2.0))];
        let controls = Request { rerank: 3, ..Request::default() };
        assert_eq!(choose(&controls, guided.clone(), Some(&mut lm)).unwrap()[0].text, "w6");
        assert_eq!(lm.0, 2, "rerank by controls asks no language model");
        let both = Request { rerank: 3, rerank_by: Some(RerankBy::Both), ..Request::default() };
        assert_eq!(choose(&both, guided, Some(&mut lm)).unwrap()[0].text, "w3", "2 + 3 < 1 + 6 < 9 + 1");
    }
}
