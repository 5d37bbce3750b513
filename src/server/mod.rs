//! `dlm serve`: a long-lived service over byte streams.
//!
//! One inference thread ([`engine`]) owns the model; connections ([`connection`]) read
//! request lines through `embedded_io` and feed it through a bounded queue of [`queue::Job`]s,
//! each answered once through its [`queue::Reply`]; [`run`] starts it all; [`transport`]
//! accepts them on stdin/stdout, a Unix socket, loopback TCP or a serial line; [`notify`]
//! speaks the systemd notify protocol. SIGTERM/SIGINT stop accepting, let the queue drain
//! (up to `drain`), answer the rest `shutting_down`, and return.

pub mod connection;
pub mod engine;
pub mod http;
pub mod lines;
pub mod metrics;
pub mod notify;
pub mod queue;
mod requests;
mod service;
pub mod transport;

pub use crate::engine::Schedule;
pub use service::run;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use metrics::Metrics;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests waiting for the inference thread (the one running is not counted); more get `busy`.
    pub queue: usize,
    /// Longest request line in bytes; longer ones get `too_large`.
    pub max_line: usize,
    /// Default and upper bound of a request's deadline, from its arrival.
    pub timeout: Duration,
    /// After SIGTERM, how long queued requests may still start.
    pub drain: Duration,
    /// Steps when a request names none.
    pub default_steps: usize,
    /// Most samples (num x mbr or num x rerank) in one request.
    pub max_samples: usize,
    /// Most sequences per denoiser call, of any requests (iteration-level batching).
    pub max_batch: usize,
    /// How requests share the inference thread.
    pub schedule: Schedule,
    /// Most simultaneous connections per listener; more are told `busy` and closed.
    pub max_connections: usize,
    /// A connection with nothing to read, answer or write for this long is closed; a client
    /// that reads nothing for this long while its replies wait is dropped.
    pub idle: Duration,
    /// Bytes of replies a connection may have waiting to be written; past it the server stops
    /// reading that client's requests until it reads its answers (backpressure).
    pub max_pending: usize,
}

/// What every thread of the server reads.
pub struct Shared {
    pub config: ServerConfig,
    pub shutdown: Arc<AtomicBool>,
    shutdown_at: OnceLock<Instant>,
    pub queue_depth: AtomicUsize,
    /// Generate requests taken (queued or running) and not yet answered.
    pub outstanding: Arc<AtomicUsize>,
    /// Sequences in the running batch.
    pub active_sequences: AtomicUsize,
    pub engine_alive: AtomicBool,
    /// When the inference thread started its current iteration (None: between iterations).
    pub busy_since: Mutex<Option<Instant>>,
    pub served: AtomicU64,
    started: Instant,
    /// Model facts for health answers: directory, precision, provider.
    about: Value,
    /// What `GET /v1/info` answers: the model, its graphs with sha256 and providers, controls.
    info: Value,
    pub metrics: Metrics,
}

impl Shared {
    pub fn new(config: ServerConfig, shutdown: Arc<AtomicBool>, about: Value, info: Value, metrics: Metrics) -> Self {
        Self {
            config,
            shutdown,
            shutdown_at: OnceLock::new(),
            queue_depth: AtomicUsize::new(0),
            outstanding: Arc::new(AtomicUsize::new(0)),
            active_sequences: AtomicUsize::new(0),
            engine_alive: AtomicBool::new(true),
            busy_since: Mutex::new(None),
            served: AtomicU64::new(0),
            started: Instant::now(),
            about,
            info,
            metrics,
        }
    }

    pub fn stopping(&self) -> bool {
        let stopping = self.shutdown.load(Ordering::SeqCst);
        if stopping {
            self.shutdown_at.get_or_init(Instant::now);
        }
        stopping
    }

    /// Stopping for longer than `grace`: readers stop, whatever their clients still send.
    pub fn stopping_for(&self, grace: Duration) -> bool {
        self.stopping() && self.shutdown_at.get().is_some_and(|at| at.elapsed() >= grace)
    }

    /// Stopping, and the drain time is over: queued requests are no longer started.
    pub fn drain_expired(&self) -> bool {
        self.stopping() && self.shutdown_at.get().is_some_and(|at| at.elapsed() >= self.config.drain)
    }

    /// The metrics' text, the gauges read now.
    pub fn metrics_text(&self) -> String {
        let m = &self.metrics;
        m.queue_depth.set(self.queue_depth.load(Ordering::SeqCst) as i64);
        m.active_sequences.set(self.active_sequences.load(Ordering::SeqCst) as i64);
        m.engine_alive.set(i64::from(self.engine_alive.load(Ordering::SeqCst)));
        m.render()
    }

    pub fn info(&self) -> &Value {
        &self.info
    }

    pub fn health(&self, id: &Value) -> String {
        let status = if self.stopping() { "shutting_down" } else { "serving" };
        let active = self.active_sequences.load(Ordering::SeqCst);
        let busy = active > 0 || self.busy_since.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        json!({
            "id": id,
            "ok": true,
            "health": {
                "status": status,
                "model": self.about,
                "queue_depth": self.queue_depth.load(Ordering::SeqCst),
                "queue_capacity": self.config.queue,
                "busy": busy,
                "active_sequences": active,
                "max_batch": self.config.max_batch,
                "engine_alive": self.engine_alive.load(Ordering::SeqCst),
                "served": self.served.load(Ordering::Relaxed),
                "uptime_s": self.started.elapsed().as_secs_f64(),
            },
        })
        .to_string()
    }
}
