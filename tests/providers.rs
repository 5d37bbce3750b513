//! Execution providers from the command line on this (CPU) machine: `--ep-option` and
//! `DLM_EP_OPTION`, the manifest's `providers` block, the TensorRT cache directory from
//! systemd's `$CACHE_DIRECTORY`, `-v` naming the provider that took each graph's nodes, the
//! GPU providers built in with `--device auto` falling back to the CPU, and `dlm build-engines`
//! refusing what builds no engine.
//! What needs a GPU (the options reaching CUDA and TensorRT) runs in scripts/gpu-check.sh.

mod common;

use std::process::{Command, Output};

fn dlm(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(args)
        .env_remove("DLM_EP_OPTION")
        .env_remove("CACHE_DIRECTORY")
        .env_remove("DLM_TRT_CACHE")
        .env_remove("DLM_BINDING")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("dlm runs")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn model() -> String {
    common::model_dir().display().to_string()
}

#[test]
fn bad_provider_options_fail_with_what_is_allowed() {
    let model = model();
    for (args, needle) in [
        (vec!["--ep-option", "tensorrt"], "no ':' after a provider; expected PROVIDER:KEY=VALUE"),
        (vec!["--ep-option", "cpu:x=1"], "the CPU provider takes no options"),
        (vec!["--ep-option", "rocm:x=1"], "providers with options: cuda, tensorrt"),
        (vec!["--ep-option", "cuda:gpu_mem_limit=1"], "--device cpu does not use cuda"),
        (vec!["--device", "cuda", "--ep-option", "tensorrt:trt_fp16_enable=1"], "--device cuda does not use tensorrt"),
        // CUDA graphs by hand would reach every graph, run unbound: they are --binding's
        (vec!["--device", "cuda", "--ep-option", "cuda:enable_cuda_graph=1"], "use --binding cuda-graph"),
        (vec!["--device", "tensorrt", "--ep-option", "tensorrt:trt_cuda_graph_enable=1"], "use --binding cuda-graph"),
        (vec!["--binding", "cuda-graph"], "CUDA graphs need --device cuda (or auto choosing it), not cpu"),
        (vec!["--device", "tensorrt", "--binding", "cuda-graph"], "not tensorrt: TensorRT captures one only where"),
        (vec!["--binding", "graph"], "possible values: per-run, fixed, cuda-graph"),
        // a denoiser asked for CUDA graphs does not fall back to the CPU (--binding fixed would)
        (vec!["--device", "cuda", "--binding", "cuda-graph", "--allow-fallback"], ", not CUDAExecutionProvider"),
    ] {
        let mut all = vec!["generate", "--model", &model];
        all.extend(args.iter().copied());
        let out = dlm(&all, &[]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success() && !stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn options_come_from_the_flag_the_environment_and_the_manifest_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(common::model_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let manifest_path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["providers"] = serde_json::json!({"tensorrt": {"trt_builder_optimization_level": 3}, "cuda": {"arena_extend_strategy": "kSameAsRequested"}});
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let model = dir.path().display().to_string();
    let info = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["info", "--model", &model, "--device", "tensorrt", "--allow-fallback"];
        args.extend_from_slice(extra);
        let out = dlm(&args, env);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        stdout.lines().find(|l| l.trim_start().starts_with("ep options")).unwrap().to_string()
    };
    assert!(
        info(&[], &[])
            .contains("cuda:arena_extend_strategy=kSameAsRequested tensorrt:trt_builder_optimization_level=3 ("),
        "{}",
        info(&[], &[])
    );
    let line = info(&["--ep-option", "tensorrt:trt_builder_optimization_level=5"], &[]);
    assert!(
        line.contains("tensorrt:trt_builder_optimization_level=3 tensorrt:trt_builder_optimization_level=5"),
        "{line}"
    );
    let line =
        info(&[], &[("DLM_EP_OPTION", "cuda:gpu_mem_limit=2147483648;tensorrt:trt_profile_min_shapes=x:1x64x16,t:1")]);
    assert!(line.contains("cuda:gpu_mem_limit=2147483648 tensorrt:trt_profile_min_shapes=x:1x64x16,t:1"), "{line}");

    // a provider the runtime does not know is the manifest's error, named by field
    manifest["providers"] = serde_json::json!({"rocm": {"x": 1}});
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let out = dlm(&["generate", "--model", &model], &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("providers.rocm: unknown provider"), "{stderr}");
    manifest["providers"] = serde_json::json!({"cuda": {"x": [1]}});
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let (_, stderr) = text(&dlm(&["generate", "--model", &model], &[]));
    assert!(stderr.contains("providers.cuda.x is [1]; allowed a string, number or boolean"), "{stderr}");
    for (bad, needle) in [
        (serde_json::json!({"cuda": {"x": "a\u{0}b"}}), "providers.cuda.x holds a NUL character"),
        (serde_json::json!({"tensorrt": {"trt fp16": 1}}), "providers.tensorrt: key \"trt fp16\" must be one word"),
    ] {
        manifest["providers"] = bad;
        std::fs::write(&manifest_path, manifest.to_string()).unwrap();
        let out = dlm(&["generate", "--model", &model, "--device", "cuda", "--allow-fallback"], &[]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success() && !stderr.contains("panicked") && stderr.contains(needle), "{stderr}");
    }
    // CUDA graphs in the manifest: refused where the device would apply them, even with
    // --allow-fallback (they are --binding cuda-graph's); on the CPU not applied, so no matter
    manifest["providers"] = serde_json::json!({"cuda": {"enable_cuda_graph": 1}});
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let out = dlm(&["generate", "--model", &model, "--device", "cuda", "--allow-fallback", "--steps", "2"], &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("use --binding cuda-graph"), "{stderr}");
    let out = dlm(&["generate", "--model", &model, "--steps", "2"], &[]);
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn the_tensorrt_cache_defaults_to_systemds_cache_directory() {
    let trt_cache = |env: &[(&str, &str)]| {
        let (stdout, stderr) = text(&dlm(&["info", "--model", &model()], env));
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with("trt cache"))
            .unwrap_or_else(|| panic!("{stderr}"))
            .to_string()
    };
    assert!(trt_cache(&[]).contains("trt cache  - "));
    assert!(trt_cache(&[("CACHE_DIRECTORY", "/var/cache/dlm")]).contains("trt cache  /var/cache/dlm "));
    assert!(
        trt_cache(&[("CACHE_DIRECTORY", "/var/cache/dlm"), ("DLM_TRT_CACHE", "/srv/engines")]).contains("/srv/engines")
    );
}

#[test]
fn verbose_names_the_provider_that_took_each_graphs_nodes() {
    let args =
        ["generate", "--model", &model(), "-v", "--steps", "3", "--content", "food=Italian", "--precision", "fp32"];
    let out = dlm(&args, &[]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for graph in ["denoiser.fp32", "guide_content.fp32"] {
        let line = stderr.lines().find(|l| l.contains(&format!("{graph}: All nodes placed on [CPUExecutionProvider]")));
        assert!(line.is_some_and(|l| l.contains("Number of nodes:")), "{graph}: {stderr}");
    }
    assert!(stderr.lines().count() < 100, "only the placements, not ONNX Runtime's verbose log: {stderr}");
}

/// `dlm ARGS` on the CPU library dlm finds itself (not a GPU one scripts/gpu-check.sh exports).
fn dlm_on_the_cpu_library(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(args)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("DLM_DEVICE")
        .env_remove("DLM_TRT_CACHE")
        .env_remove("CACHE_DIRECTORY")
        .env_remove("RUST_LOG")
        .output()
        .expect("dlm runs")
}

#[test]
fn the_gpu_providers_are_built_in_and_auto_falls_back_to_the_cpu_saying_why() {
    let out = dlm_on_the_cpu_library(&["info", "--model", &model(), "--device", "auto"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let built = match (cfg!(feature = "cuda"), cfg!(feature = "tensorrt")) {
        (true, true) => "providers built in: cpu cuda tensorrt",
        (true, false) => "providers built in: cpu cuda",
        _ => "providers built in: cpu ",
    };
    assert!(stdout.lines().next().is_some_and(|l| l.starts_with("dlm ") && l.contains(built)), "{stdout}");
    // the CPU wheel offers no GPU provider, with or without a GPU in this machine
    let device = stdout.lines().find(|l| l.trim_start().starts_with("device")).unwrap_or_default();
    assert!(device.contains("auto: cpu (") && device.contains("no GPU provider"), "{stdout}");
    assert!(stdout.contains("session      denoiser Fp32: requested auto, runs on cpu"), "{stdout}");
    assert!(stdout.contains("(for cpu: manifest, then --ep-option)"), "{stdout}");

    // without sessions (no engine builds): the device as asked, even one the library lacks
    let out = dlm_on_the_cpu_library(&["info", "--model", &model(), "--device", "tensorrt", "--no-sessions"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("  device     tensorrt (--device)\n") && !stdout.contains("session "), "{stdout}");

    let out = dlm_on_the_cpu_library(&["generate", "--model", &model(), "--device", "auto", "-v", "--steps", "3"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && stdout.lines().count() == 1, "{stdout}{stderr}");
    assert!(stderr.contains("--device auto: cpu (") && stderr.contains("on cpu"), "the choice is logged: {stderr}");
}

#[cfg(feature = "tensorrt")]
#[test]
fn tensorrt_on_a_cpu_library_names_what_it_offers() {
    let (_, stderr) = text(&dlm_on_the_cpu_library(&["generate", "--model", &model(), "--device", "tensorrt"]));
    assert!(stderr.contains("offers only") && stderr.contains("not TensorrtExecutionProvider"), "{stderr}");
    assert!(stderr.contains("onnxruntime-gpu"), "{stderr}");
}

#[test]
fn build_engines_refuses_what_builds_no_engine() {
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let model = model();
    let build = |extra: &[&str]| {
        let mut args = vec!["build-engines", "--model", &model];
        args.extend_from_slice(extra);
        let out = dlm_on_the_cpu_library(&args);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success() && !stderr.contains("panicked") && stdout.is_empty(), "{args:?}: {stderr}");
        stderr
    };
    let e = build(&["--trt-cache", cache]);
    assert!(e.contains("--device cpu: build-engines builds TensorRT engines"), "{e}");
    let e = build(&["--device", "cuda", "--trt-cache", cache]);
    assert!(e.contains("--device cuda: build-engines builds TensorRT engines"), "{e}");
    let e = build(&["--device", "auto", "--trt-cache", cache]);
    assert!(e.contains("--device auto chose cpu (") && e.contains("no TensorRT engines to build"), "{e}");
    let e = build(&["--device", "tensorrt"]);
    assert!(e.contains("no engine cache to build into: give --trt-cache DIR or DLM_TRT_CACHE"), "{e}");
    let e = build(&["--device", "tensorrt", "--trt-cache", cache, "--max-batch", "0"]);
    assert!(e.contains("0 is not in 1..=256"), "{e}");
    if cfg!(feature = "tensorrt") {
        let e = build(&["--device", "tensorrt", "--trt-cache", cache, "--allow-fallback"]);
        assert!(e.contains("not TensorrtExecutionProvider"), "no fallback to the CPU when building engines: {e}");
    }
}

#[cfg(not(feature = "tensorrt"))]
#[test]
fn tensorrt_without_its_features_names_them() {
    let (_, stderr) = text(&dlm(&["generate", "--model", &model(), "--device", "tensorrt"], &[]));
    assert!(stderr.contains("--features cuda,tensorrt"), "{stderr}");
}

#[test]
fn gpu_check_without_a_gpu_says_so_in_one_line_and_fails() {
    if Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success()) {
        println!("this machine has an NVIDIA GPU: scripts/gpu-check.sh would run for real");
        return;
    }
    let out = Command::new("bash").arg(common::repo_path("scripts/gpu-check.sh")).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.is_empty() && stderr.lines().count() == 1, "one line: {stdout}{stderr}");
    assert!(stderr.starts_with("gpu-check: no NVIDIA GPU here"), "{stderr}");
}

/// Model::load_with tells of each graph once, before it opens, in load order, counted
/// against the right total; "engine" only where TensorRT builds one (the language model runs on
/// the CPU whatever the device).
#[test]
fn loading_reports_every_graph_once_in_order() {
    use dlm::manifest::Precision;
    use dlm::model::{Model, Preload};
    use dlm::ort::Device;
    let opts = common::session_options();
    for (precision, key) in [(Precision::Fp32, "fp32"), (Precision::Fp16, "fp16")] {
        let mut seen = Vec::new();
        let model =
            Model::load_with(common::runtime(), &common::model_dir(), precision, &opts, &Preload::All, &mut |o| {
                seen.push((o.index, o.of, o.graph.to_string(), o.to_string()));
            })
            .unwrap();
        let order = common::graphs_in_load_order(key);
        let n = order.len();
        assert_eq!(n, 1 + 3 * model.guides.len() + 1, "denoiser, 3 bucket graphs per control, teacher: {order:?}");
        let expected: Vec<_> = order
            .iter()
            .enumerate()
            .map(|(i, graph)| {
                let trt = opts.device == Device::Tensorrt && graph != "teacher";
                let line = format!("{} {}/{n}: {graph}", if trt { "engine" } else { "session" }, i + 1);
                (i + 1, n, graph.clone(), line)
            })
            .collect();
        assert_eq!(seen, expected);
    }
}
