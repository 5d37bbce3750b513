//! Controls on the bundled model through the real guidance graphs: infilling and length hold
//! positions exactly, POS guidance fixes the length and composes, bad control input is refused.

mod common;

use dlm::controls::ControlRequest;
use dlm::engine::generate;
use dlm::error::{ControlError, GenerateError};
use dlm::generate::{Generated, Request};
use dlm::manifest::Precision;
use dlm::rerank::RerankBy;
use dlm::sampler::Method;

fn request(controls: ControlRequest, num: usize, batch: usize) -> Request {
    Request { steps: 40, seed: 11, num, batch, controls, ..Request::default() }
}

/// The content classifier's target for one field=value pair.
fn content_target(m: &dlm::model::Model, pair: &str) -> dlm::sampler::Target {
    let request = ControlRequest { content: vec![pair.into()], ..Default::default() };
    let plan = dlm::controls::plan(&request, &m.manifest, &m.vocab).unwrap();
    dlm::sampler::Target::Wanted(plan.content_wanted.unwrap())
}

fn run(precision: Precision, r: &Request) -> Vec<Generated> {
    common::with_model(precision, |m| generate(m, r).unwrap())
}

#[test]
fn infill_keeps_every_fixed_word_in_place() {
    let template = "The Eagle is a _ _ _ near _ _ _ .";
    let controls = ControlRequest { infill: Some(template.into()), ..ControlRequest::default() };
    for g in run(Precision::Fp32, &request(controls, 4, 2)) {
        assert_eq!(g.tokens.len(), template.split_whitespace().count(), "{}", g.text);
        for (word, out) in template.split_whitespace().zip(&g.tokens) {
            if word != "_" {
                assert_eq!(word, out, "{}", g.text);
            }
        }
    }
}

#[test]
fn length_is_exact() {
    for n in [5, 12, 30] {
        let controls = ControlRequest { length: Some(n), ..ControlRequest::default() };
        for g in run(Precision::Fp32, &request(controls, 3, 3)) {
            assert_eq!(g.tokens.len(), n, "{}", g.text);
        }
    }
}

#[test]
fn pos_guidance_runs_in_both_precisions_and_chunks_batches() {
    let pos = "PROPN AUX DET ADJ NOUN ADP DET PROPN PROPN PUNCT";
    let controls =
        ControlRequest { pos: Some(pos.into()), content: vec!["area=riverside".into()], ..Default::default() };
    let one = run(Precision::Fp32, &request(controls.clone(), 3, 1));
    let three = run(Precision::Fp32, &request(controls.clone(), 3, 3));
    assert_eq!(one.iter().map(|g| &g.text).collect::<Vec<_>>(), three.iter().map(|g| &g.text).collect::<Vec<_>>());
    for g in one.iter().chain(&run(Precision::Fp16, &request(controls, 2, 2))) {
        assert_eq!(g.tokens.len(), 10, "{}", g.text);
        assert!(g.timing.guidance > std::time::Duration::ZERO);
    }
}

#[test]
fn guidance_changes_the_output() {
    let pos = "PROPN AUX DET ADJ NOUN ADP DET PROPN PROPN PUNCT";
    let guided = ControlRequest { pos: Some(pos.into()), ..ControlRequest::default() };
    let length_only = ControlRequest { length: Some(10), ..ControlRequest::default() };
    let a = run(Precision::Fp32, &request(guided, 2, 2));
    let b = run(Precision::Fp32, &request(length_only, 2, 2));
    assert_ne!(a.iter().map(|g| &g.text).collect::<Vec<_>>(), b.iter().map(|g| &g.text).collect::<Vec<_>>());
}

/// A held-out-like tree (spaCy's parse of "The Eagle is a cheap pub near the river ."), 10 words.
const TREE: &str = "2:det 3:nsubj 0:ROOT 6:det 6:amod 3:attr 6:prep 9:det 7:pobj 3:punct";

