//! A short deterministic trajectory (DDIM, eta = 0, clamping, fixed x_T from the PyTorch
//! reference sampler) matches the reference token for token, and x0_hat to X0_HAT_TOLERANCE.

mod common;

use dlm::manifest::Precision;
use dlm::sampler::{sequence_rng, Method, SampleOptions, Sampler};
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

#[test]
fn ddim_trajectory_matches_pytorch_reference() {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(common::repo_path("tests/fixtures/trajectory.json")).unwrap())
            .unwrap();
    common::with_model(Precision::Fp32, |model| {
        let graph = model.manifest.denoiser(Precision::Fp32).unwrap();
        assert_eq!(
            fixture["denoiser_sha256"], graph.sha256,
            "tests/fixtures/trajectory.json was made for another model: run `python -m export fixtures`"
        );
        let steps = fixture["steps"].as_u64().unwrap() as usize;
        let diffusion = Diffusion::respaced(&model.manifest.diffusion, steps).unwrap();
        let x_t = array3(&fixture["x_T"]);
        let mut rngs: Vec<_> = (0..x_t.dim().0).map(|k| sequence_rng(0, k as u64)).collect();
        let options = SampleOptions { method: Method::Ddim { eta: 0.0 }, clamp: true };
        let mut trace = Vec::new();
        let mut sampler = Sampler::new(&mut model.denoiser, &model.embeddings, &diffusion, options);
        let sampled = sampler.sample(x_t, &mut rngs, Some(&mut trace)).unwrap();

        let expected_tokens: Vec<Vec<u32>> = serde_json::from_value(fixture["tokens"].clone()).unwrap();
        assert_eq!(sampled.tokens, expected_tokens, "tokens differ from the PyTorch reference");
        let reference = fixture["x0_hat"].as_array().unwrap();
        assert_eq!(trace.len(), reference.len());
        for (step, (ours, theirs)) in trace.iter().zip(reference).enumerate() {
            let diff = (ours - &array3(theirs)).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
            assert!(diff <= X0_HAT_TOLERANCE, "x0_hat at step {step} differs by {diff} > {X0_HAT_TOLERANCE}");
        }
        let texts: Vec<String> = sampled.tokens.iter().map(|ids| model.vocab.decode(ids)).collect();
        let expected_texts: Vec<String> = serde_json::from_value(fixture["texts"].clone()).unwrap();
        assert_eq!(texts, expected_texts);
    });
}
