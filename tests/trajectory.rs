//! Short trajectories of the PyTorch reference sampler (tests/fixtures/trajectory_*.json, made
//! by `python -m export fixtures`), replayed by the Rust sampler on ONNX Runtime from the same
//! x_T and the same noise: DDIM (eta = 0), DDPM, and DDPM with content guidance. Tokens must
//! match exactly, x0_hat at every step to X0_HAT_TOLERANCE.

mod common;

use dlm::manifest::Precision;
use dlm::ort::{BoundGuide, Target};
use dlm::sampler::{Guide, GuideOptions, Method, Noise, SampleOptions, Sampler};
use dlm::schedule::Diffusion;
use ndarray::Array3;
use serde_json::Value;

/// Max abs difference allowed between ONNX Runtime (Rust) and PyTorch x0_hat at any step, fp32.
const X0_HAT_TOLERANCE: f32 = 1e-3;

fn array3(v: &Value) -> Array3<f32> {
    let nested: Vec<Vec<Vec<f32>>> = serde_json::from_value(v.clone()).unwrap();
    let (b, l, d) = (nested.len(), nested[0].len(), nested[0][0].len());
    Array3::from_shape_vec((b, l, d), nested.into_iter().flatten().flatten().collect()).unwrap()
}

/// The noise the reference drew, handed out in order.
struct Recorded {
    draws: Vec<Array3<f32>>,
    used: usize,
}

impl Noise for Recorded {
    fn fill(&mut self, z: &mut Array3<f32>) {
        match self.draws.get(self.used) {
            Some(next) => z.assign(next),
            None => panic!("the sampler drew more noise than the reference ({} draws)", self.draws.len()),
        }
        self.used += 1;
    }
}

fn replay(kind: &str) {
    let path = common::repo_path(&format!("tests/fixtures/trajectory_{kind}.json"));
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    common::with_model(Precision::Fp32, |model| {
        let graph = model.manifest.denoiser(Precision::Fp32).unwrap();
        assert_eq!(
            fixture["denoiser_sha256"], graph.sha256,
            "tests/fixtures/trajectory_{kind}.json was made for another model: run `python -m export fixtures`"
        );
        let steps = fixture["steps"].as_u64().unwrap() as usize;
        let diffusion = Diffusion::respaced(&model.manifest.diffusion, steps).unwrap();
        let method = Method::parse(fixture["sampler"].as_str().unwrap(), fixture["eta"].as_f64()).unwrap();
        let x_t = array3(&fixture["x_T"]);
        let draws: Vec<Array3<f32>> = fixture["noise"].as_array().unwrap().iter().map(array3).collect();
        let mut noise = Recorded { draws, used: 0 };
        let mut guides = Vec::new();
        let guidance = &fixture["guidance"];
        if !guidance.is_null() {
            let control = guidance["control"].as_str().unwrap();
            let labels = &model.manifest.controls[control].labels;
            let wanted = labels.iter().map(|l| f32::from(l == guidance["target"].as_str().unwrap())).collect();
            let weight = guidance["weight"].as_f64().unwrap() as f32;
            guides.push(BoundGuide::new(model.guides.get_mut(control).unwrap(), &[Target::Wanted(wanted)], weight));
        }
        let options = SampleOptions { method, clamp: fixture["clamp"].as_bool().unwrap() };
        let mut sampler = Sampler::new(&mut model.denoiser, &model.embeddings, &diffusion, options);
        sampler.guides = guides.iter_mut().map(|g| g as &mut dyn Guide).collect();
        if !guidance.is_null() {
            sampler.guide_options = GuideOptions {
                steps: guidance["steps"].as_u64().unwrap() as usize,
                lambda: guidance["lambda"].as_f64().unwrap(),
                lr: guidance["lr"].as_f64().unwrap(),
                ..GuideOptions::default()
            };
        }
        let mut trace = Vec::new();
        let sampled = sampler.sample(x_t, &mut noise, Some(&mut trace)).unwrap();
        assert_eq!(noise.used, noise.draws.len(), "{kind}: the sampler drew less noise than the reference");

        let reference = fixture["x0_hat"].as_array().unwrap();
        assert_eq!(trace.len(), reference.len());
        for (step, (ours, theirs)) in trace.iter().zip(reference).enumerate() {
            let diff = (ours - &array3(theirs)).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
            assert!(diff <= X0_HAT_TOLERANCE, "{kind}: x0_hat at step {step} differs by {diff} > {X0_HAT_TOLERANCE}");
        }
        let expected_tokens: Vec<Vec<u32>> = serde_json::from_value(fixture["tokens"].clone()).unwrap();
        assert_eq!(sampled.tokens, expected_tokens, "{kind}: tokens differ from the PyTorch reference");
        let texts: Vec<String> = sampled.tokens.iter().map(|ids| model.vocab.decode(ids)).collect();
        let expected_texts: Vec<String> = serde_json::from_value(fixture["texts"].clone()).unwrap();
        assert_eq!(texts, expected_texts);
    });
}

#[test]
fn ddim_trajectory_matches_pytorch_reference() {
    replay("ddim");
}

#[test]
fn ddpm_trajectory_with_the_reference_noise_matches() {
    replay("ddpm");
}

#[test]
fn content_guided_trajectory_matches_pytorch_reference() {
    replay("guided");
}
