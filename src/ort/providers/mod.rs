//! Where sessions run and with which options ([`Device`], [`SessionOptions`]): the GPU
//! execution providers and their options. `--device tensorrt` registers TensorRT and
//! then CUDA, for the nodes TensorRT does not take (as ONNX Runtime's documentation and Triton
//! do); `--device cuda` registers CUDA. Options reach ONNX Runtime as given, in this order (a
//! later value of a key wins): dlm's own (TensorRT profile shapes, fp16, caches), the manifest's
//! `providers` block, then `--ep-option PROVIDER:KEY=VALUE`. An unknown key is ONNX Runtime's
//! error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bound::{Binding, GRAPH_OPTIONS};
use crate::manifest::{Graph, Manifest, Role, WeightsEntry};

/// Where the graphs run: the CPU, or a GPU through the providers it registers; `Auto` is
/// chosen when the model loads ([`super::auto`]: TensorRT, else CUDA, else the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
    Tensorrt,
    Auto,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Tensorrt => "tensorrt",
            Device::Auto => "auto",
        }
    }

    /// The providers a device registers, in order (`Auto` none until it is chosen).
    pub fn providers(self) -> &'static [Provider] {
        match self {
            Device::Cpu | Device::Auto => &[],
            Device::Cuda => &[Provider::Cuda],
            Device::Tensorrt => &[Provider::Tensorrt, Provider::Cuda],
        }
    }

    /// Whether options of `provider` can apply: it registers it, or (`Auto`) may choose a
    /// device that does.
    pub fn may_use(self, provider: Provider) -> bool {
        self == Device::Auto || self.providers().contains(&provider)
    }
}

/// The providers this build has the code for (the `cuda` and `tensorrt` cargo features; with
/// ort's load-dynamic they need nothing of CUDA at build time, so they are on by default).
pub fn built_in() -> Vec<Provider> {
    let mut out = Vec::new();
    if cfg!(feature = "cuda") {
        out.push(Provider::Cuda);
    }
    if cfg!(feature = "tensorrt") {
        out.push(Provider::Tensorrt);
    }
    out
}

/// A provider that takes options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cuda,
    Tensorrt,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        }
    }

    /// ONNX Runtime's name of it.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::Tensorrt => "TensorrtExecutionProvider",
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "cuda" => Ok(Provider::Cuda),
            "tensorrt" => Ok(Provider::Tensorrt),
            "cpu" => Err("the CPU provider takes no options; providers with options: cuda, tensorrt".into()),
            #[allow(unreachable_patterns)] // with both features every provider is built above
            other => Err(format!("unknown provider {other:?}; providers with options: cuda, tensorrt")),
        }
    }
}

/// How a session is opened: its device and provider options, its fallback and profiling.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub device: Device,
    /// Run on CPU (with a warning) when the requested provider cannot be registered.
    pub allow_fallback: bool,
    /// TensorRT engine and timing caches.
    pub trt_cache: Option<PathBuf>,
    /// Largest batch the TensorRT optimization profile must cover.
    pub max_batch: usize,
    /// Write ONNX Runtime's per-operator profile of each session under this directory.
    pub profile_dir: Option<PathBuf>,
    /// Provider options, applied in order (a later value of a key wins): `--ep-option`s, after
    /// [`SessionOptions::for_model`] the manifest's `providers` defaults before them.
    pub ep_options: Vec<EpOption>,
    /// The model's external weights files (after [`SessionOptions::for_model`]): part of each
    /// graph's TensorRT engine cache key.
    pub weights: Vec<WeightsEntry>,
    /// Where the clamping trick's search runs when the denoiser graph can do it.
    pub clamp_on: ClampOn,
    /// Graph optimisation level and CPU arena of every session.
    pub tuning: super::Tuning,
    /// How the denoiser's inputs and outputs reach its session (CUDA graphs need them bound).
    pub binding: Binding,
}

/// Where the clamping trick's nearest-embedding search runs when the denoiser graph has the
/// clamping head (its `nearest` output); without one, always on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClampOn {
    /// The graph's search: only ids come back for it (on the CPU it costs about what dlm's own
    /// did, docs/benchmarks.md; dlm's would be done beside it).
    #[default]
    Engine,
    /// dlm's own search, every word scored (to compare).
    Host,
}

