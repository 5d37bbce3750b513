//! The exported autoregressive language model `ids [B, n] -> logits [B, n, V]` (role
//! `teacher`, batch and length dynamic), as [`LanguageModel`] for reranking by fluency. It
//! runs on the CPU whatever the denoiser's provider: one call per group of samples, and a
//! dynamic length would cost TensorRT an engine per shape. Its session opens on the first
//! rerank by fluency unless opened at load.

use std::path::{Path, PathBuf};

use ort::value::TensorRef;

use super::lazy::LazySession;
use super::providers::{Device, SessionOptions};
use super::session::end_profiling;
use super::{run_error, OrtRuntime};
use crate::error::{InferenceError, LoadError};
use crate::manifest::Graph;
use crate::rerank::LanguageModel;

pub struct OrtTeacher {
    session: LazySession,
    /// Longest sequence the graph takes (its `seq` axis), START and END included.
    seq_len: usize,
    start: i64,
    end: i64,
    ids: Vec<i64>,
}

impl OrtTeacher {
    /// The language model of `graph`, its session opened `now` or on first use.
    pub fn open(
        runtime: &OrtRuntime,
        dir: &Path,
        graph: &Graph,
        opts: &SessionOptions,
        (start, end): (u32, u32),
        now: bool,
    ) -> Result<Self, LoadError> {
        let cpu = SessionOptions { device: Device::Cpu, ..opts.clone() };
        let mut session = LazySession::new(runtime, dir, graph, &cpu);
        if now {
            session.open_now()?;
        }
        let seq_len = graph.dynamic_axes.get("seq").map_or(2, |a| a.max.max(2));
        let (start, end) = (i64::from(start), i64::from(end));
        Ok(Self { session, seq_len, start, end, ids: Vec::new() })
    }
}

impl LanguageModel for OrtTeacher {
    /// One call for all: each sequence [START w.. END] cut to the graph's length, padded on the
    /// right with END (a causal model's earlier positions do not see the padding); the graph
    /// reads all but the last token and predicts each next one.
    fn mean_nll(&mut self, sequences: &[&[u32]]) -> Result<Vec<f32>, InferenceError> {
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        let lens: Vec<usize> = sequences.iter().map(|s| (s.len() + 2).min(self.seq_len)).collect();
        let n = lens.iter().copied().max().unwrap_or(2);
        let b = sequences.len();
        self.ids.clear();
        for (s, &len) in sequences.iter().zip(&lens) {
            let words = s.iter().take(len - 2).map(|&w| i64::from(w));
            let row: Vec<i64> =
                std::iter::once(self.start).chain(words).chain(std::iter::repeat(self.end)).take(n).collect();
            self.ids.extend(row);
        }
        let inputs: Vec<i64> = self.ids.chunks(n).flat_map(|row| row[..n - 1].iter().copied()).collect();
        let (session, name) = self.session.get()?;
        let err = run_error(name);
        let tensor = TensorRef::from_array_view(([b, n - 1], &inputs[..])).map_err(&err)?;
        let outputs = session.run(ort::inputs!["ids" => tensor]).map_err(&err)?;
        let (shape, logits) = outputs[0].try_extract_tensor::<f32>().map_err(&err)?;
        let vocab = shape.get(2).copied().unwrap_or(0).max(0) as usize;
        if shape.len() != 3 || shape[0] as usize != b || shape[1] as usize != n - 1 || vocab == 0 {
            return Err(InferenceError::OutputShape {
                graph: name.to_string(),
                output: "logits".into(),
                actual: shape.iter().copied().collect(),
                expected: vec![b, n - 1, vocab],
            });
        }
        let mut nll = Vec::with_capacity(b);
        for (k, &len) in lens.iter().enumerate() {
            let mut total = 0.0f64;
            for i in 0..len - 1 {
                let row = &logits[(k * (n - 1) + i) * vocab..][..vocab];
                let target = usize::try_from(self.ids[k * n + i + 1]).unwrap_or(0).min(vocab - 1);
                total += f64::from(log_sum_exp(row) - row[target]);
            }
            nll.push((total / (len - 1) as f64) as f32);
        }
        Ok(nll)
    }

    /// Finish ONNX Runtime's profile (opened with `profile_dir`), if the session was opened.
    fn end_profiling(&mut self) -> Result<Vec<PathBuf>, InferenceError> {
        self.session.opened().map(|(s, name)| end_profiling(s, name)).into_iter().collect()
    }
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln()
}
