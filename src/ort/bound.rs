//! The denoiser's inputs and outputs bound once per shape at fixed addresses in the session's
//! device memory (ONNX Runtime's I/O binding): what CUDA graphs need, since a captured graph
//! replays on the addresses it was captured with. Each run writes the host's values into host
//! tensors, copies them into the bound ones (on the CPU they are the same tensors) and reads
//! the outputs back the same way. With CUDA graphs each shape gets its own graph, captured on
//! its first runs and replayed after (ONNX Runtime's `gpu_graph_id`; the CUDA provider's, as
//! TensorRT's keeps one graph per session whatever the id).

use half::f16;
use half::slice::HalfFloatSliceExt;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, NoSelectedOutputs, RunOptions, Session};
use ort::value::{DynTensor, Tensor, TensorElementType};

/// How the denoiser's inputs and outputs reach its session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Binding {
    /// Given with each run (ONNX Runtime copies them to the device and back each time).
    #[default]
    PerRun,
    /// Bound once per shape at fixed addresses in the device's memory (I/O binding).
    Fixed,
    /// Fixed, and each shape's runs captured into a CUDA graph and replayed (`--device cuda`).
    CudaGraph,
}

/// The provider options that turn CUDA graphs on, by provider name. dlm sets CUDA's on the
/// denoiser's session alone (`--binding cuda-graph`): given by hand they would reach every
/// graph, and a graph run unbound would replay on stale addresses. TensorRT's is refused too:
/// it captures only where TensorRT takes every node (the fused Attention nodes run on CUDA),
/// and it keeps one graph whatever the shape.
pub const GRAPH_OPTIONS: [(&str, &str); 2] = [("cuda", "enable_cuda_graph"), ("tensorrt", "trt_cuda_graph_enable")];

/// Shapes that get a captured graph; a shape past them runs bound but uncaptured.
pub const MAX_GRAPHS: usize = 32;
/// Uncaptured shapes kept bound at once (the least recently used leaves first): every batch of
/// `dlm serve`'s default --max-batch at one length.
pub const MAX_UNCAPTURED: usize = 16;
/// ONNX Runtime's run option naming the graph a run captures or replays: -1 for none, 0 kept
/// for its own use.
const GRAPH_ID: &str = "gpu_graph_id";

/// One bound tensor: `host` is what dlm writes and reads; `device`, where it differs from the
/// host's memory, is what the session sees (copied to before a run, from after it).
struct Slot {
    name: String,
    host: DynTensor,
    device: Option<DynTensor>,
}

impl Slot {
    fn new(name: &str, ty: TensorElementType, shape: &[usize], device: Option<&Allocator>) -> ort::Result<Self> {
        let host = tensor(&Allocator::default(), ty, shape)?;
        let device = device.map(|allocator| tensor(allocator, ty, shape)).transpose()?;
        Ok(Self { name: name.to_string(), host, device })
    }

    fn bound(&self) -> &DynTensor {
        self.device.as_ref().unwrap_or(&self.host)
    }

    fn upload(&mut self) -> ort::Result<()> {
        match self.device.as_mut() {
            Some(device) => self.host.copy_into(device),
            None => Ok(()),
        }
    }

    fn download(&mut self) -> ort::Result<()> {
        match self.device.as_ref() {
            Some(device) => device.copy_into(&mut self.host),
            None => Ok(()),
        }
    }
}

fn tensor(allocator: &Allocator, ty: TensorElementType, shape: &[usize]) -> ort::Result<DynTensor> {
    let shape = shape.to_vec();
    Ok(match ty {
        TensorElementType::Float32 => Tensor::<f32>::new(allocator, shape)?.upcast(),
        TensorElementType::Float16 => Tensor::<f16>::new(allocator, shape)?.upcast(),
        TensorElementType::Int64 => Tensor::<i64>::new(allocator, shape)?.upcast(),
        other => return Err(ort::Error::new(format!("no bound tensors of {other:?} (f32, f16, i64)"))),
    })
}

/// A tensor of the denoiser's signature at one shape: name, element type, dimensions.
pub struct Spec<'a> {
    pub name: &'a str,
    pub ty: TensorElementType,
    pub shape: Vec<usize>,
}

/// The tensors and binding of one shape.
struct Shape {
    key: [usize; 3],
    binding: IoBinding,
    options: RunOptions<NoSelectedOutputs>,
    inputs: Vec<Slot>,
    outputs: Vec<Slot>,
    /// Its CUDA graph's id (from 1), when it has one.
    graph: Option<usize>,
    last_used: u64,
}

/// The bound shapes of one session.
pub struct Bound {
    /// The graph's name, for the log.
    name: String,
    /// The session's device memory; None on the CPU, where the bound tensors are the host's.
    device: Option<Allocator>,
    graphs: bool,
    shapes: Vec<Shape>,
    runs: u64,
}

/// Where [`Bound::run`]'s caller reads and writes a shape's tensors, by position in its specs.
pub struct Io<'s> {
    inputs: &'s mut [Slot],
    outputs: &'s [Slot],
}

