//! `dlm`: the command line. Everything it does lives in the library; this file parses
//! arguments, loads the model and prints.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use dlm::controls::ControlRequest;
use dlm::generate::{generate, Generated, GuideOverrides, Request};
use dlm::manifest::{Manifest, Precision};
use dlm::model::Model;
use dlm::ortlib::OrtRuntime;
use dlm::sampler::Method;
use dlm::server::transport::Transport;
use dlm::server::{self, ServerConfig};
use dlm::session::{Device, SessionOptions};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};

/// Edge runtime for Diffusion-LM: controllable text generation by reverse diffusion on ONNX Runtime.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate sentences by reverse diffusion.
    Generate(GenerateArgs),
    /// Serve newline-delimited JSON requests (stdin/stdout, Unix socket, loopback TCP, serial line).
    Serve(ServeArgs),
    /// Print the manifest, the ONNX Runtime library and the providers each session runs on.
    Info(RuntimeArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Answer requests on stdin, responses on stdout (ends at end of input).
    #[arg(long)]
    stdio: bool,
    /// Listen on TCP at this loopback address, e.g. 127.0.0.1:7878 (repeatable).
    #[arg(long)]
    tcp: Vec<String>,
    /// Allow --tcp on a non-loopback address (no authentication: trusted networks only).
    #[arg(long)]
    tcp_any_address: bool,
    /// Listen on a Unix domain socket at this path (repeatable).
    #[arg(long)]
    unix: Vec<PathBuf>,
    /// Serve on a serial device in raw mode, e.g. /dev/ttyTHS0 (repeatable).
    #[arg(long)]
    serial: Vec<String>,
    /// Baud rate of --serial.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Requests that may wait for the inference thread; more get `busy`.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    queue: u64,
    /// Longest request line in bytes; longer lines get `too_large` and are skipped unread.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(64..=(64 << 20)))]
    max_line: u64,
    /// Default and largest deadline of a request, in ms from its arrival.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// After SIGTERM/SIGINT, how long queued requests may still start, in ms.
    #[arg(long, default_value_t = 10_000)]
    drain_ms: u64,
    /// Denoising steps when a request names none.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Most samples (num x mbr) one request may ask for.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_samples: u64,
    /// Most simultaneous connections per listener.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_connections: u64,
}

#[derive(Args, Clone)]
struct RuntimeArgs {
    /// Model directory (with manifest.json).
    #[arg(long, env = "DLM_MODEL", default_value = "models/e2e")]
    model: PathBuf,
    /// Execution provider: cpu, cuda or tensorrt (the last two need the cargo features).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Graph precision: fp32 or fp16.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Run on CPU, with a warning, when the requested provider cannot be registered.
    #[arg(long)]
    allow_fallback: bool,
    /// Path of libonnxruntime.so (default: next to dlm, then the copy scripts/setup.sh made).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0: ONNX Runtime decides).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Directory for TensorRT engine and timing caches.
    #[arg(long, env = "DLM_TRT_CACHE")]
    trt_cache: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Denoising steps, the latency budget: 1..=T, evenly respaced over the T training steps.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Sampler: ddpm (ancestral) or ddim.
    #[arg(long, default_value = "ddpm", value_parser = ["ddpm", "ddim"])]
    sampler: String,
    /// DDIM eta in [0, 1] (0: deterministic); only with --sampler ddim.
    #[arg(long)]
    eta: Option<f64>,
    /// Disable the clamping trick (nearest word embedding at every step).
    #[arg(long)]
    no_clamp: bool,
    /// Random seed; the same seed gives the same sentences.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of sentences.
    #[arg(long, default_value_t = 1)]
    num: usize,
    /// Sequences per denoiser call.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// JSON lines with text, tokens and timings instead of plain sentences.
    #[arg(long)]
    json: bool,
    /// POS template, one UPOS tag per word: "PROPN AUX DET ADJ NOUN PUNCT" (fixes the length).
    #[arg(long)]
    pos: Option<String>,
    /// A field=value pair the sentence must express, e.g. "food=Italian" (repeatable).
    #[arg(long)]
    content: Vec<String>,
    /// Number of words.
    #[arg(long)]
    length: Option<usize>,
    /// Template with `_` for each word to generate: "The Eagle is a _ _ near _ ." (fixed words kept).
    #[arg(long)]
    infill: Option<String>,
    /// Span "i,j,LABEL": words i..j (0-based, inclusive) form a phrase of LABEL (NP, PP).
    #[arg(long)]
    span: Option<String>,
    /// Guidance steps K per diffusion step (default: the manifest's, 3).
    #[arg(long)]
    guide_steps: Option<usize>,
    /// Fluency weight lambda of ||x - mu||^2 / sigma^2 (default: the manifest's per control).
    #[arg(long)]
    guide_lambda: Option<f64>,
    /// Guidance step size (default: the manifest's per control).
    #[arg(long)]
    guide_lr: Option<f64>,
    /// Minimum Bayes risk decoding: S samples per sentence, keep the one closest (BLEU) to the rest.
    #[arg(long, default_value_t = 1)]
    mbr: usize,
}