#[test]
fn tree_guidance_fixes_the_length_composes_and_lowers_the_tree_loss() {
    let tree = ControlRequest { tree: Some(TREE.into()), ..Default::default() };
    let guided = run(Precision::Fp32, &request(tree.clone(), 2, 2));
    let length_only = run(Precision::Fp32, &request(ControlRequest { length: Some(10), ..Default::default() }, 2, 2));
    for g in guided.iter().chain(&run(Precision::Fp16, &request(tree.clone(), 1, 1))) {
        assert_eq!(g.tokens.len(), 10, "{}", g.text);
        assert!(g.timing.guidance > std::time::Duration::ZERO);
    }
    assert_ne!(
        guided.iter().map(|g| &g.text).collect::<Vec<_>>(),
        length_only.iter().map(|g| &g.text).collect::<Vec<_>>()
    );
    // the classifier's loss at t = 0 on the final latent: guided sentences fit the tree better
    let rerank = |controls: ControlRequest| Request {
        rerank: 2,
        rerank_by: Some(RerankBy::Controls),
        ..request(controls, 1, 2)
    };
    let with_content = ControlRequest { content: vec!["type=pub".into()], ..tree.clone() };
    let out = run(Precision::Fp32, &rerank(with_content));
    assert!(out[0].control_loss.is_some_and(f32::is_finite), "tree and content compose into one loss");
    let unguided = ControlRequest { tree: Some(TREE.into()), ..Default::default() };
    let k0 = Request {
        guide: dlm::generate::GuideOverrides {
            steps: dlm::overrides::Setting { all: Some(0), ..Default::default() },
            ..Default::default()
        },
        ..rerank(unguided.clone())
    };
    let (before, after) = (
        run(Precision::Fp32, &k0)[0].control_loss.unwrap(),
        run(Precision::Fp32, &rerank(unguided))[0].control_loss.unwrap(),
    );
    assert!(after < before, "tree loss with guidance {after} < without {before}");
}

/// A request and the check its error must pass.
type Case = (ControlRequest, fn(&ControlError) -> bool);

#[test]
fn bad_control_input_is_refused_with_what_is_allowed() {
    let long = vec!["NOUN"; 63].join(" ");
    let cases: Vec<Case> = vec![
        (
            ControlRequest { pos: Some("PROPN FOO".into()), ..Default::default() },
            |e| matches!(e, ControlError::UnknownTag { allowed, .. } if allowed.contains("PROPN")),
        ),
        (ControlRequest { pos: Some(long), ..Default::default() }, |e| {
            matches!(e, ControlError::TooLong { max: 62, .. })
        }),
        (
            ControlRequest { content: vec!["food=Martian".into()], ..Default::default() },
            |e| matches!(e, ControlError::UnknownContent { allowed, .. } if allowed.contains("food=Italian")),
        ),
        (ControlRequest { infill: Some("The Zorblax is _".into()), ..Default::default() }, |e| {
            matches!(e, ControlError::UnknownWord { .. })
        }),
        (ControlRequest { infill: Some("_ _ _".into()), length: Some(2), ..Default::default() }, |e| {
            matches!(e, ControlError::Conflict(_))
        }),
        (ControlRequest { pos: Some("NOUN VERB".into()), length: Some(4), ..Default::default() }, |e| {
            matches!(e, ControlError::Conflict(_))
        }),
        (ControlRequest { length: Some(0), ..Default::default() }, |e| matches!(e, ControlError::Empty { .. })),
    ];
    common::with_model(Precision::Fp32, |m| {
        for (controls, expected) in cases {
            match generate(m, &request(controls.clone(), 1, 1)) {
                Err(GenerateError::Control(e)) => assert!(expected(&e), "{controls:?}: unexpected {e}"),
                other => panic!("{controls:?}: expected a control error, got {:?}", other.map(|g| g.len())),
            }
        }
    });
}

