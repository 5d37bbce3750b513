//! Classifier guidance: the exported gradient graphs `(x, t, control) -> (loss, grad)` as the
//! sampler's [`Guide`]s, every row with its own t and target. The graphs have a fixed batch;
//! this pads and chunks to it.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use ort::session::Session;
use ort::value::TensorRef;

use super::session::{contiguous, end_profiling, open_session, Device, SessionOptions};
use super::staging::{read_output, Staging};
use super::{run_error, OrtRuntime};
use crate::error::{InferenceError, LoadError};
use crate::manifest::{Control, Graph, Precision};
use crate::sampler::{Guide, Target};

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

impl Guide for GuideSession {
    fn grad(
        &mut self,
        x: &Array3<f32>,
        t: &[i64],
        targets: &[&Target],
        grad: &mut Array3<f32>,
        loss: &mut [f32],
    ) -> Result<(), InferenceError> {
        let err = run_error(&self.name);
        let (b, l, d) = x.dim();
        let (g, per_seq) = (self.batch, l * d);
        let x_all = contiguous(x);
        self.x_chunk.resize(g * per_seq, 0.0);
        for first in (0..b).step_by(g) {
            let n = g.min(b - first);
            self.x_chunk.fill(0.0);
            self.x_chunk[..n * per_seq].copy_from_slice(&x_all[first * per_seq..(first + n) * per_seq]);
            // padding rows repeat the chunk's last row: their outputs are not read
            let row = |k: usize| first + k.min(n - 1);
            let t_chunk: Vec<i64> = (0..g).map(|k| t[row(k)]).collect();
            let t_tensor = TensorRef::from_array_view(([g], &t_chunk[..])).map_err(&err)?;
            let x_tensor = self.staging.input(self.precision, [g, l, d], &self.x_chunk).map_err(&err)?;
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
            let inputs = ort::inputs!["x" => x_tensor, "t" => t_tensor, self.control_input.as_str() => control];
            let outputs = self.session.run(inputs).map_err(&err)?;
            let (_, losses) = outputs[0].try_extract_tensor::<f32>().map_err(&err)?;
            loss[first..first + n].copy_from_slice(&losses[..n]);
            let out = grad.iter_mut().skip(first * per_seq).take(n * per_seq);
            read_output(&outputs[1], self.precision, out, |o, v| *o = v).map_err(&err)?;
        }
        Ok(())
    }
}
