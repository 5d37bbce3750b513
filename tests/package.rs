//! The Debian package (cross/package.sh around `cargo deb`, metadata in Cargo.toml): its control
//! data, conffile, maintainer scripts and files, dependencies that cover the symbol versions the
//! binary and the library need, the unpacked binary run through a link as /usr/bin/dlm is (GPU
//! providers built in, its own library found without ORT_DYLIB_PATH, a generation), and
//! lintian without errors. scripts/test.sh installs cargo-deb and lintian when missing.

use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str]) -> String {
    run_with(program, args, &[])
}

fn run_with(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
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
    assert!(Path::new(env!("CARGO_BIN_EXE_dlm")).is_file());
    let out = dir.path().to_str().unwrap();
    run_with("bash", &["cross/package.sh"], &[("BUILD", "none"), ("OUT", out)]);
    let deb = dir.path().join(format!("dlm_{}-1_amd64.deb", env!("CARGO_PKG_VERSION")));
    let deb_s = deb.to_str().unwrap();
    let info = run("dpkg-deb", &["--info", deb_s]);
    for needle in ["Package: dlm", "Architecture: amd64", "conffiles", "postinst", "prerm", "postrm"] {
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
        "./usr/bin/dlm -> /opt/dlm/bin/dlm",
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
    // every glibc and libstdc++ symbol version the binary and the library need is declared
    let depends = run("dpkg-deb", &["--field", deb_s, "Depends"]);
    let unpacked = dir.path().join("root");
    run("dpkg-deb", &["-x", deb_s, unpacked.to_str().unwrap()]);
    let version = |v: &str| v.split('.').map(|p| p.parse::<u32>().ok()).collect::<Option<Vec<u32>>>();
    let glibc = depends
        .split(',')
        .find_map(|d| d.trim().strip_prefix("libc6 (>= ")?.strip_suffix(')').and_then(version))
        .unwrap_or_else(|| panic!("libc6 with a version in Depends: {depends}"));
    // GLIBCXX_3.4.22 is GCC 6's libstdc++
    assert!(depends.contains("libstdc++6 (>= 6)"), "{depends}");
    for file in ["opt/dlm/bin/dlm", "opt/dlm/lib/libonnxruntime.so.1.32.0"] {
        let symbols = run("objdump", &["-T", unpacked.join(file).to_str().unwrap()]);
        let newest = |prefix: &str| {
            symbols
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .filter_map(|w| w.strip_prefix(prefix).and_then(version))
                .max()
                .unwrap_or_default()
        };
        assert!(newest("GLIBC_") <= glibc, "{file} needs GLIBC_{:?}; Depends: {depends}", newest("GLIBC_"));
        assert!(
            newest("GLIBCXX_") <= vec![3, 4, 22],
            "{file} needs GLIBCXX_{:?}; Depends: {depends}",
            newest("GLIBCXX_")
        );
    }
    unpacked_binary_runs_on_its_own_library(&unpacked, dir.path());
    let lintian = run("lintian", &[deb_s]);
    assert!(!lintian.lines().any(|l| l.starts_with("E:")), "lintian errors: {lintian}");
}

/// The unpacked package's dlm, started through a link to it as `/usr/bin/dlm` is (the package's
/// link is absolute, to `/opt/dlm/bin/dlm`, which does not exist here): the GPU providers are
/// built in, `--device auto` takes the CPU of the packaged library, which it finds in its own
/// `../lib` with no ORT_DYLIB_PATH, and it generates.
fn unpacked_binary_runs_on_its_own_library(unpacked: &Path, scratch: &Path) {
    let unpacked = unpacked.canonicalize().unwrap();
    assert_eq!(std::fs::read_link(unpacked.join("usr/bin/dlm")).unwrap(), Path::new("/opt/dlm/bin/dlm"));
    let on_path = scratch.join("bin");
    std::fs::create_dir(&on_path).unwrap();
    std::os::unix::fs::symlink(unpacked.join("opt/dlm/bin/dlm"), on_path.join("dlm")).unwrap();
    let model = unpacked.join("opt/dlm/models/e2e");
    let dlm = |args: &[&str]| {
        let out = Command::new(on_path.join("dlm"))
            .args(args)
            .arg("--model")
            .arg(&model)
            .env_clear()
            .current_dir(scratch)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "dlm {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let info = dlm(&["info", "--device", "auto"]);
    assert!(info.contains("providers built in: cpu cuda tensorrt"), "the default build: {info}");
    let library = unpacked.join("opt/dlm/lib/libonnxruntime.so.1.32.0");
    assert!(info.contains(&format!("onnxruntime  {}\n", library.display())), "its own library: {info}");
    assert!(info.contains("device     auto: cpu ("), "{info}");
    let sentences = dlm(&["generate", "--steps", "5", "--num", "2", "--seed", "1"]);
    assert_eq!(sentences.lines().filter(|l| !l.trim().is_empty()).count(), 2, "{sentences}");
}
