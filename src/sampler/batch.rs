//! Iteration-level scheduling: every active sequence, whatever its request, budget or step,
//! advances one step per denoiser call (each at its own t); sequences join and leave between
//! iterations.

use std::sync::Arc;
use std::time::Instant;

use ndarray::{s, Array2, Array3, Axis, Zip};

use super::lane::{Course, Lane};
use super::{step, Denoiser, Guide, Method};
use crate::embeddings::Embeddings;
use crate::error::{GenerateError, InferenceError};

/// A sequence that reached x_0.
pub struct Sampled {
    /// The final latent [1, L, d].
    pub x0: Array3<f32>,
    /// Rounded token ids [L].
    pub tokens: Vec<u32>,
    /// Its request's guidance losses at t = 0 on x0, weighted and added (None unguided).
    pub control_loss: Option<f32>,
}

/// A sequence that left the batch: done, or failed (deadline, non-finite latent).
pub struct Finished {
    pub lane: Lane,
    pub result: Result<Sampled, GenerateError>,
}

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
    scratch: Array2<f32>,
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

    pub fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    pub fn push(&mut self, lane: Lane) {
        self.lanes.push(lane);
    }

    /// Take out every sequence of `owner` (its request failed or its client left).
    pub fn remove_owner(&mut self, owner: u64) -> Vec<Lane> {
        let (gone, kept) = std::mem::take(&mut self.lanes).into_iter().partition(|l| l.owner == owner);
        self.lanes = kept;
        gone
    }

    /// Every sequence out (the engine failed under them).
    pub fn clear(&mut self) -> Vec<Lane> {
        std::mem::take(&mut self.lanes)
    }

    /// One step of the active sequences (all, or the `limit` that would finish first): one
    /// denoiser call over all of them at their own t,
    /// clamping in one GEMM, the step math per sequence, guidance with one graph call per
    /// guide (chunked to its batch) over every row that needs it, and the held positions.
    /// Returns the sequences that finished or failed; an engine error fails them all (the
    /// caller still holds them: [`Batch::clear`]).
    pub fn iterate(
        &mut self,
        denoiser: &mut dyn Denoiser,
        guides: &mut [&mut dyn Guide],
        embeddings: &Embeddings,
    ) -> Result<Vec<Finished>, InferenceError> {
        let start = Instant::now();
        let mut finished = self.timed_out(|lane| lane.course.expired(start));
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

    /// One step of every lane in `self.lanes`.
    fn step(
        &mut self,
        start: Instant,
        denoiser: &mut dyn Denoiser,
        guides: &mut [&mut dyn Guide],
        embeddings: &Embeddings,
    ) -> Result<Vec<Finished>, InferenceError> {
        let mut finished = Vec::new();
        if self.lanes.is_empty() {
            return Ok(finished);
        }
        let (b, l, d) = (self.lanes.len(), self.lanes[0].x.dim().1, self.lanes[0].x.dim().2);
        self.gather(b, l, d, denoiser.self_conditioned());
        let call = Instant::now();
        let prev = denoiser.self_conditioned().then_some(&self.x0_hat_prev);
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
        let courses: Vec<Arc<Course>> = self.lanes.iter().map(|lane| Arc::clone(&lane.course)).collect();
        let rules: Vec<_> = courses.iter().map(|c| c.options.clamp.then(|| c.constraints(l))).collect();
        if rules.iter().any(Option::is_some) {
            let flat =
                self.x0_hat.view_mut().into_shape_with_order((b * l, d)).expect("the batch keeps its arrays row-major");
            embeddings.clamp_lanes(flat, &mut self.scratch, &rules);
        }
        for (lane, x0_hat) in self.lanes.iter_mut().zip(self.x0_hat.outer_iter()) {
            take_step(lane, x0_hat.insert_axis(Axis(0)));
        }
        self.guide(guides)?;
        finished.extend(self.timed_out(|lane| lane.timed_out));
        for lane in self.lanes.iter_mut() {
            if lane.course.holds() {
                // at i = 0 (no z), abar_prev = 1: held positions become their words exactly
                lane.hold(embeddings, lane.course.diffusion.alpha_bar_prev[lane.i], None);
            }
        }
        let share = start.elapsed() / b as u32;
        self.lanes.iter_mut().for_each(|lane| lane.timing.total += share);
        let broken = self.take_where(|lane| !lane.x.iter().all(|v| v.is_finite()));
        finished.extend(broken.into_iter().map(|lane| {
            let result = Err(GenerateError::NonFinite { step: lane.done() + 1, steps: lane.course.steps() });
            Finished { lane, result }
        }));
        let done = self.take_where(|lane| lane.i == 0);
        self.lanes.iter_mut().for_each(|lane| lane.i -= 1);
        finished.extend(self.round(done, guides, embeddings)?);
        Ok(finished)
    }

    /// Move out the lanes for which `pred` holds, in order.
    fn take_where(&mut self, mut pred: impl FnMut(&Lane) -> bool) -> Vec<Lane> {
        let (out, kept) = std::mem::take(&mut self.lanes).into_iter().partition(|lane| pred(lane));
        self.lanes = kept;
        out
    }

    /// Move out the lanes for which `pred` holds, as deadline failures.
    fn timed_out(&mut self, pred: impl FnMut(&Lane) -> bool) -> Vec<Finished> {
        let gone = self.take_where(pred);
        gone.into_iter()
            .map(|lane| {
                let result = Err(GenerateError::Deadline { done: lane.done(), steps: lane.course.steps() });
                Finished { lane, result }
            })
            .collect()
    }

    fn gather(&mut self, b: usize, l: usize, d: usize, self_conditioned: bool) {
        for buffer in [&mut self.x, &mut self.x0_hat, &mut self.x0_hat_prev] {
            if buffer.dim() != (b, l, d) {
                *buffer = Array3::zeros((b, l, d));
            }
        }
        self.t.clear();
        for (k, lane) in self.lanes.iter().enumerate() {
            self.x.slice_mut(s![k..k + 1, .., ..]).assign(&lane.x);
            self.t.push(lane.course.diffusion.timestep_map[lane.i]);
            if let (true, Some(prev)) = (self_conditioned, &lane.x0_hat_prev) {
                self.x0_hat_prev.slice_mut(s![k..k + 1, .., ..]).assign(prev);
            }
        }
    }

    /// K steps on x_{t-1} against sum(weighted control losses) + lambda * ||x - mu||^2 /
    /// sigma^2 for every lane guided at this step; each update is lr * g / |g| per coordinate
    /// (what an Adagrad re-created every step does first). Round k of every lane shares the
    /// graph calls; a lane whose deadline passes leaves before the next call.
    fn guide(&mut self, guides: &mut [&mut dyn Guide]) -> Result<(), InferenceError> {
        let guided: Vec<usize> =
            (0..self.lanes.len()).filter(|&k| self.lanes[k].course.guided_at(self.lanes[k].i)).collect();
        let rounds = guided.iter().map(|&k| self.lanes[k].course.guide_options.steps).max().unwrap_or(0);
        for round in 0..rounds {
            let active: Vec<usize> =
                guided.iter().copied().filter(|&k| self.lanes[k].course.guide_options.steps > round).collect();
            active.iter().for_each(|&k| self.lanes[k].grad.fill(0.0));
            for (g, guide) in guides.iter_mut().enumerate() {
                let now = Instant::now();
                for &k in &active {
                    // no request outlives its deadline by more than one graph call
                    let lane = &mut self.lanes[k];
                    lane.timed_out |= lane.course.expired(now);
                }
                let live: Vec<usize> = active.iter().copied().filter(|&k| !self.lanes[k].timed_out).collect();
                let rows = target_rows(&self.lanes, &live, g);
                if rows.is_empty() {
                    continue;
                }
                let call = Instant::now();
                let (grad, _) = guide_rows(&mut **guide, &self.lanes, &rows, |lane| {
                    lane.course.diffusion.timestep_map[lane.i - 1]
                })?;
                let share = call.elapsed() / rows.len() as u32;
                for ((k, j), g) in rows.iter().zip(grad.outer_iter()) {
                    let lane = &mut self.lanes[*k];
                    let weight = lane.course.targets[*j].weight;
                    lane.grad.index_axis_mut(Axis(0), 0).scaled_add(weight, &g);
                    lane.timing.guidance += share;
                }
            }
            for &k in &active {
                let lane = &mut self.lanes[k];
                if lane.timed_out {
                    continue;
                }
                let opts = lane.course.guide_options;
                let fluency = (2.0 * opts.lambda / lane.course.diffusion.model_variance[lane.i].max(1e-12)) as f32;
                let lr = opts.lr as f32;
                Zip::from(&mut lane.x).and(&lane.grad).and(&lane.mean).for_each(|x, &g, &mu| {
                    let g = g + fluency * (*x - mu);
                    *x -= lr * g / (g.abs() + 1e-10);
                });
            }
        }
        Ok(())
    }

    /// Round the lanes that took their last step, and score the guided ones: their weighted
    /// control losses at t = 0 on x0 (what `rerank` compares), one call per guide for all.
    fn round(
        &mut self,
        done: Vec<Lane>,
        guides: &mut [&mut dyn Guide],
        embeddings: &Embeddings,
    ) -> Result<Vec<Finished>, InferenceError> {
        let mut losses: Vec<Option<f32>> =
            done.iter().map(|lane| (!lane.course.targets.is_empty()).then_some(0.0)).collect();
        for (g, guide) in guides.iter_mut().enumerate() {
            let rows = target_rows(&done, (0..done.len()).collect::<Vec<_>>().as_slice(), g);
            if rows.is_empty() {
                continue;
            }
            let (_, loss) = guide_rows(&mut **guide, &done, &rows, |_| 0)?;
            for (&(k, j), value) in rows.iter().zip(loss) {
                *losses[k].get_or_insert(0.0) += done[k].course.targets[j].weight * value;
            }
        }
        let mut out = Vec::with_capacity(done.len());
        for (lane, control_loss) in done.into_iter().zip(losses) {
            let (_, l, d) = lane.x.dim();
            let flat = lane.x.view().into_shape_with_order((l, d)).expect("lanes are row-major");
            let tokens = embeddings.round_rows(flat, &mut self.scratch, lane.course.constraints(l));
            let result = Ok(Sampled { x0: lane.x.clone(), tokens, control_loss });
            out.push(Finished { lane, result });
        }
        Ok(out)
    }
}

