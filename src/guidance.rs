//! Classifier guidance: the exported gradient graphs `(x, t, control) -> (loss, grad)` behind
//! the sampler's [`Guide`] trait. The graphs have a fixed batch; this pads and chunks to it.

use std::path::Path;

use half::f16;
use half::slice::HalfFloatSliceExt;
use ndarray::Array3;
use ort::session::Session;
use ort::value::TensorRef;

use crate::error::{InferenceError, LoadError};
use crate::manifest::{Control, Graph, Precision};
use crate::ortlib::OrtRuntime;
use crate::session::{contiguous, open_session, Device, SessionOptions};

/// "Given x, t, give d loss / d x": what the sampler needs from a control.
pub trait Guide {
    /// Adds `weight * d loss / d x` at x [B, L, d], timestep t, into `grad`.
    fn add_grad(&mut self, x: &Array3<f32>, t: &[i64], grad: &mut Array3<f32>) -> Result<(), InferenceError>;
}

/// One control's guidance graph, loaded once.
pub struct GuideSession {
    session: Session,
    name: String,
    precision: Precision,
    batch: usize,
    control_input: String,
    pub device: Device,
    /// Padded input staging, reused across calls (K per diffusion step).
    x_chunk: Vec<f32>,
    x_half: Vec<f16>,
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
            batch: control.input.shape.first().copied().unwrap_or(1),
            control_input: control.input.name.clone(),
            device,
            x_chunk: Vec::new(),
            x_half: Vec::new(),
        })
    }

    /// Finish ONNX Runtime's profile (sessions opened with `profile_dir`); returns its file.
    pub fn end_profiling(&mut self) -> Result<std::path::PathBuf, InferenceError> {
        crate::session::end_profiling(&mut self.session, &self.name)
    }
}

/// The control's target, the same for every sequence of a request.
#[derive(Debug, Clone)]
pub enum Target {
    Tags(Vec<i64>),
    Wanted(Vec<f32>),
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
    pub fn new(session: &'a mut GuideSession, target: Target) -> Self {
        Self::with_targets(session, vec![target])
    }

    pub fn with_targets(session: &'a mut GuideSession, targets: Vec<Target>) -> Self {
        let padded = targets
            .into_iter()
            .map(|target| match target {
                Target::Tags(row) => Target::Tags(row.repeat(session.batch)),
                Target::Wanted(row) => Target::Wanted(row.repeat(session.batch)),
            })
            .collect();
        Self { session, weight: 1.0, last_loss: Vec::new(), padded }
    }
}

impl Guide for BoundGuide<'_> {
    fn add_grad(&mut self, x: &Array3<f32>, t: &[i64], grad: &mut Array3<f32>) -> Result<(), InferenceError> {
        let s = &mut *self.session;
        let (b, l, d) = x.dim();
        let g = s.batch;
        let per_seq = l * d;
        let name = s.name.clone();
        let run_err = |source| InferenceError::Run { graph: name.clone(), source };
        let x_all = contiguous(x);
        let (x_chunk, x_half) = (&mut s.x_chunk, &mut s.x_half);
        x_chunk.resize(g * per_seq, 0.0);
        x_half.resize(if s.precision == Precision::Fp16 { g * per_seq } else { 0 }, f16::ZERO);
        self.last_loss.clear();
        self.last_loss.resize(b, 0.0);
        for (padded, first) in self.padded.iter().flat_map(|p| (0..b).step_by(g).map(move |f| (p, f))) {
            let n = g.min(b - first);
            x_chunk.fill(0.0);
            x_chunk[..n * per_seq].copy_from_slice(&x_all[first * per_seq..(first + n) * per_seq]);
            let t_chunk: Vec<i64> = (0..g).map(|k| t[(first + k).min(b - 1)]).collect();
            let t_tensor = TensorRef::from_array_view(([g], &t_chunk[..])).map_err(run_err)?;
            let shape = [g, l, d];
            let x_tensor = match s.precision {
                Precision::Fp32 => TensorRef::from_array_view((shape, &x_chunk[..])).map_err(run_err)?.into_dyn(),
                Precision::Fp16 => {
                    x_half.convert_from_f32_slice(x_chunk);
                    TensorRef::from_array_view((shape, &x_half[..])).map_err(run_err)?.into_dyn()
                }
            };
            let control = match padded {
                Target::Tags(rows) => {
                    TensorRef::from_array_view(([g, rows.len() / g], &rows[..])).map_err(run_err)?.into_dyn()
                }
                Target::Wanted(rows) => {
                    TensorRef::from_array_view(([g, rows.len() / g], &rows[..])).map_err(run_err)?.into_dyn()
                }
            };
            let inputs = ort::inputs!["x" => x_tensor, "t" => t_tensor, s.control_input.as_str() => control];
            let outputs = s.session.run(inputs).map_err(run_err)?;
            let (_, losses) = outputs[0].try_extract_tensor::<f32>().map_err(run_err)?;
            self.last_loss[first..first + n].iter_mut().zip(&losses[..n]).for_each(|(l, v)| *l += v);
            let out = grad.iter_mut().skip(first * per_seq).take(n * per_seq);
            match s.precision {
                Precision::Fp32 => {
                    let (_, values) = outputs[1].try_extract_tensor::<f32>().map_err(run_err)?;
                    out.zip(values).for_each(|(o, v)| *o += self.weight * v);
                }
                Precision::Fp16 => {
                    let (_, values) = outputs[1].try_extract_tensor::<f16>().map_err(run_err)?;
                    out.zip(values).for_each(|(o, v)| *o += self.weight * v.to_f32());
                }
            }
        }
        Ok(())
    }
}
