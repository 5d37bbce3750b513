//! A loaded model: its manifest, tokenizer and embeddings, and the networks behind the sampler's
//! contracts: the denoiser, the guides by control and (when the model has one) the language
//! model that reranks by fluency. [`Model::load`] ([`load`]) opens a model directory on ONNX
//! Runtime; the tests build one from fakes.

#[cfg(test)]
pub(crate) mod fake;
mod load;
mod precision;

pub use load::{Opening, Preload, SCHEDULE_TOLERANCE, TEACHER};
pub use precision::{Choice as PrecisionChoice, Machine};

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::embeddings::Embeddings;
use crate::error::InferenceError;
use crate::manifest::{Manifest, Precision};
use crate::rerank::LanguageModel;
use crate::sampler::{Denoiser, Guide};
use crate::schedule::FullSchedule;
use crate::text::Vocab;

pub struct Model {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub vocab: Vocab,
    pub embeddings: Embeddings,
    /// The training schedule, computed once (each request respaces it).
    pub schedule: FullSchedule,
    pub denoiser: Box<dyn Denoiser + Send>,
    /// The guides by control name, in the same precision as the denoiser.
    pub guides: BTreeMap<String, Box<dyn Guide + Send>>,
    /// The autoregressive LM of role `teacher` (`rerank` by fluency), if the model has one.
    pub teacher: Option<Box<dyn LanguageModel + Send>>,
    /// The denoiser's precision (`auto` resolved).
    pub precision: Precision,
    /// Where the denoiser runs: the execution provider's name ("cpu", "cuda", "tensorrt").
    pub provider: &'static str,
}

impl Model {
    /// Finish the profiles of the denoiser, every guide and the language model (sessions
    /// opened with `profile_dir`; those never opened have none): their files, the denoiser's
    /// first, then the guides' in name order, then the language model's.
    pub fn end_profiling(&mut self) -> Result<Vec<PathBuf>, InferenceError> {
        let mut files = self.denoiser.end_profiling()?;
        for guide in self.guides.values_mut() {
            files.extend(guide.end_profiling()?);
        }
        if let Some(teacher) = self.teacher.as_mut() {
            files.extend(teacher.end_profiling()?);
        }
        Ok(files)
    }

    /// Where control `name`'s guide sits in [`Model::engines`]'s list.
    pub fn guide_index(&self, name: &str) -> Option<usize> {
        self.guides.keys().position(|k| k == name)
    }

    /// The denoiser, the guides (in [`Model::guide_index`] order) and the embeddings, borrowed
    /// together for [`crate::sampler::Batch::iterate`].
    pub fn engines(&mut self) -> (&mut dyn Denoiser, Vec<&mut dyn Guide>, &Embeddings) {
        let guides = self.guides.values_mut().map(|g| &mut **g as &mut dyn Guide).collect();
        (&mut *self.denoiser, guides, &self.embeddings)
    }

    pub fn max_batch(&self) -> usize {
        self.manifest.denoiser(self.precision).map_or(1, |g| self.manifest.max_batch(g))
    }
}
