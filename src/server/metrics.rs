//! Prometheus metrics (`prometheus-client`, OpenMetrics text): answers by code, histograms of
//! each request's queue, run, denoiser, guidance and host seconds and of its steps, queue depth,
//! active sequences, whether the inference thread is alive, build info, and HTTP connections
//! open and refused per listener. Served at `GET /metrics` and as `{"op": "metrics"}` on the
//! line protocol.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::sampler::Timing;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Listener {
    pub listener: String,
}

/// HTTP connections by listener, counted by the accept loops (http/accept.rs) from the moment
/// they bind, before the model loads; registered with the rest when the server starts.
#[derive(Clone, Default, Debug)]
pub struct HttpConnections {
    pub open: Family<Listener, Gauge>,
    pub refused: Family<Listener, Counter>,
}

/// What `dlm_build_info` reports.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Build {
    pub version: String,
    pub provider: String,
    pub precision: String,
    pub onnxruntime: String,
    pub manifest_sha256: String,
}

pub struct Metrics {
    registry: Registry,
    answers: Family<Code, Counter>,
    seconds: [Histogram; 5],
    steps: Histogram,
    pub queue_depth: Gauge,
    pub active_sequences: Gauge,
    pub engine_alive: Gauge,
}

impl Metrics {
    pub fn new(build: Build) -> Self {
        let mut registry = Registry::with_prefix("dlm");
        let answers = Family::<Code, Counter>::default();
        registry.register("requests", "Generate requests answered, by code (ok or the error code)", answers.clone());
        let seconds = [(); 5].map(|()| Histogram::new(exponential_buckets(0.0005, 2.0, 18)));
        let names = [
            ("queue_seconds", "Time from a request's arrival to its first sequence joining the batch"),
            ("run_seconds", "Time from a request's first sequence joining to its answer"),
            ("denoiser_seconds", "A request's share of the denoiser calls"),
            ("guidance_seconds", "A request's share of the guidance graph calls"),
            ("host_seconds", "A request's share of the host work (clamping, step math, rounding)"),
        ];
        for ((name, help), h) in names.iter().zip(&seconds) {
            registry.register(*name, *help, h.clone());
        }
        let steps = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register("request_steps", "Denoising steps per request", steps.clone());
        let (queue_depth, active_sequences, engine_alive) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("queue_depth", "Requests waiting for the inference thread", queue_depth.clone());
        registry.register("active_sequences", "Sequences admitted to the running batch", active_sequences.clone());
        registry.register("engine_alive", "1 while the inference thread runs", engine_alive.clone());
        registry.register(
            "build",
            "Version, provider, precision, ONNX Runtime and manifest of this server",
            Info::new(build),
        );
        Self { registry, answers, seconds, steps, queue_depth, active_sequences, engine_alive }
    }

    /// Add the HTTP listeners' connection counts (once; every listener shares them).
    pub fn register_http(&mut self, connections: &HttpConnections) {
        let open = connections.open.clone();
        self.registry.register("http_connections_open", "HTTP connections open, by listener", open);
        let refused = connections.refused.clone();
        self.registry.register(
            "http_connections_refused",
            "HTTP connections refused with 503 busy at --max-connections, by listener",
            refused,
        );
    }

    /// One generate request answered with `code` ("ok" or an error code).
    pub fn answered(&self, code: &str) {
        self.answers.get_or_create(&Code { code: code.to_string() }).inc();
    }

    /// The times of one request answered ok.
    pub fn timed(&self, queue: Duration, run: Duration, timing: &Timing, steps: usize) {
        let parts = [queue, run, timing.denoiser, timing.guidance, timing.host()];
        for (h, d) in self.seconds.iter().zip(parts) {
            h.observe(d.as_secs_f64());
        }
        self.steps.observe(steps as f64);
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            log::error!("encoding metrics: {e}");
        }
        out
    }
}
