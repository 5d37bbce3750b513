//! Shared by the integration tests: the bundled model and one ONNX Runtime per process.
#![allow(dead_code)]

pub mod server;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use dlm::manifest::Precision;
use dlm::model::Model;
use dlm::ort::OrtRuntime;
use dlm::ort::SessionOptions;

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn model_dir() -> PathBuf {
    repo_path("models/e2e")
}

pub fn runtime() -> &'static OrtRuntime {
    static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| match OrtRuntime::load(None, 1) {
        Ok(rt) => rt,
        Err(e) => panic!("tests need the ONNX Runtime library (run scripts/setup.sh): {e}"),
    })
}

/// One loaded model per precision, shared by the tests of a binary (ORT sessions are heavy).
pub fn with_model<R>(precision: Precision, f: impl FnOnce(&mut Model) -> R) -> R {
    static FP32: OnceLock<Mutex<Model>> = OnceLock::new();
    static FP16: OnceLock<Mutex<Model>> = OnceLock::new();
    let cell = if precision == Precision::Fp32 { &FP32 } else { &FP16 };
    let model = cell.get_or_init(|| {
        let opts = SessionOptions::default();
        Mutex::new(Model::load(runtime(), &model_dir(), precision, &opts).expect("bundled model loads"))
    });
    let mut guard = model.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut guard)
}
