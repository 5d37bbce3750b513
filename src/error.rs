//! Typed errors, one enum per layer: loading a model, running it, configuring a request.

use std::path::PathBuf;

/// Loading the ONNX Runtime library, a model directory or its sessions.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid manifest: {source}")]
    ManifestJson { path: PathBuf, source: serde_json::Error },
    #[error("{path}: manifest schema_version {found}, this dlm reads schema_version {expected}")]
    SchemaVersion { path: PathBuf, found: u64, expected: u64 },
    #[error("{path}: sha256 {actual} does not match the manifest's {expected} (file corrupted or replaced)")]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("ONNX Runtime library: {0}")]
    OrtLibrary(String),
    #[error("{path}: cannot create an ONNX Runtime session: {source}")]
    Session { path: PathBuf, source: ort::Error },
    #[error("execution provider {provider}: {reason}")]
    Provider { provider: &'static str, reason: String },
}

/// A failure while running a graph.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("ONNX Runtime run of {graph} failed: {source}")]
    Run { graph: String, source: ort::Error },
    #[error("{graph}: output {output} has shape {actual:?}, expected {expected:?}")]
    OutputShape { graph: String, output: String, actual: Vec<i64>, expected: Vec<usize> },
}

/// A request the runtime cannot serve as asked (bad user input).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("steps must be between 1 and {max} (the model's T), got {got}")]
    Steps { got: usize, max: usize },
    #[error("eta must be a finite number in [0, 1], got {0}")]
    Eta(f64),
    #[error("{what} must be at least 1, got 0")]
    Zero { what: &'static str },
    #[error("batch size {got} is above the model's maximum of {max}")]
    Batch { got: usize, max: usize },
}

/// Anything the sampler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Control(#[from] crate::controls::ControlError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("deadline passed after {done} of {steps} denoising steps")]
    Deadline { done: usize, steps: usize },
}