#[test]
fn span_guidance_runs_and_bad_spans_are_refused() {
    let controls =
        ControlRequest { spans: vec!["3,6,NP".into(), "7,9,PP".into()], length: Some(12), ..Default::default() };
    for g in run(Precision::Fp32, &request(controls, 2, 2)) {
        assert_eq!(g.tokens.len(), 12, "{}", g.text);
        assert!(g.timing.guidance > std::time::Duration::ZERO);
    }
    common::with_model(Precision::Fp32, |m| {
        for span in ["3,2,NP", "1,5", "1,5,VP", "a,b,NP", "1,70,NP"] {
            let r = request(ControlRequest { spans: vec!["0,1,NP".into(), span.into()], ..Default::default() }, 1, 1);
            match generate(m, &r) {
                Err(GenerateError::Control(ControlError::BadSpan { labels, .. })) => assert!(labels.contains("PP")),
                other => panic!("{span}: expected BadSpan, got {:?}", other.map(|g| g.len())),
            }
        }
    });
}

#[test]
fn pos_guidance_lowers_the_pos_classifier_loss() {
    use std::sync::Arc;

    use dlm::sampler::{sample_all, Course, GuideOptions, GuideTarget, SampleOptions, Target};
    use dlm::schedule::Diffusion;

    let pos = "PROPN AUX DET ADJ NOUN ADP DET PROPN PROPN PUNCT";
    common::with_model(Precision::Fp32, |m| {
        let plan =
            dlm::controls::plan(&ControlRequest { pos: Some(pos.into()), ..Default::default() }, &m.manifest, &m.vocab)
                .unwrap();
        let tags = plan.pos_tags.clone().unwrap();
        let mut final_loss = Vec::new();
        for guided in [false, true] {
            let diffusion = Diffusion::respaced(&m.manifest.diffusion, 50).unwrap();
            let mut course = Course::new(diffusion, SampleOptions { method: Method::Ddpm, clamp: true });
            course.held = plan.held.clone();
            // the target is always there (the final loss is scored), K = 0 leaves it unguided
            let guide = m.guide_index("pos").unwrap();
            course.targets = vec![GuideTarget { guide, target: Target::Tags(tags.clone()), weight: 1.0 }];
            course.guide_options =
                GuideOptions { steps: if guided { 3 } else { 0 }, lr: 0.05, lambda: 0.0005, ..Default::default() };
            let course = Arc::new(course);
            let lanes = (0..4).map(|k| dlm::generate::lane(m, 0, &course, 3, k)).collect();
            let (denoiser, mut guides, embeddings) = m.engines();
            let out = sample_all(lanes, denoiser, &mut guides, embeddings).unwrap();
            final_loss.push(out.iter().map(|(_, s)| s.control_loss.unwrap()).sum::<f32>());
        }
        assert!(final_loss[1] < final_loss[0], "guided pos loss {} !< unguided {}", final_loss[1], final_loss[0]);
    });
}

#[test]
fn rows_with_different_targets_in_one_guidance_call_match_separate_calls() {
    use dlm::sampler::{SequenceNoise, Target};

    common::with_model(Precision::Fp32, |m| {
        let request = ControlRequest { spans: vec!["1,3,NP".into(), "4,6,PP".into()], ..Default::default() };
        let plan = dlm::controls::plan(&request, &m.manifest, &m.vocab).unwrap();
        let spans: Vec<Target> = plan.spans.iter().map(|s| Target::Tags(s.clone())).collect();
        let x = SequenceNoise::new(5, 0..3).x_t(64, 16);
        let t = [100i64, 900, 1700];
        let session = m.guides.get_mut("spans").unwrap();
        let mut run = |targets: Vec<&Target>| {
            let (mut grad, mut loss) = (ndarray::Array3::zeros(x.dim()), vec![0.0; 3]);
            session.grad(&x, &t, &targets, &mut grad, &mut loss).unwrap();
            (loss, grad)
        };
        let (l0, g0) = run(vec![&spans[0]; 3]);
        let (l1, g1) = run(vec![&spans[1]; 3]);
        let (mixed, g) = run(vec![&spans[0], &spans[1], &spans[0]]);
        assert_ne!(l0, l1, "the two spans score differently");
        for (k, expected) in [(0, &l0), (1, &l1), (2, &l0)] {
            assert!((mixed[k] - expected[k]).abs() < 1e-5, "loss {k}: {} vs {}", mixed[k], expected[k]);
            let other = if k == 1 { &g1 } else { &g0 };
            let worst = (&g.index_axis(ndarray::Axis(0), k) - &other.index_axis(ndarray::Axis(0), k))
                .iter()
                .fold(0f32, |w, v| w.max(v.abs()));
            assert!(worst < 1e-5, "grad {k} differs by {worst}");
        }
    });
}

