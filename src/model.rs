//! A model directory, loaded and checked: manifest, tokenizer, embeddings, denoiser session,
//! guidance sessions and (when the model has one) the language model that reranks by fluency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::embeddings::Embeddings;
use crate::error::LoadError;
use crate::manifest::{Graph, Manifest, Precision, Role, MANIFEST_FILE};
use crate::ort::{GuideSession, OrtDenoiser, OrtRuntime, OrtTeacher, SessionOptions};
use crate::sampler::Guide;
use crate::schedule::{cumprod_alphas, Diffusion};
use crate::text::Vocab;

/// The Rust schedule must reproduce the manifest's alpha_bar table to this tolerance.
pub const SCHEDULE_TOLERANCE: f64 = 1e-9;

pub struct Model {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub vocab: Vocab,
    pub embeddings: Embeddings,
    pub denoiser: OrtDenoiser,
    /// Guidance sessions by control name, in the same precision as the denoiser.
    pub guides: BTreeMap<String, GuideSession>,
    /// The autoregressive LM of role `teacher`, on the CPU (`rerank` by fluency), if exported.
    pub teacher: Option<OrtTeacher>,
}

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
        let guides = open_guides(runtime, dir, &manifest, precision, opts)?;
        let st = manifest.special_tokens;
        let teacher = match manifest.graphs.iter().find(|g| g.role == Role::Teacher) {
            Some(graph) => Some(OrtTeacher::open(runtime, dir, graph, opts, (st.start, st.end))?),
            None => None,
        };
        Ok(Self { dir: dir.to_path_buf(), manifest, vocab, embeddings, denoiser, guides, teacher })
    }

    /// Finish ONNX Runtime's profiles of every session (opened with `profile_dir`): their files.
    pub fn end_profiling(&mut self) -> Result<Vec<PathBuf>, crate::error::InferenceError> {
        let mut files = vec![self.denoiser.end_profiling()?];
        for guide in self.guides.values_mut() {
            files.extend(guide.end_profiling()?);
        }
        Ok(files)
    }

    /// Where control `name`'s guide sits in [`Model::engines`]'s list.
    pub fn guide_index(&self, name: &str) -> Option<usize> {
        self.guides.keys().position(|k| k == name)
    }

    /// The denoiser, the guides (in [`Model::guide_index`] order) and the embeddings, borrowed
    /// together for [`crate::sampler::Batch::iterate`].
    pub fn engines(&mut self) -> (&mut OrtDenoiser, Vec<&mut dyn Guide>, &Embeddings) {
        let guides = self.guides.values_mut().map(|g| g as &mut dyn Guide).collect();
        (&mut self.denoiser, guides, &self.embeddings)
    }

    pub fn max_batch(&self) -> usize {
        self.manifest.denoiser(self.denoiser.precision()).map_or(1, |g| self.manifest.max_batch(g))
    }
}

/// One guidance session per control of the manifest, in the denoiser's precision.
fn open_guides(
    runtime: &OrtRuntime,
    dir: &Path,
    manifest: &Manifest,
    precision: Precision,
    opts: &SessionOptions,
) -> Result<BTreeMap<String, GuideSession>, LoadError> {
    let key = if precision == Precision::Fp16 { "fp16" } else { "fp32" };
    let mut guides = BTreeMap::new();
    for (name, control) in &manifest.controls {
        let names = control.graphs.get(key).map(|n| n.names()).unwrap_or_default();
        let graphs: Vec<&Graph> = names.iter().filter_map(|n| manifest.graphs.iter().find(|g| &g.name == n)).collect();
        if graphs.is_empty() || graphs.len() != names.len() {
            return Err(LoadError::Invalid {
                path: dir.join(MANIFEST_FILE),
                what: format!("control {name} names no {key} guidance graph present in graphs"),
            });
        }
        guides.insert(name.clone(), GuideSession::open(runtime, dir, &graphs, control, opts)?);
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
