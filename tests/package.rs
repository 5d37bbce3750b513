//! The Debian package (`cargo deb`, metadata in Cargo.toml): its control data, conffile,
//! maintainer scripts and files, and lintian without errors. scripts/test.sh installs
//! cargo-deb and lintian when missing.

use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{program} ({e}): scripts/test.sh installs it"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args:?} failed: {text}");
    text
}

#[test]
fn the_debian_package_installs_the_service_its_settings_and_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("dlm.deb");
    let deb_s = deb.to_str().unwrap();
    assert!(Path::new(env!("CARGO_BIN_EXE_dlm")).is_file());
    run("cargo", &["deb", "--no-build", "--strip", "--output", deb_s]);
    let info = run("dpkg-deb", &["--info", deb_s]);
    for needle in ["Package: dlm", "Depends: adduser", "conffiles", "postinst", "prerm", "postrm"] {
        assert!(info.contains(needle), "{needle} missing from the control data: {info}");
    }
    let control = dir.path().join("control");
    run("dpkg-deb", &["--control", deb_s, control.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(control.join("conffiles")).unwrap().trim(), "/etc/default/dlm");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("dlm-clients") && postinst.contains("deb-systemd-helper"), "{postinst}");
    let contents = run("dpkg-deb", &["--contents", deb_s]);
    for file in [
        "./opt/dlm/bin/dlm",
        "./opt/dlm/lib/libonnxruntime.so.1.32.0",
        "./opt/dlm/models/e2e/manifest.json",
        "./opt/dlm/models/e2e/denoiser.fp32.onnx",
        "./opt/dlm/models/e2e/guide_spans.weights",
        "./usr/lib/systemd/system/dlm.service",
        "./etc/default/dlm",
    ] {
        assert!(contents.contains(file), "{file} missing from the package");
    }
    assert!(!contents.contains(".pt\n"), "no PyTorch checkpoints in the package");
    let lintian = run("lintian", &[deb_s]);
    assert!(!lintian.lines().any(|l| l.starts_with("E:")), "lintian errors: {lintian}");
}