fn session_options(args: &RuntimeArgs, max_batch: usize) -> SessionOptions {
    SessionOptions {
        device: args.device,
        allow_fallback: args.allow_fallback,
        threads: args.threads,
        trt_cache: args.trt_cache.clone(),
        max_batch,
    }
}

fn method(args: &GenerateArgs) -> Result<Method> {
    match (args.sampler.as_str(), args.eta) {
        ("ddim", eta) => Ok(Method::Ddim { eta: eta.unwrap_or(0.0) }),
        (_, Some(_)) => anyhow::bail!("--eta applies to --sampler ddim only"),
        _ => Ok(Method::Ddpm),
    }
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let request = Request {
        steps: args.steps,
        method: method(&args)?,
        clamp: !args.no_clamp,
        seed: args.seed,
        num: args.num,
        batch: args.batch,
        controls: ControlRequest {
            pos: args.pos.clone(),
            content: args.content.clone(),
            length: args.length,
            infill: args.infill.clone(),
            span: args.span.clone(),
        },
        guide: GuideOverrides { steps: args.guide_steps, lambda: args.guide_lambda, lr: args.guide_lr },
        mbr: args.mbr,
        deadline: None,
    };
    let runtime = OrtRuntime::load(args.runtime.ort_lib.as_deref())?;
    let opts = session_options(&args.runtime, args.batch);
    let mut model = Model::load(&runtime, &args.runtime.model, args.runtime.precision, &opts)?;
    log::info!("model {} on {}, {:?}", model.dir.display(), model.denoiser.device.name(), args.runtime.precision);
    let outputs = generate(&mut model, &request).context("generation failed")?;
    let mut out = std::io::stdout().lock();
    for g in &outputs {
        if args.json {
            writeln!(out, "{}", json_line(g, &request))?;
        } else {
            writeln!(out, "{}", g.text)?;
        }
    }
    Ok(())
}

fn json_line(g: &Generated, request: &Request) -> serde_json::Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    json!({
        "index": g.index,
        "text": g.text,
        "tokens": g.tokens,
        "ids": g.ids,
        "steps": request.steps,
        "seed": request.seed,
        "timings": {
            "batch_total_ms": ms(g.timing.total),
            "per_step_ms": ms(g.timing.per_step()),
            "denoiser_ms": ms(g.timing.denoiser),
            "guidance_ms": ms(g.timing.guidance),
            "host_ms": ms(g.timing.host()),
            "batch_size": request.batch.min(request.num),
        },
    })
}

fn run_serve(args: ServeArgs) -> Result<()> {
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
    if transports.is_empty() {
        anyhow::bail!("nothing to serve on: give --stdio, --tcp ADDR, --unix PATH or --serial DEVICE");
    }
    let config = ServerConfig {
        queue: args.queue as usize,
        max_line: args.max_line as usize,
        timeout: Duration::from_millis(args.timeout_ms),
        drain: Duration::from_millis(args.drain_ms),
        default_steps: args.steps,
        max_samples: args.max_samples as usize,
        max_connections: args.max_connections as usize,
    };
    let runtime = OrtRuntime::load(args.runtime.ort_lib.as_deref())?;
    let opts = session_options(&args.runtime, config.max_samples.min(16));
    let mut model = Model::load(&runtime, &args.runtime.model, args.runtime.precision, &opts)?;
    let warm = Instant::now();
    warm_up(&mut model).context("warm-up generation failed")?;
    log::info!("model {} on {}, warmed up in {:?}", model.dir.display(), model.denoiser.device.name(), warm.elapsed());
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        // A second signal while draining exits at once with status 1.
        signal_hook::flag::register_conditional_shutdown(signal, 1, shutdown.clone())?;
        signal_hook::flag::register(signal, shutdown.clone())?;
    }
    server::run(model, config, transports, shutdown);
    Ok(())
}

