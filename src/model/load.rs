//! A model directory loaded on ONNX Runtime and checked: manifest, schedule, tokenizer,
//! embeddings, the denoiser session, the guidance sessions and (when the model has one) the
//! language model that reranks by fluency.

use std::collections::BTreeMap;
use std::path::Path;

use crate::embeddings::Embeddings;
use crate::error::LoadError;
use crate::manifest::{Graph, Manifest, Precision, Role, MANIFEST_FILE};
use crate::ort::{GuideSession, OrtDenoiser, OrtRuntime, OrtTeacher, SessionOptions};
use crate::rerank::LanguageModel;
use crate::sampler::{Denoiser, Guide};
use crate::schedule::{cumprod_alphas, Diffusion};
use crate::text::Vocab;

use super::Model;

/// The Rust schedule must reproduce the manifest's alpha_bar table to this tolerance.
pub const SCHEDULE_TOLERANCE: f64 = 1e-9;

impl Model {
    pub fn load(
        runtime: &OrtRuntime,
        dir: &Path,
        precision: Precision,
        opts: &SessionOptions,
    ) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::Invalid {
                path: dir.to_path_buf(),
                what: "model directory not found (expected a directory with manifest.json, e.g. models/e2e)".into(),
            });
        }
        let manifest = Manifest::load(dir)?;
        check_schedule(&dir.join(MANIFEST_FILE), &manifest)?;
        let vocab = Vocab::load(&dir.join(&manifest.tokenizer.file), manifest.special_tokens)?;
        if vocab.size() != manifest.model.vocab_size {
            return Err(LoadError::Invalid {
                path: dir.join(&manifest.tokenizer.file),
                what: format!("{} tokens, manifest says vocab_size {}", vocab.size(), manifest.model.vocab_size),
            });
        }
        let embeddings = Embeddings::load(dir, &manifest.embeddings)?;
        let opts = &opts.for_model(&manifest);
        let graph = manifest.denoiser(precision).ok_or_else(|| LoadError::Invalid {
            path: dir.join(MANIFEST_FILE),
            what: format!("no denoiser graph of precision {precision:?}"),
        })?;
        let denoiser = OrtDenoiser::open(runtime, dir, graph, opts)?;
        let provider = denoiser.device.name();
        let guides = open_guides(runtime, dir, &manifest, precision, opts)?;
        let st = manifest.special_tokens;
        let teacher: Option<Box<dyn LanguageModel + Send>> =
            match manifest.graphs.iter().find(|g| g.role == Role::Teacher) {
                Some(graph) => Some(Box::new(OrtTeacher::open(runtime, dir, graph, opts, (st.start, st.end))?)),
                None => None,
            };
        let denoiser: Box<dyn Denoiser + Send> = Box::new(denoiser);
        Ok(Self { dir: dir.to_path_buf(), manifest, vocab, embeddings, denoiser, guides, teacher, precision, provider })
    }
}

/// One guidance session per control of the manifest, in the denoiser's precision.
fn open_guides(
    runtime: &OrtRuntime,
    dir: &Path,
    manifest: &Manifest,
    precision: Precision,
    opts: &SessionOptions,
) -> Result<BTreeMap<String, Box<dyn Guide + Send>>, LoadError> {
    let key = if precision == Precision::Fp16 { "fp16" } else { "fp32" };
    let mut guides: BTreeMap<String, Box<dyn Guide + Send>> = BTreeMap::new();
    for (name, control) in &manifest.controls {
        let names = control.graphs.get(key).map(|n| n.names()).unwrap_or_default();
        let graphs: Vec<&Graph> = names.iter().filter_map(|n| manifest.graphs.iter().find(|g| &g.name == n)).collect();
        if graphs.is_empty() || graphs.len() != names.len() {
            return Err(LoadError::Invalid {
                path: dir.join(MANIFEST_FILE),
                what: format!("control {name} names no {key} guidance graph present in graphs"),
            });
        }
        guides.insert(name.clone(), Box::new(GuideSession::open(runtime, dir, &graphs, control, opts)?));
    }
    Ok(guides)
}

fn check_schedule(path: &Path, manifest: &Manifest) -> Result<(), LoadError> {
    let ours = cumprod_alphas(&Diffusion::full_betas(&manifest.diffusion));
    let worst = ours.iter().zip(&manifest.diffusion.alpha_bar).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    if worst > SCHEDULE_TOLERANCE {
        return Err(LoadError::Invalid {
            path: path.to_path_buf(),
            what: format!(
                "schedule {:?}: dlm computes alpha_bar up to {worst:e} away from the manifest's table (allowed {SCHEDULE_TOLERANCE:e})",
                manifest.diffusion.schedule
            ),
        });
    }
    Ok(())
}
