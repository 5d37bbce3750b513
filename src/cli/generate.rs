//! `dlm generate`.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use dlm::engine::generate_watched;
use dlm::generate::{Generated, Request};
use dlm::model::{Model, Preload};
use dlm::rerank::RerankBy;
use dlm::sampler::Method;
use serde_json::json;

use super::visual::Visual;
use super::{session_options, ControlArgs, RuntimeArgs};

#[derive(Args)]
pub struct GenerateArgs {
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
    /// Random seed; the same seed gives the same sentences (default: a random one, reported
    /// with --json and -v).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of sentences.
    #[arg(long, default_value_t = 1)]
    num: usize,
    /// Sequences per denoiser call.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// JSON lines with text, tokens and timings instead of plain sentences.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub controls: ControlArgs,
    /// Minimum Bayes risk decoding: S samples per sentence, keep the one closest (BLEU) to the rest.
    #[arg(long, default_value_t = 1)]
    mbr: usize,
    /// Best of S: S samples per sentence, keep the best by --rerank-by.
    #[arg(long, default_value_t = 1)]
    rerank: usize,
    /// What --rerank compares: the guided controls' classifier loss, fluency under the model's
    /// language model (its mean token NLL), or both summed (default: controls when a pos,
    /// content or span control is guided, else fluency).
    #[arg(long, value_enum)]
    rerank_by: Option<RerankBy>,
    /// Let a word follow itself and a word 3-gram come twice (by default clamping and rounding
    /// skip them, like n-gram blocking).
    #[arg(long)]
    allow_repeats: bool,
    /// Watch the denoising: redraw the sentences in place at each step (plain lines, one per
    /// sentence and step, when stdout is not a terminal), then print them as usual.
    #[arg(long)]
    visual: bool,
    /// With --visual: draw every this many steps (and the last), 1..=--steps.
    #[arg(long, requires = "visual")]
    every: Option<usize>,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    log::info!("seed {seed}{}", if args.seed.is_none() { " (drawn; pass --seed to repeat)" } else { "" });
    let request = Request {
        steps: args.steps,
        method: Method::parse(&args.sampler, args.eta)?,
        clamp: !args.no_clamp,
        seed,
        num: args.num,
        batch: args.batch,
        controls: args.controls.request(),
        guide: args.controls.guide()?,
        mbr: args.mbr,
        rerank: args.rerank,
        rerank_by: args.rerank_by,
        block_repeats: !args.allow_repeats,
        report_every: args.visual.then_some(args.every.unwrap_or(1)),
        ..Request::default()
    };
    let runtime = super::runtime(&args.runtime)?;
    let opts = session_options(&args.runtime, args.batch)?;
    // only the denoiser now: the graphs of the controls asked for open on their first use
    let (dir, precision) = (&args.runtime.model, args.runtime.precision);
    let mut model = Model::load_with(&runtime, dir, precision, &opts, &Preload::Denoiser, &mut |_| {})?;
    let precision_name = model.precision.name();
    log::info!(
        "model {} on {}, {precision_name} (--precision {})",
        model.dir.display(),
        model.provider,
        precision.name()
    );
    let mut visual = args.visual.then(Visual::new);
    let mut drawn = Ok(());
    let outputs = generate_watched(&mut model, &request, &mut |step| {
        if let (Some(visual), Ok(())) = (visual.as_mut(), &drawn) {
            drawn = visual.draw(step);
        }
    })
    .context("generation failed")?;
    drawn.context("drawing the steps")?;
    if let Some(visual) = visual.as_mut() {
        visual.clear()?;
    }
    let mut out = std::io::stdout().lock();
    for g in &outputs {
        if args.json {
            writeln!(out, "{}", json_line(g, &request, precision_name))?;
        } else {
            writeln!(out, "{}", g.text)?;
        }
    }
    Ok(())
}

/// One sentence as a JSON line; `precision` is the one loaded (what `auto` chose), which with
/// the seed fixes the sentence.
fn json_line(g: &Generated, request: &Request, precision: &str) -> serde_json::Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    json!({
        "index": g.index,
        "text": g.text,
        "tokens": g.tokens,
        "ids": g.ids,
        "lm_nll": g.lm_nll,
        "steps": request.steps,
        "seed": request.seed,
        "precision": precision,
        "timings": {
            "total_ms": ms(g.timing.total),
            "per_step_ms": ms(g.timing.per_step()),
            "denoiser_ms": ms(g.timing.denoiser),
            "guidance_ms": ms(g.timing.guidance),
            "host_ms": ms(g.timing.host()),
            "batch_size": request.batch.min(request.num),
        },
    })
}
