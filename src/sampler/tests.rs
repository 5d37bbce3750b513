//! The sampler on fakes that record what they were asked ([`super::fakes`]): a denoiser that
//! always predicts one word, a guide with a constant gradient, and noise that counts its draws.

use std::sync::Arc;

use ndarray::{array, s, Array2, Array3, Axis};

use super::fakes::{embeddings, ConstantGrad, ConstantWord, CountedZeros, CountingUp, Mixing};
use super::*;
use crate::embeddings::{Constraints, Scratch};
use crate::error::GenerateError;
use crate::schedule::Diffusion;

/// Lanes for the sequences of x_t [B, L, d] under one course, each with `noise(b)`.
fn lanes(
    course: Course,
    x_t: &Array3<f32>,
    noise: impl Fn(usize) -> Box<dyn Noise + Send>,
    self_conditioned: bool,
) -> Vec<Lane> {
    let course = Arc::new(course);
    let emb = embeddings();
    (0..x_t.dim().0)
        .map(|b| {
            let x = x_t.slice(s![b..b + 1, .., ..]).to_owned();
            Lane::new(0, b, Arc::clone(&course), x, noise(b), &emb, self_conditioned)
        })
        .collect()
}

/// Tokens per sequence of a batch run to the end.
fn tokens(out: &[(Lane, Sampled)]) -> Vec<Vec<u32>> {
    out.iter().map(|(_, s)| s.tokens.clone()).collect()
}

fn diffusion(steps: usize) -> Diffusion {
    let betas: Vec<f64> = (0..steps).map(|i| 0.01 + 0.5 * i as f64 / steps as f64).collect();
    Diffusion::new(betas, (0..steps as i64).map(|t| t * 10).collect())
}

fn run(method: Method, clamp: bool, word: usize) -> (Vec<(Lane, Sampled)>, Vec<i64>) {
    let emb = embeddings();
    let mut fake = ConstantWord::new(emb.matrix().row(word).to_vec());
    let x_t = SequenceNoise::new(5, 0..3).x_t(4, 2);
    let course = Course::new(diffusion(6), SampleOptions { method, clamp });
    let lanes = lanes(course, &x_t, |b| Box::new(SequenceNoise::new(5, [b as u64])), false);
    let out = sample_all(lanes, &mut fake, &mut [], &emb).unwrap();
    (out, fake.timesteps())
}

#[test]
fn visits_every_step_from_the_noisiest_and_lands_on_x0_hat() {
    for method in [Method::Ddpm, Method::Ddim { eta: 0.0 }, Method::Ddim { eta: 1.0 }] {
        for clamp in [true, false] {
            let (out, calls) = run(method, clamp, 2);
            let expected: Vec<i64> = [50, 40, 30, 20, 10, 0].iter().flat_map(|&t| [t; 3]).collect();
            assert_eq!(calls, expected, "{method:?}");
            assert_eq!(tokens(&out), vec![vec![2; 4]; 3], "{method:?} clamp={clamp}");
            for (lane, sampled) in &out {
                assert!(sampled.x0.iter().zip([0.0f32, 3.0].iter().cycle()).all(|(a, b)| (a - b).abs() < 1e-5));
                assert_eq!(lane.timing.steps, 6);
            }
        }
    }
}

#[test]
fn noise_is_drawn_once_per_noisy_step_and_for_held_positions() {
    let emb = embeddings();
    let diff = diffusion(6);
    let held = [None, Some(3), None, None];
    for (method, held, expected) in [
        (Method::Ddpm, &[][..], 5),
        (Method::Ddim { eta: 0.0 }, &[][..], 0),
        (Method::Ddim { eta: 0.0 }, &held[..], 5),
        (Method::Ddim { eta: 0.5 }, &[][..], 5),
    ] {
        let mut fake = ConstantWord::new(emb.matrix().row(1).to_vec());
        let noise = CountedZeros::default();
        let mut course = Course::new(diff.clone(), SampleOptions { method, clamp: true });
        course.held = held.to_vec();
        let lanes = lanes(course, &Array3::zeros((2, 4, 2)), |_| Box::new(noise.clone()), false);
        let out = sample_all(lanes, &mut fake, &mut [], &emb).unwrap();
        assert_eq!(noise.draws(), 2 * expected, "{method:?} held {held:?}");
        let expected_tokens = if held.is_empty() { vec![1; 4] } else { vec![1, 3, 1, 1] };
        assert_eq!(tokens(&out), vec![expected_tokens; 2], "{method:?}");
    }
}

