//! The precision a model is asked to run in: one the manifest names, or `auto`, which
//! [`Choice::resolve`] turns into one once the device is known.
//!
//! `auto` is int8 where that was measured to pay and to keep the sentences' quality
//! (models/e2e/EVAL.md, docs/benchmarks.md): on the CPU, one sequence per denoiser call, when
//! the model ships an int8 denoiser and the CPU multiplies int8 without saturating its sums
//! (x86-64 with AVX-512 VNNI or AVX-VNNI, aarch64 with the dot-product extension). Elsewhere it
//! is fp32: ONNX Runtime's int8 kernels on x86-64 without VNNI add pairs of products in 16 bits,
//! which can saturate; a GPU has no kernels for the dynamic quantization; and the quantization's
//! activation scale is taken over the whole call, so with several sequences per call a sentence
//! would depend on the sequences batched with it (fp32's do not).

use crate::manifest::{Manifest, Precision};
use crate::ort::Device;

/// `--precision`: auto, or a precision as the manifest spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Choice {
    /// int8 on a CPU with an exact int8 dot product, one sequence per call, when the model
    /// ships an int8 denoiser; else fp32.
    #[default]
    Auto,
    Fp32,
    Fp16,
    /// The CPU's quantized denoiser ([`Precision::Int8`]), beside fp32 guidance graphs.
    Int8,
}

impl From<Precision> for Choice {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Fp32 => Choice::Fp32,
            Precision::Fp16 => Choice::Fp16,
            Precision::Int8 => Choice::Int8,
        }
    }
}

impl Choice {
    /// The precision to load on `at.device` (already resolved: not auto): a fixed choice as
    /// it is; auto as the module says.
    pub fn resolve(self, manifest: &Manifest, at: Machine) -> Precision {
        self.explain(manifest, at).0
    }

    /// [`Choice::resolve`] and why, in words (`dlm info`).
    pub fn explain(self, manifest: &Manifest, at: Machine) -> (Precision, &'static str) {
        if let Some(given) = self.fixed() {
            return (given, "as given");
        }
        let fp32 = |why| (Precision::Fp32, why);
        if at.device != Device::Cpu {
            fp32("int8 is the CPU's; fp32 on a GPU")
        } else if at.max_batch > 1 {
            fp32("several sequences a call: int8's per-call scale would tie each to its batch-mates")
        } else if manifest.denoiser(Precision::Int8).is_none() {
            fp32("the model ships no int8 denoiser")
        } else if !at.exact_int8 {
            fp32("this CPU's int8 products can saturate (no VNNI / dotprod): fp32")
        } else {
            (Precision::Int8, "a CPU with exact int8 products and the model's int8 denoiser")
        }
    }

    /// The precision named, None for auto.
    fn fixed(self) -> Option<Precision> {
        match self {
            Choice::Auto => None,
            Choice::Fp32 => Some(Precision::Fp32),
            Choice::Fp16 => Some(Precision::Fp16),
            Choice::Int8 => Some(Precision::Int8),
        }
    }

    /// Its name on the command line and in `DLM_PRECISION`.
    pub fn name(self) -> &'static str {
        self.fixed().map_or("auto", Precision::name)
    }
}

/// What [`Choice::Auto`] depends on besides the model.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    /// The device the sessions open on (resolved: not auto).
    pub device: Device,
    /// The most sequences a denoiser call holds (`--batch`, `--max-batch`).
    pub max_batch: usize,
    /// Whether the CPU's int8 products are exact ([`exact_int8_here`]).
    pub exact_int8: bool,
}

impl Machine {
    /// `device` and `max_batch` on this CPU.
    pub fn here(device: Device, max_batch: usize) -> Self {
        Self { device, max_batch, exact_int8: exact_int8_here() }
    }
}

/// Whether this CPU has an int8 dot product whose sums do not saturate.
pub fn exact_int8_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni") || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fake;

    fn at(device: Device, max_batch: usize, exact_int8: bool) -> Machine {
        Machine { device, max_batch, exact_int8 }
    }

    #[test]
    fn auto_is_int8_only_on_a_cpu_with_exact_int8_one_sequence_a_call_and_a_model_that_ships_it() {
        let with = fake::manifest_with_denoisers(&[Precision::Fp32, Precision::Fp16, Precision::Int8]);
        let without = fake::manifest_with_denoisers(&[Precision::Fp32, Precision::Fp16]);
        assert_eq!(Choice::Auto.resolve(&with, at(Device::Cpu, 1, true)), Precision::Int8);
        assert_eq!(Choice::Auto.resolve(&with, at(Device::Cpu, 1, false)), Precision::Fp32);
        assert_eq!(Choice::Auto.resolve(&with, at(Device::Cpu, 2, true)), Precision::Fp32);
        assert_eq!(Choice::Auto.resolve(&without, at(Device::Cpu, 1, true)), Precision::Fp32);
        for gpu in [Device::Cuda, Device::Tensorrt] {
            assert_eq!(Choice::Auto.resolve(&with, at(gpu, 1, true)), Precision::Fp32);
        }
        let (_, why) = Choice::Auto.explain(&with, at(Device::Cpu, 16, true));
        assert!(why.contains("batch-mates"), "{why}");
    }

    #[test]
    fn a_fixed_choice_is_kept_whatever_the_machine() {
        let without = fake::manifest_with_denoisers(&[Precision::Fp32]);
        for p in [Precision::Fp32, Precision::Fp16, Precision::Int8] {
            for machine in [at(Device::Cpu, 1, true), at(Device::Cpu, 16, false), at(Device::Cuda, 1, true)] {
                assert_eq!(Choice::from(p).explain(&without, machine), (p, "as given"));
            }
        }
        assert_eq!(Choice::default(), Choice::Auto);
        assert_eq!(Choice::Int8.name(), "int8");
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn exact_int8_is_what_the_kernel_reports_of_this_cpu() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).expect("a flags line");
        let vnni = flags.split_whitespace().any(|f| f == "avx512_vnni" || f == "avx_vnni");
        assert_eq!(exact_int8_here(), vnni, "{flags}");
    }
}
