//! The exported denoiser `(x [B,L,d], t [B]) -> x0_hat [B,L,d]`, fp32 or fp16, as the
//! sampler's [`Denoiser`]; a self-conditioned graph has a third input, `x0_hat_prev [B,L,d]`,
//! and a graph with the clamping head a second output, `nearest [B,L,K]`: the ids of x0_hat's
//! K nearest word embeddings per position ([`Denoiser::nearest`]). Its tensors go with each
//! call, or stay bound at fixed addresses ([`super::bound`], `--binding`).

use std::path::{Path, PathBuf};

use ndarray::Array3;
use ort::memory::AllocationDevice;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef};

use super::bound::{Binding, Bound, Io, Spec};
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
    /// The graph's outputs after x0_hat: `nearest`'s K when it has the clamping head.
    graph_nearest_k: Option<usize>,
    /// Tensors bound at fixed addresses (`--binding fixed` or `cuda-graph`).
    bound: Option<Bound>,
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
        let graph_nearest_k =
            graph.outputs.get(1).filter(|o| o.name == NEAREST_OUTPUT).and_then(|o| match o.shape.get(2) {
                Some(Dim::Fixed(k)) => Some(*k),
                _ => None, // the manifest check requires a fixed K
            });
        let nearest_k = graph_nearest_k.filter(|_| opts.clamp_on == ClampOn::Engine);
        let bound = match opts.binding {
            Binding::PerRun => None,
            binding => {
                // a session that fell back to the CPU (--allow-fallback, fixed) binds host memory
                let (memory, graphs) = match device {
                    Device::Cpu => (AllocationDevice::CPU, false),
                    _ => (AllocationDevice::CUDA, binding == Binding::CudaGraph),
                };
                let bound = Bound::new(&session, &name, memory, graphs).map_err(|e| LoadError::Provider {
                    provider: device.name(),
                    reason: format!("binding {name}: {e}"),
                })?;
                Some(bound)
            }
        };
        Ok(Self {
            session,
            name,
            precision,
            device,
            self_condition,
            staging,
            staging_prev,
            zeros,
            nearest_k,
            nearest: Vec::new(),
            graph_nearest_k,
            bound,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// [`Denoiser::denoise`] through the tensors bound for this shape.
    fn denoise_bound(
        &mut self,
        bound: &mut Bound,
        x: &Array3<f32>,
        t: &[i64],
        x0_hat_prev: Option<&Array3<f32>>,
        out: &mut Array3<f32>,
    ) -> Result<(), InferenceError> {
        let err = run_error(&self.name);
        let (b, l, d) = x.dim();
        let float = if self.precision.is_half() { TensorElementType::Float16 } else { TensorElementType::Float32 };
        let (self_condition, nearest_k_out) = (self.self_condition, self.graph_nearest_k);
        let specs = || {
            let spec = |name, ty, shape: &[usize]| Spec { name, ty, shape: shape.to_vec() };
            let mut inputs = vec![spec("x", float, &[b, l, d]), spec("t", TensorElementType::Int64, &[b])];
            if self_condition {
                inputs.push(spec(SELF_CONDITION_INPUT, float, &[b, l, d]));
            }
            let mut outputs = vec![spec("x0_hat", float, &[b, l, d])];
            if let Some(k) = nearest_k_out {
                outputs.push(spec(NEAREST_OUTPUT, TensorElementType::Int64, &[b, l, k]));
            }
            (inputs, outputs)
        };
        let prev = self.self_condition.then(|| prev_or_zeros(x0_hat_prev, (b, l, d), &mut self.zeros));
        let x_flat = contiguous(x);
        let write = |io: &mut Io<'_>| {
            io.write_floats(0, &x_flat)?;
            io.write_ids(1, t)?;
            prev.as_ref().map_or(Ok(()), |prev| io.write_floats(2, prev))
        };
        let (precision, nearest_k, nearest) = (self.precision, self.nearest_k, &mut self.nearest);
        nearest.clear();
        let read = |io: &Io<'_>| -> ort::Result<()> {
            match out.as_slice_mut() {
                Some(out) => copy_output(io.output(0), precision, out),
                None => read_output(io.output(0), precision, out.iter_mut(), |o, v| *o = v),
            }?;
            if nearest_k.is_some() {
                nearest.extend_from_slice(io.output(1).try_extract_tensor::<i64>()?.1);
            }
            Ok(())
        };
        bound.run(&mut self.session, [b, l, d], specs, write, read).and_then(|read| read).map_err(err)
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
        if let Some(mut bound) = self.bound.take() {
            let result = self.denoise_bound(&mut bound, x, t, x0_hat_prev, out);
            self.bound = Some(bound);
            return result;
        }
        let (name, err) = (&self.name, run_error(&self.name));
        let (b, l, d) = x.dim();
        let x_flat = contiguous(x);
        let x_tensor = self.staging.input(self.precision, [b, l, d], &x_flat).map_err(&err)?;
        let t_tensor = TensorRef::from_array_view(([b], t)).map_err(&err)?;
        let outputs = if self.self_condition {
            let prev = prev_or_zeros(x0_hat_prev, (b, l, d), &mut self.zeros);
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

/// x0_hat_prev's values, or zeros (in the reused `zeros`) when the caller gives none of `dim`.
fn prev_or_zeros<'a>(
    prev: Option<&'a Array3<f32>>,
    dim: (usize, usize, usize),
    zeros: &'a mut Vec<f32>,
) -> std::borrow::Cow<'a, [f32]> {
    match prev.filter(|p| p.dim() == dim) {
        Some(p) => contiguous(p),
        None => {
            zeros.clear();
            zeros.resize(dim.0 * dim.1 * dim.2, 0.0);
            std::borrow::Cow::Borrowed(&zeros[..])
        }
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