#[test]
fn guidance_steps_k_times_against_the_gradient_and_skips_the_last_tenth() {
    let emb = embeddings();
    let diff = diffusion(10);
    let mut fake = ConstantWord::new(emb.matrix().row(1).to_vec());
    let mut guide = ConstantGrad::default();
    let mut course = Course::new(diff, SampleOptions { method: Method::Ddpm, clamp: true });
    course.guide_options = GuideOptions { steps: 2, lambda: 0.0, lr: 0.25, ..GuideOptions::default() };
    course.targets = vec![GuideTarget { guide: 0, target: Target::Tags(vec![7]), weight: 1.0 }];
    let lanes = lanes(course, &Array3::zeros((1, 4, 2)), |_| Box::new(CountedZeros::default()), false);
    let out = sample_all(lanes, &mut fake, &mut [&mut guide], &emb).unwrap();
    // steps i = 9..=2 are guided (floor(10 * 0.1) = 1 step skipped at the end), at t_{i-1};
    // the last call is the final score at t = 0
    let (score, calls) = guide.calls.split_last().unwrap();
    let ts: Vec<i64> = calls.iter().map(|rows| rows[0].0).collect();
    let expected: Vec<i64> = (2..10).rev().flat_map(|i| [(i - 1) * 10; 2]).collect();
    assert_eq!(ts, expected);
    assert_eq!(score[0].0, 0);
    assert_eq!(out[0].1.control_loss, Some(7.0));
    for pair in calls.chunks(2) {
        // lambda = 0 and g = 1: each inner step moves every coordinate by -lr
        let moved = &pair[1][0].1 - &pair[0][0].1;
        assert!(moved.iter().all(|&m| (m + 0.25).abs() < 1e-6), "{moved:?}");
    }
}

#[test]
fn a_self_conditioned_model_reads_its_previous_raw_x0_hat_from_zeros() {
    let emb = embeddings();
    let diff = diffusion(4);
    let mut fake = CountingUp::default();
    let course = Course::new(diff, SampleOptions { method: Method::Ddim { eta: 0.0 }, clamp: true });
    let lanes = lanes(course, &Array3::zeros((1, 2, 2)), |_| Box::new(CountedZeros::default()), true);
    sample_all(lanes, &mut fake, &mut [], &emb).unwrap();
    // the raw predictions 1, 2, 3 come back, not their clamped embeddings
    let firsts: Vec<f32> = fake.given.iter().map(|p| p[[0, 0, 0]]).collect();
    assert_eq!(firsts, vec![0.0, 1.0, 2.0, 3.0]);
    assert!(fake.given.iter().all(|p| p.iter().all(|&v| v == p[[0, 0, 0]])));
}

#[test]
fn a_column_major_x_t_is_accepted() {
    use ndarray::ShapeBuilder;
    let emb = embeddings();
    let mut fake = ConstantWord::new(emb.matrix().row(1).to_vec());
    let diff = diffusion(3);
    let x_t = Array3::from_shape_fn((2, 4, 2).f(), |(b, l, d)| (b + l + d) as f32);
    let course = Course::new(diff, SampleOptions { method: Method::Ddpm, clamp: true });
    let lanes = lanes(course, &x_t, |b| Box::new(SequenceNoise::new(1, [b as u64])), false);
    assert_eq!(tokens(&sample_all(lanes, &mut fake, &mut [], &emb).unwrap()), vec![vec![1; 4]; 2]);
}

#[test]
fn sequence_streams_do_not_depend_on_the_batch() {
    let together = SequenceNoise::new(9, 0..3).x_t(4, 2);
    let single = SequenceNoise::new(9, [2]).x_t(4, 2);
    assert_eq!(together.index_axis(Axis(0), 2), single.index_axis(Axis(0), 0));
    assert_ne!(together.index_axis(Axis(0), 0), together.index_axis(Axis(0), 1));
}

#[test]
fn methods_parse_from_sampler_and_eta() {
    assert_eq!(Method::parse("ddim", Some(0.5)), Ok(Method::Ddim { eta: 0.5 }));
    assert_eq!(Method::parse("ddim", None), Ok(Method::Ddim { eta: 0.0 }));
    assert_eq!(Method::parse("ddpm", None), Ok(Method::Ddpm));
    assert_eq!(Method::parse("ddpm", Some(0.1)), Err(RequestError::EtaWithoutDdim));
    assert_eq!(Method::parse("plms", None), Err(RequestError::Sampler("plms".into())));
}

#[test]
fn clamping_picks_the_nearest_and_rounding_the_largest_dot_product() {
    let emb = embeddings();
    let mut x: Array2<f32> = array![[2.0, 0.5], [0.2, 0.1], [-1.0, -2.5]];
    let mut scratch = Scratch::default();
    emb.clamp_rows(x.view_mut(), &mut scratch, Constraints::default());
    assert_eq!(x, array![[3.0, 0.0], [0.0, 0.0], [-3.0, -3.0]]);
    // <x, EMB>: the origin word never wins a dot product against a positive one
    assert_eq!(
        emb.round_rows(array![[0.2, 0.1], [-0.1, -0.2]].view(), &mut scratch, Constraints::default()),
        vec![1, 3]
    );
}

fn mixing_lane(owner: u64, index: usize, steps: usize, method: Method, guided: bool) -> Lane {
    let mut course = Course::new(diffusion(steps), SampleOptions { method, clamp: false });
    if guided {
        course.guide_options = GuideOptions { steps: 2, lambda: 0.1, lr: 0.05, ..GuideOptions::default() };
        course.targets = vec![GuideTarget { guide: 0, target: Target::Tags(vec![owner as i64]), weight: 0.5 }];
    }
    let mut noise = SequenceNoise::new(owner, [index as u64]);
    let x_t = noise.x_t(4, 2);
    Lane::new(owner, index, Arc::new(course), x_t, Box::new(noise), &embeddings(), false)
}

