//! `--device auto`: TensorRT when this build, the loaded library and the machine offer it,
//! else CUDA, else the CPU. The choice is [`choose`], a pure function of what the build has,
//! what the library offers (its available providers) and which GPU device node exists; the
//! model's loader applies it ([`SessionOptions::resolved`]) and logs it, `dlm info` shows it.
//! A chosen GPU provider that then fails to open is an error, as when it is asked for by name
//! (`--allow-fallback` runs on the CPU instead).

use std::path::{Path, PathBuf};

use super::bound::Binding;
use super::providers::{self, Device, Provider, SessionOptions};
use super::OrtRuntime;

/// The device nodes of an NVIDIA GPU: a discrete one's (`nvidia0`, ...), a Jetson's integrated
/// one's (`nvgpu/` on JetPack 6, `nvhost-ctrl-gpu` and `nvhost-gpu` before).
const JETSON_NODES: [&str; 3] = ["nvgpu", "nvhost-ctrl-gpu", "nvhost-gpu"];

/// Where `--device auto` runs and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub device: Device,
    pub why: String,
}

/// The first NVIDIA GPU device node under `dev` (normally `/dev`).
pub fn gpu_node(dev: &Path) -> Option<PathBuf> {
    let mut discrete: Vec<PathBuf> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("nvidia").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    discrete.sort();
    discrete.into_iter().next().or_else(|| JETSON_NODES.iter().map(|n| dev.join(n)).find(|p| p.exists()))
}

/// The device for `--device auto`: TensorRT (which also registers CUDA) when the build has both
/// providers, the library offers both and there is a GPU; CUDA when only CUDA is there; else the CPU.
pub fn choose(built_in: &[Provider], offered: &[String], gpu: Option<&Path>) -> Choice {
    let usable = |p: Provider| built_in.contains(&p) && offered.iter().any(|o| o == p.ort_name());
    let gpu_providers: Vec<&str> = offered
        .iter()
        .map(String::as_str)
        .filter(|o| [Provider::Tensorrt, Provider::Cuda].iter().any(|p| p.ort_name() == *o))
        .collect();
    let Some(gpu) = gpu else {
        let why = if gpu_providers.is_empty() {
            "no NVIDIA GPU device node in /dev, and the library offers no GPU provider".to_string()
        } else {
            format!("no NVIDIA GPU device node in /dev; the library offers {}", gpu_providers.join(", "))
        };
        return Choice { device: Device::Cpu, why };
    };
    let (trt, cuda) = (usable(Provider::Tensorrt), usable(Provider::Cuda));
    if trt && cuda {
        let why = format!("GPU {}, the library offers TensorRT and CUDA", gpu.display());
        return Choice { device: Device::Tensorrt, why };
    }
    if cuda {
        let why = format!("GPU {}, the library offers CUDA but not TensorRT", gpu.display());
        return Choice { device: Device::Cuda, why };
    }
    let missing: Vec<&str> =
        [Provider::Cuda, Provider::Tensorrt].into_iter().filter(|p| !built_in.contains(p)).map(|p| p.name()).collect();
    let why = if gpu_providers.is_empty() {
        format!(
            "GPU {}, but the library offers no GPU provider: point --ort-lib / ORT_DYLIB_PATH at a GPU build \
             (onnxruntime-gpu, JetPack's)",
            gpu.display()
        )
    } else if !missing.is_empty() {
        format!("GPU {}, but this dlm was built without {}", gpu.display(), missing.join(" and "))
    } else {
        format!(
            "GPU {}, the library offers {} but not CUDA (TensorRT needs it too)",
            gpu.display(),
            gpu_providers.join(", ")
        )
    };
    Choice { device: Device::Cpu, why }
}

/// What `--device auto` chooses with this runtime on this machine.
pub fn choose_here(runtime: &OrtRuntime) -> Choice {
    choose(&providers::built_in(), &runtime.available_providers(), gpu_node(Path::new("/dev")).as_deref())
}

