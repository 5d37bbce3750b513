//! Operator input that used to panic, abort, hang or succeed with nothing (issue 11, findings
//! 6 to 9): each now fails with one clear message and a non-zero exit.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn dlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlm")).args(args).env_remove("DLM_MODEL").output().expect("dlm runs")
}

fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 1: dlm's own error; 2: clap's usage error. Never 101 (panic), 134 (abort) or a signal.
    assert!(matches!(out.status.code(), Some(1 | 2)), "exit {:?}, stderr: {stderr}", out.status.code());
    assert!(!stderr.contains("panicked"), "dlm panicked: {stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
}

fn model() -> String {
    common::model_dir().display().to_string()
}

#[test]
fn sample_counts_that_overflow_or_exhaust_memory_are_refused() {
    let cases: [&[&str]; 6] = [
        &["--num", "100000000000000"],
        &["--mbr", "100000000000000"],
        &["--num", "18446744073709551615"],
        &["--num", "4", "--mbr", "4611686018427387904"],
        &["--num", "9223372036854775808", "--mbr", "2"],
        &["--num", "2", "--mbr", "9223372036854775809"],
    ];
    let model = model();
    for extra in cases {
        let args = [&["generate", "--model", &model, "--steps", "1"][..], extra].concat();
        assert_fails_with(&dlm(&args), "is above the limit of 100000");
    }
    assert_fails_with(&dlm(&["generate", "--model", &model, "--threads", "100000"]), "0..=256");
}

#[test]
fn guidance_values_out_of_range_are_refused() {
    let base = ["generate", "--model", &model(), "--steps", "2", "--content", "food=Italian"];
    assert_fails_with(&dlm(&[&base[..], &["--guide-lr", "1e308"]].concat()), "a number in [0, 10]");
    assert_fails_with(&dlm(&[&base[..], &["--guide-lambda", "content=1e300"]].concat()), "[0, 10000]");
    assert_fails_with(&dlm(&[&base[..], &["--guide-weight", "inf"]].concat()), "[0, 10000]");
    let mut child = common::server::spawn_stdio(&[]);
    let line = r#"{"id":1,"steps":2,"content":"food=Italian","guide_lambda":1e300}"#;
    child.stdin.take().unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["error"]["code"], "invalid_argument", "{reply}");
    assert!(out.status.success());
}

#[test]
fn serve_checks_its_defaults_at_start() {
    assert_fails_with(&dlm(&["serve", "--stdio", "--model", &model(), "--steps", "0"]), "--steps 0: allowed 1..=2000");
    assert_fails_with(&dlm(&["serve", "--stdio", "--model", &model(), "--steps", "2001"]), "allowed 1..=2000");
    assert_fails_with(&dlm(&["serve", "--stdio", "--model", &model(), "--max-samples", "4096"]), "1..=1024");
}

fn tampered(change: impl FnOnce(&mut serde_json::Value, &Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(common::model_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    change(&mut manifest, dir.path());
    std::fs::write(&path, manifest.to_string()).unwrap();
    dir
}

/// The fp32 denoiser's second output (the clamping head's `nearest`) in a manifest.
fn denoiser_output(m: &mut serde_json::Value) -> &mut serde_json::Value {
    let graphs = m["graphs"].as_array_mut().unwrap();
    let denoiser = graphs.iter_mut().find(|g| g["name"] == "denoiser.fp32").unwrap();
    &mut denoiser["outputs"][1]
}

#[test]
fn manifest_values_are_range_checked_naming_the_field() {
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|m| m["model"]["seq_len"] = 0.into()), "model.seq_len is 0; allowed 3..=4096"),
        (Box::new(|m| m["model"]["seq_len"] = 1.into()), "model.seq_len is 1"),
        (Box::new(|m| m["model"]["seq_len"] = 1_000_000_000_000u64.into()), "model.seq_len is 1000000000000"),
        (Box::new(|m| m["special_tokens"]["end"] = 5000.into()), "special_tokens.end is 5000"),
        (
            Box::new(|m| m["controls"]["content"]["input"]["shape"][0] = 0.into()),
            "controls.content.input.shape[0] is 0",
        ),
        (
            Box::new(|m| m["controls"]["pos"]["defaults"]["steps"] = 1_000_000.into()),
            "controls.pos.defaults.steps is 1000000",
        ),
        (Box::new(|m| m["controls"]["spans"]["defaults"]["lr"] = (-1.0).into()), "controls.spans.defaults.lr is -1"),
        (Box::new(|m| denoiser_output(m)["shape"][2] = 0.into()), "(denoiser.fp32): output nearest's K is 0; allowed 1..=1013"),
        (Box::new(|m| denoiser_output(m)["dtype"] = "float32".into()), "(denoiser.fp32): output nearest must be int64"),
        (
            Box::new(|m| denoiser_output(m)["name"] = "ids".into()),
            r#"(denoiser.fp32): outputs ["x0_hat", "ids"], expected ["x0_hat"] or ["x0_hat", "nearest"]"#,
        ),
    ];
    for (change, needle) in cases {
        let dir = tampered(|m, _| change(m));
        assert_fails_with(&dlm(&["generate", "--steps", "1", "--model", dir.path().to_str().unwrap()]), needle);
    }
}

