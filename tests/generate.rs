//! Generation on the bundled model through the real ONNX Runtime: seeds, budgets, batching, fp16.

mod common;

use dlm::controls::ControlRequest;
use dlm::error::{GenerateError, RequestError};
use dlm::generate::{generate, GuideOverrides, Request};
use dlm::manifest::Precision;
use dlm::sampler::Method;

fn request(steps: usize, seed: u64, num: usize, batch: usize) -> Request {
    Request {
        steps,
        method: Method::Ddpm,
        clamp: true,
        seed,
        num,
        batch,
        controls: ControlRequest::default(),
        guide: GuideOverrides::default(),
        mbr: 1,
        deadline: None,
    }
}

fn texts(precision: Precision, r: &Request) -> Vec<String> {
    common::with_model(precision, |m| generate(m, r).unwrap()).into_iter().map(|g| g.text).collect()
}

#[test]
fn same_seed_same_output_and_different_seeds_differ() {
    let a = texts(Precision::Fp32, &request(20, 7, 3, 3));
    assert_eq!(a, texts(Precision::Fp32, &request(20, 7, 3, 3)));
    assert_ne!(a, texts(Precision::Fp32, &request(20, 8, 3, 3)));
    assert!(a.iter().all(|t| !t.is_empty()), "empty sentence in {a:?}");
}

#[test]
fn batch_one_and_batch_eight_agree_per_sequence() {
    let one = texts(Precision::Fp32, &request(20, 3, 8, 1));
    let eight = texts(Precision::Fp32, &request(20, 3, 8, 8));
    assert_eq!(one, eight);
    let uneven = texts(Precision::Fp32, &request(20, 3, 8, 3)); // batches of 3, 3, 2
    assert_eq!(one, uneven);
}

#[test]
fn every_budget_from_1_to_200_runs() {
    common::with_model(Precision::Fp32, |m| {
        for steps in 1..=200 {
            let out = generate(m, &request(steps, steps as u64, 1, 1)).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].timing.steps, steps);
            assert_eq!(out[0].ids.len(), m.manifest.model.seq_len);
        }
    });
}

#[test]
fn ddim_eta_zero_is_deterministic_and_eta_one_is_not_ddim_zero() {
    let ddim = |eta, seed| Request { method: Method::Ddim { eta }, ..request(20, seed, 2, 2) };
    let a = texts(Precision::Fp32, &ddim(0.0, 1));
    assert_eq!(a, texts(Precision::Fp32, &ddim(0.0, 1)));
    assert_ne!(a, texts(Precision::Fp32, &ddim(1.0, 1)));
}

#[test]
fn fp16_generates_from_the_fp16_graph() {
    let out = common::with_model(Precision::Fp16, |m| {
        assert_eq!(m.denoiser.precision(), Precision::Fp16);
        generate(m, &request(20, 0, 2, 2)).unwrap()
    });
    assert!(out.iter().all(|g| !g.text.is_empty() && g.tokens.len() <= 64));
}

#[test]
fn out_of_range_requests_are_refused() {
    common::with_model(Precision::Fp32, |m| {
        let t = m.manifest.diffusion.t;
        for (r, expected) in [
            (request(0, 0, 1, 1), RequestError::Steps { got: 0, max: t }),
            (request(t + 1, 0, 1, 1), RequestError::Steps { got: t + 1, max: t }),
            (request(10, 0, 0, 1), RequestError::Zero { what: "num" }),
            (request(10, 0, 1, 0), RequestError::Zero { what: "batch" }),
            (Request { method: Method::Ddim { eta: 1.5 }, ..request(10, 0, 1, 1) }, RequestError::Eta(1.5)),
        ] {
            match generate(m, &r) {
                Err(GenerateError::Request(e)) => assert_eq!(e, expected),
                other => panic!("expected {expected:?}, got {:?}", other.map(|g| g.len())),
            }
        }
    });
}

#[test]
fn mbr_returns_one_of_its_samples_per_output() {
    let plain = texts(Precision::Fp32, &request(10, 4, 6, 6));
    let mbr = Request { mbr: 3, num: 2, ..request(10, 4, 2, 6) };
    let chosen = texts(Precision::Fp32, &mbr);
    assert_eq!(chosen.len(), 2);
    assert!(plain[..3].contains(&chosen[0]) && plain[3..].contains(&chosen[1]), "{chosen:?} not in {plain:?}");
}
