//! `dlm profile`: the latency grid, printed as a table and written as CSV, JSON and an SVG plot.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use dlm::generate::Request;
use dlm::model::{Model, PrecisionChoice, Preload};
use dlm::profile::{run_case, summarise_ort_profiles, CaseResult};
use indicatif::{ProgressBar, ProgressStyle};

use super::plot::plot_latency;
use super::{session_options, ControlArgs, RuntimeArgs};

#[derive(Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Step budgets to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,20,50,100,200")]
    budgets: Vec<usize>,
    /// Batch sizes (sentences denoised together per request).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batches: Vec<usize>,
    /// Precisions (each loads its own sessions); overrides --precision.
    #[arg(long, value_enum, value_delimiter = ',')]
    precisions: Vec<PrecisionChoice>,
    /// Unmeasured runs per case before the measured ones.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Measured runs per case.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    controls: ControlArgs,
    /// Write the results as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the results (and the operator summary) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG plot of latency against step budget.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also run ONNX Runtime's profiler, keep its traces in DIR and print time per operator type.
    #[arg(long, value_name = "DIR")]
    ort_profile: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: ProfileArgs) -> Result<()> {
    let precisions = if args.precisions.is_empty() { vec![args.runtime.precision] } else { args.precisions.clone() };
    let runtime = super::runtime(&args.runtime)?;
    let max_batch = args.batches.iter().copied().max().unwrap_or(1);
    let repeats = args.repeat as usize;
    let runs = precisions.len() * args.budgets.len() * args.batches.len() * (args.warmup + repeats);
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(runs as u64) };
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {elapsed} {msg}")?);
    let label = args.controls.label();
    let (mut results, mut traces) = (Vec::new(), Vec::new());
    for &precision in &precisions {
        let mut opts = session_options(&args.runtime, max_batch)?;
        if let Some(dir) = &args.ort_profile {
            let dir = dir.join(precision.name());
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            opts.profile_dir = Some(dir);
        }
        // the guidance graphs open in the warm-up runs of the cases that use them
        let mut model =
            Model::load_with(&runtime, &args.runtime.model, precision, &opts, &Preload::Denoiser, &mut |_| {})?;
        for &steps in &args.budgets {
            for &batch in &args.batches {
                bar.set_message(format!("{}, {steps} steps, batch {batch}", model.precision.name()));
                let request = Request {
                    steps,
                    seed: args.seed,
                    num: batch,
                    batch,
                    controls: args.controls.request(),
                    guide: args.controls.guide()?,
                    ..Request::default()
                };
                let loaded = model.precision.name();
                let case = run_case(&mut model, &request, args.warmup, repeats, &label, &mut || bar.inc(1));
                results.push(case.with_context(|| format!("{loaded}, {steps} steps, batch {batch}"))?);
            }
        }
        if args.ort_profile.is_some() {
            // each opened session's file is named `<graph>_<timestamp>.json`: the longest graph
            // name it starts with is its graph
            let files = model.end_profiling()?;
            let names: Vec<&str> = model.manifest.graphs.iter().map(|g| g.name.as_str()).collect();
            let graph = |file: &PathBuf| {
                let stem = file.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let of = names.iter().filter(|n| stem.starts_with(&format!("{n}_"))).max_by_key(|n| n.len());
                of.map_or(stem.clone(), |n| n.to_string())
            };
            traces.extend(files.iter().map(|f| (graph(f), f.clone())));
        }
    }
    bar.finish_and_clear();
    println!("{}", table(&results));
    let ops = if traces.is_empty() { Vec::new() } else { summarise_ort_profiles(&traces)? };
    if !ops.is_empty() {
        println!("{}", ops_table(&ops));
        for (graph, file) in &traces {
            println!("ONNX Runtime trace of {graph}: {}", file.display());
        }
    }
    if let Some(path) = &args.csv {
        let mut w = csv::Writer::from_path(path).with_context(|| format!("cannot write {}", path.display()))?;
        for r in &results {
            w.serialize(CsvRow::from(r))?;
        }
        w.flush()?;
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "cases": results, "operators": ops });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot_latency(&results, path)?;
    }
    Ok(())
}

fn table(results: &[CaseResult]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header([
        "precision",
        "provider",
        "controls",
        "steps",
        "batch",
        "request ms mean",
        "p50",
        "p95",
        "min",
        "max",
        "step ms p50",
        "step p95",
        "denoiser",
        "guidance",
        "host",
        "sent/s",
        "peak RSS MB",
    ]);
    for r in results {
        let (q, s) = (&r.request_ms, &r.step_ms);
        let pct = |x: f64| format!("{:.1} %", 100.0 * x);
        t.add_row([
            r.precision.clone(),
            r.provider.clone(),
            r.controls.clone(),
            r.steps.to_string(),
            r.batch.to_string(),
            format!("{:.1}", q.mean),
            format!("{:.1}", q.p50),
            format!("{:.1}", q.p95),
            format!("{:.1}", q.min),
            format!("{:.1}", q.max),
            format!("{:.3}", s.p50),
            format!("{:.3}", s.p95),
            pct(r.denoiser_share),
            pct(r.guidance_share),
            pct(r.host_share),
            format!("{:.1}", r.sentences_per_s),
            format!("{:.0}", r.peak_rss_mb),
        ]);
    }
    t
}

fn ops_table(ops: &[dlm::profile::OpTime]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header(["graph", "operator", "calls", "total ms", "share of graph"]);
    for o in ops.iter().filter(|o| o.share >= 0.01) {
        let share = format!("{:.1} %", 100.0 * o.share);
        t.add_row([o.graph.clone(), o.op_type.clone(), o.calls.to_string(), format!("{:.1}", o.total_ms), share]);
    }
    t
}

/// A flat CSV row of a case.
#[derive(serde::Serialize)]
struct CsvRow<'a> {
    precision: &'a str,
    provider: &'a str,
    controls: &'a str,
    steps: usize,
    batch: usize,
    repeats: usize,
    request_ms_mean: f64,
    request_ms_p50: f64,
    request_ms_p95: f64,
    request_ms_min: f64,
    request_ms_max: f64,
    step_ms_mean: f64,
    step_ms_p50: f64,
    step_ms_p95: f64,
    step_ms_min: f64,
    step_ms_max: f64,
    denoiser_share: f64,
    guidance_share: f64,
    host_share: f64,
    sentences_per_s: f64,
    peak_rss_mb: f64,
}

impl<'a> From<&'a CaseResult> for CsvRow<'a> {
    fn from(r: &'a CaseResult) -> Self {
        let (q, s) = (&r.request_ms, &r.step_ms);
        Self {
            precision: &r.precision,
            provider: &r.provider,
            controls: &r.controls,
            steps: r.steps,
            batch: r.batch,
            repeats: r.repeats,
            request_ms_mean: q.mean,
            request_ms_p50: q.p50,
            request_ms_p95: q.p95,
            request_ms_min: q.min,
            request_ms_max: q.max,
            step_ms_mean: s.mean,
            step_ms_p50: s.p50,
            step_ms_p95: s.p95,
            step_ms_min: s.min,
            step_ms_max: s.max,
            denoiser_share: r.denoiser_share,
            guidance_share: r.guidance_share,
            host_share: r.host_share,
            sentences_per_s: r.sentences_per_s,
            peak_rss_mb: r.peak_rss_mb,
        }
    }
}
