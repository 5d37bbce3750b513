//! The ONNX Runtime adapter: loading the library ([`runtime`]) of a version it runs on
//! ([`version`]), choosing the device for `--device auto` ([`auto`]), sessions on an execution
//! provider checked against the manifest ([`session`]) with the CPU-side settings of [`tuning`],
//! opened on first use ([`lazy`]), and the graphs behind the sampler's contracts: the denoiser
//! ([`denoiser`], a [`crate::sampler::Denoiser`], its tensors bound at fixed addresses for CUDA
//! graphs when asked: [`bound`]) and the guidance
//! graphs ([`guidance`], [`crate::sampler::Guide`]s), and the language model ([`teacher`], a
//! [`crate::rerank::LanguageModel`]). Nothing else in the crate runs ONNX Runtime.

pub mod auto;
pub mod bound;
pub mod denoiser;
pub mod guidance;
pub mod lazy;
pub mod providers;
pub mod runtime;
pub mod session;
mod staging;
pub mod teacher;
pub mod tuning;
pub mod version;

pub use bound::Binding;
pub use denoiser::OrtDenoiser;
pub use guidance::GuideSession;
pub use providers::{ClampOn, Device, EpOption, Provider, SessionOptions};
pub use runtime::OrtRuntime;
pub use teacher::OrtTeacher;
pub use tuning::{GraphOpt, ThreadPool, Tuning};

use crate::error::InferenceError;

/// An ONNX Runtime failure while running `graph`, as the sampler's error.
fn run_error(graph: &str) -> impl Fn(::ort::Error) -> InferenceError + '_ {
    move |error| InferenceError::Run { graph: graph.to_string(), source: Box::new(error) }
}
