//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`).
//!
//! Resolution order: `--ort-lib` / `ORT_DYLIB_PATH`, then next to the `dlm` binary, then the
//! copy `scripts/setup.sh` placed in this checkout's `.ort/` (path recorded at build time).

use std::ffi::{c_char, c_int, CStr};
use std::path::{Path, PathBuf};

use ort::environment::Environment;

use crate::error::LoadError;

pub const LIB_NAME: &str = "libonnxruntime.so";
const HINT: &str = "install it with `bash scripts/setup.sh` (copies it from the pinned PyPI `onnxruntime` wheel), \
or point --ort-lib / ORT_DYLIB_PATH at libonnxruntime.so (onnxruntime/capi/ inside `pip install onnxruntime`; \
onnxruntime-gpu for CUDA/TensorRT)";

/// The places searched, in order, when no explicit path is given.
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        out.push(dir.join(LIB_NAME));
    }
    if let Some(dir) = option_env!("DLM_ORT_DIR") {
        out.push(Path::new(dir).join(LIB_NAME));
    }
    out
}

pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, LoadError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(LoadError::OrtLibrary(format!(
                "{} (from --ort-lib / ORT_DYLIB_PATH) does not exist; {HINT}",
                path.display()
            )))
        };
    }
    let searched = candidates();
    searched.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let list: Vec<_> = searched.iter().map(|p| p.display().to_string()).collect();
        LoadError::OrtLibrary(format!("{LIB_NAME} not found (looked in: {}); {HINT}", list.join(", ")))
    })
}

/// The ONNX Runtime library in use and the environment built on it.
pub struct OrtRuntime {
    pub library: PathBuf,
    pub environment: Environment,
}

impl OrtRuntime {
    /// Load the library (once per process) and create the environment, with one intra-op
    /// thread pool of `threads` threads (0: ONNX Runtime decides) shared by every session:
    /// per-session pools (denoiser plus a guidance graph per control) spun against each other
    /// and made guided steps slower.
    pub fn load(explicit: Option<&Path>, threads: usize) -> Result<Self, LoadError> {
        let library = resolve(explicit)?;
        let library = library.canonicalize().unwrap_or(library);
        let builder = ort::init_from(&library).map_err(|e| LoadError::OrtLibrary(format!("{e}; {HINT}")))?;
        let pool = ort::environment::GlobalThreadPoolOptions::default()
            .with_intra_threads(threads)
            .and_then(|p| p.with_inter_threads(1))
            .map_err(|e| LoadError::OrtLibrary(format!("thread pool options: {e}")))?;
        let environment =
            builder.with_name("dlm").with_global_thread_pool(pool).build().map_err(|e| {
                LoadError::OrtLibrary(format!("{}: cannot create an environment: {e}", library.display()))
            })?;
        Ok(Self { library, environment })
    }

    /// The build string of the loaded library (version, commit).
    pub fn build_info(&self) -> String {
        ort::info().to_string()
    }

    /// Execution providers this library build offers (e.g. CPUExecutionProvider, CUDAExecutionProvider).
    pub fn available_providers(&self) -> Vec<String> {
        let api = ort::api();
        let mut names: *mut *mut c_char = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: plain C API call with out-pointers; the list is released below.
        let status = unsafe { (api.GetAvailableProviders)(&mut names, &mut count) };
        if !status.0.is_null() {
            unsafe { (api.ReleaseStatus)(status.0) };
            return Vec::new();
        }
        let providers = (0..count.max(0) as usize)
            // SAFETY: ONNX Runtime returned `count` valid NUL-terminated strings.
            .map(|i| unsafe { CStr::from_ptr(*names.add(i)) }.to_string_lossy().into_owned())
            .collect();
        let status = unsafe { (api.ReleaseAvailableProviders)(names, count) };
        if !status.0.is_null() {
            unsafe { (api.ReleaseStatus)(status.0) };
        }
        providers
    }
}