impl Io<'_> {
    /// Input `i` from f32 values, converted to its element type (f32 or f16).
    pub fn write_floats(&mut self, i: usize, values: &[f32]) -> ort::Result<()> {
        let slot = &mut self.inputs[i];
        if matches!(slot.host.data_type(), TensorElementType::Float16) {
            let (_, dst) = slot.host.try_extract_tensor_mut::<f16>()?;
            same_len(&slot.name, dst.len(), values.len())?;
            dst.convert_from_f32_slice(values);
        } else {
            let (_, dst) = slot.host.try_extract_tensor_mut::<f32>()?;
            same_len(&slot.name, dst.len(), values.len())?;
            dst.copy_from_slice(values);
        }
        Ok(())
    }

    pub fn write_ids(&mut self, i: usize, values: &[i64]) -> ort::Result<()> {
        let slot = &mut self.inputs[i];
        let (_, dst) = slot.host.try_extract_tensor_mut::<i64>()?;
        same_len(&slot.name, dst.len(), values.len())?;
        dst.copy_from_slice(values);
        Ok(())
    }

    /// Output `i` (after the run), its host tensor.
    pub fn output(&self, i: usize) -> &DynTensor {
        &self.outputs[i].host
    }
}

fn same_len(name: &str, bound: usize, given: usize) -> ort::Result<()> {
    if bound == given {
        return Ok(());
    }
    Err(ort::Error::new(format!("{name}: {given} values for a bound tensor of {bound}")))
}

impl Bound {
    /// Binding for the session of graph `name` in `device` memory (cpu, or cuda for the CUDA
    /// and TensorRT providers); with `graphs`, each shape's runs capture and replay a CUDA graph.
    pub fn new(session: &Session, name: &str, device: AllocationDevice, graphs: bool) -> ort::Result<Self> {
        let device = if device == AllocationDevice::CPU {
            None
        } else {
            let memory = MemoryInfo::new(device, 0, AllocatorType::Device, MemoryType::Default)?;
            Some(Allocator::new(session, memory)?)
        };
        Ok(Self { name: name.to_string(), device, graphs, shapes: Vec::new(), runs: 0 })
    }

    /// One run of `session` at the shape `key` ([B, L, d] of its input x): its tensors are
    /// bound on the shape's first run, as `specs` (inputs, outputs) give them; `write` fills
    /// the inputs, `read` takes the outputs.
    pub fn run<'s, T>(
        &mut self,
        session: &mut Session,
        key: [usize; 3],
        specs: impl FnOnce() -> (Vec<Spec<'s>>, Vec<Spec<'s>>),
        write: impl FnOnce(&mut Io<'_>) -> ort::Result<()>,
        read: impl FnOnce(&Io<'_>) -> T,
    ) -> ort::Result<T> {
        self.runs += 1;
        let at = match self.shapes.iter().position(|s| s.key == key) {
            Some(at) => at,
            None => {
                let (inputs, outputs) = specs();
                self.add(session, key, &inputs, &outputs)?
            }
        };
        let shape = &mut self.shapes[at];
        shape.last_used = self.runs;
        let mut io = Io { inputs: &mut shape.inputs, outputs: &shape.outputs };
        write(&mut io)?;
        shape.inputs.iter_mut().try_for_each(Slot::upload)?;
        if shape.graph.is_none() {
            // where the session wants an input elsewhere than it is bound (a node on the CPU),
            // ONNX Runtime copies it when it is bound: bound again, each run sees this run's
            // values (a captured shape has no such node: ONNX Runtime refuses to capture one)
            for slot in &shape.inputs {
                shape.binding.bind_input(slot.name.clone(), slot.bound())?;
            }
        }
        session.run_binding_with_options(&shape.binding, &shape.options)?;
        shape.outputs.iter_mut().try_for_each(Slot::download)?;
        Ok(read(&Io { inputs: &mut shape.inputs, outputs: &shape.outputs }))
    }

    fn add(
        &mut self,
        session: &Session,
        key: [usize; 3],
        inputs: &[Spec<'_>],
        outputs: &[Spec<'_>],
    ) -> ort::Result<usize> {
        let graphs = self.shapes.iter().filter(|s| s.graph.is_some()).count();
        // captured shapes stay (ONNX Runtime keeps their graphs for the session's life)
        let graph = (self.graphs && graphs < MAX_GRAPHS).then_some(graphs + 1);
        if graph.is_none() && self.shapes.len() - graphs >= MAX_UNCAPTURED {
            let uncaptured = (0..self.shapes.len()).filter(|&i| self.shapes[i].graph.is_none());
            if let Some(i) = uncaptured.min_by_key(|&i| self.shapes[i].last_used) {
                self.shapes.remove(i);
            }
        }
        let slots = |specs: &[Spec<'_>]| -> ort::Result<Vec<Slot>> {
            specs.iter().map(|s| Slot::new(s.name, s.ty, &s.shape, self.device.as_ref())).collect()
        };
        let (inputs, mut outputs) = (slots(inputs)?, slots(outputs)?);
        let mut binding = session.create_binding()?;
        for slot in &inputs {
            binding.bind_input(slot.name.clone(), slot.bound())?;
        }
        for slot in &mut outputs {
            // the binding shares the tensor: what the run writes, this slot reads
            binding.bind_output(slot.name.clone(), slot.device.as_mut().unwrap_or(&mut slot.host))?;
        }
        let mut options = RunOptions::new()?;
        if self.graphs {
            // every run of a capturing session names its graph: ids from 1 (ONNX Runtime keeps
            // 0), -1 for a shape that runs without one
            options.set(GRAPH_ID, graph.map_or(-1, |id| id as i64).to_string())?;
        }
        match graph {
            Some(id) => log::info!("{}: bound at x {key:?}, CUDA graph {id} (captured on its first runs)", self.name),
            None => log::info!("{}: bound at x {key:?}", self.name),
        }
        self.shapes.push(Shape { key, binding, options, inputs, outputs, graph, last_used: self.runs });
        Ok(self.shapes.len() - 1)
    }
}