impl SessionOptions {
    /// These options for the graphs of `manifest`: its provider defaults first, then ours.
    pub fn for_model(&self, manifest: &Manifest) -> Self {
        let mut ep_options = manifest_defaults(&manifest.providers);
        ep_options.extend(self.ep_options.iter().cloned());
        Self { ep_options, weights: manifest.weights.clone(), ..self.clone() }
    }
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            allow_fallback: false,
            trt_cache: None,
            max_batch: 16,
            profile_dir: None,
            ep_options: Vec::new(),
            weights: Vec::new(),
            clamp_on: ClampOn::Engine,
            tuning: super::Tuning::default(),
            binding: Binding::default(),
        }
    }
}

/// One provider option, `PROVIDER:KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpOption {
    pub provider: Provider,
    pub key: String,
    pub value: String,
}

impl std::str::FromStr for EpOption {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "expected PROVIDER:KEY=VALUE, e.g. tensorrt:trt_builder_optimization_level=5";
        let (provider, rest) =
            text.split_once(':').ok_or_else(|| format!("{text:?}: no ':' after a provider; {usage}"))?;
        let (key, value) = rest.split_once('=').ok_or_else(|| format!("{text:?}: no '=' after the key; {usage}"))?;
        if key.is_empty() || key.contains(char::is_whitespace) || text.contains('\0') {
            return Err(format!("{text:?}: the key must be one word; {usage}"));
        }
        let provider = Provider::parse(provider).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(EpOption { provider, key: key.to_string(), value: value.to_string() })
    }
}

/// Options given for a provider that `device` does not register would do nothing, and those
/// that turn CUDA graphs on belong to `--binding cuda-graph`: an error.
pub fn check_options(device: Device, options: &[EpOption]) -> Result<(), String> {
    refuse_graph_options(options)?;
    match options.iter().find(|o| !device.may_use(o.provider)) {
        Some(o) => Err(format!(
            "--ep-option {}:{}={}: --device {} does not use {} (tensorrt uses tensorrt and cuda options, cuda only cuda)",
            o.provider.name(),
            o.key,
            o.value,
            device.name(),
            o.provider.name()
        )),
        None => Ok(()),
    }
}

/// The options that turn CUDA graphs on, given by hand (on the command line or in the
/// manifest), are refused: they belong to `--binding cuda-graph`.
pub fn refuse_graph_options(options: &[EpOption]) -> Result<(), String> {
    let graph_option =
        |o: &&EpOption| GRAPH_OPTIONS.iter().any(|&(provider, key)| provider == o.provider.name() && key == o.key);
    match options.iter().find(graph_option) {
        Some(o) => Err(format!(
            "{}:{}: CUDA graphs replay on the addresses they were captured with, so dlm binds the denoiser's tensors for them: use --binding cuda-graph (DLM_BINDING=cuda-graph), which sets this option on the denoiser's session alone",
            o.provider.name(),
            o.key
        )),
        None => Ok(()),
    }
}

/// Whether `binding` can run on `device`: CUDA graphs are the CUDA provider's (`Auto` may
/// choose it; where it chooses another device they run as fixed binding).
pub fn check_binding(device: Device, binding: Binding) -> Result<(), String> {
    match (binding, device) {
        (Binding::CudaGraph, Device::Cpu | Device::Tensorrt) => Err(format!(
            "--binding cuda-graph: CUDA graphs need --device cuda (or auto choosing it), not {}: {}; use per-run or fixed",
            device.name(),
            if device == Device::Cpu {
                "they are captured on an NVIDIA GPU"
            } else {
                "TensorRT captures one only where it takes every node, and keeps one graph whatever the shape"
            }
        )),
        _ => Ok(()),
    }
}

/// The manifest's `providers` block as options (checked at load: known providers, scalar values).
pub fn manifest_defaults(providers: &BTreeMap<String, BTreeMap<String, serde_json::Value>>) -> Vec<EpOption> {
    let mut out = Vec::new();
    for (name, options) in providers {
        let Ok(provider) = Provider::parse(name) else { continue };
        for (key, value) in options {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => if *b { "1" } else { "0" }.to_string(), // as ort writes them
                other => other.to_string(),
            };
            out.push(EpOption { provider, key: key.clone(), value });
        }
    }
    out
}

