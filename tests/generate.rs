//! Generation on the bundled model through the real ONNX Runtime: seeds, budgets, batching, fp16.

mod common;

use dlm::controls::ControlRequest;
use dlm::engine::generate;
use dlm::error::{GenerateError, RequestError};
use dlm::generate::{Generated, Request};
use dlm::manifest::Precision;
use dlm::model::Model;
use dlm::ort::{Device, SessionOptions};
use dlm::sampler::Method;

fn request(steps: usize, seed: u64, num: usize, batch: usize) -> Request {
    Request { steps, seed, num, batch, ..Request::default() }
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

/// Every budget 1..=T is checked on the schedule alone (schedule.rs); the real model runs the
/// edge budgets and a few odd ones: each a sentence that starts where the model's do (START),
/// the same again from the same seed.
#[test]
fn a_handful_of_budgets_run_on_the_real_model() {
    common::with_model(Precision::Fp32, |m| {
        let special = m.manifest.special_tokens;
        for steps in [1, 2, 3, 7, 64, 200] {
            let out = generate(m, &request(steps, steps as u64, 1, 1)).unwrap();
            assert_eq!(out.len(), 1);
            let ids = &out[0].ids;
            assert_eq!((ids.len(), ids[0]), (m.manifest.model.seq_len, special.start), "{steps} steps: {ids:?}");
            let again = generate(m, &request(steps, steps as u64, 1, 1)).unwrap();
            assert_eq!(&again[0].ids, ids, "{steps} steps: the same seed, the same sentence");
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
fn fp16_generates_from_the_fp16_graph_close_to_fp32() {
    let ddim = Request { method: Method::Ddim { eta: 0.0 }, ..request(20, 0, 4, 4) };
    let half = common::with_model(Precision::Fp16, |m| {
        assert_eq!(m.precision, Precision::Fp16);
        generate(m, &ddim).unwrap()
    });
    let full = common::with_model(Precision::Fp32, |m| generate(m, &ddim).unwrap());
    let share = agreement(&half, &full);
    assert!(share >= 0.9, "fp16 agrees with fp32 on {:.0} % of positions", 100.0 * share);
}

/// The share of token positions two runs agree on.
fn agreement(a: &[Generated], b: &[Generated]) -> f64 {
    let positions = a.len() * a[0].ids.len();
    let same: usize = a.iter().zip(b).map(|(x, y)| x.ids.iter().zip(&y.ids).filter(|(p, q)| p == q).count()).sum();
    same as f64 / positions as f64
}

#[test]
fn int8_generates_on_the_cpu_close_to_fp32_with_fp32_guidance_and_is_refused_on_a_gpu() {
    let (runtime, dir) = (common::runtime(), common::model_dir());
    let cpu = SessionOptions { device: Device::Cpu, ..common::session_options() };
    let mut int8 = Model::load(runtime, &dir, Precision::Int8, &cpu).unwrap();
    assert_eq!(int8.precision, Precision::Int8);
    let ddim = Request { method: Method::Ddim { eta: 0.0 }, ..request(20, 0, 4, 4) };
    let quantized = generate(&mut int8, &ddim).unwrap();
    let full = common::with_model(Precision::Fp32, |m| generate(m, &ddim).unwrap());
    let share = agreement(&quantized, &full);
    assert!(share >= 0.8, "int8 agrees with fp32 on {:.0} % of positions", 100.0 * share);
    // guidance runs through the fp32 classifier graphs beside the int8 denoiser
    let content = ControlRequest { content: vec!["food=Italian".into()], ..ControlRequest::default() };
    let guided = Request { controls: content, ..request(20, 0, 2, 2) };
    assert_eq!(generate(&mut int8, &guided).unwrap().len(), 2);
    for device in [Device::Cuda, Device::Tensorrt] {
        let gpu = SessionOptions { device, ..common::session_options() };
        let err = Model::load(runtime, &dir, Precision::Int8, &gpu).err().expect("int8 on a GPU is refused");
        assert!(err.to_string().contains("precision int8 is the CPU's"), "{err}");
    }
}

#[test]
fn out_of_range_requests_are_refused() {
    common::with_model(Precision::Fp32, |m| {
        let t = m.manifest.diffusion.num_timesteps;
        for (r, expected) in [
            (request(0, 0, 1, 1), RequestError::Steps { got: 0, max: t }),
            (request(t + 1, 0, 1, 1), RequestError::Steps { got: t + 1, max: t }),
            (request(10, 0, 0, 1), RequestError::Zero { what: "num" }),
            (request(10, 0, 1, 0), RequestError::Zero { what: "batch" }),
            (Request { method: Method::Ddim { eta: 1.5 }, ..request(10, 0, 1, 1) }, RequestError::Eta(1.5)),
            (Request { mbr: 0, ..request(10, 0, 1, 1) }, RequestError::Zero { what: "mbr" }),
            (Request { mbr: 2, rerank: 2, ..request(10, 0, 1, 1) }, RequestError::MbrAndRerank),
            (
                Request { mbr: 2, ..request(10, 0, usize::MAX, 1) },
                RequestError::Samples { num: usize::MAX, per_output: 2, max: dlm::generate::MAX_SAMPLES },
            ),
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

#[test]
fn block_repeats_leaves_no_word_twice_in_a_row_and_no_trigram_twice() {
    let r = Request { block_repeats: true, ..request(50, 0, 8, 8) };
    let out = common::with_model(Precision::Fp32, |m| generate(m, &r).unwrap());
    for g in &out {
        let ids: Vec<u32> = g.ids.iter().copied().filter(|&i| i > 3).collect(); // words only
        assert!(ids.windows(2).all(|w| w[0] != w[1]), "{}", g.text);
        let grams: Vec<&[u32]> = ids.windows(3).collect();
        let unique: std::collections::BTreeSet<&[u32]> = grams.iter().copied().collect();
        assert_eq!(unique.len(), grams.len(), "{}", g.text);
    }
    let plain = texts(Precision::Fp32, &Request { block_repeats: false, ..request(50, 0, 8, 8) });
    assert_ne!(plain, out.iter().map(|g| g.text.clone()).collect::<Vec<_>>(), "blocking changed nothing");
}

/// The bundled denoiser finds each position's nearest word embedding itself (its `nearest`
/// output): taking it (`ClampOn::Engine`, the default) gives the sentences of clamping on the
/// host, whatever the rules (fixed length, infill, repeats blocked, guidance), at either
/// precision.
#[test]
fn clamping_on_the_engine_gives_the_sentences_of_clamping_on_the_host() {
    use dlm::ort::ClampOn;

    let controls = |c: ControlRequest| Request { controls: c, ..request(100, 11, 4, 4) };
    let requests = [
        request(200, 5, 4, 4),
        Request { method: Method::Ddim { eta: 0.0 }, ..request(30, 6, 2, 2) },
        controls(ControlRequest { length: Some(12), ..ControlRequest::default() }),
        controls(ControlRequest { infill: Some("The Eagle is a _ _ near _ .".into()), ..ControlRequest::default() }),
        controls(ControlRequest { content: vec!["food=Italian".into()], ..ControlRequest::default() }),
    ];
    let load = |precision, clamp_on| {
        let opts = SessionOptions { clamp_on, ..common::session_options() };
        Model::load(common::runtime(), &common::model_dir(), precision, &opts).unwrap()
    };
    for precision in [Precision::Fp32, Precision::Fp16] {
        let (mut host, mut engine) = (load(precision, ClampOn::Host), load(precision, ClampOn::Engine));
        for r in &requests {
            let on_host: Vec<String> = generate(&mut host, r).unwrap().into_iter().map(|g| g.text).collect();
            let on_engine: Vec<String> = generate(&mut engine, r).unwrap().into_iter().map(|g| g.text).collect();
            assert_eq!(on_engine, on_host, "{precision:?}, {} steps, {:?}", r.steps, r.controls);
        }
        assert!(host.denoiser.nearest().is_none(), "on the host the sampler scores the words itself");
        assert!(engine.denoiser.nearest().is_some_and(|n| n.k >= 1), "the bundled denoiser has the clamping head");
        assert!(common::with_model(precision, |m| m.denoiser.nearest_on_engine()), "the engine's search by default");
    }
}

/// ONNX Runtime's session settings (graph optimisation level, CPU arena) change the speed, not
/// the sentences: every level and the arena off give the default's.
#[test]
fn session_settings_change_speed_not_sentences() {
    use dlm::ort::{GraphOpt, Tuning};

    let r = request(30, 7, 2, 2);
    let texts_with = |tuning| {
        let opts = SessionOptions { tuning, ..common::session_options() };
        let mut model = Model::load(common::runtime(), &common::model_dir(), Precision::Fp32, &opts).unwrap();
        generate(&mut model, &r).unwrap().into_iter().map(|g| g.text).collect::<Vec<_>>()
    };
    let default = texts_with(Tuning::default());
    for graph_opt in [GraphOpt::Disable, GraphOpt::Basic, GraphOpt::Extended, GraphOpt::All] {
        assert_eq!(texts_with(Tuning { graph_opt, ..Tuning::default() }), default, "{graph_opt:?}");
    }
    assert_eq!(texts_with(Tuning { cpu_arena: false, ..Tuning::default() }), default, "arena off");
}

/// The denoiser's tensors bound at fixed addresses (`--binding fixed`, what CUDA graphs need)
/// give the per-run call's x0_hat and sentences: every precision, batches that shrink as lanes
/// finish, and more shapes than are kept bound at once (the oldest leave and come back).
#[test]
fn fixed_binding_gives_what_per_run_binding_gives() {
    use dlm::ort::Binding;
    use ndarray::Array3;

    let load = |precision, binding| {
        let opts = SessionOptions { binding, ..common::session_options() };
        Model::load(common::runtime(), &common::model_dir(), precision, &opts).unwrap()
    };
    let requests = [request(30, 5, 5, 4), Request { method: Method::Ddim { eta: 0.0 }, ..request(20, 6, 3, 2) }];
    for precision in [Precision::Fp32, Precision::Fp16, Precision::Int8] {
        let (mut per_run, mut fixed) = (load(precision, Binding::PerRun), load(precision, Binding::Fixed));
        for r in &requests {
            let a: Vec<Vec<u32>> = generate(&mut per_run, r).unwrap().into_iter().map(|g| g.ids).collect();
            let b: Vec<Vec<u32>> = generate(&mut fixed, r).unwrap().into_iter().map(|g| g.ids).collect();
            assert_eq!(b, a, "{precision:?}, {} steps, batch {}", r.steps, r.batch);
        }
        let (l, d) = (per_run.manifest.model.seq_len, per_run.manifest.model.d);
        // t in [0, T): the int8 graph looks t's embedding up
        let num_timesteps = per_run.manifest.diffusion.num_timesteps as i64;
        // every shape twice, with other values the second time: a bound input must take them;
        // more shapes than are kept bound, so the oldest leave and come back
        let shapes = dlm::ort::bound::MAX_UNCAPTURED + 2;
        for (pass, batch) in (1..=shapes).map(|b| (0, b)).chain((1..=shapes).map(|b| (1, b))) {
            let x = Array3::from_shape_fn((batch, l, d), |(b, i, j)| ((b * 7 + i * 3 + j + pass) as f32 * 0.37).sin());
            let t: Vec<i64> = (0..batch as i64).map(|b| (100 + 150 * b + 700 * pass as i64) % num_timesteps).collect();
            let prev = Array3::from_shape_fn((batch, l, d), |(b, i, j)| ((b + i + 2 * j + pass) as f32 * 0.11).cos());
            let (mut a, mut b) = (Array3::zeros((batch, l, d)), Array3::zeros((batch, l, d)));
            per_run.denoiser.denoise(&x, &t, Some(&prev), &mut a).unwrap();
            let nearest_a = per_run.denoiser.nearest().map(|n| n.ids.to_vec());
            fixed.denoiser.denoise(&x, &t, Some(&prev), &mut b).unwrap();
            assert_eq!(b, a, "{precision:?}, pass {pass}, batch {batch}: x0_hat");
            let nearest_b = fixed.denoiser.nearest().map(|n| n.ids.to_vec());
            assert_eq!(nearest_b, nearest_a, "{precision:?}, pass {pass}, batch {batch}");
        }
    }
}