#[test]
fn graph_files_must_be_regular_and_embeddings_finite() {
    let fifo = tampered(|m, dir| {
        let file = m["graphs"][2]["file"].as_str().unwrap().to_string();
        std::fs::remove_file(dir.join(&file)).unwrap();
        let made = Command::new("mkfifo").arg(dir.join(&file)).status().unwrap();
        assert!(made.success());
    });
    assert_fails_with(
        &dlm(&["generate", "--steps", "1", "--model", fifo.path().to_str().unwrap()]),
        "not a regular file",
    );
    let nan = tampered(|m, dir| {
        let path = dir.join("embeddings.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        m["embeddings"]["sha256"] = format!("{:x}", Sha256::digest(&bytes)).into();
    });
    let out = dlm(&["generate", "--steps", "1", "--model", nan.path().to_str().unwrap()]);
    assert_fails_with(&out, "embedding value 1 (word 0, dimension 1) is NaN");
}

#[test]
fn an_error_says_its_cause_once() {
    let empty = tempfile::tempdir().unwrap();
    let out = dlm(&["generate", "--model", empty.path().to_str().unwrap()]);
    assert_fails_with(&out, "manifest.json: No such file or directory (os error 2)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
}

#[test]
fn the_work_of_one_request_is_bounded_before_it_starts() {
    let model = model();
    let spans: Vec<String> = (0..17).map(|_| "0,1,NP".to_string()).collect();
    let mut args = vec!["generate", "--model", &model, "--steps", "2"];
    for s in &spans {
        args.extend(["--span", s]);
    }
    assert_fails_with(&dlm(&args), "17 spans; at most 16 per request");
    let costly = ["generate", "--model", &model, "--steps", "2000", "--guide-steps", "100", "--span", "0,1,NP"];
    assert_fails_with(&dlm(&costly), "guidance graph calls per batch");
}

#[test]
fn a_truncated_onnx_runtime_library_is_refused_before_loading() {
    let lib = std::fs::canonicalize(common::repo_path(".ort/libonnxruntime.so")).unwrap();
    let bytes = std::fs::read(&lib).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("libonnxruntime.so");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = dlm(&["info", "--model", &model(), "--ort-lib", truncated.to_str().unwrap()]);
    assert_fails_with(&out, "truncated");
    std::fs::write(&truncated, b"not a library").unwrap();
    let out = dlm(&["info", "--model", &model(), "--ort-lib", truncated.to_str().unwrap()]);
    assert_fails_with(&out, "not a 64-bit little-endian ELF file");
}

#[test]
fn a_shared_library_that_is_not_onnx_runtime_is_refused_by_name() {
    // this test's own C library: a real ELF shared object without OrtGetApiBase
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps.split_whitespace().find(|w| w.starts_with('/') && w.contains("/libc.so")).unwrap();
    let out = dlm(&["info", "--model", &model(), "--ort-lib", libc]);
    assert_fails_with(&out, "no OrtGetApiBase: not an ONNX Runtime library");
}

/// `dlm ARGS` that must end within a minute (not hang on what it reads).
fn dlm_bounded(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(args)
        .env_remove("DLM_MODEL")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("dlm {args:?} still running after a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_manifest_that_is_a_fifo_or_a_device_is_refused_without_hanging() {
    for kind in ["fifo", "zero"] {
        let dir = tampered(|_, _| {});
        let path = dir.path().join("manifest.json");
        std::fs::remove_file(&path).unwrap();
        if kind == "fifo" {
            assert!(Command::new("mkfifo").arg(&path).status().unwrap().success());
        } else {
            std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        }
        let out = dlm_bounded(&["generate", "--steps", "1", "--model", dir.path().to_str().unwrap()], &[]);
        assert_fails_with(&out, "manifest.json: not a regular file");
    }
}

#[test]
fn embeddings_too_large_to_round_to_are_refused() {
    let huge = tampered(|m, dir| {
        let path = dir.join("embeddings.bin");
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let bytes: Vec<u8> = (0..len / 4).flat_map(|_| 3e38f32.to_le_bytes()).collect();
        std::fs::write(&path, &bytes).unwrap();
        m["embeddings"]["sha256"] = format!("{:x}", Sha256::digest(&bytes)).into();
    });
    let out = dlm(&["generate", "--steps", "1", "--model", huge.path().to_str().unwrap()]);
    assert_fails_with(&out, "embedding of word 0 is too large to round to");
}

#[test]
fn boolean_variables_take_1_and_0_and_empty_variables_are_unset() {
    // systemd style: 1 and 0
    let tcp = format!("0.0.0.0:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let out = dlm_bounded(&["serve", "--model", &model(), "--tcp", &tcp], &[("DLM_TCP_ANY_ADDRESS", "0")]);
    assert_fails_with(&out, "unless --tcp-any-address is given");
    let mut stdio = Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(["serve", "--model", &model()])
        .envs([("DLM_STDIO", "1"), ("DLM_ALLOW_FALLBACK", "1")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    stdio.stdin.take().unwrap().write_all(b"{\"id\": 1, \"op\": \"health\"}\n").unwrap();
    let out = stdio.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"serving\""), "DLM_STDIO=1 serves stdin");
    let bad = dlm_bounded(&["serve", "--model", &model()], &[("DLM_STDIO", "maybe")]);
    assert_fails_with(&bad, "maybe");
    // an empty variable is no variable: the defaults apply (models/e2e from the repository root)
    let empty = [("DLM_MODEL", ""), ("DLM_EP_OPTION", ""), ("ORT_DYLIB_PATH", ""), ("DLM_TRT_CACHE", "")];
    let out = dlm_bounded(&["generate", "--steps", "2", "--seed", "1"], &empty);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.is_empty());
}