#[test]
fn a_sequence_gets_the_same_latent_alone_and_joining_a_batch_of_other_requests() {
    let emb = embeddings();
    let cases =
        [(1, 8, Method::Ddpm, true), (2, 3, Method::Ddim { eta: 0.0 }, false), (3, 5, Method::Ddim { eta: 1.0 }, true)];
    let alone: Vec<Array3<f32>> = cases
        .iter()
        .map(|&(owner, steps, method, guided)| {
            let out = sample_all(
                vec![mixing_lane(owner, 0, steps, method, guided)],
                &mut Mixing,
                &mut [&mut ConstantGrad::default()],
                &emb,
            );
            out.unwrap().remove(0).1.x0
        })
        .collect();
    // together: the first starts alone, the others join one and two iterations later
    let mut batch = Batch::new();
    let mut guide = ConstantGrad::default();
    let mut x0 = [None, None, None];
    for iteration in 0..20 {
        if let Some(&(owner, steps, method, guided)) = cases.get(iteration) {
            batch.push(mixing_lane(owner, 0, steps, method, guided));
        }
        for f in batch.iterate(&mut Mixing, &mut [&mut guide], &emb).unwrap() {
            x0[f.lane.owner as usize - 1] = Some(f.result.unwrap().x0);
        }
    }
    for (k, (together, alone)) in x0.iter().zip(&alone).enumerate() {
        assert_eq!(together.as_ref().expect("every sequence finished"), alone, "sequence of request {}", k + 1);
    }
    // guidance rows of both guided requests went through shared calls, each with its own target
    let shared = guide.calls.iter().find(|rows| rows.len() == 2).expect("a call with two rows");
    let owners: Vec<Target> = shared.iter().map(|r| r.2.clone()).collect();
    assert_eq!(owners, vec![Target::Tags(vec![1]), Target::Tags(vec![3])]);
    assert_ne!(shared[0].0, shared[1].0, "each row at its own t");
}

#[test]
fn an_expired_sequence_leaves_with_a_deadline_error_and_the_others_go_on() {
    let emb = embeddings();
    let mut batch = Batch::new();
    batch.push(mixing_lane(1, 0, 4, Method::Ddpm, false));
    let mut late = mixing_lane(2, 0, 4, Method::Ddpm, false);
    late.course = Arc::new(Course { deadline: Some(std::time::Instant::now()), ..(*late.course).clone() });
    batch.push(late);
    let first = batch.iterate(&mut Mixing, &mut [], &emb).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].lane.owner, 2);
    assert!(matches!(first[0].result, Err(GenerateError::Deadline { done: 0, steps: 4 })));
    assert_eq!(batch.len(), 1);
    let rest: Vec<Finished> = (0..3).flat_map(|_| batch.iterate(&mut Mixing, &mut [], &emb).unwrap()).collect();
    assert_eq!(rest.len(), 1);
    assert!(rest[0].result.is_ok());
    assert!(batch.is_empty());
}

#[test]
fn a_limited_batch_steps_the_sequences_that_finish_first_without_starving_the_others() {
    let emb = embeddings();
    let mut batch = Batch::with_limit(1);
    batch.push(mixing_lane(1, 0, 8, Method::Ddpm, false));
    let mut order = Vec::new();
    for iteration in 0..40 {
        if iteration == 2 {
            batch.push(mixing_lane(2, 0, 3, Method::Ddpm, false)); // 3 steps against 6 left
        }
        for f in batch.iterate(&mut Mixing, &mut [], &emb).unwrap() {
            order.push((f.lane.owner, iteration));
        }
    }
    // the short one runs at once and finishes first; the long one resumes after it
    assert_eq!(order, vec![(2, 4), (1, 10)]);
}

#[test]
fn a_latent_that_is_not_finite_fails_its_sequence_at_that_step() {
    let emb = embeddings();
    for (bad, fails) in [(f32::NAN, true), (f32::INFINITY, true), (f32::NEG_INFINITY, true), (1e30, false)] {
        // one dimension of the predicted word is `bad`: the first step's x_{i-1} holds it
        let mut fake = ConstantWord::new(vec![0.5, bad]);
        let x_t = SequenceNoise::new(5, 0..1).x_t(4, 2);
        let course = Course::new(diffusion(6), SampleOptions { method: Method::Ddpm, clamp: false });
        let lanes = lanes(course, &x_t, |b| Box::new(SequenceNoise::new(5, [b as u64])), false);
        match sample_all(lanes, &mut fake, &mut [], &emb) {
            Err(GenerateError::NonFinite { step, steps }) => assert!(fails && (step, steps) == (1, 6), "{bad}"),
            Ok(out) => assert!(!fails && out[0].1.x0.iter().all(|v| v.is_finite()), "{bad}"),
            Err(e) => panic!("{bad}: {e}"),
        }
    }
}
