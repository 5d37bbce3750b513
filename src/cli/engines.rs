//! `dlm build-engines`: TensorRT's engine for every graph of a precision, built into the engine
//! cache before the service needs them (at install or first boot). Opening a session builds its
//! engine (dlm gives TensorRT an explicit profile for every input), so this loads the model as
//! `dlm serve` would, with the same settings, naming each graph as it opens it, and reports each
//! graph's engine directory.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use dlm::manifest::{Graph, Manifest, Precision};
use dlm::model::{Machine, Model, Opening, Preload};
use dlm::ort::providers::engine_cache_dir;
use dlm::ort::{auto, Device};

use super::{session_options, RuntimeArgs};

#[derive(Args)]
pub struct EnginesArgs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// The largest batch the engines take: the server's --max-batch (the same DLM_MAX_BATCH),
    /// 1..=256; an engine built for another one is rebuilt when the server loads.
    #[arg(long, env = "DLM_MAX_BATCH", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_batch: u64,
}

pub fn run(args: EnginesArgs) -> Result<()> {
    let runtime_args = &args.runtime;
    let manifest = Manifest::load(&runtime_args.model)?;
    let runtime = super::runtime(runtime_args)?;
    let max_batch = args.max_batch as usize;
    let mut opts = session_options(runtime_args, max_batch)?;
    // an engine that could not be built must be an error here, not a session on the CPU
    opts.allow_fallback = false;
    let device = match runtime_args.device {
        Device::Auto => {
            let choice = auto::choose_here(&runtime);
            if choice.device != Device::Tensorrt {
                bail!("--device auto chose {} ({}): no TensorRT engines to build", choice.device.name(), choice.why);
            }
            choice.device
        }
        Device::Tensorrt => Device::Tensorrt,
        other => {
            bail!("--device {}: build-engines builds TensorRT engines; use --device tensorrt (or auto)", other.name())
        }
    };
    opts.device = device;
    let precision = runtime_args.precision.resolve(&manifest, Machine::here(device, max_batch)); // auto: fp32 on TensorRT
    let graphs = graphs_of(&manifest, precision);
    let Some(cache) = opts.trt_cache.clone() else {
        bail!(
            "no engine cache to build into: give --trt-cache DIR or DLM_TRT_CACHE (the service's is its \
             CacheDirectory, /var/cache/dlm, which systemd passes as $CACHE_DIRECTORY)"
        );
    };
    let largest = manifest.denoiser(precision).map_or(1, |g| manifest.max_batch(g));
    if max_batch > largest {
        bail!("--max-batch {max_batch}: allowed 1..={largest} (the model's graphs)");
    }
    let start = Instant::now();
    // each graph as it opens (its engine built or read from the cache), as dlm serve logs it
    let mut opening = |o: &Opening<'_>| eprintln!("build-engines: {o}");
    let model = Model::load_with(&runtime, &runtime_args.model, precision, &opts, &Preload::All, &mut opening)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "build-engines: {} graphs of {precision:?} on {} (max batch {max_batch}) in {seconds:.1} s, cache {}",
        graphs.len(),
        model.provider,
        cache.display()
    )?;
    for graph in graphs {
        let dir = engine_cache_dir(&cache, graph, &manifest.weights);
        let engines = engine_files(&dir);
        let note = if engines == 0 { " (no engine: TensorRT took none of its nodes, CUDA runs them)" } else { "" };
        writeln!(out, "  {:<24} {} ({engines} engine files){note}", graph.name, dir.display())?;
    }
    Ok(())
}

/// The graphs a model of `precision` opens on the GPU: its denoiser and its controls'
/// guidance graphs (the language model runs on the CPU).
fn graphs_of(manifest: &Manifest, precision: Precision) -> Vec<&Graph> {
    let key = precision.guidance_key();
    let guides = manifest.controls.values().flat_map(|c| c.graphs.get(key).map(|n| n.names()).unwrap_or_default());
    let guides = guides.filter_map(|name| manifest.graphs.iter().find(|g| &g.name == name));
    manifest.denoiser(precision).into_iter().chain(guides).collect()
}

fn engine_files(dir: &Path) -> usize {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries.filter(|e| e.path().extension().is_some_and(|x| x == "engine")).count()
}
