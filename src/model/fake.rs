//! A model of fakes for the tests of the layers above the sampler (the engine's, the server's):
//! a manifest of four words in two dimensions, T = 100, sequences of four positions and up to
//! 16 per denoiser call, the sampler's recording fakes behind its contracts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;

use super::Model;
use crate::manifest::{Manifest, Precision};
use crate::sampler::fakes::embeddings;
use crate::sampler::{Denoiser, Guide};
use crate::schedule::FullSchedule;
use crate::text::Vocab;

/// The fake model's words, by id: PAD, UNK, START, END stand for themselves.
pub const WORDS: [&str; 4] = ["[PAD]", "[UNK]", "[START]", "[END]"];

/// A model of `denoiser` and `guides` (by control name: each becomes a control with the labels
/// `a`, `b`), no language model.
pub fn model(denoiser: Box<dyn Denoiser + Send>, guides: Vec<(&str, Box<dyn Guide + Send>)>) -> Model {
    let controls: serde_json::Map<String, serde_json::Value> = guides
        .iter()
        .map(|(name, _)| {
            let control = json!({
                "labels": ["a", "b"],
                "input": {"name": "wanted", "dtype": "float32", "shape": [2]},
                "defaults": {"lambda": 0.01, "lr": 0.1, "steps": 1},
                "graphs": {"fp32": format!("guide_{name}.fp32")},
            });
            (name.to_string(), control)
        })
        .collect();
    let manifest = manifest(controls, &[Precision::Fp32]);
    let vocab = Vocab::of_words(&WORDS, manifest.special_tokens);
    Model {
        dir: PathBuf::from("fake"),
        schedule: FullSchedule::of(&manifest.diffusion),
        manifest,
        vocab,
        embeddings: embeddings(),
        denoiser,
        guides: guides.into_iter().map(|(name, g)| (name.to_string(), g)).collect::<BTreeMap<_, _>>(),
        teacher: None,
        precision: Precision::Fp32,
        provider: "fake",
    }
}

/// The fake model's manifest with no controls and a denoiser of each of `precisions`.
pub fn manifest_with_denoisers(precisions: &[Precision]) -> Manifest {
    manifest(serde_json::Map::new(), precisions)
}

fn manifest(controls: serde_json::Map<String, serde_json::Value>, precisions: &[Precision]) -> Manifest {
    let file = json!({"file": "-", "sha256": "-"});
    let denoiser = |p: &Precision| {
        let p = p.name();
        json!({"name": format!("denoiser.{p}"), "role": "denoiser", "file": "-", "sha256": "-", "precision": p,
               "opset": 17, "inputs": [], "outputs": [], "dynamic_axes": {"batch": {"min": 1, "max": 16}},
               "tolerance": null})
    };
    let manifest = json!({
        "schema_version": 1,
        "model": {"d": 2, "seq_len": 4, "vocab_size": 4, "prediction": "x0", "architecture": {}},
        "diffusion": {"schedule": "sqrt", "schedule_param": {"offset": 0.0001, "max_beta": 0.999}, "T": 100,
                      "model_variance": "fixed_large", "alpha_bar": []},
        "tokenizer": file,
        "special_tokens": {"pad": 0, "unk": 1, "start": 2, "end": 3},
        "embeddings": {"file": "-", "sha256": "-", "dtype": "float32", "byte_order": "little", "shape": [4, 2]},
        "reference": {"file": "-", "sha256": "-", "what": "-"},
        "graphs": precisions.iter().map(denoiser).collect::<Vec<_>>(),
        "controls": controls,
        "training": {},
        "export": {},
    });
    serde_json::from_value(manifest).expect("the fake manifest parses")
}
