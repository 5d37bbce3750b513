//! The sampler on fakes that record what they were asked: a denoiser that always predicts one
//! word, a guide with a constant gradient, and noise that counts its draws.

use ndarray::{array, Array2, Array3, Axis};

use super::*;

/// Always predicts the embedding of one word at every position; records the timesteps.
struct ConstantWord {
    embedding: Vec<f32>,
    calls: Vec<i64>,
}

impl Denoiser for ConstantWord {
    fn denoise(
        &mut self,
        x: &Array3<f32>,
        t: &[i64],
        prev: Option<&Array3<f32>>,
        out: &mut Array3<f32>,
    ) -> Result<(), InferenceError> {
        assert_eq!(x.dim().0, t.len());
        assert!(prev.is_none(), "a model that is not self-conditioned gets no x0_hat_prev");
        self.calls.push(t[0]);
        for mut row in out.rows_mut() {
            row.assign(&ndarray::aview1(&self.embedding));
        }
        Ok(())
    }
}

/// A self-conditioned fake: predicts its previous x0_hat plus one; records what it was given.
#[derive(Default)]
struct CountingUp {
    given: Vec<Array3<f32>>,
}

impl Denoiser for CountingUp {
    fn denoise(
        &mut self,
        _x: &Array3<f32>,
        _t: &[i64],
        prev: Option<&Array3<f32>>,
        out: &mut Array3<f32>,
    ) -> Result<(), InferenceError> {
        let prev = prev.expect("a self-conditioned model gets x0_hat_prev");
        self.given.push(prev.clone());
        out.assign(&prev.mapv(|v| v + 1.0));
        Ok(())
    }

    fn self_conditioned(&self) -> bool {
        true
    }
}

/// d loss / d x = 1 everywhere; records (t, x) of every call.
#[derive(Default)]
struct ConstantGrad {
    calls: Vec<(i64, Array3<f32>)>,
}

impl Guide for ConstantGrad {
    fn add_grad(&mut self, x: &Array3<f32>, t: &[i64], grad: &mut Array3<f32>) -> Result<(), InferenceError> {
        self.calls.push((t[0], x.clone()));
        grad.mapv_inplace(|g| g + 1.0);
        Ok(())
    }
}

/// Zeros, counting the draws.
#[derive(Default)]
struct CountedZeros {
    draws: usize,
}

impl Noise for CountedZeros {
    fn fill(&mut self, z: &mut Array3<f32>) {
        self.draws += 1;
        z.fill(0.0);
    }
}