#[test]
fn padded_buckets_give_each_row_what_it_gets_alone() {
    use dlm::ort::{GuideSession, SessionOptions};
    use dlm::sampler::{Guide, SequenceNoise};

    // the content graphs at batch 4 and 16 only: 1..=3 rows are padded to 4, 7 rows to 4 + 4
    common::with_model(Precision::Fp32, |m| {
        let control = &m.manifest.controls["content"];
        let graphs: Vec<_> = m
            .manifest
            .graphs
            .iter()
            .filter(|g| g.name.starts_with("guide_content.b") && g.name.ends_with(".fp32"))
            .collect();
        assert_eq!(graphs.len(), 2, "models/e2e has content graphs at batch 4 and 16");
        let opts = SessionOptions::default();
        let mut padded = GuideSession::open(common::runtime(), &m.dir, &graphs, control, &opts).unwrap();
        let target = content_target(m, "area=riverside");
        let x = SequenceNoise::new(12, 0..7).x_t(64, 16);
        let t: Vec<i64> = (0..7).map(|k| 250 * k).collect();
        for n in [1, 2, 3, 7] {
            let rows = x.slice(ndarray::s![..n, .., ..]).to_owned();
            let run = |session: &mut dyn Guide| {
                let (mut grad, mut loss) = (ndarray::Array3::zeros(rows.dim()), vec![0.0; n]);
                session.grad(&rows, &t[..n], &vec![&target; n], &mut grad, &mut loss).unwrap();
                (loss, grad)
            };
            let (loss, grad) = run(&mut padded);
            let (alone_loss, alone_grad) = run(&mut **m.guides.get_mut("content").unwrap());
            for k in 0..n {
                assert!((loss[k] - alone_loss[k]).abs() <= 1e-5 * alone_loss[k].abs().max(1.0), "{n} rows, row {k}");
            }
            let worst = (&grad - &alone_grad).iter().fold(0f32, |w, v| w.max(v.abs()));
            assert!(worst < 1e-5, "{n} rows: grad differs by {worst}");
        }
    });
}

#[test]
fn any_number_of_rows_gives_each_row_what_it_gets_alone() {
    use dlm::sampler::SequenceNoise;

    // 1, 3, 5, 17 and 21 rows: every bucket (1, 4, 16), padded, and chunks of several buckets
    common::with_model(Precision::Fp32, |m| {
        let target = content_target(m, "food=Italian");
        let x = SequenceNoise::new(11, 0..21).x_t(64, 16);
        let t: Vec<i64> = (0..21).map(|k| 90 * k).collect();
        let session = m.guides.get_mut("content").unwrap();
        let alone: Vec<(f32, ndarray::Array3<f32>)> = (0..21)
            .map(|k| {
                let row = x.slice(ndarray::s![k..k + 1, .., ..]).to_owned();
                let (mut grad, mut loss) = (ndarray::Array3::zeros(row.dim()), vec![0.0]);
                session.grad(&row, &t[k..k + 1], &[&target], &mut grad, &mut loss).unwrap();
                (loss[0], grad)
            })
            .collect();
        for n in [1, 3, 5, 17, 21] {
            let rows = x.slice(ndarray::s![..n, .., ..]).to_owned();
            let (mut grad, mut loss) = (ndarray::Array3::zeros(rows.dim()), vec![0.0; n]);
            session.grad(&rows, &t[..n], &vec![&target; n], &mut grad, &mut loss).unwrap();
            for k in 0..n {
                assert!(
                    (loss[k] - alone[k].0).abs() <= 1e-5 * alone[k].0.abs().max(1.0),
                    "{n} rows, row {k}: loss {} vs {}",
                    loss[k],
                    alone[k].0
                );
                let worst =
                    (&grad.slice(ndarray::s![k..k + 1, .., ..]) - &alone[k].1).iter().fold(0f32, |w, v| w.max(v.abs()));
                assert!(worst < 1e-5, "{n} rows, row {k}: grad differs by {worst}");
            }
        }
    });
}

