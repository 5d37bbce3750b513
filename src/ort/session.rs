//! ONNX Runtime sessions on the execution provider asked for ([`super::providers`]), with CPU
//! as the fallback, and the check of each graph's inputs and outputs against the manifest.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use ndarray::Array3;
use ort::logging::LogLevel;
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use ort::value::TensorElementType;

use super::bound::Binding;
use super::providers::{self, Device, SessionOptions};
use super::OrtRuntime;
use crate::error::{InferenceError, LoadError};
use crate::manifest::{DType, Dim, Graph, Role, TensorSpec};

fn base_builder(runtime: &OrtRuntime, opts: &SessionOptions, graph: &Graph) -> ort::Result<SessionBuilder> {
    let mut builder = opts.tuning.apply(Session::builder(&runtime.environment)?)?;
    if let Some(dir) = &opts.profile_dir {
        builder = builder.with_profiling(dir.join(&graph.name))?;
    }
    if log::log_enabled!(log::Level::Info) {
        // -v: which provider took how many nodes (ONNX Runtime says so at its verbose level,
        // while it partitions the graph); its warnings and errors as ours
        let name = graph.name.clone();
        builder = builder.with_log_level(LogLevel::Verbose)?.with_logger(Arc::new(
            move |level: LogLevel, _category: &str, _id: &str, _at: &str, message: &str| match level {
                LogLevel::Error | LogLevel::Fatal => log::error!("{name}: {message}"),
                LogLevel::Warning => log::warn!("{name}: {message}"),
                _ if message.contains("placed on [") => log::info!("{name}: {}", message.trim()),
                _ => {}
            },
        ))?;
    }
    Ok(builder)
}

fn cpu_session(runtime: &OrtRuntime, path: &Path, graph: &Graph, opts: &SessionOptions) -> Result<Session, LoadError> {
    base_builder(runtime, opts, graph)
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|error| LoadError::Session { path: path.to_path_buf(), source: Box::new(error) })
}

fn provider_session(
    runtime: &OrtRuntime,
    path: &Path,
    graph: &Graph,
    opts: &SessionOptions,
) -> Result<Session, LoadError> {
    let provider = opts.device.name();
    let fail = |reason: String| LoadError::Provider { provider, reason };
    if opts.device == Device::Cpu {
        return cpu_session(runtime, path, graph, opts);
    }
    let dispatch = providers::dispatch(graph, opts).map_err(fail)?;
    let offered = runtime.available_providers();
    for wanted in opts.device.providers().iter().map(|p| p.ort_name()) {
        if !offered.iter().any(|p| p == wanted) {
            return Err(fail(format!(
                "the ONNX Runtime library {} offers only {offered:?}, not {wanted}; use the onnxruntime-gpu build (or JetPack's) via --ort-lib",
                runtime.library.display()
            )));
        }
    }
    base_builder(runtime, opts, graph)
        .and_then(|b| Ok(b.with_execution_providers(dispatch)?))
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|e| fail(e.to_string()))
}

/// A session for `graph` on the requested device; with `allow_fallback`, CPU when that fails,
/// except for a denoiser asked for CUDA graphs (a CPU denoiser is not what was asked for).
/// Returns the session and the device it really runs on.
pub fn open_session(
    runtime: &OrtRuntime,
    dir: &Path,
    graph: &Graph,
    opts: &SessionOptions,
) -> Result<(Session, Device), LoadError> {
    let path = dir.join(&graph.file);
    // options by hand (the manifest's too) that would turn CUDA graphs on for this device: an
    // error, never a fallback (another device's options are not applied at all)
    let applied: Vec<_> =
        opts.ep_options.iter().filter(|o| opts.device.providers().contains(&o.provider)).cloned().collect();
    providers::refuse_graph_options(&applied)
        .map_err(|reason| LoadError::Provider { provider: opts.device.name(), reason })?;
    let graphs = opts.binding == Binding::CudaGraph && graph.role == Role::Denoiser;
    let (session, device) = match provider_session(runtime, &path, graph, opts) {
        Ok(session) => (session, opts.device),
        Err(e) if opts.allow_fallback && opts.device != Device::Cpu && !graphs => {
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
