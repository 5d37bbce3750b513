//! Sessions opened on first use (`Preload`): what loads at once, what opens when a request
//! needs it, that a lazily opened model answers exactly as one opened at once, and the errors
//! for a preload list naming what the model does not have.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dlm::controls::ControlRequest;
use dlm::engine::generate;
use dlm::manifest::Precision;
use dlm::model::{Model, Preload};
use dlm::ort::SessionOptions;
use dlm::rerank::RerankBy;

/// The model loaded with `preload`, sessions profiled under `dir` (so that the sessions
/// opened so far can be listed: `opened`), and the graphs reported as opened at load.
fn load(preload: &Preload, dir: &Path) -> (Model, Vec<String>) {
    let opts = SessionOptions { profile_dir: Some(dir.to_path_buf()), ..common::session_options() };
    let mut reported = Vec::new();
    let model = Model::load_with(common::runtime(), &common::model_dir(), Precision::Fp32, &opts, preload, &mut |o| {
        reported.push(o.graph.to_string())
    })
    .unwrap();
    (model, reported)
}

/// The graphs whose sessions are open: each writes its profile, `<graph>_<time>.json`, when it ends.
fn opened(model: &mut Model) -> BTreeSet<String> {
    let files: Vec<PathBuf> = model.end_profiling().unwrap();
    let graphs = common::graphs_in_load_order("fp32");
    let graph = |f: &PathBuf| {
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        let named = graphs.iter().find(|g| file.starts_with(&format!("{g}_")));
        named.unwrap_or_else(|| panic!("{file}: a profile of no graph of the model")).clone()
    };
    files.iter().map(graph).collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn pos_request() -> dlm::generate::Request {
    let controls = ControlRequest { pos: Some("DET NOUN VERB ADJ PUNCT".into()), ..ControlRequest::default() };
    dlm::generate::Request { steps: 20, seed: 3, num: 1, controls, ..Default::default() }
}

#[test]
fn only_the_denoiser_opens_until_a_control_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut model, reported) = load(&Preload::Denoiser, tmp.path());
    assert_eq!(reported, ["denoiser.fp32"]);
    let plain = dlm::generate::Request { steps: 10, seed: 1, num: 2, batch: 2, ..Default::default() };
    generate(&mut model, &plain).unwrap();
    assert_eq!(opened(&mut model), names(&["denoiser.fp32"]), "an unguided request opens nothing else");

    let tmp = tempfile::tempdir().unwrap();
    let (mut model, _) = load(&Preload::Denoiser, tmp.path());
    generate(&mut model, &pos_request()).unwrap();
    // one sentence: only the batch-1 bucket of pos
    assert_eq!(opened(&mut model), names(&["denoiser.fp32", "guide_pos.fp32"]));

    let tmp = tempfile::tempdir().unwrap();
    let (mut model, _) = load(&Preload::Denoiser, tmp.path());
    let rerank = dlm::generate::Request { rerank: 2, rerank_by: Some(RerankBy::Fluency), ..pos_request() };
    generate(&mut model, &dlm::generate::Request { controls: ControlRequest::default(), ..rerank }).unwrap();
    assert_eq!(opened(&mut model), names(&["denoiser.fp32", "teacher"]), "rerank by fluency opens the LM");
}

#[test]
fn a_preload_list_opens_those_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut model, reported) = load(&Preload::Only(names(&["content", "teacher"])), tmp.path());
    let expected = ["denoiser.fp32", "guide_content.fp32", "guide_content.b4.fp32", "guide_content.b16.fp32", "teacher"];
    assert_eq!(reported.into_iter().collect::<BTreeSet<_>>(), names(&expected));
    assert_eq!(opened(&mut model), names(&expected));
}

#[test]
fn lazily_opened_guides_answer_as_preloaded_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut lazy, _) = load(&Preload::Denoiser, tmp.path());
    let request = dlm::generate::Request { num: 5, batch: 5, ..pos_request() }; // buckets 4 and 1
    let a: Vec<String> = generate(&mut lazy, &request).unwrap().into_iter().map(|g| g.text).collect();
    let b: Vec<String> =
        common::with_model(Precision::Fp32, |m| generate(m, &request).unwrap()).into_iter().map(|g| g.text).collect();
    assert_eq!(a, b);
    assert_eq!(opened(&mut lazy), names(&["denoiser.fp32", "guide_pos.fp32", "guide_pos.b4.fp32"]));
}

#[test]
fn a_preload_list_must_name_controls_of_the_model() {
    let opts = common::session_options();
    for list in ["pos,colour", "teacher,tre"] {
        let preload = Preload::parse(list).unwrap();
        let err = Model::load_with(common::runtime(), &common::model_dir(), Precision::Fp32, &opts, &preload, &mut |_| {})
            .err()
            .expect("an unknown name is refused");
        let text = err.to_string();
        assert!(text.contains("--preload names") && text.contains("content, pos, spans, tree, teacher"), "{text}");
    }
    assert!(Preload::parse(" , ").unwrap_err().contains("all, none"));
    assert_eq!(Preload::parse("none").unwrap(), Preload::Denoiser);
    assert_eq!(Preload::parse("all").unwrap(), Preload::All);
}
