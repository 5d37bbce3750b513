//! `dlm serve`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use dlm::engine::generate;
use dlm::generate::Request;
use dlm::model::{Model, Preload};
use dlm::overrides::{GuideOverrides, Setting};
use dlm::server::http::{ApiKey, HttpListener, Limits};
use dlm::server::metrics::HttpConnections;
use dlm::server::transport::Transport;
use dlm::server::{self, Schedule, ServerConfig};
use signal_hook::consts::{SIGINT, SIGTERM};

use super::{session_options, RuntimeArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Answer requests on stdin, responses on stdout (ends at end of input).
    #[arg(long, env = "DLM_STDIO", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    stdio: bool,
    /// Listen on TCP at this loopback address, e.g. 127.0.0.1:7878 (repeatable).
    #[arg(long, env = "DLM_TCP", value_delimiter = ',')]
    tcp: Vec<String>,
    /// Allow --tcp on a non-loopback address (no authentication: trusted networks only).
    #[arg(long, env = "DLM_TCP_ANY_ADDRESS", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    tcp_any_address: bool,
    /// Serve HTTP/1.1 at this loopback address, e.g. 127.0.0.1:8080 (repeatable): POST
    /// /v1/generate, GET /health, GET /v1/info, GET /metrics, OpenAI's GET /v1/models and POST
    /// /v1/completions, GET /openapi.json. Bound before the model loads (503 "loading" meanwhile).
    #[arg(long, env = "DLM_HTTP", value_delimiter = ',')]
    http: Vec<String>,
    /// Allow --http on a non-loopback address (without --api-key: trusted networks only).
    #[arg(long, env = "DLM_HTTP_ANY_ADDRESS", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    http_any_address: bool,
    /// Every HTTP route but /health needs `Authorization: Bearer KEY` (401 otherwise); visible
    /// ASCII, not empty (an empty DLM_API_KEY is an error, not "no key"). The line transports
    /// have no authentication. Prefer the variable: a flag shows in `ps`.
    #[arg(long, env = "DLM_API_KEY", hide_env_values = true, value_name = "KEY")]
    api_key: Option<String>,
    /// Listen on a Unix domain socket at this path (repeatable).
    #[arg(long, env = "DLM_UNIX", value_delimiter = ',')]
    unix: Vec<PathBuf>,
    /// Serve on a serial device in raw mode, e.g. /dev/ttyTHS0 (repeatable).
    #[arg(long, env = "DLM_SERIAL", value_delimiter = ',')]
    serial: Vec<String>,
    /// Baud rate of --serial.
    #[arg(long, env = "DLM_BAUD", default_value_t = 115_200)]
    baud: u32,
    /// Requests that may wait for the inference thread; more get `busy`.
    #[arg(long, env = "DLM_QUEUE", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    queue: u64,
    /// Longest request line in bytes; longer lines get `too_large` and are skipped unread.
    #[arg(long, env = "DLM_MAX_LINE", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(64..=(64 << 20)))]
    max_line: u64,
    /// Default and largest deadline of a request, in ms from its arrival.
    #[arg(long, env = "DLM_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// After SIGTERM/SIGINT, how long queued requests may still start, in ms.
    #[arg(long, env = "DLM_DRAIN_MS", default_value_t = 10_000)]
    drain_ms: u64,
    /// Denoising steps when a request names none.
    #[arg(long, env = "DLM_STEPS", default_value_t = 200)]
    steps: usize,
    /// Most samples (num x mbr, or num x rerank) one request may ask for.
    #[arg(long, env = "DLM_MAX_SAMPLES", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_samples: u64,
    /// Most sequences per denoiser call, of any requests: queued requests' sequences join the
    /// running batch while fewer run (iteration-level batching).
    #[arg(long, env = "DLM_MAX_BATCH", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    max_batch: u64,
    /// How requests share the inference thread: batched (per iteration) or fifo (one request
    /// at a time, for comparison).
    #[arg(long, env = "DLM_SCHEDULE", value_enum, default_value_t = Schedule::Batched)]
    schedule: Schedule,
    /// Most simultaneous connections per listener (a line connection costs a reader and a writer
    /// thread). Past it, HTTP gives the slot of a connection that has waited a second or more
    /// for its request to the new one, or answers 503 busy.
    #[arg(long, env = "DLM_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_connections: u64,
    /// Close a connection with nothing to read, answer or write for this long, in ms; drop a
    /// client that reads none of its waiting answers for this long. HTTP: a request head must
    /// arrive whole in this time from when the connection waits for it, a body in this time.
    #[arg(long, env = "DLM_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    idle_timeout_ms: u64,
    /// Bytes of answers a connection may leave unread before the server stops reading its requests.
    #[arg(long, env = "DLM_MAX_PENDING", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(4096..=(1 << 30)))]
    max_pending: u64,
    /// Sessions opened (and warmed up) before the server is ready: all, none (the denoiser
    /// only) or a comma-separated list of controls and `teacher` (e.g. pos,content). The
    /// others open on the first request that needs them (on TensorRT: an engine build).
    #[arg(long, env = "DLM_PRELOAD", default_value = "all", value_parser = Preload::parse)]
    preload: Preload,
}

