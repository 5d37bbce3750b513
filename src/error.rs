//! Every error of the library, one enum per layer. A leaf: it imports nothing of this crate,
//! and the sampler's [`InferenceError`] names no inference engine (its cause is boxed).
//!
//! A cause is the error's `source()`, not part of its message: `main` prints the chain
//! (`anyhow`'s `{:#}`), the server answers [`chain`] of it.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The cause of an engine failure, whatever the engine.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its causes, each after a ": " (as `anyhow`'s `{:#}` prints them).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Loading the ONNX Runtime library, a model directory or its sessions.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid manifest")]
    ManifestJson { path: PathBuf, source: serde_json::Error },
    #[error("{path}: manifest schema_version {found}, this dlm reads schema_version {expected}")]
    SchemaVersion { path: PathBuf, found: u64, expected: u64 },
    #[error("{path}: sha256 {actual} does not match the manifest's {expected} (file corrupted or replaced)")]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: cannot load tokenizer")]
    Tokenizer { path: PathBuf, source: BoxError },
    #[error("ONNX Runtime library: {0}")]
    OrtLibrary(String),
    #[error(
        "{path}: ONNX Runtime {found} cannot be used: dlm loads ONNX Runtime {oldest} or newer within 1.x \
         (the C API version it was built for) and was tested with {tested}; point --ort-lib / ORT_DYLIB_PATH at such a library"
    )]
    OrtVersion { path: PathBuf, found: String, oldest: String, tested: &'static str },
    #[error("{path}: cannot create an ONNX Runtime session")]
    Session { path: PathBuf, source: BoxError },
    #[error("execution provider {provider}: {reason}")]
    Provider { provider: &'static str, reason: String },
}

/// A failure while running a model graph (the sampler's contracts return it).
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("run of graph {graph} failed")]
    Run { graph: String, source: BoxError },
    #[error("opening graph {graph} on its first use failed")]
    Open { graph: String, source: Box<LoadError> },
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
    #[error("eta applies to sampler \"ddim\" only")]
    EtaWithoutDdim,
    #[error("unknown sampler {0:?}; allowed: \"ddpm\", \"ddim\"")]
    Sampler(String),
    #[error("{what} must be at least 1, got 0")]
    Zero { what: &'static str },
    #[error("batch size {got} is above the model's maximum of {max}")]
    Batch { got: usize, max: usize },
    #[error("num x samples per output (mbr or rerank) = {num} x {per_output} is above the limit of {max}")]
    Samples { num: usize, per_output: usize, max: usize },
    #[error("mbr and rerank each choose among samples: give one of them, not both")]
    MbrAndRerank,
    #[error("rerank by controls scores samples with the control classifiers: it needs pos, content or span (or rerank by fluency)")]
    RerankWithoutClassifier,
    #[error("rerank by fluency needs the model's language model (a graph of role teacher in manifest.json), and this model has none: rerank by controls, or export the model with its teacher (python -m export teacher, export)")]
    RerankWithoutLm,
    #[error("this request would cost {calls} guidance graph calls per batch (guided steps x K x controls and spans); the limit is {max}: ask for fewer steps or spans, or a smaller K")]
    GuidanceCost { calls: usize, max: usize },
    #[error("timeout_ms must be at least 1 (the server caps it at {max}), got {got}")]
    Timeout { got: u64, max: u64 },
    #[error("every (report every k-th step) must be between 1 and the request's steps ({steps}), got {got}")]
    Every { got: usize, steps: usize },
    #[error("every applies to a streaming request only (\"stream\": true)")]
    EveryWithoutStream,
}

/// A control a request asks for that the model cannot give (unknown label, bad template...).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ControlError {
    #[error("this model has no {0} control (manifest has: {1})")]
    Missing(&'static str, String),
    #[error("unknown POS tag {tag:?}; allowed: {allowed}")]
    UnknownTag { tag: String, allowed: String },
    #[error("unknown content {pair:?}; allowed field=value pairs: {allowed}")]
    UnknownContent { pair: String, allowed: String },
    #[error("{what} has {got} words; at most {max} fit in a sequence of {seq_len}")]
    TooLong { what: &'static str, got: usize, max: usize, seq_len: usize },
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("infill template word {word:?} is not in the vocabulary (use _ for a blank)")]
    UnknownWord { word: String },
    #[error("conflicting controls: {0}")]
    Conflict(String),
    #[error(
        "bad span {span:?}: {reason}; expected \"i,j,LABEL\" with 0 <= i <= j < {max_words} and LABEL one of: {labels}"
    )]
    BadSpan { span: String, reason: String, max_words: usize, labels: String },
    #[error("{flag} {value:?}: expected VALUE or CONTROL=VALUE, VALUE {allowed}")]
    BadOverride { flag: &'static str, value: String, allowed: &'static str },
    #[error(
        "bad tree: {reason}; expected HEAD:LABEL per word (heads 1-based, 0 for a root labelled ROOT, no cycles, at most {max_words} words), LABEL one of: {labels}"
    )]
    BadTree { reason: String, max_words: usize, labels: String },
    #[error("{got} spans; at most {max} per request")]
    TooManySpans { got: usize, max: usize },
    #[error("{flag} names control {control:?}, which this request does not guide (guided: {guided})")]
    OverrideUnused { flag: &'static str, control: String, guided: String },
}

/// Anything a generation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("deadline passed after {done} of {steps} denoising steps")]
    Deadline { done: usize, steps: usize },
    #[error("the latent became NaN or infinite at denoising step {step} of {steps} (guidance too strong, or a broken model)")]
    NonFinite { step: usize, steps: usize },
}

/// `dlm profile`'s outputs.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not an ONNX Runtime profile")]
    Json { path: PathBuf, source: serde_json::Error },
}

/// Opening a transport of `dlm serve`.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {what}")]
    Bind { what: String, source: std::io::Error },
    #[error("{addr} is not a loopback address; dlm serve listens on 127.0.0.1 or ::1 unless {flag} is given")]
    NotLoopback { addr: SocketAddr, flag: &'static str },
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{0}: a server is answering on this socket; refusing to take it over")]
    InUse(PathBuf),
    #[error("serial device {path}")]
    Serial { path: String, source: serialport::Error },
}

/// A `--api-key` that no client could send or that guards nothing (the key itself never
/// appears in a message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiKeyError {
    #[error("--api-key (DLM_API_KEY) is empty: give a key, or unset it to serve HTTP without authentication")]
    Empty,
    #[error(
        "--api-key (DLM_API_KEY) has a character an Authorization header cannot carry at position {at}: \
         allowed are visible ASCII characters (0x21..=0x7e), no spaces"
    )]
    NotVisibleAscii { at: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_the_source_and_the_chain_prints_it_once() {
        let gone = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = LoadError::Io { path: "m/manifest.json".into(), source: gone };
        assert_eq!(e.to_string(), "m/manifest.json");
        assert_eq!(chain(&e), "m/manifest.json: gone");
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "m/manifest.json: gone", "as main prints it");
        let run =
            GenerateError::from(InferenceError::Run { graph: "denoiser.fp32".into(), source: "bad shape".into() });
        assert_eq!(chain(&run), "run of graph denoiser.fp32 failed: bad shape", "through a transparent variant");
    }
}
