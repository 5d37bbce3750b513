//! The `dlm` binary on bad input: a clear one-line error and a non-zero exit, never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn dlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlm")).args(args).env_remove("DLM_MODEL").output().expect("dlm runs")
}

fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!stderr.contains("panicked"), "dlm panicked: {stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
}

fn copy_model(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(common::model_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn model_arg() -> String {
    common::model_dir().display().to_string()
}

#[test]
fn generate_prints_one_sentence_per_line() {
    let out = dlm(&["generate", "--model", &model_arg(), "--steps", "10", "--num", "3", "--batch", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3);
}

#[test]
fn visual_draws_each_sentence_at_every_kth_step_then_prints_the_sentences() {
    let model = model_arg();
    let args = ["generate", "--model", &model, "--steps", "6", "--num", "2", "--batch", "2", "--seed", "4"];
    let plain = String::from_utf8(dlm(&args).stdout).unwrap();
    let out = dlm(&[&args[..], &["--visual", "--every", "3"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    // stdout is a pipe here: plain lines, one per sentence and reported step, then the sentences
    let labels: Vec<&str> = lines[..4].iter().map(|l| &l[..l.find(']').unwrap() + 1]).collect();
    assert_eq!(labels, ["step    3/6 [0]", "step    3/6 [1]", "step    6/6 [0]", "step    6/6 [1]"], "{stdout}");
    assert_eq!(lines[4..].join("\n") + "\n", plain, "watching changes no sentence");
    assert_fails_with(&dlm(&["generate", "--model", &model, "--every", "3"]), "--visual");
    assert_fails_with(
        &dlm(&[&args[..], &["--visual", "--every", "7"]].concat()),
        "between 1 and the request's steps (6)",
    );
}

#[test]
fn json_lines_carry_text_tokens_and_timings() {
    let out =
        dlm(&["generate", "--model", &model_arg(), "--steps", "5", "--num", "2", "--json", "--precision", "fp16"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["text"].is_string() && v["tokens"].is_array());
        assert_eq!(v["steps"], 5);
        // the time is the sum of its parts, and per step is it over the 5 steps
        let ms = |k: &str| v["timings"][k].as_f64().unwrap();
        assert!(
            ms("total_ms") > 0.0 && (ms("per_step_ms") * 5.0 - ms("total_ms")).abs() < 1e-3 * ms("total_ms"),
            "{v}"
        );
        let parts = ms("denoiser_ms") + ms("guidance_ms") + ms("host_ms");
        assert!((parts - ms("total_ms")).abs() < 1e-3 * ms("total_ms"), "{v}");
    }
}

#[test]
fn precision_auto_is_what_info_says_and_each_json_line_names_it() {
    let model = model_arg();
    let info = String::from_utf8(dlm(&["info", "--model", &model, "--no-sessions"]).stdout).unwrap();
    let picked = |calls: &str| {
        let prefix = format!("  precision  auto, {calls}: ");
        let rest = info.lines().find_map(|l| l.strip_prefix(&prefix));
        rest.and_then(|r| r.split_whitespace().next()).unwrap_or_default().to_string()
    };
    let one = picked("one sequence a call");
    assert!(one == "int8" || one == "fp32", "{info}");
    assert_eq!(picked("16 a call (dlm serve's default)"), "fp32", "{info}");
    let loaded = |extra: &[&str]| -> Vec<String> {
        let args = ["generate", "--model", &model, "--steps", "2", "--seed", "1", "--json"];
        let out = dlm(&[&args[..], extra].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines = String::from_utf8(out.stdout).unwrap();
        let precision = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap()["precision"].to_string();
        lines.lines().map(|l| precision(l).trim_matches('"').to_string()).collect()
    };
    assert_eq!(loaded(&[]), [one.clone()]);
    assert_eq!(loaded(&["--num", "2"]), [one.clone(), one], "--num alone keeps one sequence a call");
    assert_eq!(loaded(&["--num", "2", "--batch", "2"]), ["fp32", "fp32"]);
    assert_eq!(loaded(&["--precision", "fp16"]), ["fp16"]);
    // int8 asked for with a batch: it runs, and says what that costs
    let args = ["generate", "--model", &model, "--steps", "2", "--num", "2", "--batch", "2", "--precision", "int8"];
    let out = dlm(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("batched with it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_a_seed_a_random_one_is_drawn_reported_and_replayable() {
    let run = |extra: &[&str]| {
        let model = model_arg();
        let mut args = vec!["generate", "--model", &model, "--steps", "20", "--num", "2", "--json", "-v"];
        args.extend_from_slice(extra);
        let out = dlm(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<serde_json::Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let seed = lines[0]["seed"].as_u64().expect("the seed is reported");
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("seed {seed}")), "-v logs the seed");
        let texts: Vec<String> = lines.iter().map(|l| l["text"].as_str().unwrap().to_string()).collect();
        (seed, texts)
    };
    let (first, texts) = run(&[]);
    let (second, _) = run(&[]);
    assert_ne!(first, second, "two runs without --seed draw different seeds");
    let replayed = run(&["--seed", &first.to_string()]);
    assert_eq!(replayed, (first, texts), "the reported seed gives the same sentences");
}

#[test]
fn missing_model_dir() {
    assert_fails_with(&dlm(&["generate", "--model", "/nonexistent/model"]), "model directory not found");
}

#[test]
fn corrupted_file_fails_its_sha256() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let emb = dir.path().join("embeddings.bin");
    let mut bytes = std::fs::read(&emb).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&emb, bytes).unwrap();
    assert_fails_with(&dlm(&["generate", "--model", dir.path().to_str().unwrap()]), "embeddings.bin: sha256");
}

#[test]
fn manifest_of_another_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    manifest["schema_version"] = 99.into();
    std::fs::write(&path, manifest.to_string()).unwrap();
    assert_fails_with(&dlm(&["info", "--model", dir.path().to_str().unwrap()]), "schema_version 99");
}

#[test]
fn a_bad_manifest_value_names_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    manifest["graphs"][1]["role"] = "decoder".into();
    manifest["diffusion"]["schedule"] = "cosine".into();
    std::fs::write(&path, manifest.to_string()).unwrap();
    let out = dlm(&["generate", "--model", dir.path().to_str().unwrap()]);
    assert_fails_with(&out, "manifest.json: field diffusion.schedule: unknown variant `cosine`, expected `sqrt`");
}

#[test]
fn steps_out_of_range() {
    assert_fails_with(&dlm(&["generate", "--model", &model_arg(), "--steps", "0"]), "steps must be between 1 and 2000");
    assert_fails_with(&dlm(&["generate", "--model", &model_arg(), "--steps", "2001"]), "got 2001");
    assert_fails_with(&dlm(&["generate", "--model", &model_arg(), "--steps", "many"]), "invalid value 'many'");
}

#[test]
fn unknown_device_and_precision() {
    assert_fails_with(&dlm(&["generate", "--device", "gpu"]), "possible values: cpu, cuda, tensorrt");
    assert_fails_with(&dlm(&["generate", "--precision", "int4"]), "possible values: auto, fp32, fp16, int8");
}

#[test]
fn bad_session_settings_name_the_flag_and_what_it_takes() {
    assert_fails_with(
        &dlm(&["generate", "--graph-opt", "fast"]),
        "possible values: disable, basic, extended, layout, all",
    );
    assert_fails_with(&dlm(&["generate", "--spin", "maybe"]), "invalid value 'maybe' for '--spin <SPIN>'");
    assert_fails_with(&dlm(&["generate", "--cpu-arena", "2"]), "'--cpu-arena <CPU_ARENA>'");
    let out = Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(["generate", "--steps", "3"])
        .env("DLM_SPIN", "sometimes")
        .output()
        .unwrap();
    assert_fails_with(&out, "invalid value 'sometimes' for '--spin <SPIN>'");
}

/// `--binding fixed` binds the denoiser's tensors once per shape (logged with -v): five
/// sentences at batch 4 are two shapes, the sentences those of per-run binding.
#[test]
fn fixed_binding_binds_each_shape_once_and_gives_per_run_s_sentences() {
    let run = |binding: &str| {
        let args = ["generate", "--model", &model_arg(), "--steps", "8", "--seed", "4", "--num", "5", "--batch", "4"];
        let out = Command::new(env!("CARGO_BIN_EXE_dlm"))
            .args(args)
            .args(["--binding", binding, "-v"])
            .env_remove("RUST_LOG")
            .env_remove("DLM_BINDING")
            .output()
            .expect("dlm runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let ((fixed, log), (per_run, per_run_log)) = (run("fixed"), run("per-run"));
    assert_eq!(fixed, per_run);
    let bound: Vec<&str> = log.lines().filter(|l| l.contains(": bound at x ")).collect();
    assert_eq!(bound.len(), 2, "batch 4, then 1: {bound:?}");
    assert!(bound[0].contains("[4, 64, 16]") && bound[1].contains("[1, 64, 16]"), "{bound:?}");
    assert!(!per_run_log.contains(": bound at x "), "{per_run_log}");
}

#[test]
fn info_reports_the_session_settings_given() {
    let defaults = String::from_utf8(dlm(&["info", "--model", &model_arg(), "--no-sessions"]).stdout).unwrap();
    assert!(defaults.contains("spinning on, graph opt layout, arena on"), "{defaults}");
    let args = ["info", "--model", &model_arg(), "--no-sessions", "--threads", "1", "--spin", "false"];
    let out = dlm(&[&args[..], &["--graph-opt", "all", "--cpu-arena", "false"]].concat());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("1 threads (0: one per core), spinning off, graph opt all, arena off"), "{stdout}");
    assert!(defaults.contains("binding    per-run"), "{defaults}");
    let fixed = dlm(&["info", "--model", &model_arg(), "--no-sessions", "--binding", "fixed"]);
    assert!(String::from_utf8(fixed.stdout).unwrap().contains("binding    fixed"));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_device_without_its_feature_fails_unless_fallback_is_allowed() {
    assert_fails_with(&dlm(&["generate", "--model", &model_arg(), "--device", "cuda"]), "--features cuda");
    let out = dlm(&["generate", "--model", &model_arg(), "--device", "cuda", "--allow-fallback", "--steps", "3"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("running denoiser.fp32 on CPU"));
}

#[test]
fn missing_onnxruntime_library_is_a_one_line_error() {
    assert_fails_with(
        &dlm(&["generate", "--model", &model_arg(), "--ort-lib", "/nonexistent/libonnxruntime.so"]),
        "scripts/setup.sh",
    );
}

#[test]
fn eta_needs_ddim() {
    assert_fails_with(
        &dlm(&["generate", "--model", &model_arg(), "--eta", "0.5"]),
        "eta applies to sampler \"ddim\" only",
    );
}

#[test]
fn info_lists_providers_sessions_and_controls() {
    let out = dlm(&["info", "--model", &model_arg()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    for needle in
        ["CPUExecutionProvider", "denoiser Fp16: requested cpu, runs on cpu", "control    pos", "control    content"]
    {
        assert!(stdout.contains(needle), "info lacks {needle:?}:\n{stdout}");
    }
}

#[test]
fn bad_controls_fail_cleanly() {
    assert_fails_with(&dlm(&["generate", "--model", &model_arg(), "--pos", "NOUN FOO"]), "unknown POS tag \"FOO\"");
    assert_fails_with(
        &dlm(&["generate", "--model", &model_arg(), "--infill", "_ _", "--length", "3"]),
        "conflicting controls",
    );
}

#[test]
fn profile_prints_a_table_and_writes_csv_json_svg_and_operator_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let out = dlm(&[
        "profile",
        "--model",
        &model_arg(),
        "--budgets",
        "2,3",
        "--batches",
        "1,2",
        "--repeat",
        "2",
        "--warmup",
        "0",
        "--quiet",
        "--csv",
        &path("p.csv"),
        "--json",
        &path("p.json"),
        "--plot",
        &path("p.svg"),
        "--ort-profile",
        &path("ort"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("step ms p50") && stdout.contains("MatMul"), "{stdout}");
    // each trace is named by its graph (the session's profile file starts with it)
    assert!(stdout.contains("ONNX Runtime trace of denoiser.fp32: "), "{stdout}");
    let csv = std::fs::read_to_string(path("p.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path("p.json")).unwrap()).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for c in cases {
        let shares = ["denoiser_share", "guidance_share", "host_share"].map(|k| c[k].as_f64().unwrap());
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{c}");
        let stat = |k: &str| c["request_ms"][k].as_f64().unwrap();
        assert!(0.0 < stat("min") && stat("min") <= stat("p50") && stat("p50") <= stat("p95"), "{c}");
        assert!(stat("p95") <= stat("max") && stat("min") <= stat("mean") && stat("mean") <= stat("max"), "{c}");
        // the process held at least the denoiser's weights, and not gigabytes
        let weights = std::fs::metadata(common::model_dir().join("denoiser.fp32.onnx")).unwrap().len() as f64;
        let rss = c["peak_rss_mb"].as_f64().unwrap();
        assert!(rss > weights / (1 << 20) as f64 && rss < 2048.0, "{c}");
    }
    assert!(json["operators"].as_array().unwrap().iter().any(|o| o["op_type"] == "MatMul"));
    assert!(std::fs::read_to_string(path("p.svg")).unwrap().contains("<svg"));
}

#[test]
fn profile_rejects_bad_budgets_and_repeats() {
    let out = dlm(&["profile", "--model", &model_arg(), "--budgets", "0", "--quiet"]);
    assert_fails_with(&out, "steps must be between 1 and 2000");
    let out = dlm(&["profile", "--model", &model_arg(), "--repeat", "0"]);
    assert_fails_with(&out, "--repeat");
}

#[test]
fn guidance_overrides_per_control_are_checked() {
    let pos = "PROPN AUX DET NOUN PUNCT";
    let out = dlm(&["generate", "--model", &model_arg(), "--steps", "5", "--pos", pos, "--guide-lr", "content=0.3"]);
    assert_fails_with(&out, "does not guide (guided: pos)");
    let out = dlm(&["generate", "--model", &model_arg(), "--steps", "5", "--pos", pos, "--guide-steps", "pos=many"]);
    assert_fails_with(&out, "CONTROL=VALUE");
    let args = ["generate", "--model", &model_arg(), "--steps", "5", "--pos", pos, "--guide-lr", "pos=0.2"];
    let out = dlm(&[&args[..], &["--guide-weight", "pos=2", "--guide-steps", "1"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
