//! Iteration-level scheduling: every active sequence, whatever its request, budget or step,
//! advances one step per denoiser call (each at its own t); sequences join and leave between
//! iterations.

use std::time::Instant;

use ndarray::{s, Array3, Axis};

use super::lane::{Finished, Lane, Progress, Sampled};
use super::{guide, Denoiser, Guide, Nearest};
use crate::embeddings::{Embeddings, Scratch};
use crate::error::{GenerateError, InferenceError};

/// The active sequences and the buffers of one iteration.
#[derive(Default)]
pub struct Batch {
    lanes: Vec<Lane>,
    /// At most this many sequences per iteration (0: all), see [`Batch::with_limit`].
    limit: usize,
    x: Array3<f32>,
    x0_hat: Array3<f32>,
    x0_hat_prev: Array3<f32>,
    t: Vec<i64>,
    scratch: Scratch,
    /// What the reporting lanes showed in the last iteration.
    progress: Vec<Progress>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// A batch that steps at most `limit` of its sequences per iteration: those that would
    /// finish first if run from now on (fewest steps left, less the iterations each has waited),
    /// so a short request passes long ones and a long one is not starved.
    pub fn with_limit(limit: usize) -> Self {
        Self { limit, ..Self::default() }
    }

    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    pub fn push(&mut self, lane: Lane) {
        self.lanes.push(lane);
    }

    /// Take out every sequence of `owner` (its request failed or its client left).
    pub fn remove_owner(&mut self, owner: u64) -> Vec<Lane> {
        self.take_where(|lane| lane.owner == owner)
    }

    /// The rounded x0_hat of the lanes that reported in the last iteration (see
    /// [`super::Course::report_every`]), taken out.
    pub fn take_progress(&mut self) -> Vec<Progress> {
        std::mem::take(&mut self.progress)
    }

    /// One iteration: lanes past their deadline leave, those beyond the limit rest, the others
    /// take one step. Returns the sequences that finished or failed; an engine error fails
    /// them all (the caller still holds them).
    pub fn iterate(
        &mut self,
        denoiser: &mut dyn Denoiser,
        guides: &mut [&mut dyn Guide],
        embeddings: &Embeddings,
    ) -> Result<Vec<Finished>, InferenceError> {
        let start = Instant::now();
        self.progress.clear();
        let mut finished = self.fail_where(|lane| lane.course.expired(start), deadline);
        let resting = self.rest();
        let stepped = self.step(start, denoiser, guides, embeddings);
        self.lanes.extend(resting);
        finished.extend(stepped?);
        Ok(finished)
    }

    /// Beyond the limit, the lanes that wait this iteration (taken out; each counts the wait).
    fn rest(&mut self) -> Vec<Lane> {
        if self.limit == 0 || self.lanes.len() <= self.limit {
            return Vec::new();
        }
        // stable: equal keys keep their order of arrival
        self.lanes.sort_by_key(|lane| (lane.i + 1).saturating_sub(lane.waited));
        let mut resting = self.lanes.split_off(self.limit);
        resting.iter_mut().for_each(|lane| lane.waited += 1);
        resting
    }

    /// One step of every lane in `self.lanes`: denoise, clamp, step, guide, hold, retire.
    fn step(
        &mut self,
        start: Instant,
        denoiser: &mut dyn Denoiser,
        guides: &mut [&mut dyn Guide],
        embeddings: &Embeddings,
    ) -> Result<Vec<Finished>, InferenceError> {
        if self.lanes.is_empty() {
            return Ok(Vec::new());
        }
        let b = self.lanes.len();
        self.denoise(denoiser)?;
        self.clamp(embeddings, denoiser.nearest());
        self.report(embeddings);
        for (lane, x0_hat) in self.lanes.iter_mut().zip(self.x0_hat.outer_iter()) {
            lane.step(x0_hat.insert_axis(Axis(0)));
        }
        guide::guide_step(&mut self.lanes, guides)?;
        let mut finished = self.fail_where(|lane| lane.timed_out, deadline);
        for lane in self.lanes.iter_mut().filter(|lane| lane.course.holds()) {
            // at i = 0 (no z), abar_prev = 1: held positions become their words exactly
            lane.hold(embeddings, lane.course.diffusion.alpha_bar_prev[lane.i], None);
        }
        let share = start.elapsed() / b as u32;
        self.lanes.iter_mut().for_each(|lane| lane.timing.total += share);
        finished.extend(self.retire(guides, embeddings)?);
        Ok(finished)
    }

    /// One denoiser call over every lane at its own t: x0_hat of each (kept as the next
    /// x0_hat_prev of a self-conditioned model, and in a lane's trace when it keeps one).
    fn denoise(&mut self, denoiser: &mut dyn Denoiser) -> Result<(), InferenceError> {
        let (b, l, d) = (self.lanes.len(), self.lanes[0].x.dim().1, self.lanes[0].x.dim().2);
        for buffer in [&mut self.x, &mut self.x0_hat, &mut self.x0_hat_prev] {
            if buffer.dim() != (b, l, d) {
                *buffer = Array3::zeros((b, l, d));
            }
        }
        let self_conditioned = denoiser.self_conditioned();
        self.t.clear();
        for (k, lane) in self.lanes.iter().enumerate() {
            self.x.slice_mut(s![k..k + 1, .., ..]).assign(&lane.x);
            self.t.push(lane.course.diffusion.timestep_map[lane.i]);
            if let (true, Some(prev)) = (self_conditioned, &lane.x0_hat_prev) {
                self.x0_hat_prev.slice_mut(s![k..k + 1, .., ..]).assign(prev);
            }
        }
        let call = Instant::now();
        let prev = self_conditioned.then_some(&self.x0_hat_prev);
        denoiser.denoise(&self.x, &self.t, prev, &mut self.x0_hat)?;
        let share = call.elapsed() / b as u32;
        for (lane, x0_hat) in self.lanes.iter_mut().zip(self.x0_hat.axis_iter(Axis(0))) {
            lane.timing.denoiser += share;
            if let Some(prev) = lane.x0_hat_prev.as_mut() {
                prev.index_axis_mut(Axis(0), 0).assign(&x0_hat);
            }
            if let Some(trace) = lane.trace.as_mut() {
                trace.push(x0_hat.insert_axis(Axis(0)).to_owned());
            }
        }
        Ok(())
    }

