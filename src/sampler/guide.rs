//! Classifier guidance over a batch (Diffusion-LM section 5.2): K rounds of gradient steps on
//! x_{t-1} for every lane guided at this step, each round one graph call per guide over every
//! row that needs it ([`guide_step`]), and the final scoring of finished lanes, their weighted
//! control losses at t = 0 ([`score`]). The update itself is [`super::step::guidance_update`].

use std::time::Instant;

use ndarray::{Array3, Axis};

use super::lane::Lane;
use super::{step, Guide};
use crate::error::InferenceError;

/// K steps on x_{t-1} for every lane guided at its step i. Round k of every lane shares the
/// graph calls; a lane whose deadline passes is marked `timed_out` and takes no further call.
pub(super) fn guide_step(lanes: &mut [Lane], guides: &mut [&mut dyn Guide]) -> Result<(), InferenceError> {
    let guided: Vec<usize> = (0..lanes.len()).filter(|&k| lanes[k].course.guided_at(lanes[k].i)).collect();
    let rounds = guided.iter().map(|&k| lanes[k].course.guide_options.steps).max().unwrap_or(0);
    for round in 0..rounds {
        let active: Vec<usize> =
            guided.iter().copied().filter(|&k| lanes[k].course.guide_options.steps > round).collect();
        active.iter().for_each(|&k| lanes[k].grad.fill(0.0));
        for (g, guide) in guides.iter_mut().enumerate() {
            let now = Instant::now();
            for &k in &active {
                // no request outlives its deadline by more than one graph call
                let lane = &mut lanes[k];
                lane.timed_out |= lane.course.expired(now);
            }
            let live: Vec<usize> = active.iter().copied().filter(|&k| !lanes[k].timed_out).collect();
            let rows = target_rows(lanes, &live, g);
            if rows.is_empty() {
                continue;
            }
            let call = Instant::now();
            let (grad, _) =
                guide_rows(&mut **guide, lanes, &rows, |lane| lane.course.diffusion.timestep_map[lane.i - 1])?;
            let share = call.elapsed() / rows.len() as u32;
            for ((k, j), g) in rows.iter().zip(grad.outer_iter()) {
                let lane = &mut lanes[*k];
                let weight = lane.course.targets[*j].weight;
                lane.grad.index_axis_mut(Axis(0), 0).scaled_add(weight, &g);
                lane.timing.guidance += share;
            }
        }
        for &k in &active {
            let lane = &mut lanes[k];
            if !lane.timed_out {
                let (c, i) = (&lane.course, lane.i);
                let (grad, mean) = (lane.grad.view(), lane.mean.view());
                step::guidance_update(&c.diffusion, i, &c.guide_options, grad, mean, lane.x.view_mut());
            }
        }
    }
    Ok(())
}

/// The weighted control losses at t = 0 on x0 of each finished lane (None unguided): what
/// `rerank` compares. One call per guide for all of them.
pub(super) fn score(done: &[Lane], guides: &mut [&mut dyn Guide]) -> Result<Vec<Option<f32>>, InferenceError> {
    let mut losses: Vec<Option<f32>> =
        done.iter().map(|lane| (!lane.course.targets.is_empty()).then_some(0.0)).collect();
    let all: Vec<usize> = (0..done.len()).collect();
    for (g, guide) in guides.iter_mut().enumerate() {
        let rows = target_rows(done, &all, g);
        if rows.is_empty() {
            continue;
        }
        let (_, loss) = guide_rows(&mut **guide, done, &rows, |_| 0)?;
        for (&(k, j), value) in rows.iter().zip(loss) {
            *losses[k].get_or_insert(0.0) += done[k].course.targets[j].weight * value;
        }
    }
    Ok(losses)
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
