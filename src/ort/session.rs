//! ONNX Runtime sessions: execution providers (CPU, CUDA, TensorRT) and the check of each
//! graph's inputs and outputs against the manifest.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::TensorElementType;

use super::OrtRuntime;
use crate::error::{InferenceError, LoadError};
use crate::manifest::{DType, Dim, Graph, TensorSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
    Tensorrt,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Tensorrt => "tensorrt",
        }
    }
}

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
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, allow_fallback: false, trt_cache: None, max_batch: 16, profile_dir: None }
    }
}

fn base_builder(runtime: &OrtRuntime, opts: &SessionOptions, graph: &Graph) -> ort::Result<SessionBuilder> {
    let mut builder =
        Session::builder(&runtime.environment)?.with_optimization_level(GraphOptimizationLevel::Level3)?;
    if let Some(dir) = &opts.profile_dir {
        builder = builder.with_profiling(dir.join(&graph.name))?;
    }
    Ok(builder)
}

fn cpu_session(runtime: &OrtRuntime, path: &Path, graph: &Graph, opts: &SessionOptions) -> Result<Session, LoadError> {
    base_builder(runtime, opts, graph)
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|error| LoadError::Session { path: path.to_path_buf(), error: Box::new(error) })
}

/// TensorRT optimization profile "x:BxLxd,t:B" for min, opt and max shapes.
#[cfg_attr(not(feature = "tensorrt"), allow(dead_code))]
fn trt_profile(graph: &Graph, batch: usize, seq: usize) -> String {
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

fn provider_session(
    runtime: &OrtRuntime,
    path: &Path,
    graph: &Graph,
    opts: &SessionOptions,
) -> Result<Session, LoadError> {
    let provider = opts.device.name();
    let fail = |reason: String| LoadError::Provider { provider, reason };
    let wanted = match opts.device {
        Device::Cpu => return cpu_session(runtime, path, graph, opts),
        Device::Cuda => "CUDAExecutionProvider",
        Device::Tensorrt => "TensorrtExecutionProvider",
    };
    let dispatch = dispatch_for(graph, opts).map_err(fail)?;
    let offered = runtime.available_providers();
    if !offered.iter().any(|p| p == wanted) {
        return Err(fail(format!(
            "the ONNX Runtime library {} offers only {offered:?}, not {wanted}; use the onnxruntime-gpu build (or JetPack's) via --ort-lib",
            runtime.library.display()
        )));
    }
    base_builder(runtime, opts, graph)
        .and_then(|b| Ok(b.with_execution_providers([dispatch.error_on_failure()])?))
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|e| fail(e.to_string()))
}

/// The execution provider for a GPU device, or why this build cannot offer it.
#[allow(unused_variables)]
fn dispatch_for(graph: &Graph, opts: &SessionOptions) -> Result<ort::ep::ExecutionProviderDispatch, String> {
    match opts.device {
        #[cfg(feature = "cuda")]
        Device::Cuda => Ok(ort::ep::CUDA::default().build()),
        #[cfg(feature = "tensorrt")]
        Device::Tensorrt => {
            let seq = graph.dynamic_axes.get("seq").map_or(1, |a| a.max);
            let mut trt = ort::ep::TensorRT::default()
                .with_fp16(graph.precision == crate::manifest::Precision::Fp16)
                .with_profile_min_shapes(trt_profile(graph, 1, 1))
                .with_profile_opt_shapes(trt_profile(graph, 1, seq))
                .with_profile_max_shapes(trt_profile(graph, opts.max_batch.max(1), seq));
            if let Some(dir) = &opts.trt_cache {
                let dir = dir.display().to_string();
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&dir);
            }
            Ok(trt.build())
        }
        device => Err(format!(
            "this dlm was built without the `{0}` feature; rebuild with `cargo build --release --features {0}`",
            device.name()
        )),
    }
}

/// A session for `graph` on the requested device; with `allow_fallback`, CPU when that fails.
/// Returns the session and the device it really runs on.
pub fn open_session(
    runtime: &OrtRuntime,
    dir: &Path,
    graph: &Graph,
    opts: &SessionOptions,
) -> Result<(Session, Device), LoadError> {
    let path = dir.join(&graph.file);
    let (session, device) = match provider_session(runtime, &path, graph, opts) {
        Ok(session) => (session, opts.device),
        Err(e) if opts.allow_fallback && opts.device != Device::Cpu => {
            log::warn!("{e}; --allow-fallback given, running {} on CPU", graph.name);
            (cpu_session(runtime, &path, graph, opts)?, Device::Cpu)
        }
        Err(e) => return Err(e),
    };
    check_signature(&path, graph, &session)?;
    Ok((session, device))
}

fn element_type(dtype: DType) -> TensorElementType {
    match dtype {
        DType::Float32 => TensorElementType::Float32,
        DType::Float16 => TensorElementType::Float16,
        DType::Int64 => TensorElementType::Int64,
    }
}

/// The manifest's declared inputs/outputs must equal what the session reports.
fn check_signature(path: &Path, graph: &Graph, session: &Session) -> Result<(), LoadError> {
    let sides = [("input", &graph.inputs, session.inputs()), ("output", &graph.outputs, session.outputs())];
    for (kind, declared, actual) in sides {
        let mismatch = |what: String| LoadError::Invalid { path: path.to_path_buf(), what };
        let actual_names: Vec<&str> = actual.iter().map(|o| o.name()).collect();
        let declared_names: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
        if actual_names != declared_names {
            return Err(mismatch(format!("graph {kind}s {actual_names:?}, manifest declares {declared_names:?}")));
        }
        for (spec, outlet) in declared.iter().zip(actual) {
            let ty = outlet.dtype().tensor_type();
            let shape: Vec<i64> =
                outlet.dtype().tensor_shape().map(|s| s.iter().copied().collect()).unwrap_or_default();
            if ty != Some(element_type(spec.dtype)) || !shape_matches(spec, &shape) {
                return Err(mismatch(format!(
                    "{kind} {} is {ty:?} {shape:?} in the graph, manifest declares {:?} {:?}",
                    spec.name, spec.dtype, spec.shape
                )));
            }
        }
    }
    Ok(())
}

fn shape_matches(spec: &TensorSpec, shape: &[i64]) -> bool {
    spec.shape.len() == shape.len()
        && spec.shape.iter().zip(shape).all(|(d, &s)| match d {
            Dim::Fixed(n) => s == *n as i64,
            Dim::Dynamic(_) => s < 0,
        })
}

pub fn end_profiling(session: &mut Session, graph: &str) -> Result<PathBuf, InferenceError> {
    let file = session.end_profiling().map_err(super::run_error(graph))?;
    Ok(PathBuf::from(file))
}

/// The values of `x` in logical (row-major) order, borrowed when it is already contiguous.
pub fn contiguous(x: &Array3<f32>) -> std::borrow::Cow<'_, [f32]> {
    match x.as_slice() {
        Some(values) => std::borrow::Cow::Borrowed(values),
        None => std::borrow::Cow::Owned(x.iter().copied().collect()),
    }
}
