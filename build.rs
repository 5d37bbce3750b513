// Records where `scripts/setup.sh` puts the ONNX Runtime library, the last place `dlm` looks.
fn main() {
    let dir = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join(".ort");
    println!("cargo:rustc-env=DLM_ORT_DIR={}", dir.display());
    println!("cargo:rerun-if-changed=build.rs");
}
