//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`).
//!
//! Resolution order: `--ort-lib` / `ORT_DYLIB_PATH`, then next to the `dlm` binary, then in
//! `../lib` from it (the Debian package's `/opt/dlm/lib`, also when dlm is run as the
//! `/usr/bin/dlm` link: the binary's own path has its links resolved), then the copy
//! `scripts/setup.sh` placed in this checkout's `.ort/` (path recorded at build time). In each
//! directory `libonnxruntime.so`, then the pinned version's `libonnxruntime.so.X.Y.Z`. The
//! library's version is checked before it is used ([`super::version`]).

use std::ffi::{c_char, c_int, CStr};
use std::path::{Path, PathBuf};

use ort::environment::Environment;

use super::ThreadPool;
use crate::error::LoadError;

pub const LIB_NAME: &str = "libonnxruntime.so";
const HINT: &str = "install it with `bash scripts/setup.sh` (copies it from the pinned PyPI `onnxruntime` wheel), \
or point --ort-lib / ORT_DYLIB_PATH at libonnxruntime.so (onnxruntime/capi/ inside `pip install onnxruntime`; \
onnxruntime-gpu for CUDA/TensorRT)";

/// The places searched, in order, when no explicit path is given.
pub fn candidates() -> Vec<PathBuf> {
    // current_exe is /proc/self/exe: the binary itself, whatever link it was started through
    let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
    let mut dirs: Vec<PathBuf> = exe_dir.iter().flat_map(|d| [d.clone(), d.join("../lib")]).collect();
    dirs.extend(option_env!("DLM_ORT_DIR").map(PathBuf::from));
    let pinned = format!("{LIB_NAME}.{}", super::version::TESTED);
    dirs.iter().flat_map(|d| [d.join(LIB_NAME), d.join(&pinned)]).collect()
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

/// What can be checked before the library is mapped: a truncated or foreign file would crash
/// the process (SIGBUS) instead of failing. An ELF64 shared object whose loadable segments
/// and section headers lie inside the file.
pub fn check_library_file(path: &Path) -> Result<(), LoadError> {
    let bad = |why: String| LoadError::OrtLibrary(format!("{}: {why}; {HINT}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let len = bytes.len() as u64;
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u64);
    let u32_at = |o: usize| bytes.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
    let u64_at = |o: usize| bytes.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err(bad("not a 64-bit little-endian ELF file".into()));
    }
    let header = (u64_at(0x20), u16_at(0x36), u16_at(0x38), u64_at(0x28), u16_at(0x3A), u16_at(0x3C));
    let (Some(phoff), Some(phentsize), Some(phnum), Some(shoff), Some(shentsize), Some(shnum)) = header else {
        return Err(bad("truncated ELF header".into()));
    };
    let end = |off: u64, size: u64| off.checked_add(size).filter(|&e| e <= len);
    if end(phoff, phentsize * phnum).is_none() || end(shoff, shentsize * shnum).is_none() {
        return Err(bad(format!("truncated: {len} bytes, its headers reach past the end")));
    }
    for k in 0..phnum {
        let at = (phoff + k * phentsize) as usize;
        let (kind, offset, filesz) = (u32_at(at), u64_at(at + 8), u64_at(at + 32));
        if kind == Some(1) && offset.zip(filesz).and_then(|(o, s)| end(o, s)).is_none() {
            return Err(bad(format!("truncated: {len} bytes, a loadable segment reaches past the end")));
        }
    }
    Ok(())
}

/// The ONNX Runtime library in use and the environment built on it.
#[derive(Clone)]
pub struct OrtRuntime {
    pub library: PathBuf,
    /// Its version string ("1.32.0").
    pub version: String,
    pub environment: Environment,
}

impl OrtRuntime {
    /// Load the library (once per process) and create the environment, with one intra-op
    /// thread pool (`pool`: its threads, 0 for ONNX Runtime to decide, and spinning) shared by every session:
    /// per-session pools (denoiser plus a guidance graph per control) spun against each other
    /// and made guided steps slower.
    pub fn load(explicit: Option<&Path>, pool: ThreadPool) -> Result<Self, LoadError> {
        let library = resolve(explicit)?;
        let library = library.canonicalize().unwrap_or(library);
        check_library_file(&library)?;
        let version = super::version::library_version(&library)?;
        if !super::version::check(&library, &version)? {
            log::warn!(
                "{}: ONNX Runtime {version}, dlm was tested with {} (any 1.x from 1.{} loads)",
                library.display(),
                super::version::TESTED,
                super::version::OLDEST_MINOR
            );
        }
        let builder = ort::init_from(&library).map_err(|e| LoadError::OrtLibrary(format!("{e}; {HINT}")))?;
        let pool = ort::environment::GlobalThreadPoolOptions::default()
            .with_intra_threads(pool.threads)
            .and_then(|p| p.with_inter_threads(1))
            .and_then(|p| p.with_spin_control(pool.spin))
            .map_err(|e| LoadError::OrtLibrary(format!("thread pool options: {e}")))?;
        let environment =
            builder.with_name("dlm").with_global_thread_pool(pool).build().map_err(|e| {
                LoadError::OrtLibrary(format!("{}: cannot create an environment: {e}", library.display()))
            })?;
        Ok(Self { library, version, environment })
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
