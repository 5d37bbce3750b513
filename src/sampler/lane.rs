//! What one request asks of every sequence it draws ([`Course`]), one sequence on its way
//! from x_T to x_0 ([`Lane`]), and how it leaves the batch ([`Finished`], [`Sampled`]).

use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array3, ArrayView3, Axis};

use super::{step, GuideOptions, Method, Noise, SampleOptions, Timing};
use crate::embeddings::{Constraints, Embeddings, Scratch};
use crate::error::GenerateError;
use crate::schedule::Diffusion;

/// A control's target, the input its guidance graph reads beside x and t.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One id per position (POS tags, IGNORE where free) or a span's (first, last, label).
    Tags(Vec<i64>),
    /// A 0/1 mask over the content labels.
    Wanted(Vec<f32>),
}

/// One of a request's guidance terms: which guide (an index into the guides given to
/// [`super::Batch::iterate`]) with which target, and the weight of its loss in the sum.
#[derive(Debug, Clone)]
pub struct GuideTarget {
    pub guide: usize,
    pub target: Target,
    pub weight: f32,
}

/// What every sequence of one request shares: its (respaced) schedule, sampler, guidance,
/// held positions, clamping rules and deadline.
#[derive(Debug, Clone)]
pub struct Course {
    pub diffusion: Diffusion,
    pub options: SampleOptions,
    pub guide_options: GuideOptions,
    /// The request's guidance terms; their weighted losses add.
    pub targets: Vec<GuideTarget>,
    /// Token held at each position (infill words, START/END/PAD of a fixed length); empty = none.
    pub held: Vec<Option<u32>>,
    /// Per position: only words, no special tokens (inside a fixed length); empty = none.
    pub words_only: Vec<bool>,
    /// The special tokens (PAD, UNK, START, END) that `words_only` excludes.
    pub specials: Vec<u32>,
    pub block_repeats: bool,
    /// Give up with a deadline error when a step would start after this instant.
    pub deadline: Option<Instant>,
    /// Report the rounded x0_hat every this many steps, and at the last ([`Progress`]); None: never.
    pub report_every: Option<usize>,
}

impl Course {
    /// The schedule alone: no guidance, nothing held, no clamping rules, no deadline.
    pub fn new(diffusion: Diffusion, options: SampleOptions) -> Self {
        Self {
            diffusion,
            options,
            guide_options: GuideOptions::default(),
            targets: Vec::new(),
            held: Vec::new(),
            words_only: Vec::new(),
            specials: Vec::new(),
            block_repeats: false,
            deadline: None,
            report_every: None,
        }
    }

    pub fn constraints(&self, seq_len: usize) -> Constraints<'_> {
        Constraints {
            words_only: &self.words_only,
            specials: &self.specials,
            block_repeats: self.block_repeats,
            seq_len,
            held: &self.held,
        }
    }

    pub fn steps(&self) -> usize {
        self.diffusion.num_steps()
    }

    /// Whether step i is followed by guidance: the request has targets, K > 0, and step i is
    /// one of the first `guided_steps` of its n steps (i = n-1 down).
    pub fn guided_at(&self, i: usize) -> bool {
        let (n, opts) = (self.steps(), &self.guide_options);
        let taken_before = n - 1 - i;
        !self.targets.is_empty() && opts.steps > 0 && taken_before < opts.guided_steps(n)
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Whether the step that makes `done` steps taken is reported.
    pub(super) fn reports_at(&self, done: usize) -> bool {
        self.report_every.is_some_and(|k| k > 0 && (done.is_multiple_of(k) || done == self.steps()))
    }

    pub(super) fn holds(&self) -> bool {
        self.held.iter().any(Option::is_some)
    }
}

/// A sequence that reached x_0.
pub struct Sampled {
    /// The final latent [1, L, d].
    pub x0: Array3<f32>,
    /// Rounded token ids [L].
    pub tokens: Vec<u32>,
    /// Its request's guidance losses at t = 0 on x0, weighted and added (None unguided).
    pub control_loss: Option<f32>,
}

/// Where a reporting sequence stands after a step: x0_hat rounded to tokens (under its course's
/// constraints), the sentence it is sharpening into.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub owner: u64,
    pub index: usize,
    /// Steps taken, 1..=`of`.
    pub step: usize,
    pub of: usize,
    /// The model's timestep t of that step.
    pub t: i64,
    pub tokens: Vec<u32>,
}

/// A sequence that left the batch: done, or failed (deadline, non-finite latent).
pub struct Finished {
    pub lane: Lane,
    pub result: Result<Sampled, GenerateError>,
}