#[test]
fn rerank_keeps_the_sample_the_classifiers_score_best() {
    let controls = ControlRequest { content: vec!["food=Italian".into()], ..Default::default() };
    let samples = run(Precision::Fp32, &request(controls.clone(), 4, 4));
    let losses: Vec<f32> =
        samples.iter().map(|g| g.control_loss.expect("a guided sample has a control loss")).collect();
    let best = run(Precision::Fp32, &Request { rerank: 4, ..request(controls, 1, 4) });
    let lowest = (0..4).min_by(|&a, &b| losses[a].total_cmp(&losses[b])).unwrap();
    assert_eq!(best[0].text, samples[lowest].text, "losses {losses:?}");
    assert!(run(Precision::Fp32, &request(ControlRequest::default(), 1, 1))[0].control_loss.is_none());
    let unguided = Request {
        rerank: 2,
        rerank_by: Some(RerankBy::Controls),
        ..request(ControlRequest { length: Some(8), ..Default::default() }, 1, 2)
    };
    let refused = common::with_model(Precision::Fp32, |m| generate(m, &unguided).map(|g| g.len()));
    assert!(matches!(refused, Err(GenerateError::Request(dlm::error::RequestError::RerankWithoutClassifier))));
}

/// Rerank by fluency: of the samples a request would draw, the one the bundled language model
/// (teacher.onnx) finds least surprising; by both: the lowest sum of classifier loss and NLL.
#[test]
fn rerank_by_fluency_keeps_the_sample_the_language_model_scores_best() {
    let length = ControlRequest { length: Some(12), ..Default::default() };
    let samples = run(Precision::Fp32, &request(length.clone(), 4, 4));
    let nll = common::with_model(Precision::Fp32, |m| {
        let teacher = m.teacher.as_mut().expect("the bundled model has its language model");
        teacher.mean_nll(&samples.iter().map(|g| g.words.as_slice()).collect::<Vec<_>>()).unwrap()
    });
    assert!(nll.iter().all(|v| v.is_finite() && *v > 0.0), "{nll:?}");
    let best = run(Precision::Fp32, &Request { rerank: 4, ..request(length, 1, 4) });
    let lowest = (0..4).min_by(|&a, &b| nll[a].total_cmp(&nll[b])).unwrap();
    assert_eq!(best[0].text, samples[lowest].text, "nll {nll:?}");
    assert_eq!(best[0].lm_nll, Some(nll[lowest]));
    assert!(samples.iter().all(|g| g.lm_nll.is_none()), "no rerank, no language model call");

    let content = ControlRequest { content: vec!["food=Italian".into()], ..Default::default() };
    let samples = run(Precision::Fp32, &request(content.clone(), 4, 4));
    let both = run(Precision::Fp32, &Request { rerank: 4, rerank_by: Some(RerankBy::Both), ..request(content, 1, 4) });
    let nll = common::with_model(Precision::Fp32, |m| {
        m.teacher.as_mut().unwrap().mean_nll(&samples.iter().map(|g| g.words.as_slice()).collect::<Vec<_>>()).unwrap()
    });
    let sum: Vec<f32> = samples.iter().zip(&nll).map(|(g, n)| g.control_loss.unwrap() + n).collect();
    let lowest = (0..4).min_by(|&a, &b| sum[a].total_cmp(&sum[b])).unwrap();
    assert_eq!(both[0].text, samples[lowest].text, "classifier loss + nll {sum:?}");
}
