//! `dlm info`.

use std::io::Write;

use anyhow::Result;
use clap::{Args, ValueEnum};
use dlm::error::LoadError;
use dlm::manifest::{Manifest, Precision};
use dlm::model::{Machine, Model};
use dlm::ort::{auto, providers, version, Device};

use super::{session_options, RuntimeArgs};

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Stop before opening sessions: the library, its providers and the device choice, without
    /// building TensorRT engines (which opening a session on TensorRT does).
    #[arg(long)]
    pub no_sessions: bool,
}

pub fn run(info: InfoArgs) -> Result<()> {
    let args = info.runtime;
    let manifest = Manifest::load(&args.model)?;
    let (m, t) = (&manifest.model, &manifest.training);
    let mut out = std::io::stdout().lock();
    let built: Vec<&str> = providers::built_in().iter().map(|p| p.name()).collect();
    writeln!(out, "dlm          {}, providers built in: cpu {}", env!("CARGO_PKG_VERSION"), built.join(" "))?;
    writeln!(out, "model        {}", args.model.display())?;
    writeln!(
        out,
        "  d={} seq_len={} vocab={} T={} schedule={:?} prediction={:?}",
        m.d, m.seq_len, m.vocab_size, manifest.diffusion.num_timesteps, manifest.diffusion.schedule, m.prediction
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
        let graphs: Vec<&str> = c.graphs.values().flat_map(|n| n.names()).map(String::as_str).collect();
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
    let runtime = super::runtime(&args)?;
    writeln!(out, "onnxruntime  {}", runtime.library.display())?;
    let oldest = version::OLDEST_MINOR;
    writeln!(
        out,
        "  version    {} (tested: {}; 1.{oldest} or newer within 1.x loads)",
        runtime.version,
        version::TESTED
    )?;
    writeln!(out, "  build      {}", runtime.build_info())?;
    writeln!(out, "  providers  {}", runtime.available_providers().join(", "))?;
    let device = match args.device {
        Device::Auto => {
            let choice = auto::choose_here(&runtime);
            writeln!(out, "  device     auto: {} ({})", choice.device.name(), choice.why)?;
            choice.device
        }
        given => {
            writeln!(out, "  device     {} (--device)", given.name())?;
            given
        }
    };
    // one sequence a call (`dlm generate`'s default) and the server's default batch
    for (calls, max_batch) in [("one sequence a call", 1), ("16 a call (dlm serve's default)", 16)] {
        let (precision, why) = args.precision.explain(&manifest, Machine::here(device, max_batch));
        writeln!(out, "  precision  {}, {calls}: {} ({why})", args.precision.name(), precision.name())?;
    }
    let opts = session_options(&args, 1)?;
    let given: Vec<String> = opts
        .for_model(&manifest)
        .ep_options
        .iter()
        .filter(|o| device.providers().contains(&o.provider))
        .map(|o| format!("{}:{}={}", o.provider.name(), o.key, o.value))
        .collect();
    writeln!(out, "  ep options {} (for {}: manifest, then --ep-option)", list(&given), device.name())?;
    let cache = opts.trt_cache.as_ref().map_or("-".into(), |d| d.display().to_string());
    writeln!(out, "  trt cache  {cache} (TensorRT engines in a directory per graph content)")?;
    let binding = opts.resolved(&runtime).binding; // cuda-graph is fixed where auto chose another device than cuda
    let binding = binding.to_possible_value().map_or_else(String::new, |v| v.get_name().to_string());
    writeln!(out, "  binding    {binding} (the denoiser's tensors; cuda-graph captures a CUDA graph per shape)")?;
    let (threads, on) = (args.threads, |b: bool| if b { "on" } else { "off" });
    let (level, arena) = (format!("{:?}", opts.tuning.graph_opt).to_lowercase(), on(opts.tuning.cpu_arena));
    writeln!(
        out,
        "  cpu        {threads} threads (0: one per core), spinning {}, graph opt {level}, arena {arena}",
        on(args.spin)
    )?;
    if info.no_sessions {
        return Ok(());
    }
    // every precision the model ships a denoiser of; int8 says why where Model::load refuses it
    for precision in [Precision::Fp32, Precision::Fp16, Precision::Int8] {
        if manifest.denoiser(precision).is_none() {
            continue;
        }
        let model = match Model::load(&runtime, &args.model, precision, &opts) {
            Err(refused @ LoadError::Provider { .. }) if precision == Precision::Int8 => {
                writeln!(out, "session      denoiser Int8: not opened ({refused})")?;
                continue;
            }
            loaded => loaded?,
        };
        let (asked, runs) = (args.device.name(), model.provider);
        let clamp = if model.denoiser.nearest_on_engine() { "on the engine" } else { "in dlm" };
        writeln!(out, "session      denoiser {precision:?}: requested {asked}, runs on {runs}, clamping {clamp}")?;
    }
    Ok(())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(" ")
    }
}