fn embeddings() -> Embeddings {
    Embeddings::new(array![[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
}

fn diffusion(steps: usize) -> Diffusion {
    let betas: Vec<f64> = (0..steps).map(|i| 0.01 + 0.5 * i as f64 / steps as f64).collect();
    Diffusion::new(betas, (0..steps as i64).map(|t| t * 10).collect())
}

fn run(method: Method, clamp: bool, word: usize) -> (Sampled, Vec<i64>) {
    let emb = embeddings();
    let mut fake = ConstantWord { embedding: emb.matrix().row(word).to_vec(), calls: Vec::new() };
    let diff = diffusion(6);
    let mut noise = SequenceNoise::new(5, 0..3);
    let x_t = noise.x_t(4, 2);
    let mut sampler = Sampler::new(&mut fake, &emb, &diff, SampleOptions { method, clamp });
    let sampled = sampler.sample(x_t, &mut noise, None).unwrap();
    (sampled, fake.calls)
}

#[test]
fn visits_every_step_from_the_noisiest_and_lands_on_x0_hat() {
    for method in [Method::Ddpm, Method::Ddim { eta: 0.0 }, Method::Ddim { eta: 1.0 }] {
        for clamp in [true, false] {
            let (sampled, calls) = run(method, clamp, 2);
            assert_eq!(calls, vec![50, 40, 30, 20, 10, 0], "{method:?}");
            assert_eq!(sampled.tokens, vec![vec![2; 4]; 3], "{method:?} clamp={clamp}");
            assert!(sampled.x0.iter().zip([0.0f32, 3.0].iter().cycle()).all(|(a, b)| (a - b).abs() < 1e-5));
            assert_eq!(sampled.timing.steps, 6);
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
        let mut fake = ConstantWord { embedding: emb.matrix().row(1).to_vec(), calls: Vec::new() };
        let mut noise = CountedZeros::default();
        let mut sampler = Sampler::new(&mut fake, &emb, &diff, SampleOptions { method, clamp: true });
        sampler.held = held;
        let sampled = sampler.sample(Array3::zeros((2, 4, 2)), &mut noise, None).unwrap();
        assert_eq!(noise.draws, expected, "{method:?} held {held:?}");
        let expected_tokens = if held.is_empty() { vec![1; 4] } else { vec![1, 3, 1, 1] };
        assert_eq!(sampled.tokens, vec![expected_tokens; 2], "{method:?}");
    }
}

#[test]
fn guidance_steps_k_times_against_the_gradient_and_skips_the_last_tenth() {
    let emb = embeddings();
    let diff = diffusion(10);
    let mut fake = ConstantWord { embedding: emb.matrix().row(1).to_vec(), calls: Vec::new() };
    let mut guide = ConstantGrad::default();
    let mut sampler = Sampler::new(&mut fake, &emb, &diff, SampleOptions { method: Method::Ddpm, clamp: true });
    sampler.guides = vec![&mut guide];
    sampler.guide_options = GuideOptions { steps: 2, lambda: 0.0, lr: 0.25, ..GuideOptions::default() };
    sampler.sample(Array3::zeros((1, 4, 2)), &mut CountedZeros::default(), None).unwrap();
    // steps i = 9..=2 are guided (floor(10 * 0.1) = 1 step skipped at the end), at t_{i-1}
    let ts: Vec<i64> = guide.calls.iter().map(|(t, _)| *t).collect();
    let expected: Vec<i64> = (2..10).rev().flat_map(|i| [(i - 1) * 10; 2]).collect();
    assert_eq!(ts, expected);
    for pair in guide.calls.chunks(2) {
        // lambda = 0 and g = 1: each inner step moves every coordinate by -lr
        let moved = &pair[1].1 - &pair[0].1;
        assert!(moved.iter().all(|&m| (m + 0.25).abs() < 1e-6), "{moved:?}");
    }
}

#[test]
fn a_self_conditioned_model_reads_its_previous_raw_x0_hat_from_zeros() {
    let emb = embeddings();
    let diff = diffusion(4);
    let mut fake = CountingUp::default();
    let options = SampleOptions { method: Method::Ddim { eta: 0.0 }, clamp: true };
    Sampler::new(&mut fake, &emb, &diff, options)
        .sample(Array3::zeros((1, 2, 2)), &mut CountedZeros::default(), None)
        .unwrap();
    // the raw predictions 1, 2, 3 come back, not their clamped embeddings
    let firsts: Vec<f32> = fake.given.iter().map(|p| p[[0, 0, 0]]).collect();
    assert_eq!(firsts, vec![0.0, 1.0, 2.0, 3.0]);
    assert!(fake.given.iter().all(|p| p.iter().all(|&v| v == p[[0, 0, 0]])));
}

#[test]
fn a_column_major_x_t_is_accepted() {
    use ndarray::ShapeBuilder;
    let emb = embeddings();
    let mut fake = ConstantWord { embedding: emb.matrix().row(1).to_vec(), calls: Vec::new() };
    let diff = diffusion(3);
    let x_t = Array3::from_shape_fn((2, 4, 2).f(), |(b, l, d)| (b + l + d) as f32);
    let options = SampleOptions { method: Method::Ddpm, clamp: true };
    let mut noise = SequenceNoise::new(1, 0..2);
    let sampled = Sampler::new(&mut fake, &emb, &diff, options).sample(x_t, &mut noise, None).unwrap();
    assert_eq!(sampled.tokens, vec![vec![1; 4]; 2]);
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
    let mut scratch = Array2::zeros((0, 0));
    emb.clamp_rows(x.view_mut(), &mut scratch, Constraints::default());
    assert_eq!(x, array![[3.0, 0.0], [0.0, 0.0], [-3.0, -3.0]]);
    // <x, EMB>: the origin word never wins a dot product against a positive one
    assert_eq!(
        emb.round_rows(array![[0.2, 0.1], [-0.1, -0.2]].view(), &mut scratch, Constraints::default()),
        vec![1, 3]
    );
}
