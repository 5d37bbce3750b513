//! Classifier guidance: the exported gradient graphs `(x, t, control) -> (loss, grad)` as the
//! sampler's [`Guide`]s, every row with its own t and target. The graphs have fixed batch
//! sizes; this picks one per chunk of rows and pads to it. Each bucket's session opens on its
//! first use unless the caller opens them at load ([`GuideSession::open_each`]'s `now`).

use std::path::{Path, PathBuf};

use ndarray::Array3;
use ort::value::TensorRef;

use super::lazy::LazySession;
use super::providers::SessionOptions;
use super::session::{contiguous, end_profiling};
use super::staging::{read_output, Staging};
use super::{run_error, OrtRuntime};
use crate::error::{InferenceError, LoadError};
use crate::manifest::{Control, Dim, Graph, Precision};
use crate::sampler::{Guide, Target};

/// One control's guidance graph at one fixed batch size.
struct Bucket {
    session: LazySession,
    batch: usize,
    /// Padded input, reused across calls (K per diffusion step).
    x_chunk: Vec<f32>,
    staging: Staging,
}

/// One control's guidance graphs: the same graph at one or more fixed batch sizes (buckets),
/// each opened once; each call of n rows is cut into chunks, largest bucket first, padded only
/// when fewer rows remain than the smallest bucket holds.
pub struct GuideSession {
    buckets: Vec<Bucket>,
    precision: Precision,
    control_input: String,
}

impl GuideSession {
    /// `graphs`: the control's graphs of one precision, in any order; every session opened now.
    pub fn open(
        runtime: &OrtRuntime,
        dir: &Path,
        graphs: &[&Graph],
        control: &Control,
        opts: &SessionOptions,
    ) -> Result<Self, LoadError> {
        Self::open_each(runtime, dir, graphs, control, opts, Some(&mut |_| {}))
    }

    /// The control's guidance graphs; with `now`, each session is opened at once, `now(graph)`
    /// called before it in the order of `graphs` (a TensorRT engine build takes minutes per
    /// graph); without, each opens on its first call.
    pub fn open_each(
        runtime: &OrtRuntime,
        dir: &Path,
        graphs: &[&Graph],
        control: &Control,
        opts: &SessionOptions,
        mut now: Option<&mut dyn FnMut(&Graph)>,
    ) -> Result<Self, LoadError> {
        let mut buckets = Vec::with_capacity(graphs.len());
        for graph in graphs {
            let mut session = LazySession::new(runtime, dir, graph, opts);
            if let Some(opening) = now.as_mut() {
                opening(graph);
                session.open_now()?;
            }
            let batch = match graph.inputs.first().and_then(|x| x.shape.first()) {
                Some(Dim::Fixed(b)) => (*b).max(1),
                _ => 1, // the manifest check requires a fixed batch
            };
            buckets.push(Bucket { session, batch, x_chunk: Vec::new(), staging: Staging::default() });
        }
        buckets.sort_by_key(|b| b.batch);
        let precision = graphs.first().map_or(Precision::Fp32, |g| g.precision);
        Ok(Self { buckets, precision, control_input: control.input.name.clone() })
    }

    /// Which bucket runs the next chunk of `rows` rows: the largest that needs no padding
    /// (8 rows: two calls at 4, not one at 16 half empty), else the smallest, padded.
    fn bucket_for(&self, rows: usize) -> usize {
        self.buckets.iter().rposition(|b| b.batch <= rows).unwrap_or(0)
    }
}

impl Guide for GuideSession {
    fn grad(
        &mut self,
        x: &Array3<f32>,
        t: &[i64],
        targets: &[&Target],
        grad: &mut Array3<f32>,
        loss: &mut [f32],
    ) -> Result<(), InferenceError> {
        let (b, l, d) = x.dim();
        let per_seq = l * d;
        let x_all = contiguous(x);
        let mut first = 0;
        while first < b {
            let k = self.bucket_for(b - first);
            let (precision, control_input) = (self.precision, self.control_input.as_str());
            let bucket = &mut self.buckets[k];
            let (session, name) = bucket.session.get()?;
            let err = run_error(name);
            let g = bucket.batch;
            let n = g.min(b - first);
            bucket.x_chunk.resize(g * per_seq, 0.0);
            bucket.x_chunk.fill(0.0);
            bucket.x_chunk[..n * per_seq].copy_from_slice(&x_all[first * per_seq..(first + n) * per_seq]);
            // padding rows repeat the chunk's last row: their outputs are not read
            let row = |k: usize| first + k.min(n - 1);
            let t_chunk: Vec<i64> = (0..g).map(|k| t[row(k)]).collect();
            let t_tensor = TensorRef::from_array_view(([g], &t_chunk[..])).map_err(&err)?;
            let x_tensor = bucket.staging.input(precision, [g, l, d], &bucket.x_chunk).map_err(&err)?;
            let (mut tags, mut wanted) = (Vec::new(), Vec::new());
            for k in 0..g {
                match targets[row(k)] {
                    Target::Tags(v) => tags.extend_from_slice(v),
                    Target::Wanted(v) => wanted.extend_from_slice(v),
                }
            }
            let control = if wanted.is_empty() {
                TensorRef::from_array_view(([g, tags.len() / g], &tags[..])).map(|v| v.into_dyn())
            } else {
                TensorRef::from_array_view(([g, wanted.len() / g], &wanted[..])).map(|v| v.into_dyn())
            }
            .map_err(&err)?;
            let inputs = ort::inputs!["x" => x_tensor, "t" => t_tensor, control_input => control];
            let outputs = session.run(inputs).map_err(&err)?;
            let (_, losses) = outputs[0].try_extract_tensor::<f32>().map_err(&err)?;
            loss[first..first + n].copy_from_slice(&losses[..n]);
            let out = grad.iter_mut().skip(first * per_seq).take(n * per_seq);
            read_output(&outputs[1], precision, out, |o, v| *o = v).map_err(&err)?;
            first += n;
        }
        Ok(())
    }

    /// Finish ONNX Runtime's profiles (sessions opened with `profile_dir`) of the buckets that
    /// were opened: their files.
    fn end_profiling(&mut self) -> Result<Vec<PathBuf>, InferenceError> {
        self.buckets.iter_mut().filter_map(|b| b.session.opened()).map(|(s, name)| end_profiling(s, name)).collect()
    }
}
