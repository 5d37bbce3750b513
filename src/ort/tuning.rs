//! ONNX Runtime's CPU-side settings that change speed, not results: the graph optimisation
//! level and the CPU memory arena of each session ([`Tuning`]), and whether the shared
//! intra-op pool's threads spin while they wait for work (given to [`super::OrtRuntime::load`]).
//! The defaults are what measured fastest on a 2-core CPU (docs/benchmarks.md, "Session
//! settings").

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::AsPointer;

/// ONNX Runtime's graph optimisation level for every session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphOpt {
    /// No graph rewrites (the graph as exported).
    Disable,
    /// Constant folding and redundant-node elimination.
    Basic,
    /// Basic, and the fusions of the CPU and CUDA providers (LayerNorm, GELU, MatMul+Add...).
    Extended,
    /// Extended, and memory layout optimisations (ONNX Runtime's level 3).
    #[default]
    Layout,
    /// Every optimisation ONNX Runtime has (its ORT_ENABLE_ALL).
    All,
}

impl From<GraphOpt> for GraphOptimizationLevel {
    fn from(level: GraphOpt) -> Self {
        match level {
            GraphOpt::Disable => GraphOptimizationLevel::Disable,
            GraphOpt::Basic => GraphOptimizationLevel::Level1,
            GraphOpt::Extended => GraphOptimizationLevel::Level2,
            GraphOpt::Layout => GraphOptimizationLevel::Level3,
            GraphOpt::All => GraphOptimizationLevel::All,
        }
    }
}

/// The intra-op thread pool every session shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadPool {
    /// 0: ONNX Runtime decides (one per core).
    pub threads: usize,
    /// Its threads spin a while for work before they sleep (ONNX Runtime's default).
    pub spin: bool,
}

impl ThreadPool {
    /// `threads` threads with ONNX Runtime's default, spinning (the CLI's default too).
    pub fn of(threads: usize) -> Self {
        Self { threads, spin: true }
    }
}

/// Per-session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub graph_opt: GraphOpt,
    /// ONNX Runtime's CPU memory arena (pooled buffers for intermediate tensors); off: every
    /// buffer from the system allocator.
    pub cpu_arena: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Self { graph_opt: GraphOpt::default(), cpu_arena: true }
    }
}

impl Tuning {
    pub fn apply(&self, builder: SessionBuilder) -> ort::Result<SessionBuilder> {
        let mut builder = builder.with_optimization_level(self.graph_opt.into())?;
        if !self.cpu_arena {
            // SAFETY: a valid OrtSessionOptions owned by `builder`; the status is released by
            // Error::result_from_status.
            let status = unsafe { (ort::api().DisableCpuMemArena)(builder.ptr_mut()) };
            unsafe { ort::Error::result_from_status(status) }?;
        }
        Ok(builder)
    }
}
