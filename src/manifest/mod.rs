//! `manifest.json`: its schema, parsed with serde (unknown fields rejected); read, range-checked
//! ([`checks`]) and its files checked by sha256 in [`Manifest::load`].

use std::collections::BTreeMap;

use serde::Deserialize;

mod checks;
mod load;

pub use load::{read_regular, verify_sha256};

pub const SCHEMA_VERSION: u64 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// The largest manifest read, in bytes (the bundled one has about 20 KB).
pub const MAX_MANIFEST: u64 = 16 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u64,
    pub model: ModelInfo,
    pub diffusion: DiffusionInfo,
    pub tokenizer: FileEntry,
    pub special_tokens: SpecialTokens,
    pub embeddings: EmbeddingsEntry,
    pub reference: ReferenceEntry,
    pub graphs: Vec<Graph>,
    /// Weights files that several graphs read as ONNX external data (a classifier's guidance
    /// graphs at every batch size and precision).
    #[serde(default)]
    pub weights: Vec<WeightsEntry>,
    /// Per-model defaults of execution provider options, by provider ("cuda", "tensorrt"):
    /// `{"tensorrt": {"trt_builder_optimization_level": 5}}`; `--ep-option` overrides them.
    #[serde(default)]
    pub providers: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Guidance controls (classifier gradient graphs), by name: "pos", "content".
    #[serde(default)]
    pub controls: BTreeMap<String, Control>,
    /// Classifier weights for the PyTorch parity checks; the runtime does not read them.
    #[serde(default)]
    pub controls_reference: Option<ReferenceEntry>,
    /// Teacher LM weights for PyTorch (evaluation only); the runtime does not read them.
    #[serde(default)]
    pub teacher_reference: Option<ReferenceEntry>,
    pub training: serde_json::Value,
    pub export: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub d: usize,
    pub seq_len: usize,
    pub vocab_size: usize,
    pub prediction: Prediction,
    /// The denoiser also reads its previous x0_hat (input `x0_hat_prev`; zeros at the first step).
    #[serde(default)]
    pub self_condition: bool,
    pub architecture: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionInfo {
    pub schedule: Schedule,
    pub schedule_param: ScheduleParam,
    /// T, the number of diffusion steps the model was trained on.
    #[serde(rename = "T")]
    pub num_timesteps: usize,
    pub model_variance: ModelVariance,
    pub alpha_bar: Vec<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleParam {
    pub offset: f64,
    pub max_beta: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceEntry {
    pub file: String,
    pub sha256: String,
    pub what: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsEntry {
    pub file: String,
    pub sha256: String,
    /// The one layout dlm reads: little-endian float32 (any other is refused at parse).
    pub dtype: EmbeddingsDType,
    pub byte_order: ByteOrder,
    pub shape: [usize; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingsDType {
    Float32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    Little,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialTokens {
    pub pad: u32,
    pub unk: u32,
    pub start: u32,
    pub end: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// The label vocabulary: UPOS tags (+ START, END, PAD) or `field=value` pairs.
    pub labels: Vec<String>,
    /// The graph's third input, carrying the control.
    pub input: ControlInput,
    pub defaults: GuidanceDefaults,
    /// Graph names per precision ("fp32", "fp16"): one, or one per batch size (bucket).
    pub graphs: BTreeMap<String, GraphNames>,
}

/// One graph name, or several (the same graph at several fixed batch sizes).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum GraphNames {
    One(String),
    Many(Vec<String>),
}

impl GraphNames {
    pub fn names(&self) -> &[String] {
        match self {
            GraphNames::One(name) => std::slice::from_ref(name),
            GraphNames::Many(names) => names,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsEntry {
    pub file: String,
    pub sha256: String,
    /// The graphs that read it.
    pub graphs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlInput {
    /// The guidance graphs' third input: its name, dtype and shape (checked against theirs).
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuidanceDefaults {
    /// Weight of the fluency term lambda * ||x - mu||^2 / sigma^2.
    pub lambda: f64,
    /// Step size of the Adagrad-style updates.
    pub lr: f64,
    /// K: gradient steps per diffusion step.
    pub steps: usize,
}

/// What the denoiser predicts; dlm samples from x0-predicting models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    X0,
}

/// The noise schedule: abar(s) = 1 - sqrt(s + offset) (Diffusion-LM's "sqrt").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Sqrt,
}

/// The variance of p(x_{t-1} | x_t): the posterior's at t = 1, beta_t after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelVariance {
    FixedLarge,
}

/// What a graph is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Denoiser,
    /// `(x, t, control) -> (loss, grad)` of a control's classifier.
    Guidance,
    /// The autoregressive LM `ids -> logits`: lm-score in `python -m export evaluate`, and
    /// dlm's `rerank` by fluency.
    Teacher,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    /// fp32 inputs and outputs; inside, the transformer blocks' attention and MatMuls in int8
    /// (ONNX Runtime's dynamic quantization): a denoiser for the CPU, beside fp32 guidance graphs.
    Int8,
}

impl Precision {
    /// Its name in the manifest and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }

    /// Whether the graph's float inputs and outputs are fp16 (else fp32).
    pub fn is_half(self) -> bool {
        self == Precision::Fp16
    }

    /// The key of the guidance graphs that go with a denoiser of this precision (an int8
    /// denoiser takes the fp32 ones).
    pub fn guidance_key(self) -> &'static str {
        if self.is_half() {
            "fp16"
        } else {
            "fp32"
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float32,
    Float16,
    Int64,
}

/// A dimension is either fixed or a named dynamic axis.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Dynamic(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AxisRange {
    pub min: usize,
    pub max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    pub name: String,
    pub role: Role,
    /// For guidance graphs: the control they compute the gradient of.
    #[serde(default)]
    pub control: Option<String>,
    pub file: String,
    pub sha256: String,
    pub precision: Precision,
    pub opset: u32,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub dynamic_axes: BTreeMap<String, AxisRange>,
    pub tolerance: serde_json::Value,
    #[serde(default)]
    pub parity: Option<serde_json::Value>,
}

impl Manifest {
    /// The denoiser graph of the given precision.
    pub fn denoiser(&self, precision: Precision) -> Option<&Graph> {
        self.graphs.iter().find(|g| g.role == Role::Denoiser && g.precision == precision)
    }

    pub fn max_batch(&self, graph: &Graph) -> usize {
        graph.dynamic_axes.get("batch").map_or(1, |a| a.max)
    }
}
