//! A model directory loaded on ONNX Runtime and checked: manifest, schedule, tokenizer,
//! embeddings, the denoiser session, the guidance sessions and (when the model has one) the
//! language model that reranks by fluency. [`Model::load_with`] opens the sessions [`Preload`]
//! names at once, saying which graph it opens as it goes ([`Opening`]: on TensorRT each is an
//! engine build of minutes on first boot); the others open on first use.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use crate::embeddings::Embeddings;
use crate::error::LoadError;
use crate::manifest::{Graph, Manifest, Precision, Role, MANIFEST_FILE};
use crate::ort::{Device, GuideSession, OrtDenoiser, OrtRuntime, OrtTeacher, SessionOptions};
use crate::rerank::LanguageModel;
use crate::sampler::{Denoiser, Guide};
use crate::schedule::FullSchedule;
use crate::text::Vocab;

use super::precision::{Choice, Machine};
use super::Model;

/// The Rust schedule must reproduce the manifest's alpha_bar table to this tolerance.
pub const SCHEDULE_TOLERANCE: f64 = 1e-9;

/// Which sessions [`Model::load_with`] opens at load; the others open on their first use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Preload {
    /// The denoiser only (`dlm generate`, `dlm profile`: a run without controls opens nothing else).
    #[default]
    Denoiser,
    /// Every graph: the guidance graphs of every control and the language model.
    All,
    /// The denoiser and these: control names, and `teacher` for the language model.
    Only(BTreeSet<String>),
}

/// The name [`Preload`] gives the language model.
pub const TEACHER: &str = "teacher";

impl Preload {
    /// `all`, `none` (the denoiser only) or a comma-separated list of controls and `teacher`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "all" => Ok(Self::All),
            "none" => Ok(Self::Denoiser),
            list => {
                let names: BTreeSet<String> =
                    list.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
                if names.is_empty() {
                    return Err(format!(
                        "{text:?}: give all, none or a comma-separated list of controls (and teacher)"
                    ));
                }
                Ok(Self::Only(names))
            }
        }
    }

    /// Whether control `name` (or `teacher`) is opened at load.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            Self::Denoiser => false,
            Self::All => true,
            Self::Only(names) => names.contains(name),
        }
    }

    /// A name that is neither a control of `manifest` nor `teacher` (when it has one).
    fn check(&self, path: &Path, manifest: &Manifest, has_teacher: bool) -> Result<(), LoadError> {
        let Self::Only(names) = self else { return Ok(()) };
        let known = |n: &String| manifest.controls.contains_key(n) || (has_teacher && n == TEACHER);
        match names.iter().find(|n| !known(n)) {
            None => Ok(()),
            Some(unknown) => {
                let mut allowed: Vec<&str> = manifest.controls.keys().map(String::as_str).collect();
                allowed.extend(has_teacher.then_some(TEACHER));
                Err(LoadError::Invalid {
                    path: path.to_path_buf(),
                    what: format!(
                        "--preload names {unknown:?}, which this model does not have; allowed: all, none or a list of {}",
                        allowed.join(", ")
                    ),
                })
            }
        }
    }
}

/// A graph [`Model::load_with`] is about to open: the `index`-th (from 1) of the `of`
/// graphs this model loads, on `device`. Shown as "engine 3/11: guide_pos.b4.fp32" on
/// TensorRT (whose engine it builds or reads from its cache), "session 3/11: ..." elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening<'a> {
    pub index: usize,
    pub of: usize,
    pub graph: &'a str,
    pub device: Device,
}

impl fmt::Display for Opening<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.device == Device::Tensorrt { "engine" } else { "session" };
        write!(f, "{kind} {}/{}: {}", self.index, self.of, self.graph)
    }
}

/// Counts the graphs opened and tells `report` of each before it opens.
struct Progress<'r> {
    opened: usize,
    of: usize,
    report: &'r mut dyn FnMut(&Opening<'_>),
}

impl Progress<'_> {
    fn opening(&mut self, graph: &Graph, device: Device) {
        self.opened = self.opened.saturating_add(1);
        (self.report)(&Opening { index: self.opened, of: self.of, graph: &graph.name, device });
    }
}

impl Model {
    /// The model with every session opened ([`Preload::All`]).
    pub fn load(
        runtime: &OrtRuntime,
        dir: &Path,
        precision: impl Into<Choice>,
        opts: &SessionOptions,
    ) -> Result<Self, LoadError> {
        Self::load_with(runtime, dir, precision, opts, &Preload::All, &mut |_| {})
    }

