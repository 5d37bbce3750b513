//! The command line: argument structs shared by the subcommands, one module per subcommand.
//! Everything they do lives in the library; these parse, load and print.

pub mod engines;
pub mod generate;
pub mod info;
mod plot;
pub mod profile;
pub mod serve;
mod visual;

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use dlm::controls::{ControlRequest, LengthHold};
use dlm::error::ControlError;
use dlm::model::PrecisionChoice;
use dlm::ort::{Binding, ClampOn, Device, EpOption, GraphOpt, OrtRuntime, SessionOptions, ThreadPool, Tuning};
use dlm::overrides::{GuideOverrides, Setting, LR, STEPS, WEIGHT};

#[derive(Args, Clone)]
pub struct RuntimeArgs {
    /// Model directory (with manifest.json).
    #[arg(long, env = "DLM_MODEL", default_value = "models/e2e")]
    pub model: PathBuf,
    /// Execution provider: cpu, cuda, tensorrt (which registers CUDA after it), or auto:
    /// TensorRT, else CUDA, else the CPU, by what the library and this machine offer (logged;
    /// `dlm info` shows the choice).
    #[arg(long, env = "DLM_DEVICE", value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Graph precision: auto (int8 with one sequence a call on a CPU whose int8 products are
    /// exact, x86-64 VNNI or aarch64 dotprod, when the model ships an int8 denoiser; else fp32:
    /// `dlm info` shows the choice), fp32, fp16 (the denoiser and guidance graphs), int8 (the
    /// CPU's quantized denoiser beside fp32 guidance graphs; docs/generate.md#runtime).
    #[arg(long, env = "DLM_PRECISION", value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
    /// Run on CPU, with a warning, when the requested provider cannot be registered.
    #[arg(long, env = "DLM_ALLOW_FALLBACK", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub allow_fallback: bool,
    /// Path of libonnxruntime.so (default: next to dlm, then the copy scripts/setup.sh made).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads, 0..=256 (0: ONNX Runtime decides, one per core).
    #[arg(long, env = "DLM_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub threads: u16,
    /// Directory for TensorRT engine and timing caches (one engine directory per graph
    /// content); default: $CACHE_DIRECTORY when systemd sets it (CacheDirectory=).
    #[arg(long, env = "DLM_TRT_CACHE")]
    pub trt_cache: Option<PathBuf>,
    /// An execution provider option PROVIDER:KEY=VALUE (cuda or tensorrt), passed to ONNX
    /// Runtime as given, over the manifest's defaults (repeatable; several in one value or in
    /// DLM_EP_OPTION separated by `;`, which a value therefore cannot hold).
    #[arg(long = "ep-option", env = "DLM_EP_OPTION", value_name = "PROVIDER:KEY=VALUE", value_delimiter = ';')]
    pub ep_options: Vec<EpOption>,
    /// Where the clamping trick's nearest-embedding search runs when the denoiser graph can do
    /// it (its `nearest` output): engine, or host (dlm scores every word itself; to compare).
    #[arg(long, env = "DLM_CLAMP_ON", value_enum, default_value_t = ClampOn::Engine)]
    pub clamp_on: ClampOn,
    /// Whether ONNX Runtime's intra-op threads spin while they wait for work (true, false;
    /// with one thread there is no worker to spin).
    #[arg(long, env = "DLM_SPIN", default_value_t = ThreadPool::of(0).spin, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub spin: bool,
    /// ONNX Runtime's graph optimisation level for every session.
    #[arg(long, env = "DLM_GRAPH_OPT", value_enum, default_value_t = Tuning::default().graph_opt)]
    pub graph_opt: GraphOpt,
    /// How the denoiser's tensors reach ONNX Runtime: per-run (given with each call), fixed
    /// (bound once per shape at fixed addresses in the device's memory) or cuda-graph (fixed,
    /// and each shape's calls captured into a CUDA graph and replayed; --device cuda).
    #[arg(long, env = "DLM_BINDING", value_enum, default_value_t = Binding::PerRun)]
    pub binding: Binding,
    /// ONNX Runtime's CPU memory arena (true, false).
    #[arg(long, env = "DLM_CPU_ARENA", default_value_t = Tuning::default().cpu_arena, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub cpu_arena: bool,
}

/// The ONNX Runtime library and its environment, with one intra-op pool as `args` set it.
pub fn runtime(args: &RuntimeArgs) -> anyhow::Result<OrtRuntime> {
    Ok(OrtRuntime::load(args.ort_lib.as_deref(), ThreadPool { threads: args.threads.into(), spin: args.spin })?)
}