    /// The clamping trick on every lane that asks for it: x0_hat to the nearest word
    /// embeddings, from the denoiser's `nearest` when it gives them, else one GEMM per lane.
    fn clamp(&mut self, embeddings: &Embeddings, nearest: Option<Nearest<'_>>) {
        let (b, l, d) = self.x0_hat.dim();
        let rules: Vec<_> =
            self.lanes.iter().map(|lane| lane.course.options.clamp.then(|| lane.course.constraints(l))).collect();
        if rules.iter().any(Option::is_some) {
            let flat =
                self.x0_hat.view_mut().into_shape_with_order((b * l, d)).expect("the batch keeps its arrays row-major");
            embeddings.clamp_lanes(flat, &mut self.scratch, &rules, nearest);
        }
    }

    /// The lanes whose course reports this step: their (clamped) x0_hat rounded to tokens. Costs
    /// nothing for lanes that do not report.
    fn report(&mut self, embeddings: &Embeddings) {
        let l = self.x0_hat.dim().1;
        for (lane, x0_hat) in self.lanes.iter().zip(self.x0_hat.outer_iter()) {
            let step = lane.done() + 1;
            if !lane.course.reports_at(step) {
                continue;
            }
            let tokens = embeddings.round_rows(x0_hat, &mut self.scratch, lane.course.constraints(l));
            let (of, t) = (lane.course.steps(), lane.course.diffusion.timestep_map[lane.i]);
            self.progress.push(Progress { owner: lane.owner, index: lane.index, step, of, t, tokens });
        }
    }

    /// The lanes that leave after their step: broken ones (a non-finite latent) and those
    /// that took their last step (rounded and scored); the rest move on to step i - 1.
    fn retire(
        &mut self,
        guides: &mut [&mut dyn Guide],
        embeddings: &Embeddings,
    ) -> Result<Vec<Finished>, InferenceError> {
        let broken = |lane: &Lane| GenerateError::NonFinite { step: lane.done() + 1, steps: lane.course.steps() };
        let mut finished = self.fail_where(|lane| !lane.finite(), broken);
        let done = self.take_where(|lane| lane.i == 0);
        self.lanes.iter_mut().for_each(|lane| lane.i -= 1);
        let losses = guide::score(&done, guides)?;
        let rounded = done.into_iter().zip(losses).map(|(lane, loss)| lane.round(embeddings, &mut self.scratch, loss));
        finished.extend(rounded);
        Ok(finished)
    }

    /// Move out the lanes for which `pred` holds, in order.
    fn take_where(&mut self, mut pred: impl FnMut(&Lane) -> bool) -> Vec<Lane> {
        if !self.lanes.iter().any(&mut pred) {
            return Vec::new(); // most iterations: nothing moves, nothing is allocated
        }
        let (out, kept) = std::mem::take(&mut self.lanes).into_iter().partition(|lane| pred(lane));
        self.lanes = kept;
        out
    }

    /// Move out the lanes for which `pred` holds, failed with `error`.
    fn fail_where(&mut self, pred: impl FnMut(&Lane) -> bool, error: impl Fn(&Lane) -> GenerateError) -> Vec<Finished> {
        let gone = self.take_where(pred);
        gone.into_iter().map(|lane| Finished { result: Err(error(&lane)), lane }).collect()
    }
}

fn deadline(lane: &Lane) -> GenerateError {
    GenerateError::Deadline { done: lane.done(), steps: lane.course.steps() }
}

/// Run `lanes` together from x_T to x_0, none joining: (lane, output) in the lanes' order, or
/// the first failure.
pub fn sample_all(
    lanes: Vec<Lane>,
    denoiser: &mut dyn Denoiser,
    guides: &mut [&mut dyn Guide],
    embeddings: &Embeddings,
) -> Result<Vec<(Lane, Sampled)>, GenerateError> {
    let mut batch = Batch::new();
    let owners: Vec<u64> = lanes.iter().map(|lane| lane.owner).collect();
    for (k, mut lane) in lanes.into_iter().enumerate() {
        lane.owner = k as u64;
        batch.push(lane);
    }
    let mut out: Vec<Option<(Lane, Sampled)>> = (0..owners.len()).map(|_| None).collect();
    while !batch.is_empty() {
        for Finished { mut lane, result } in batch.iterate(denoiser, guides, embeddings)? {
            let k = lane.owner as usize;
            lane.owner = owners[k];
            out[k] = Some((lane, result?));
        }
    }
    Ok(out.into_iter().flatten().collect())
}
