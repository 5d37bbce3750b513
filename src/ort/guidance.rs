//! Classifier guidance: the exported gradient graphs `(x, t, control) -> (loss, grad)` as the
//! sampler's [`Guide`]s. The graphs have a fixed batch; this pads and chunks to it.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use ort::session::Session;
use ort::value::TensorRef;

use super::session::{contiguous, end_profiling, open_session, Device, SessionOptions};
use super::staging::{read_output, Staging};
use super::{run_error, OrtRuntime};
use crate::error::{InferenceError, LoadError};
use crate::manifest::{Control, Graph, Precision};
use crate::sampler::Guide;

/// One control's guidance graph, loaded once.
pub struct GuideSession {
    session: Session,
    name: String,
    precision: Precision,
    batch: usize,
    control_input: String,
    pub device: Device,
    /// Padded input, reused across calls (K per diffusion step).
    x_chunk: Vec<f32>,
    staging: Staging,
}

impl GuideSession {
    pub fn open(
        runtime: &OrtRuntime,
        dir: &Path,
        graph: &Graph,
        control: &Control,
        opts: &SessionOptions,
    ) -> Result<Self, LoadError> {
        let (session, device) = open_session(runtime, dir, graph, opts)?;
        Ok(Self {
            session,
            name: graph.name.clone(),
            precision: graph.precision,
            batch: control.input.shape.first().copied().unwrap_or(1).max(1),
            control_input: control.input.name.clone(),
            device,
            x_chunk: Vec::new(),
            staging: Staging::default(),
        })
    }

    /// Finish ONNX Runtime's profile (sessions opened with `profile_dir`); returns its file.
    pub fn end_profiling(&mut self) -> Result<PathBuf, InferenceError> {
        end_profiling(&mut self.session, &self.name)
    }
}

/// The control's target, the same for every sequence of a request.
#[derive(Debug, Clone)]
pub enum Target {
    Tags(Vec<i64>),
    Wanted(Vec<f32>),
}

impl Target {
    fn repeat(&self, n: usize) -> Self {
        match self {
            Target::Tags(row) => Target::Tags(row.repeat(n)),
            Target::Wanted(row) => Target::Wanted(row.repeat(n)),
        }
    }
}

/// A guide session bound to one request's targets (several spans: one graph call each, their
/// losses added) and weight.
pub struct BoundGuide<'a> {
    pub session: &'a mut GuideSession,
    pub weight: f32,
    /// The control loss per sequence at the last `add_grad`, summed over targets.
    pub last_loss: Vec<f32>,
    /// The targets repeated to the graph's fixed batch, built once.
    padded: Vec<Target>,
}

impl<'a> BoundGuide<'a> {
    pub fn new(session: &'a mut GuideSession, targets: &[Target], weight: f32) -> Self {
        let padded = targets.iter().map(|t| t.repeat(session.batch)).collect();
        Self { session, weight, last_loss: Vec::new(), padded }
    }
}

impl Guide for BoundGuide<'_> {
    fn add_grad(&mut self, x: &Array3<f32>, t: &[i64], grad: &mut Array3<f32>) -> Result<(), InferenceError> {
        let s = &mut *self.session;
        let err = run_error(&s.name);
        let (b, l, d) = x.dim();
        let (g, per_seq, weight) = (s.batch, l * d, self.weight);
        let x_all = contiguous(x);
        s.x_chunk.resize(g * per_seq, 0.0);
        self.last_loss.clear();
        self.last_loss.resize(b, 0.0);
        for (padded, first) in self.padded.iter().flat_map(|p| (0..b).step_by(g).map(move |f| (p, f))) {
            let n = g.min(b - first);
            s.x_chunk.fill(0.0);
            s.x_chunk[..n * per_seq].copy_from_slice(&x_all[first * per_seq..(first + n) * per_seq]);
            let t_chunk: Vec<i64> = (0..g).map(|k| t[(first + k).min(b - 1)]).collect();
            let t_tensor = TensorRef::from_array_view(([g], &t_chunk[..])).map_err(&err)?;
            let x_tensor = s.staging.input(s.precision, [g, l, d], &s.x_chunk).map_err(&err)?;
            let control = match padded {
                Target::Tags(rows) => {
                    TensorRef::from_array_view(([g, rows.len() / g], &rows[..])).map(|v| v.into_dyn())
                }
                Target::Wanted(rows) => {
                    TensorRef::from_array_view(([g, rows.len() / g], &rows[..])).map(|v| v.into_dyn())
                }
            }
            .map_err(&err)?;
            let inputs = ort::inputs!["x" => x_tensor, "t" => t_tensor, s.control_input.as_str() => control];
            let outputs = s.session.run(inputs).map_err(&err)?;
            let (_, losses) = outputs[0].try_extract_tensor::<f32>().map_err(&err)?;
            self.last_loss[first..first + n].iter_mut().zip(&losses[..n]).for_each(|(l, v)| *l += v);
            let out = grad.iter_mut().skip(first * per_seq).take(n * per_seq);
            read_output(&outputs[1], s.precision, out, |o, v| *o += weight * v).map_err(&err)?;
        }
        Ok(())
    }
}
