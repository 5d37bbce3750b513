// Records where the ONNX Runtime library lives (`.ort/`, the last place `dlm` looks) and, when
// it is not there yet, fetches it with `scripts/fetch_ort.py` (the pinned PyPI wheel, ~20 MB,
// no venv), as `ort`'s download-binaries would: `cargo run --release -- generate` works on a
// fresh clone. DLM_FETCH_ORT=0 turns the fetch off (point --ort-lib or ORT_DYLIB_PATH at a
// library instead, e.g. JetPack's). It also records the pinned version (DLM_ORT_VERSION): the
// version dlm was tested with and the versioned file name it looks for beside itself.
use std::path::Path;
use std::process::Command;

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let dir = Path::new(&root).join(".ort");
    println!("cargo:rustc-env=DLM_ORT_DIR={}", dir.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=scripts/fetch_ort.py");
    println!("cargo:rerun-if-changed={}", dir.join("libonnxruntime.so").display());
    println!("cargo:rerun-if-env-changed=DLM_FETCH_ORT");
    let pin = std::fs::read_to_string(Path::new(&root).join("scripts/fetch_ort.py")).unwrap_or_default();
    let version = pin.lines().find_map(|l| l.strip_prefix("VERSION = \"")?.split('"').next()).unwrap_or_default();
    if version.is_empty() {
        panic!("scripts/fetch_ort.py has no VERSION = \"X.Y.Z\" line (the pinned ONNX Runtime)");
    }
    println!("cargo:rustc-env=DLM_ORT_VERSION={version}");
    if dir.join("libonnxruntime.so").exists() || std::env::var("DLM_FETCH_ORT").is_ok_and(|v| v == "0") {
        return;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let fetched = Command::new(&python).arg(Path::new(&root).join("scripts/fetch_ort.py")).arg(&dir).status();
    if !fetched.is_ok_and(|s| s.success()) {
        println!(
            "cargo:warning=could not fetch the ONNX Runtime library into {} ({python} scripts/fetch_ort.py); \
             run `bash scripts/setup.sh` or pass --ort-lib",
            dir.display()
        );
    }
}
