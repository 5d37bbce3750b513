//! Shared by the integration tests: the bundled model and one ONNX Runtime per process.
#![allow(dead_code)]

pub mod http;
pub mod server;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use dlm::manifest::Precision;
use dlm::model::Model;
use dlm::ort::{Binding, Device, EpOption, SessionOptions};
use dlm::ort::{OrtRuntime, ThreadPool};

/// Resident set size of a process, in kB (from /proc).
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn model_dir() -> PathBuf {
    repo_path("models/e2e")
}

/// The graphs of `precision` ("fp32", "fp16") the bundled model loads, in the order `Model::load`
/// opens them, from its manifest.json: the denoiser, each control's (controls in name order),
/// the language model.
pub fn graphs_in_load_order(precision: &str) -> Vec<String> {
    let text = std::fs::read_to_string(model_dir().join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let graphs = manifest["graphs"].as_array().unwrap();
    let named = |role: &str| -> Vec<String> {
        let wanted = |g: &&serde_json::Value| g["role"] == role && (role == "teacher" || g["precision"] == precision);
        graphs.iter().filter(wanted).map(|g| g["name"].as_str().unwrap().to_string()).collect()
    };
    let mut order = named("denoiser");
    let controls: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_value(manifest["controls"].clone()).unwrap();
    for control in controls.values() {
        order.extend(control["graphs"][precision].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()));
    }
    order.extend(named("teacher"));
    // every graph of that precision, once
    let mut all = [named("denoiser"), named("guidance"), named("teacher")].concat();
    all.sort();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, all, "the controls' graph lists name every {precision} graph once");
    order
}

/// The library the tests load: ORT_DYLIB_PATH when set (scripts/gpu-check.sh points it at
/// onnxruntime-gpu's), else the one dlm finds itself.
pub fn runtime() -> &'static OrtRuntime {
    static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
    let library = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    RUNTIME.get_or_init(|| match OrtRuntime::load(library.as_deref(), ThreadPool::of(1)) {
        Ok(rt) => rt,
        Err(e) => panic!("tests need the ONNX Runtime library (run scripts/setup.sh): {e}"),
    })
}

/// The device the shared models run on: DLM_TEST_DEVICE (cpu, cuda, tensorrt, auto; default cpu),
/// with DLM_EP_OPTION, DLM_TRT_CACHE and DLM_BINDING as `dlm` reads them (scripts/gpu-check.sh
/// sets them).
pub fn session_options() -> SessionOptions {
    let device = match std::env::var("DLM_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda,
        Ok("tensorrt") => Device::Tensorrt,
        Ok("auto") => Device::Auto,
        Ok("cpu") | Err(_) => Device::Cpu,
        Ok(other) => panic!("DLM_TEST_DEVICE={other}: allowed cpu, cuda, tensorrt, auto"),
    };
    let ep_options = std::env::var("DLM_EP_OPTION")
        .map(|list| list.split(';').filter(|o| !o.is_empty()).map(|o| o.parse::<EpOption>().unwrap()).collect())
        .unwrap_or_default();
    let trt_cache = std::env::var_os("DLM_TRT_CACHE").map(PathBuf::from);
    let binding = match std::env::var("DLM_BINDING").as_deref() {
        Ok("fixed") => Binding::Fixed,
        Ok("cuda-graph") => Binding::CudaGraph,
        Ok("per-run") | Err(_) => Binding::PerRun,
        Ok(other) => panic!("DLM_BINDING={other}: allowed per-run, fixed, cuda-graph"),
    };
    SessionOptions { device, ep_options, trt_cache, binding, ..SessionOptions::default() }
}

/// One loaded model per precision, shared by the tests of a binary (ORT sessions are heavy).
pub fn with_model<R>(precision: Precision, f: impl FnOnce(&mut Model) -> R) -> R {
    static FP32: OnceLock<Mutex<Model>> = OnceLock::new();
    static FP16: OnceLock<Mutex<Model>> = OnceLock::new();
    static INT8: OnceLock<Mutex<Model>> = OnceLock::new();
    let cell = match precision {
        Precision::Fp32 => &FP32,
        Precision::Fp16 => &FP16,
        Precision::Int8 => &INT8,
    };
    let model = cell.get_or_init(|| {
        let opts = session_options();
        Mutex::new(Model::load(runtime(), &model_dir(), precision, &opts).expect("bundled model loads"))
    });
    let mut guard = model.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut guard)
}