/// One sequence: its latent, its place in its course's schedule and its own noise.
pub struct Lane {
    /// Whose sequence this is (the caller's request number).
    pub owner: u64,
    /// Which of its owner's sequences.
    pub index: usize,
    pub course: Arc<Course>,
    /// x_i [1, L, d] before step i, then x_{i-1}.
    pub(super) x: Array3<f32>,
    /// Self-conditioning: the previous raw x0_hat (zeros before the first step).
    pub(super) x0_hat_prev: Option<Array3<f32>>,
    /// The next step to take, counting down to 0.
    pub(super) i: usize,
    pub(super) noise: Box<dyn Noise + Send>,
    pub(super) z: Array3<f32>,
    pub(super) mean: Array3<f32>,
    pub(super) grad: Array3<f32>,
    /// Its deadline passed during guidance: it leaves at the end of the iteration.
    pub(super) timed_out: bool,
    /// Iterations it sat out (a batch with a limit runs those that would finish first).
    pub(super) waited: usize,
    pub timing: Timing,
    /// The model's raw x0_hat at every step, when asked for (fixtures, tests).
    pub trace: Option<Vec<Array3<f32>>>,
}

impl Lane {
    /// x_T = `x_t` [1, L, d] (N(0, I), the first draw of its stream); held positions take
    /// q_sample of their word with x_T's own values as the noise.
    pub fn new(
        owner: u64,
        index: usize,
        course: Arc<Course>,
        x_t: Array3<f32>,
        noise: Box<dyn Noise + Send>,
        embeddings: &Embeddings,
        self_conditioned: bool,
    ) -> Self {
        let dim = x_t.dim();
        let x = x_t.as_standard_layout().into_owned(); // every buffer is row-major
        let n = course.steps();
        let mut lane = Self {
            owner,
            index,
            x0_hat_prev: self_conditioned.then(|| Array3::zeros(dim)),
            i: n - 1,
            noise,
            z: Array3::zeros(dim),
            mean: Array3::zeros(dim),
            grad: Array3::zeros(dim),
            timed_out: false,
            waited: 0,
            timing: Timing { steps: n, ..Timing::default() },
            trace: None,
            x: x.clone(),
            course,
        };
        if lane.course.holds() {
            lane.hold(embeddings, lane.course.diffusion.alpha_bar[n - 1], Some(&x));
        }
        lane
    }

    /// Steps taken so far.
    pub fn done(&self) -> usize {
        self.course.steps() - 1 - self.i
    }

    /// Step i: noise drawn when the step needs it (i > 0, and sigma > 0 or a held position),
    /// then x_{i-1} from x0_hat [1, L, d] by the course's sampler.
    pub(super) fn step(&mut self, x0_hat: ArrayView3<f32>) {
        let (course, i) = (&self.course, self.i);
        let draw = i > 0 && (course.holds() || step::sigma(course.options.method, &course.diffusion, i) > 0.0);
        if draw {
            self.noise.fill(&mut self.z);
        }
        let z = draw.then(|| self.z.view());
        let (x, mean) = (self.x.view_mut(), self.mean.view_mut());
        match course.options.method {
            Method::Ddpm => step::p_sample(&course.diffusion, i, x0_hat, z, x, mean),
            Method::Ddim { eta } => step::ddim_sample(&course.diffusion, i, eta, x0_hat, z, x, mean),
        }
    }

    /// Whether every value of its latent is finite (its exponent bits not all set): an OR
    /// over the values without an early exit (ndarray's fold, over the slice), which the
    /// compiler vectorises: 0.09 us for 64 x 16 against 0.66 us for `all` (micro-benchmark).
    pub(super) fn finite(&self) -> bool {
        const EXPONENT: u32 = 0x7f80_0000;
        self.x.fold(0, |any, v| any | u32::from(v.to_bits() & EXPONENT == EXPONENT)) == 0
    }

    /// The lane at x_0, rounded to tokens (under its course's constraints), with its
    /// `control_loss`.
    pub(super) fn round(self, embeddings: &Embeddings, scratch: &mut Scratch, control_loss: Option<f32>) -> Finished {
        let (_, l, d) = self.x.dim();
        let flat = self.x.view().into_shape_with_order((l, d)).expect("lanes are row-major");
        let tokens = embeddings.round_rows(flat, scratch, self.course.constraints(l));
        let result = Ok(Sampled { x0: self.x.clone(), tokens, control_loss });
        Finished { lane: self, result }
    }

    /// Held positions sit at q_sample(EMB(w), abar, z): exactly EMB(w) once abar = 1 (z = None
    /// at the last step), so they round back to w.
    pub(super) fn hold(&mut self, embeddings: &Embeddings, alpha_bar: f64, z: Option<&Array3<f32>>) {
        let emb = embeddings.matrix();
        let z = z.unwrap_or(&self.z);
        let (mut seq, z_seq) = (self.x.index_axis_mut(Axis(0), 0), z.index_axis(Axis(0), 0));
        for (pos, token) in self.course.held.iter().enumerate() {
            if let Some(w) = token {
                step::q_sample(emb.row(*w as usize), alpha_bar, z_seq.row(pos), seq.row_mut(pos));
            }
        }
    }
}