/// Where TensorRT keeps `graph`'s engine: a directory per graph content. ONNX Runtime's engine
/// cache key hashes the model's file name, tensor names and library versions, not the weights,
/// so a retrained model (same file names) would otherwise run the old weights' engine. The key
/// is the sha256 of the graph file and of every external weights file it reads.
pub fn engine_cache_dir(cache: &Path, graph: &Graph, weights: &[WeightsEntry]) -> PathBuf {
    let mut content = Sha256::new();
    content.update(graph.sha256.as_bytes());
    for weights in weights.iter().filter(|w| w.graphs.contains(&graph.name)) {
        content.update(weights.sha256.as_bytes());
    }
    let key: String = content.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    cache.join(format!("{}-{key}", graph.name))
}

/// The providers to register for `graph`, in order, or why this build cannot offer them.
#[allow(unused_variables)]
pub fn dispatch(graph: &Graph, opts: &SessionOptions) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, String> {
    if opts.device == Device::Auto {
        return Err(
            "--device auto is chosen when the model loads (SessionOptions::resolved); it reached a session unchosen"
                .into(),
        );
    }
    opts.device.providers().iter().map(|&provider| build(provider, graph, opts)).collect()
}

#[cfg(feature = "cuda")]
fn given(provider: Provider, opts: &SessionOptions) -> impl Iterator<Item = &EpOption> {
    opts.ep_options.iter().filter(move |o| o.provider == provider)
}

/// With `--binding cuda-graph` on `--device cuda`, the option that turns CUDA graphs on, for
/// the denoiser's session alone (its tensors are the ones dlm binds).
#[cfg(feature = "cuda")]
fn graph_option(provider: Provider, graph: &Graph, opts: &SessionOptions) -> Option<EpOption> {
    let on = opts.binding == Binding::CudaGraph && graph.role == Role::Denoiser && opts.device == Device::Cuda;
    let &(_, key) = GRAPH_OPTIONS.iter().find(|(name, _)| *name == provider.name() && provider == Provider::Cuda)?;
    on.then(|| EpOption { provider, key: key.into(), value: "1".into() })
}

#[allow(unused_variables)]
fn build(
    provider: Provider,
    graph: &Graph,
    opts: &SessionOptions,
) -> Result<ort::ep::ExecutionProviderDispatch, String> {
    #[cfg(feature = "cuda")]
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;
    match provider {
        #[cfg(feature = "cuda")]
        Provider::Cuda => {
            let cuda = given(provider, opts)
                .chain(&graph_option(provider, graph, opts))
                .fold(ort::ep::CUDA::default(), |ep, o| ep.with_arbitrary_config(&o.key, &o.value));
            Ok(cuda.build().error_on_failure())
        }
        #[cfg(feature = "tensorrt")]
        Provider::Tensorrt => {
            let seq = graph.dynamic_axes.get("seq").map_or(1, |a| a.max);
            let mut trt = ort::ep::TensorRT::default()
                .with_fp16(graph.precision == crate::manifest::Precision::Fp16)
                .with_profile_min_shapes(trt_profile(graph, 1, 1))
                .with_profile_opt_shapes(trt_profile(graph, 1, seq))
                .with_profile_max_shapes(trt_profile(graph, opts.max_batch.max(1), seq));
            if let Some(dir) = &opts.trt_cache {
                let engines = engine_cache_dir(dir, graph, &opts.weights);
                std::fs::create_dir_all(&engines).map_err(|e| format!("cannot create {}: {e}", engines.display()))?;
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(engines.display().to_string())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display().to_string());
            }
            let trt = given(provider, opts)
                .chain(&graph_option(provider, graph, opts))
                .fold(trt, |ep, o| ep.with_arbitrary_config(&o.key, &o.value));
            Ok(trt.build().error_on_failure())
        }
        #[allow(unreachable_patterns)] // with both features every provider is built above
        other => Err(format!(
            "this dlm was built without the `{0}` feature; rebuild with `cargo build --release --features {0}`",
            if other == Provider::Tensorrt { "cuda,tensorrt" } else { "cuda" }
        )),
    }
}

/// TensorRT optimization profile "x:BxLxd,t:B" for min, opt and max shapes.
#[cfg_attr(not(feature = "tensorrt"), allow(dead_code))]
fn trt_profile(graph: &Graph, batch: usize, seq: usize) -> String {
    use crate::manifest::Dim;
    graph
        .inputs
        .iter()
        .map(|input| {
            let dims: Vec<String> = input
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => n.to_string(),
                    Dim::Dynamic(axis) if axis == "batch" => batch.to_string(),
                    Dim::Dynamic(_) => seq.to_string(),
                })
                .collect();
            format!("{}:{}", input.name, dims.join("x"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
