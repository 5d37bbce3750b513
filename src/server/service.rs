//! The service: the inference thread and the transports started, run until a signal or until
//! every transport ends, then drained.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::Digest;

use super::metrics::{Build, Metrics};
use super::transport::Transport;
use super::{engine, notify, ServerConfig, Shared};
use crate::model::Model;

/// Serve `transports` with `model` until a signal sets `shutdown` or every transport has ended
/// (stdin or a serial line at end of input, with no listener). Returns once all requests read
/// have been answered: Err(why) when a transport failed (stdout closed, a serial line hung up),
/// so that a supervisor restarts the service.
/// `onnxruntime`: the loaded library's build string (for `dlm_build_info`).
pub fn run(
    model: Model,
    config: ServerConfig,
    transports: Vec<Transport>,
    shutdown: Arc<AtomicBool>,
    onnxruntime: &str,
) -> Result<(), String> {
    let about = json!({
        "dir": model.dir.display().to_string(),
        "precision": model.precision.name(),
        "provider": model.provider,
        "controls": model.manifest.controls.keys().collect::<Vec<_>>(),
        "seq_len": model.manifest.model.seq_len,
        "max_steps": model.manifest.diffusion.num_timesteps,
    });
    let provider = model.provider;
    let graphs: Vec<Value> = model
        .manifest
        .graphs
        .iter()
        .map(|g| json!({"name": g.name, "role": format!("{:?}", g.role).to_lowercase(), "sha256": g.sha256}))
        .collect();
    let controls: serde_json::Map<String, Value> =
        model.manifest.controls.iter().map(|(name, c)| (name.clone(), json!({"labels": c.labels}))).collect();
    let info = json!({"version": env!("CARGO_PKG_VERSION"), "model": about, "provider": provider, "graphs": graphs,
                      "controls": controls});
    let manifest = std::fs::read(model.dir.join(crate::manifest::MANIFEST_FILE)).unwrap_or_default();
    let build = Build {
        version: env!("CARGO_PKG_VERSION").into(),
        provider: provider.into(),
        precision: model.precision.name().into(),
        onnxruntime: onnxruntime.into(),
        manifest_sha256: format!("{:x}", sha2::Sha256::digest(&manifest)),
    };
    let mut metrics = Metrics::new(build);
    if let Some(http) = transports.iter().find_map(|t| match t {
        Transport::Http(listener) => Some(&listener.connections),
        _ => None,
    }) {
        metrics.register_http(http);
    }
    let shared = Arc::new(Shared::new(config, shutdown, about, info, metrics));
    let (jobs, queue) = mpsc::sync_channel(shared.config.queue);
    let engine = {
        let shared = shared.clone();
        thread::Builder::new().name("inference".into()).spawn(move || engine::run(model, queue, &shared))
    };
    let engine = match engine {
        Ok(handle) => handle,
        Err(e) => return Err(format!("cannot start the inference thread: {e}")),
    };
    let running: Vec<_> = transports.into_iter().filter_map(|t| t.spawn(shared.clone(), jobs.clone())).collect();
    drop(jobs);
    notify::ready(&format!("serving {} transport(s)", running.len()));
    let watchdog = notify::start_watchdog(shared.clone());
    while !shared.stopping() && !running.iter().all(|h| h.is_finished()) {
        thread::sleep(Duration::from_millis(20));
    }
    if shared.stopping() {
        notify::stopping();
        log::info!("stopping: draining the queue ({} waiting)", shared.queue_depth.load(Ordering::SeqCst));
    }
    let mut failures = Vec::new();
    for handle in running {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failures.push(why),
            Err(_) => failures.push("a transport thread panicked".to_string()),
        }
    }
    shared.shutdown.store(true, Ordering::SeqCst); // ends the watchdog
    let _ = engine.join();
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