    /// The model with the sessions `preload` names opened now, calling `report` before each:
    /// the denoiser, each control's guidance graphs (controls in name order), then the
    /// language model. The others open on first use. `precision` auto is resolved once the
    /// device is ([`Choice::resolve`]); [`Model::precision`] is the one loaded.
    pub fn load_with(
        runtime: &OrtRuntime,
        dir: &Path,
        precision: impl Into<Choice>,
        opts: &SessionOptions,
        preload: &Preload,
        report: &mut dyn FnMut(&Opening<'_>),
    ) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::Invalid {
                path: dir.to_path_buf(),
                what: "model directory not found (expected a directory with manifest.json, e.g. models/e2e)".into(),
            });
        }
        let manifest = Manifest::load(dir)?;
        let schedule = FullSchedule::of(&manifest.diffusion);
        check_schedule(&dir.join(MANIFEST_FILE), &manifest, &schedule)?;
        let vocab = Vocab::load(&dir.join(&manifest.tokenizer.file), manifest.special_tokens)?;
        if vocab.size() != manifest.model.vocab_size {
            return Err(LoadError::Invalid {
                path: dir.join(&manifest.tokenizer.file),
                what: format!("{} tokens, manifest says vocab_size {}", vocab.size(), manifest.model.vocab_size),
            });
        }
        let embeddings = Embeddings::load(dir, &manifest.embeddings)?;
        let opts = &opts.for_model(&manifest).resolved(runtime); // --device auto chosen here
        let precision = precision.into().resolve(&manifest, Machine::here(opts.device, opts.max_batch));
        if precision == Precision::Int8 && opts.device != Device::Cpu {
            return Err(LoadError::Provider {
                provider: opts.device.name(),
                reason: "precision int8 is the CPU's (dynamic quantization, whose kernels only the CPU provider has); \
                         use --device cpu, or --precision fp32 or fp16 on the GPU"
                    .into(),
            });
        }
        if precision == Precision::Int8 && opts.max_batch > 1 {
            log::warn!(
                "precision int8 with up to {} sequences a call: its activations are quantized with one scale per call, \
                 so a sentence depends on the sequences batched with it (fp32's do not; --precision auto picks fp32 here)",
                opts.max_batch
            );
        }
        let graph = manifest.denoiser(precision).ok_or_else(|| {
            let shipped = manifest.graphs.iter().filter(|g| g.role == Role::Denoiser).map(|g| g.precision.name());
            LoadError::Invalid {
                path: dir.join(MANIFEST_FILE),
                what: format!(
                    "no denoiser graph of precision {} (the model has: {}; --precision auto picks one of them)",
                    precision.name(),
                    shipped.collect::<Vec<_>>().join(", ")
                ),
            }
        })?;
        let teacher = manifest.graphs.iter().find(|g| g.role == Role::Teacher);
        preload.check(&dir.join(MANIFEST_FILE), &manifest, teacher.is_some())?;
        let teacher_now = teacher.is_some() && preload.includes(TEACHER);
        let guide_graphs = manifest
            .controls
            .iter()
            .filter(|(name, _)| preload.includes(name))
            .map(|(_, c)| c.graphs.get(precision.guidance_key()).map_or(0, |n| n.names().len()));
        let of = guide_graphs.fold(1 + usize::from(teacher_now), usize::saturating_add);
        let mut progress = Progress { opened: 0, of, report };
        progress.opening(graph, opts.device);
        let denoiser = OrtDenoiser::open(runtime, dir, graph, opts)?;
        let provider = denoiser.device.name();
        let guides = open_guides(runtime, dir, &manifest, precision, opts, preload, &mut progress)?;
        let st = manifest.special_tokens;
        let teacher: Option<Box<dyn LanguageModel + Send>> = match teacher {
            Some(graph) => {
                if teacher_now {
                    progress.opening(graph, Device::Cpu); // the language model runs on the CPU
                }
                Some(Box::new(OrtTeacher::open(runtime, dir, graph, opts, (st.start, st.end), teacher_now)?))
            }
            None => None,
        };
        let denoiser: Box<dyn Denoiser + Send> = Box::new(denoiser);
        let dir = dir.to_path_buf();
        Ok(Self { dir, manifest, vocab, embeddings, schedule, denoiser, guides, teacher, precision, provider })
    }
}

/// One guidance session per control of the manifest, in the denoiser's precision; the graphs
/// of the controls `preload` names opened now.
fn open_guides(
    runtime: &OrtRuntime,
    dir: &Path,
    manifest: &Manifest,
    precision: Precision,
    opts: &SessionOptions,
    preload: &Preload,
    progress: &mut Progress<'_>,
) -> Result<BTreeMap<String, Box<dyn Guide + Send>>, LoadError> {
    let key = precision.guidance_key();
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
        let opening = &mut |graph: &Graph| progress.opening(graph, opts.device);
        let now: Option<&mut dyn FnMut(&Graph)> = preload.includes(name).then_some(opening);
        guides.insert(name.clone(), Box::new(GuideSession::open_each(runtime, dir, &graphs, control, opts, now)?));
    }
    Ok(guides)
}

fn check_schedule(path: &Path, manifest: &Manifest, ours: &FullSchedule) -> Result<(), LoadError> {
    let worst =
        ours.alpha_bar().iter().zip(&manifest.diffusion.alpha_bar).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
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