/// The (lane, target) pairs of guide `g` among `lanes[which]`.
fn target_rows(lanes: &[Lane], which: &[usize], g: usize) -> Vec<(usize, usize)> {
    which
        .iter()
        .flat_map(|&k| {
            let targets = &lanes[k].course.targets;
            (0..targets.len()).filter(move |&j| targets[j].guide == g).map(move |j| (k, j))
        })
        .collect()
}

/// One call of `guide` on (lane, target) rows, each at the timestep `t_of` gives its lane:
/// the rows' gradients [n, L, d] and losses. `rows` is not empty.
fn guide_rows(
    guide: &mut dyn Guide,
    lanes: &[Lane],
    rows: &[(usize, usize)],
    t_of: impl Fn(&Lane) -> i64,
) -> Result<(Array3<f32>, Vec<f32>), InferenceError> {
    let (_, l, d) = lanes[rows[0].0].x.dim();
    let mut x = Array3::zeros((rows.len(), l, d));
    let mut t = Vec::with_capacity(rows.len());
    let mut targets = Vec::with_capacity(rows.len());
    for (r, &(k, j)) in rows.iter().enumerate() {
        x.index_axis_mut(Axis(0), r).assign(&lanes[k].x.index_axis(Axis(0), 0));
        t.push(t_of(&lanes[k]));
        targets.push(&lanes[k].course.targets[j].target);
    }
    let (mut grad, mut loss) = (Array3::zeros(x.dim()), vec![0.0; rows.len()]);
    guide.grad(&x, &t, &targets, &mut grad, &mut loss)?;
    Ok((grad, loss))
}