/// One short generation through the denoiser and every guidance graph, so that the first
/// request does not pay for ONNX Runtime's first-run allocations.
fn warm_up(model: &mut Model) -> Result<()> {
    let mut request = Request {
        steps: 2,
        method: Method::Ddpm,
        clamp: true,
        seed: 0,
        num: 1,
        batch: 1,
        controls: ControlRequest::default(),
        guide: GuideOverrides { steps: Some(1), lambda: None, lr: None },
        mbr: 1,
        deadline: None,
    };
    generate(model, &request)?;
    if let Some(tag) = model.manifest.controls.get("pos").and_then(|c| c.labels.first()) {
        request.controls.pos = Some(tag.clone());
    }
    if let Some(pair) = model.manifest.controls.get("content").and_then(|c| c.labels.first()) {
        request.controls.content = vec![pair.clone()];
    }
    if model.manifest.controls.contains_key("spans") {
        request.controls.span = model.manifest.controls["spans"].labels.first().map(|l| format!("0,0,{l}"));
    }
    generate(model, &request)?;
    Ok(())
}

fn run_info(args: RuntimeArgs) -> Result<()> {
    let manifest = Manifest::load(&args.model)?;
    let (m, t) = (&manifest.model, &manifest.training);
    let mut out = std::io::stdout().lock();
    writeln!(out, "model        {}", args.model.display())?;
    writeln!(
        out,
        "  d={} seq_len={} vocab={} T={} schedule={} prediction={}",
        m.d, m.seq_len, m.vocab_size, manifest.diffusion.t, manifest.diffusion.schedule, m.prediction
    )?;
    writeln!(
        out,
        "  training   {} steps, seed {}, final loss {}, {} s, sentences {}",
        t["steps"], t["seed"], t["final_loss"], t["train_seconds"], t["sentences"]
    )?;
    for g in &manifest.graphs {
        let parity = g.parity.as_ref().map_or("-".to_string(), |p| p.to_string());
        writeln!(out, "  graph      {} ({:?}, opset {}) sha256 {}", g.file, g.precision, g.opset, g.sha256)?;
        writeln!(out, "             parity {parity}, tolerance {}", g.tolerance)?;
    }
    for (name, c) in &manifest.controls {
        let graphs: Vec<&str> = c.graphs.values().map(String::as_str).collect();
        let d = c.defaults;
        writeln!(
            out,
            "  control    {name}: {} labels, input {} {:?}, graphs {graphs:?}, defaults lambda={} lr={} K={}",
            c.labels.len(),
            c.input.name,
            c.input.shape,
            d.lambda,
            d.lr,
            d.steps
        )?;
    }
    let runtime = OrtRuntime::load(args.ort_lib.as_deref())?;
    writeln!(out, "onnxruntime  {}", runtime.library.display())?;
    writeln!(out, "  build      {}", runtime.build_info())?;
    writeln!(out, "  providers  {}", runtime.available_providers().join(", "))?;
    for precision in [Precision::Fp32, Precision::Fp16] {
        let model = Model::load(&runtime, &args.model, precision, &session_options(&args, 1))?;
        let (asked, runs) = (args.device.name(), model.denoiser.device.name());
        writeln!(out, "session      denoiser {precision:?}: requested {asked}, runs on {runs}")?;
    }
    Ok(())
}

/// A closed stdout (`dlm ... | head`) ends the program quietly, as for any Unix filter.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Generate(args) => run_generate(args),
        Command::Serve(args) => run_serve(args),
        Command::Info(args) => run_info(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
