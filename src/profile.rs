//! `dlm profile`: latency per request and per denoising step for a grid of step budgets and
//! batch sizes, split into denoiser, guidance graphs and host work; and ONNX Runtime's own
//! per-operator profile summarised by operator type.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::generate;
use crate::error::{GenerateError, ProfileError};
use crate::generate::Request;
use crate::model::Model;

/// Summary statistics of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// Nearest-rank percentiles; `None` for an empty sample.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        Some(Self { mean, p50: rank(0.50), p95: rank(0.95), min: v[0], max: v[v.len() - 1] })
    }
}

/// One (precision, budget, batch) cell of the grid.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub precision: String,
    pub provider: String,
    pub controls: String,
    pub steps: usize,
    pub batch: usize,
    pub repeats: usize,
    /// One request = `batch` sentences denoised together.
    pub request_ms: Stats,
    pub step_ms: Stats,
    /// Shares of the request's time, summed over repeats.
    pub denoiser_share: f64,
    pub guidance_share: f64,
    pub host_share: f64,
    pub sentences_per_s: f64,
    /// Peak resident set size of this process so far.
    pub peak_rss_mb: f64,
}

/// Run `request` (its `num` = its `batch`) `warmup` times unmeasured, then `repeats` times;
/// `tick` is called after each run (a progress bar).
pub fn run_case(
    model: &mut Model,
    request: &Request,
    warmup: usize,
    repeats: usize,
    controls: &str,
    tick: &mut dyn FnMut(),
) -> Result<CaseResult, GenerateError> {
    for _ in 0..warmup {
        generate(model, request)?;
        tick();
    }
    let (mut request_ms, mut step_ms) = (Vec::with_capacity(repeats), Vec::with_capacity(repeats));
    let (mut denoiser, mut guidance, mut total) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..repeats {
        let start = Instant::now();
        let outputs = generate(model, request)?;
        let wall = start.elapsed();
        request_ms.push(ms(wall));
        step_ms.push(ms(wall) / request.steps as f64);
        // each sequence holds its share of the batched calls
        denoiser += outputs.iter().map(|g| g.timing.denoiser).sum::<Duration>();
        guidance += outputs.iter().map(|g| g.timing.guidance).sum::<Duration>();
        total += wall;
        tick();
    }
    let share = |d: Duration| d.as_secs_f64() / total.as_secs_f64().max(1e-12);
    let empty = Stats { mean: 0.0, p50: 0.0, p95: 0.0, min: 0.0, max: 0.0 };
    Ok(CaseResult {
        precision: model.precision.name().into(),
        provider: model.provider.to_string(),
        controls: controls.to_string(),
        steps: request.steps,
        batch: request.batch,
        repeats,
        request_ms: Stats::of(&request_ms).unwrap_or(empty),
        step_ms: Stats::of(&step_ms).unwrap_or(empty),
        denoiser_share: share(denoiser),
        guidance_share: share(guidance),
        host_share: (1.0 - share(denoiser) - share(guidance)).max(0.0),
        sentences_per_s: (repeats * request.batch) as f64 / total.as_secs_f64().max(1e-12),
        peak_rss_mb: peak_rss_mb(),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Peak resident set size of this process, from getrusage(2).
pub fn peak_rss_mb() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; on failure it stays zeroed.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_maxrss as f64 / 1024.0 // kilobytes on Linux
}

/// Time per operator type in ONNX Runtime profile files.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpTime {
    pub graph: String,
    pub op_type: String,
    pub calls: u64,
    pub total_ms: f64,
    /// Of the graph's total node time.
    pub share: f64,
}

#[derive(serde::Deserialize)]
struct Event {
    #[serde(default)]
    cat: String,
    #[serde(default)]
    dur: f64,
    #[serde(default)]
    args: BTreeMap<String, serde_json::Value>,
}

/// Node events of each profile (a Chrome trace JSON array), by graph and operator type, largest first.
pub fn summarise_ort_profiles(files: &[(String, PathBuf)]) -> Result<Vec<OpTime>, ProfileError> {
    let mut rows = Vec::new();
    for (graph, path) in files {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io { path: path.clone(), source })?;
        let events: Vec<Event> =
            serde_json::from_str(&text).map_err(|source| ProfileError::Json { path: path.clone(), source })?;
        let mut by_op: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for e in events.iter().filter(|e| e.cat == "Node") {
            let op = e.args.get("op_name").and_then(|v| v.as_str()).unwrap_or("?");
            let entry = by_op.entry(op.to_string()).or_default();
            entry.0 += 1;
            entry.1 += e.dur / 1e3;
        }
        let graph_total: f64 = by_op.values().map(|(_, t)| t).sum();
        let mut graph_rows: Vec<OpTime> = by_op
            .into_iter()
            .map(|(op_type, (calls, total_ms))| OpTime {
                graph: graph.clone(),
                op_type,
                calls,
                total_ms,
                share: total_ms / graph_total.max(1e-12),
            })
            .collect();
        graph_rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        rows.extend(graph_rows);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_use_nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v).unwrap();
        assert_eq!((s.p50, s.p95, s.min, s.max), (50.0, 95.0, 1.0, 100.0));
        assert!((s.mean - 50.5).abs() < 1e-12);
        assert_eq!(Stats::of(&[7.0]).unwrap().p95, 7.0);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn ort_profiles_are_summarised_by_operator_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let trace = r#"[{"cat":"Session","name":"model_run","dur":900},
            {"cat":"Node","name":"a","dur":300,"args":{"op_name":"MatMul"}},
            {"cat":"Node","name":"b","dur":100,"args":{"op_name":"MatMul"}},
            {"cat":"Node","name":"c","dur":100,"args":{"op_name":"Softmax"}}]"#;
        std::fs::write(&path, trace).unwrap();
        let rows = summarise_ort_profiles(&[("denoiser".into(), path)]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].op_type.as_str(), rows[0].calls), ("MatMul", 2));
        assert!((rows[0].total_ms - 0.4).abs() < 1e-9 && (rows[0].share - 0.8).abs() < 1e-9);
    }
}