/// Step i of one lane: noise drawn when the step needs it (i > 0, and sigma > 0 or a held
/// position), then x_{i-1} from x0_hat.
fn take_step(lane: &mut Lane, x0_hat: ndarray::ArrayView3<f32>) {
    let course = &lane.course;
    let i = lane.i;
    let draw = i > 0 && (course.holds() || step::sigma(course.options.method, &course.diffusion, i) > 0.0);
    if draw {
        lane.noise.fill(&mut lane.z);
    }
    let z = draw.then(|| lane.z.view());
    match course.options.method {
        Method::Ddpm => step::p_sample(&course.diffusion, i, x0_hat, z, lane.x.view_mut(), lane.mean.view_mut()),
        Method::Ddim { eta } => {
            step::ddim_sample(&course.diffusion, i, eta, x0_hat, z, lane.x.view_mut(), lane.mean.view_mut())
        }
    }
}

/// Run `lanes` together from x_T to x_0, none joining: (lane, output) in the lanes' order, or
/// the first failure.
pub fn sample_all(
    lanes: Vec<Lane>,
    denoiser: &mut dyn Denoiser,
    guides: &mut [&mut dyn Guide],
    embeddings: &Embeddings,
) -> Result<Vec<(Lane, Sampled)>, GenerateError> {
    let count = lanes.len();
    let mut batch = Batch::new();
    let mut order = Vec::with_capacity(count);
    for (k, mut lane) in lanes.into_iter().enumerate() {
        order.push(lane.owner);
        lane.owner = k as u64;
        batch.push(lane);
    }
    let mut out: Vec<Option<(Lane, Sampled)>> = (0..count).map(|_| None).collect();
    while !batch.is_empty() {
        for Finished { mut lane, result } in batch.iterate(denoiser, guides, embeddings)? {
            let k = lane.owner as usize;
            lane.owner = order[k];
            out[k] = Some((lane, result?));
        }
    }
    Ok(out.into_iter().flatten().collect())
}