impl SessionOptions {
    /// These options with `Auto` replaced by its choice (logged); other devices as they are.
    pub fn resolved(&self, runtime: &OrtRuntime) -> Self {
        if self.device != Device::Auto {
            return self.clone();
        }
        let choice = choose_here(runtime);
        log::info!("--device auto: {} ({})", choice.device.name(), choice.why);
        let unused: Vec<String> = self
            .ep_options
            .iter()
            .filter(|o| !choice.device.providers().contains(&o.provider))
            .map(|o| format!("{}:{}", o.provider.name(), o.key))
            .collect();
        if !unused.is_empty() {
            log::warn!(
                "--device auto chose {}: provider options {} do not apply",
                choice.device.name(),
                unused.join(" ")
            );
        }
        let mut binding = self.binding;
        if binding == Binding::CudaGraph && choice.device != Device::Cuda {
            let device = choice.device.name();
            log::warn!("--device auto chose {device}: --binding cuda-graph runs as fixed (CUDA graphs are cuda's)");
            binding = Binding::Fixed;
        }
        Self { device: choice.device, binding, ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [Provider; 2] = [Provider::Cuda, Provider::Tensorrt];

    fn offered(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn auto_takes_tensorrt_then_cuda_then_the_cpu() {
        let gpu = Some(Path::new("/dev/nvidia0"));
        let all = offered(&["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]);
        let cuda_only = offered(&["CUDAExecutionProvider", "CPUExecutionProvider"]);
        let cpu_only = offered(&["CPUExecutionProvider"]);
        let device = |built: &[Provider], offered: &[String], gpu: Option<&Path>| choose(built, offered, gpu).device;
        assert_eq!(device(&BOTH, &all, gpu), Device::Tensorrt);
        assert_eq!(device(&BOTH, &cuda_only, gpu), Device::Cuda);
        assert_eq!(device(&BOTH, &cpu_only, gpu), Device::Cpu);
        assert_eq!(device(&BOTH, &all, None), Device::Cpu, "no GPU: the CPU, whatever the library offers");
        assert_eq!(device(&[Provider::Cuda], &all, gpu), Device::Cuda, "built without tensorrt");
        assert_eq!(device(&[], &all, gpu), Device::Cpu, "built without either");
        let trt_without_cuda = offered(&["TensorrtExecutionProvider", "CPUExecutionProvider"]);
        assert_eq!(device(&BOTH, &trt_without_cuda, gpu), Device::Cpu, "TensorRT registers CUDA after it");
    }

    #[test]
    fn auto_says_why() {
        let gpu = Some(Path::new("/dev/nvgpu"));
        let cpu_only = offered(&["CPUExecutionProvider"]);
        let why = |built: &[Provider], offered: &[String], gpu: Option<&Path>| choose(built, offered, gpu).why;
        assert!(why(&BOTH, &cpu_only, None).contains("no NVIDIA GPU device node"));
        assert!(why(&BOTH, &offered(&["CUDAExecutionProvider"]), None).contains("library offers CUDAExecutionProvider"));
        let azure = offered(&["AzureExecutionProvider", "CPUExecutionProvider"]);
        assert!(why(&BOTH, &azure, gpu).contains("offers no GPU provider"), "the CPU wheel's Azure provider is none");
        let e = why(&BOTH, &cpu_only, gpu);
        assert!(
            e.contains("/dev/nvgpu") && e.contains("offers no GPU provider") && e.contains("ORT_DYLIB_PATH"),
            "{e}"
        );
        let e = why(&[], &offered(&["CUDAExecutionProvider", "CPUExecutionProvider"]), gpu);
        assert!(e.contains("built without cuda and tensorrt"), "{e}");
        let e = why(&BOTH, &offered(&["TensorrtExecutionProvider", "CPUExecutionProvider"]), gpu);
        assert!(e.contains("offers TensorrtExecutionProvider but not CUDA"), "{e}");
    }

    #[test]
    fn gpu_nodes_are_nvidia_digits_or_a_jetsons() {
        let dev = tempfile::tempdir().unwrap();
        assert_eq!(gpu_node(dev.path()), None, "an empty /dev");
        for not_a_gpu in ["nvidiactl", "nvidia-uvm", "nvidia", "nvmap", "tty0"] {
            std::fs::write(dev.path().join(not_a_gpu), "").unwrap();
        }
        assert_eq!(gpu_node(dev.path()), None, "control nodes and nvmap are no GPU");
        std::fs::create_dir(dev.path().join("nvgpu")).unwrap();
        assert_eq!(gpu_node(dev.path()), Some(dev.path().join("nvgpu")), "JetPack 6's integrated GPU");
        std::fs::write(dev.path().join("nvidia1"), "").unwrap();
        std::fs::write(dev.path().join("nvidia0"), "").unwrap();
        assert_eq!(gpu_node(dev.path()), Some(dev.path().join("nvidia0")), "the first discrete GPU");
        assert_eq!(gpu_node(&dev.path().join("missing")), None);
    }
}