pub fn run(mut args: ServeArgs) -> Result<()> {
    // an empty address turns nothing on (an empty DLM_TCP, DLM_UNIX... is unset: main.rs)
    for list in [&mut args.tcp, &mut args.serial, &mut args.http] {
        list.retain(|a| !a.trim().is_empty());
    }
    args.unix.retain(|p| !p.as_os_str().is_empty());
    // clap reads an empty variable as unset; an empty DLM_API_KEY is refused like an empty flag
    let empty_variable = std::env::var_os("DLM_API_KEY").filter(|v| v.is_empty()).map(|_| String::new());
    let api_key = args.api_key.clone().or(empty_variable).as_deref().map(ApiKey::new).transpose()?;
    if api_key.is_some() && args.http.is_empty() {
        anyhow::bail!("--api-key (DLM_API_KEY) guards HTTP only, and no --http is given (the line transports have no authentication)");
    }
    let mut transports = Vec::new();
    if args.stdio {
        transports.push(Transport::Stdio);
    }
    for addr in &args.tcp {
        transports.push(Transport::tcp(addr, args.tcp_any_address)?);
    }
    for path in &args.unix {
        transports.push(Transport::unix(path)?);
    }
    for path in &args.serial {
        transports.push(Transport::serial(path, args.baud)?);
    }
    let connections = HttpConnections::default();
    for addr in &args.http {
        let limits = Limits {
            max_connections: args.max_connections as usize,
            idle: Duration::from_millis(args.idle_timeout_ms),
            deadline: Duration::from_millis(args.timeout_ms),
            max_body: args.max_line as usize,
        };
        // answers 503 "loading" until the server starts
        transports.push(Transport::Http(HttpListener::bind(
            addr,
            args.http_any_address,
            limits,
            api_key.clone(),
            &connections,
        )?));
    }
    if transports.is_empty() {
        anyhow::bail!("nothing to serve on: give --stdio, --tcp ADDR, --unix PATH, --serial DEVICE or --http ADDR");
    }
    let config = ServerConfig {
        queue: args.queue as usize,
        max_line: args.max_line as usize,
        timeout: Duration::from_millis(args.timeout_ms),
        drain: Duration::from_millis(args.drain_ms),
        default_steps: args.steps,
        max_samples: args.max_samples as usize,
        max_batch: args.max_batch as usize,
        schedule: args.schedule,
        max_connections: args.max_connections as usize,
        idle: Duration::from_millis(args.idle_timeout_ms),
        max_pending: args.max_pending as usize,
    };
    let ready = Arc::new(AtomicBool::new(false));
    let extending = server::notify::extend_while_loading(Arc::clone(&ready));
    let runtime = super::runtime(&args.runtime)?;
    let opts = session_options(&args.runtime, config.max_batch)?;
    // each graph as it opens, in the log and in systemd's STATUS= (a TensorRT engine build
    // takes minutes per graph on first boot)
    let (dir, precision) = (&args.runtime.model, args.runtime.precision);
    let mut model = Model::load_with(&runtime, dir, precision, &opts, &args.preload, &mut |o| {
        log::info!("loading {o}");
        server::notify::status(&format!("loading {o}"));
    })?;
    let t = model.manifest.diffusion.num_timesteps;
    if !(1..=t).contains(&config.default_steps) {
        anyhow::bail!("--steps {}: allowed 1..={t} (the model's T)", config.default_steps);
    }
    if config.max_batch > model.max_batch() {
        anyhow::bail!("--max-batch {}: allowed 1..={} (the model's graphs)", config.max_batch, model.max_batch());
    }
    let warm = Instant::now();
    server::notify::status("warming up");
    warm_up(&mut model, &args.preload).context("warm-up generation failed")?;
    log::info!("model {} on {}, warmed up in {:?}", model.dir.display(), model.provider, warm.elapsed());
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(extending) = extending {
        let _ = extending.join(); // no EXTEND_TIMEOUT_USEC after READY=1
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        // A second signal while draining exits at once with status 1.
        signal_hook::flag::register_conditional_shutdown(signal, 1, shutdown.clone())?;
        signal_hook::flag::register(signal, shutdown.clone())?;
    }
    server::run(model, config, transports, shutdown, &runtime.build_info()).map_err(anyhow::Error::msg)
}

/// One short generation through the denoiser and every preloaded guidance graph, so that the
/// first request does not pay for ONNX Runtime's first-run allocations.
fn warm_up(model: &mut Model, preload: &Preload) -> Result<()> {
    let mut request = Request {
        steps: 2,
        guide: GuideOverrides { steps: Setting { all: Some(1), ..Setting::default() }, ..GuideOverrides::default() },
        ..Request::default()
    };
    generate(model, &request)?;
    let controls = &model.manifest.controls;
    let first_label = |name: &str| controls.get(name).filter(|_| preload.includes(name)).and_then(|c| c.labels.first());
    if let Some(tag) = first_label("pos") {
        request.controls.pos = Some(tag.clone());
    }
    if let Some(pair) = first_label("content") {
        request.controls.content = vec![pair.clone()];
    }
    request.controls.spans = first_label("spans").map(|l| format!("0,0,{l}")).into_iter().collect();
    let tree = controls.get("tree").filter(|_| preload.includes("tree"));
    if tree.is_some_and(|c| c.labels.iter().any(|l| l == dlm::tree::ROOT)) {
        request.controls.tree = Some(format!("0:{}", dlm::tree::ROOT)); // one word, as the POS template
    }
    generate(model, &request)?;
    Ok(())
}
