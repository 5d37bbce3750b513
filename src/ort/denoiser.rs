//! The exported denoiser `(x [B,L,d], t [B]) -> x0_hat [B,L,d]`, fp32 or fp16, as the
//! sampler's [`Denoiser`]; a self-conditioned graph has a third input, `x0_hat_prev [B,L,d]`,
//! and a graph with the clamping head a second output, `nearest [B,L,K]`: the ids of x0_hat's
//! K nearest word embeddings per position ([`Denoiser::nearest`]).

use std::path::{Path, PathBuf};

use ndarray::Array3;
use ort::session::Session;
use ort::value::TensorRef;

use super::providers::{ClampOn, Device, SessionOptions};
use super::session::{contiguous, end_profiling, open_session};
use super::staging::{copy_output, read_output, Staging};
use super::{run_error, OrtRuntime};
use crate::error::{InferenceError, LoadError};
use crate::manifest::{Dim, Graph, Precision};
use crate::sampler::{Denoiser, Nearest};

pub struct OrtDenoiser {
    session: Session,
    name: String,
    precision: Precision,
    pub device: Device,
    /// The graph declares the input x0_hat_prev.
    self_condition: bool,
    staging: Staging,
    staging_prev: Staging,
    /// x0_hat_prev when the caller gives none: zeros.
    zeros: Vec<f32>,
    /// K of the graph's `nearest` output, when it has one and the sampler is to use it.
    nearest_k: Option<usize>,
    /// `nearest` of the last call, [B, L, K] (empty before the first, or after a failed one).
    nearest: Vec<i64>,
}

/// The self-conditioning input's name in the graph and the manifest.
pub const SELF_CONDITION_INPUT: &str = "x0_hat_prev";
/// The clamping head's output: the ids of the K nearest word embeddings per position.
pub const NEAREST_OUTPUT: &str = "nearest";

impl OrtDenoiser {
    pub fn open(runtime: &OrtRuntime, dir: &Path, graph: &Graph, opts: &SessionOptions) -> Result<Self, LoadError> {
        let (session, device) = open_session(runtime, dir, graph, opts)?;
        let (name, precision) = (graph.name.clone(), graph.precision);
        let self_condition = graph.inputs.iter().any(|i| i.name == SELF_CONDITION_INPUT);
        let (staging, staging_prev, zeros) = (Staging::default(), Staging::default(), Vec::new());
        let nearest_k = graph.outputs.get(1).filter(|o| o.name == NEAREST_OUTPUT && opts.clamp_on == ClampOn::Engine);
        let nearest_k = nearest_k.and_then(|o| match o.shape.get(2) {
            Some(Dim::Fixed(k)) => Some(*k),
            _ => None, // the manifest check requires a fixed K
        });
        let nearest = Vec::new();
        Ok(Self { session, name, precision, device, self_condition, staging, staging_prev, zeros, nearest_k, nearest })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }
}

impl Denoiser for OrtDenoiser {
    fn denoise(
        &mut self,
        x: &Array3<f32>,
        t: &[i64],
        x0_hat_prev: Option<&Array3<f32>>,
        out: &mut Array3<f32>,
    ) -> Result<(), InferenceError> {
        let (name, err) = (&self.name, run_error(&self.name));
        let (b, l, d) = x.dim();
        let x_flat = contiguous(x);
        let x_tensor = self.staging.input(self.precision, [b, l, d], &x_flat).map_err(&err)?;
        let t_tensor = TensorRef::from_array_view(([b], t)).map_err(&err)?;
        let outputs = if self.self_condition {
            let prev = match x0_hat_prev.filter(|p| p.dim() == (b, l, d)) {
                Some(p) => contiguous(p),
                None => {
                    self.zeros.clear();
                    self.zeros.resize(b * l * d, 0.0);
                    std::borrow::Cow::Borrowed(&self.zeros[..])
                }
            };
            let prev_tensor = self.staging_prev.input(self.precision, [b, l, d], &prev).map_err(&err)?;
            let inputs = ort::inputs!["x" => x_tensor, "t" => t_tensor, SELF_CONDITION_INPUT => prev_tensor];
            self.session.run(inputs).map_err(&err)?
        } else {
            self.session.run(ort::inputs!["x" => x_tensor, "t" => t_tensor]).map_err(&err)?
        };
        self.nearest.clear();
        let shape = match out.as_slice_mut() {
            Some(out) => copy_output(&outputs[0], self.precision, out),
            None => read_output(&outputs[0], self.precision, out.iter_mut(), |o, v| *o = v),
        }
        .map_err(&err)?;
        check_shape(name, "x0_hat", &shape, &[b, l, d])?;
        if let Some(k) = self.nearest_k {
            let (shape, ids) = outputs[NEAREST_OUTPUT].try_extract_tensor::<i64>().map_err(&err)?;
            check_shape(name, NEAREST_OUTPUT, shape, &[b, l, k])?;
            self.nearest.extend_from_slice(ids);
        }
        Ok(())
    }

    fn nearest_on_engine(&self) -> bool {
        self.nearest_k.is_some()
    }

    fn nearest(&self) -> Option<Nearest<'_>> {
        let k = self.nearest_k?;
        (!self.nearest.is_empty()).then_some(Nearest { k, ids: &self.nearest })
    }

    fn self_conditioned(&self) -> bool {
        self.self_condition
    }

    /// Finish ONNX Runtime's profile (sessions opened with `profile_dir`): its file.
    fn end_profiling(&mut self) -> Result<Vec<PathBuf>, InferenceError> {
        Ok(vec![end_profiling(&mut self.session, &self.name)?])
    }
}

fn check_shape(graph: &str, output: &str, actual: &[i64], expected: &[usize]) -> Result<(), InferenceError> {
    if actual.iter().map(|&s| s as usize).ne(expected.iter().copied()) {
        return Err(InferenceError::OutputShape {
            graph: graph.to_string(),
            output: output.into(),
            actual: actual.to_vec(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}
