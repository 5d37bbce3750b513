//! The architecture as the layout shows it: no import cycle among the library's top-level
//! modules, `error` a leaf, and the layers below the ONNX Runtime adapter (`ort`) naming
//! neither it nor the `ort` crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its files name through `crate::`.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let top =
                rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
            if matches!(top.as_str(), "lib" | "main" | "cli") {
                continue; // the crate root and the binary's shell
            }
            let code: Vec<String> = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(String::from)
                .collect();
            let text = code.join("\n");
            let deps = graph.entry(top.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let (mut seen, mut stack) = (BTreeSet::new(), vec![from.to_string()]);
    while let Some(m) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn modules_form_no_cycle() {
    let graph = dependencies();
    assert!(graph.len() >= 10, "found only {:?}", graph.keys());
    for (module, deps) in &graph {
        for dep in deps {
            assert!(!reaches(&graph, dep, module), "cycle: {module} -> {dep} -> ... -> {module}");
        }
    }
}

#[test]
fn error_is_a_leaf_and_the_sampler_knows_no_engine() {
    let graph = dependencies();
    assert!(graph["error"].is_empty(), "error imports {:?}", graph["error"]);
    for lower in ["sampler", "schedule", "embeddings", "manifest", "text", "error"] {
        assert!(!reaches(&graph, lower, "ort"), "{lower} reaches the ONNX Runtime adapter");
    }
    let sampler = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sampler");
    for entry in std::fs::read_dir(sampler).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        assert!(!code.contains("ort::"), "{} names the ort crate", path.display());
    }
}
