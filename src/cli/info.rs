//! `dlm info`.

use std::io::Write;

use anyhow::Result;
use dlm::manifest::{Manifest, Precision};
use dlm::model::Model;
use dlm::ort::OrtRuntime;

use super::{session_options, RuntimeArgs};

pub fn run(args: RuntimeArgs) -> Result<()> {
    let manifest = Manifest::load(&args.model)?;
    let (m, t) = (&manifest.model, &manifest.training);
    let mut out = std::io::stdout().lock();
    writeln!(out, "model        {}", args.model.display())?;
    writeln!(
        out,
        "  d={} seq_len={} vocab={} T={} schedule={:?} prediction={:?}",
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
    let runtime = OrtRuntime::load(args.ort_lib.as_deref(), args.threads.into())?;
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
