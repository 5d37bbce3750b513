use super::*;

fn option(text: &str) -> Result<EpOption, String> {
    text.parse()
}

#[test]
fn options_parse_as_provider_key_value_and_bad_ones_say_why() {
    let o = option("tensorrt:trt_profile_min_shapes=x:1x64x16,t:1").unwrap();
    assert_eq!((o.provider, o.key.as_str()), (Provider::Tensorrt, "trt_profile_min_shapes"));
    assert_eq!(o.value, "x:1x64x16,t:1", "everything after the first '=' is the value");
    for (bad, why) in [
        ("tensorrt", "no ':'"),
        ("tensorrt:trt_fp16_enable", "no '='"),
        ("tensorrt:=1", "one word"),
        ("cpu:x=1", "the CPU provider takes no options"),
        ("rocm:x=1", "unknown provider \"rocm\""),
    ] {
        let e = option(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn options_for_a_provider_the_device_does_not_register_are_refused() {
    let (cuda, trt) = (option("cuda:a=1").unwrap(), option("tensorrt:b=2").unwrap());
    assert!(check_options(Device::Tensorrt, &[cuda.clone(), trt.clone()]).is_ok());
    assert!(check_options(Device::Auto, &[cuda.clone(), trt.clone()]).is_ok(), "auto may choose either");
    assert!(check_options(Device::Cuda, std::slice::from_ref(&cuda)).is_ok());
    assert!(check_options(Device::Cuda, &[trt]).unwrap_err().contains("--device cuda does not use tensorrt"));
    assert!(check_options(Device::Cpu, &[cuda]).unwrap_err().contains("--device cpu does not use cuda"));
    assert_eq!(Device::Tensorrt.providers(), [Provider::Tensorrt, Provider::Cuda], "TensorRT, then CUDA");
}

#[test]
fn cuda_graphs_are_the_binding_s_for_the_denoiser_alone_never_an_option_by_hand() {
    for by_hand in ["cuda:enable_cuda_graph=1", "tensorrt:trt_cuda_graph_enable=0"] {
        let e = refuse_graph_options(&[option(by_hand).unwrap()]).unwrap_err();
        assert!(e.contains("use --binding cuda-graph"), "{by_hand}: {e}");
        assert!(check_options(Device::Tensorrt, &[option(by_hand).unwrap()]).is_err(), "{by_hand}");
    }
    assert!(refuse_graph_options(&[option("cuda:enable_cuda_graph_x=1").unwrap()]).is_ok(), "another key");
    for device in [Device::Cpu, Device::Tensorrt] {
        let e = check_binding(device, Binding::CudaGraph).unwrap_err();
        assert!(e.contains("need --device cuda (or auto choosing it), not"), "{device:?}: {e}");
    }
    for device in [Device::Cuda, Device::Auto] {
        assert!(check_binding(device, Binding::CudaGraph).is_ok(), "{device:?}");
    }
    assert!(check_binding(Device::Cpu, Binding::Fixed).is_ok());
    #[cfg(feature = "cuda")]
    {
        let manifest = shipped();
        let graphs = |binding, device| {
            let opts = SessionOptions { binding, device, ..SessionOptions::default() };
            let of = |g: &Graph, p| {
                graph_option(p, g, &opts).map(|o| format!("{}:{}={}", o.provider.name(), o.key, o.value))
            };
            manifest
                .graphs
                .iter()
                .flat_map(|g| [of(g, Provider::Cuda), of(g, Provider::Tensorrt)])
                .flatten()
                .collect::<Vec<_>>()
        };
        let denoisers = manifest.graphs.iter().filter(|g| g.role == Role::Denoiser).count();
        let on = graphs(Binding::CudaGraph, Device::Cuda);
        assert_eq!(on, vec!["cuda:enable_cuda_graph=1"; denoisers], "each denoiser's, no guidance graph's");
        assert!(graphs(Binding::CudaGraph, Device::Tensorrt).is_empty(), "never TensorRT's, nor CUDA's behind it");
        assert!(graphs(Binding::Fixed, Device::Cuda).is_empty() && graphs(Binding::PerRun, Device::Cuda).is_empty());
    }
}

fn shipped() -> Manifest {
    Manifest::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/e2e")).unwrap()
}

#[test]
fn engine_caches_differ_by_graph_content_not_file_name() {
    let manifest = shipped();
    let cache = Path::new("/var/cache/dlm");
    let graph = manifest.graphs.iter().find(|g| g.name == "guide_content.fp16").unwrap().clone();
    let here = engine_cache_dir(cache, &graph, &manifest.weights);
    assert!(here.starts_with(cache) && here.file_name().unwrap().to_str().unwrap().starts_with("guide_content.fp16-"));
    assert_eq!(here, engine_cache_dir(cache, &graph, &manifest.weights), "stable");

    let retrained = crate::manifest::Graph { sha256: "0".repeat(64), ..graph.clone() };
    assert_eq!(retrained.file, graph.file, "the same file name");
    assert_ne!(engine_cache_dir(cache, &retrained, &manifest.weights), here, "another graph file");

    // the same graph file reading other weights (a retrained classifier of the same shape)
    let mut weights = manifest.weights.clone();
    let ours = weights.iter_mut().find(|w| w.graphs.contains(&graph.name)).unwrap();
    ours.sha256 = "1".repeat(64);
    assert_ne!(engine_cache_dir(cache, &graph, &weights), here, "other external weights");
    // other controls' weights do not touch this graph's engine
    let mut others = manifest.weights.clone();
    others.retain(|w| !w.graphs.contains(&graph.name));
    others.iter_mut().for_each(|w| w.sha256 = "2".repeat(64));
    others.extend(manifest.weights.iter().filter(|w| w.graphs.contains(&graph.name)).cloned());
    assert_eq!(engine_cache_dir(cache, &graph, &others), here);
}

#[test]
fn the_manifest_defaults_come_before_the_command_line() {
    let mut manifest = shipped();
    let json = r#"{"tensorrt": {"trt_builder_optimization_level": 3, "trt_fp16_enable": true}, "cuda": {"gpu_mem_limit": "1073741824"}}"#;
    manifest.providers = serde_json::from_str(json).unwrap();
    let given = SessionOptions {
        ep_options: vec![option("tensorrt:trt_builder_optimization_level=5").unwrap()],
        ..Default::default()
    };
    let merged: Vec<String> = given
        .for_model(&manifest)
        .ep_options
        .iter()
        .map(|o| format!("{}:{}={}", o.provider.name(), o.key, o.value))
        .collect();
    assert_eq!(
        merged,
        [
            "cuda:gpu_mem_limit=1073741824",
            "tensorrt:trt_builder_optimization_level=3",
            "tensorrt:trt_fp16_enable=1",
            "tensorrt:trt_builder_optimization_level=5",
        ],
        "applied in order, so the command line's value of a key wins"
    );
}