pub fn session_options(args: &RuntimeArgs, max_batch: usize) -> anyhow::Result<SessionOptions> {
    dlm::ort::providers::check_options(args.device, &args.ep_options).map_err(anyhow::Error::msg)?;
    dlm::ort::providers::check_binding(args.device, args.binding).map_err(anyhow::Error::msg)?;
    // systemd's CacheDirectory= sets CACHE_DIRECTORY (colon-separated when it names several)
    let systemd_cache = std::env::var_os("CACHE_DIRECTORY")
        .and_then(|dirs| std::env::split_paths(&dirs).next())
        .filter(|dir| !dir.as_os_str().is_empty());
    Ok(SessionOptions {
        device: args.device,
        allow_fallback: args.allow_fallback,
        trt_cache: args.trt_cache.clone().or(systemd_cache),
        max_batch,
        profile_dir: None,
        ep_options: args.ep_options.clone(),
        weights: Vec::new(),
        clamp_on: args.clamp_on,
        tuning: Tuning { graph_opt: args.graph_opt, cpu_arena: args.cpu_arena },
        binding: args.binding,
    })
}

/// The control flags of `dlm generate` and `dlm profile`.
#[derive(Args, Clone, Default)]
pub struct ControlArgs {
    /// POS template, one UPOS tag per word: "PROPN AUX DET ADJ NOUN PUNCT" (fixes the length).
    #[arg(long)]
    pub pos: Option<String>,
    /// A field=value pair the sentence must express, e.g. "food=Italian" (repeatable).
    #[arg(long)]
    pub content: Vec<String>,
    /// Number of words.
    #[arg(long)]
    pub length: Option<usize>,
    /// Which positions a fixed length (--length, --pos, --infill) holds: full (START, END, PAD
    /// after it, words only inside) or ends (START and END only).
    #[arg(long, value_enum, default_value_t = LengthHold::Full)]
    pub length_hold: LengthHold,
    /// Template with `_` for each word to generate: "The Eagle is a _ _ near _ ." (fixed words kept).
    #[arg(long)]
    pub infill: Option<String>,
    /// Span "i,j,LABEL": words i..j (0-based, inclusive) form a phrase of LABEL (NP, PP) (repeatable).
    #[arg(long)]
    pub span: Vec<String>,
    /// Dependency tree, HEAD:LABEL per word (heads 1-based, 0 for a root labelled ROOT), e.g.
    /// "2:det 3:nsubj 0:ROOT 3:punct" (fixes the length; labels: `dlm info`).
    #[arg(long)]
    pub tree: Option<String>,
    /// Guidance steps K per diffusion step: K for all controls or CONTROL=K (repeatable; default: the manifest's, 3).
    #[arg(long, value_name = "[CONTROL=]K")]
    pub guide_steps: Vec<String>,
    /// Fluency weight lambda of ||x - mu||^2 / sigma^2, for all or CONTROL=LAMBDA (default: the manifest's per control).
    #[arg(long, value_name = "[CONTROL=]LAMBDA")]
    pub guide_lambda: Vec<String>,
    /// Guidance step size, for all or CONTROL=LR (default: the manifest's per control).
    #[arg(long, value_name = "[CONTROL=]LR")]
    pub guide_lr: Vec<String>,
    /// Weight of a control's loss in the sum, for all or CONTROL=W (default 1).
    #[arg(long, value_name = "[CONTROL=]W")]
    pub guide_weight: Vec<String>,
}

impl ControlArgs {
    pub fn request(&self) -> ControlRequest {
        ControlRequest {
            pos: self.pos.clone(),
            content: self.content.clone(),
            length: self.length,
            length_hold: self.length_hold,
            infill: self.infill.clone(),
            spans: self.span.clone(),
            tree: self.tree.clone(),
        }
    }

    pub fn guide(&self) -> Result<GuideOverrides, ControlError> {
        Ok(GuideOverrides {
            steps: Setting::parse("--guide-steps", &self.guide_steps, STEPS)?,
            lambda: Setting::parse("--guide-lambda", &self.guide_lambda, WEIGHT)?,
            lr: Setting::parse("--guide-lr", &self.guide_lr, LR)?,
            weight: Setting::parse("--guide-weight", &self.guide_weight, WEIGHT)?,
        })
    }

    /// A short label of the controls in use ("none" without any).
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.pos.is_some() {
            parts.push("pos".to_string());
        }
        parts.extend(self.content.iter().map(|c| format!("content {c}")));
        if let Some(n) = self.length {
            parts.push(format!("length {n}"));
        }
        if self.infill.is_some() {
            parts.push("infill".into());
        }
        parts.extend(self.span.iter().map(|s| format!("span {s}")));
        if self.tree.is_some() {
            parts.push("tree".into());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" + ")
        }
    }
}
