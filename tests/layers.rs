//! The architecture as the layout shows it: no import cycle among the modules at any depth
//! (each file a module: `server::engine`, `server::http::routes`), in the library and in the
//! binary; `error` a leaf; the layers below the ONNX Runtime adapter (`ort`) naming neither it
//! nor the `ort` crate.
//!
//! A module depends on the modules its code names: `crate::a::b`, `super::x`, `self::x` or a
//! child module's name, `use` groups expanded. A name a module re-exports (`pub use x::Y`)
//! stands for where it is defined, and the re-export itself is no dependency: a facade may
//! re-export its children while they use what it defines, but a module whose own code uses a
//! child must not be used by that child.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;
type Graph = BTreeMap<Module, BTreeSet<Module>>;

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

/// The code of a file without comments and string literals (char literals kept apart from
/// quotes, lifetimes left alone).
fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let (mut out, mut i) = (String::new(), 0);
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == 'r' && (at(i + 1) == '"' || at(i + 1) == '#') && !(i > 0 && is_ident(chars[i - 1])) {
            let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
            if at(i + 1 + hashes) != '"' {
                out.push(c);
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            i += 2 + hashes;
            while i < chars.len() && !chars[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Identifiers, `::` and single punctuation, each with its line.
fn tokens(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (line, text) in code.lines().enumerate() {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if is_ident(chars[i]) {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                out.push((chars[start..i].iter().collect(), line));
            } else if chars[i] == ':' && chars.get(i + 1) == Some(&':') {
                out.push(("::".into(), line));
                i += 2;
            } else {
                if !chars[i].is_whitespace() {
                    out.push((chars[i].to_string(), line));
                }
                i += 1;
            }
        }
    }
    out
}

/// Every path in `tokens` that starts with an identifier followed by `::`, `use` groups
/// expanded (`a::{b, c::d}` gives `a::b` and `a::c::d`; `self` in a group is the prefix), with
/// the line it starts on.
fn paths(tokens: &[(String, usize)]) -> Vec<(Vec<String>, usize)> {
    fn parse(tokens: &[(String, usize)], mut i: usize, mut segs: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
        loop {
            let Some((t, _)) = tokens.get(i) else {
                out.push(segs);
                return i;
            };
            match t.as_str() {
                "{" => {
                    i += 1;
                    while i < tokens.len() && tokens[i].0 != "}" {
                        match tokens[i].0.as_str() {
                            "," => i += 1,
                            "*" => {
                                out.push(segs.clone());
                                i += 1;
                            }
                            _ => i = parse(tokens, i, segs.clone(), out),
                        }
                    }
                    return i + 1;
                }
                "*" => {
                    out.push(segs);
                    return i + 1;
                }
                t if t.starts_with(is_ident) => {
                    segs.push(t.to_string());
                    i += 1;
                    if tokens.get(i).is_some_and(|(t, _)| t == "::") {
                        i += 1;
                        continue;
                    }
                    if segs.last().is_some_and(|s| s == "self") {
                        segs.pop();
                    }
                    out.push(segs);
                    return i;
                }
                _ => {
                    out.push(segs);
                    return i;
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let starts = tokens[i].0.starts_with(is_ident)
            && (i == 0 || tokens[i - 1].0 != "::")
            && tokens.get(i + 1).is_some_and(|(t, _)| t == "::");
        if starts {
            let mut found = Vec::new();
            let line = tokens[i].1;
            i = parse(tokens, i, Vec::new(), &mut found);
            out.extend(found.into_iter().map(|p| (p, line)));
        } else {
            i += 1;
        }
    }
    out
}

/// Per line of `code`, how many inline modules (`mod tests { ... }`) it sits in: there
/// `super` names the file's module first.
fn inline_depths(code: &str) -> Vec<usize> {
    let mut open: Vec<usize> = Vec::new();
    code.lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            if open.last().is_some_and(|&i| i == indent && line.trim() == "}") {
                open.pop();
            }
            let depth = open.len();
            let words: Vec<&str> = line.split_whitespace().collect();
            let declares = matches!(words.as_slice(), [.., "mod", _, "{"]) && !line.contains('}');
            if declares {
                open.push(indent);
            }
            depth
        })
        .collect()
}

/// One crate's modules: `files` are (module path, source text).
struct Crate {
    modules: BTreeMap<Module, String>,
    /// (module, name) -> the path it re-exports, as written in that module.
    exports: BTreeMap<(Module, String), Vec<String>>,
}

impl Crate {
    fn new(files: Vec<(Module, String)>) -> Self {
        let modules: BTreeMap<Module, String> = files.into_iter().map(|(m, text)| (m, code_of(&text))).collect();
        let mut exports = BTreeMap::new();
        for (module, code) in &modules {
            for statement in re_exports(code) {
                for (path, _) in paths(&tokens(&statement)) {
                    if let Some(last) = path.last() {
                        exports.insert((module.clone(), last.clone()), path);
                    }
                }
            }
        }
        Self { modules, exports }
    }

    /// The module that `path`, written in `module` inside `inline` inline modules, names (None:
    /// another crate, or a local name).
    fn resolve(&self, module: &Module, inline: usize, path: &[String], depth: usize) -> Option<Module> {
        let first = path.first()?;
        let (mut at, rest): (Module, &[String]) = match first.as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "super" | "self" => {
                let mut at = module.clone();
                let steps = path.iter().take_while(|s| *s == "super" || *s == "self").count();
                let supers = path[..steps].iter().filter(|s| *s == "super").count();
                at.truncate(at.len().saturating_sub(supers.saturating_sub(inline)));
                (at, &path[steps..])
            }
            child if self.modules.contains_key(&[module.clone(), vec![child.to_string()]].concat()) => {
                (module.clone(), path)
            }
            _ => return None,
        };
        for seg in rest {
            let child = [at.clone(), vec![seg.clone()]].concat();
            if self.modules.contains_key(&child) {
                at = child;
            } else if let Some(target) = self.exports.get(&(at.clone(), seg.clone())).filter(|_| depth < 8) {
                return self.resolve(&at, 0, target, depth + 1).or(Some(at));
            } else {
                break;
            }
        }
        Some(at)
    }

    /// Module -> the modules its code names (re-export statements left out).
    fn graph(&self) -> Graph {
        let mut graph = Graph::new();
        for (module, code) in &self.modules {
            let mut body = code.clone();
            for statement in re_exports(code) {
                body = body.replacen(&statement, &"\n".repeat(statement.matches('\n').count()), 1);
            }
            let depths = inline_depths(&body);
            let deps = graph.entry(module.clone()).or_default();
            for (path, line) in paths(&tokens(&body)) {
                let inline = depths.get(line).copied().unwrap_or(0);
                if let Some(target) = self.resolve(module, inline, &path, 0) {
                    if &target != module && !target.is_empty() {
                        deps.insert(target);
                    }
                }
            }
        }
        graph
    }
}

/// The `pub use ...;` statements of `code`.
fn re_exports(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(start) = ["pub use ", "pub(crate) use "].iter().filter_map(|k| rest.find(k)).min() {
        let Some(len) = rest[start..].find(';') else { break };
        out.push(rest[start..start + len + 1].to_string());
        rest = &rest[start + len + 1..];
    }
    out
}

/// The library's and the binary's modules, by the files under `src`.
fn crates() -> (Crate, Crate) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (mut lib, mut bin) = (Vec::new(), Vec::new());
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap().with_extension("");
            let mut module: Module = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            if module.last().is_some_and(|m| m == "mod") || module == ["lib"] || module == ["main"] {
                module.pop();
            }
            let binary = rel.starts_with("main") || rel.starts_with("cli");
            let text = std::fs::read_to_string(&path).unwrap();
            if binary { &mut bin } else { &mut lib }.push((module, text));
        }
    }
    (Crate::new(lib), Crate::new(bin))
}

/// A cycle through `from`, as module names, if there is one.
fn cycle_through(graph: &Graph, from: &Module) -> Option<Vec<String>> {
    // depth-first, remembering the way back
    let mut back: BTreeMap<Module, Module> = BTreeMap::new();
    let mut stack = vec![from.clone()];
    while let Some(m) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == from {
                let mut way = vec![name(&m)];
                let mut at = m.clone();
                while let Some(prev) = back.get(&at) {
                    way.push(name(prev));
                    at = prev.clone();
                }
                way.reverse();
                way.push(name(from));
                return Some(way);
            }
            if !back.contains_key(next) && next != from {
                back.insert(next.clone(), m.clone());
                stack.push(next.clone());
            }
        }
    }
    None
}

fn reaches(graph: &Graph, from: &Module, to: &str) -> bool {
    let (mut seen, mut stack) = (BTreeSet::new(), vec![from.clone()]);
    while let Some(m) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next.first().is_some_and(|top| top == to) {
                return true;
            }
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    false
}

fn module(path: &str) -> Module {
    path.split("::").map(String::from).collect()
}

#[test]
fn modules_form_no_cycle_at_any_depth() {
    let (lib, bin) = crates();
    for (which, krate, at_least) in [("library", &lib, 40), ("binary", &bin, 5)] {
        let graph = krate.graph();
        assert!(graph.len() >= at_least, "{which}: found only {:?}", graph.keys());
        let cycles: Vec<String> =
            graph.keys().filter_map(|m| cycle_through(&graph, m)).map(|way| way.join(" -> ")).collect();
        assert!(cycles.is_empty(), "{which}: import cycles:\n{}", cycles.join("\n"));
    }
    // the graph sees submodules and resolves re-exports to where a name is defined
    let graph = lib.graph();
    assert!(graph[&module("server::http::routes")].contains(&module("server::queue")), "{:?}", graph);
    assert!(graph[&module("ort::session")].contains(&module("ort::runtime")), "super::OrtRuntime is ort::runtime's");
}

#[test]
fn the_check_finds_a_cycle_through_a_child_and_a_re_export() {
    let files = |mod_rs: &str| {
        vec![
            (Vec::new(), "pub mod a;".to_string()),
            (module("a"), mod_rs.to_string()),
            (module("a::b"), "use super::Shared;\npub fn run() {}\n".to_string()),
        ]
    };
    let facade = Crate::new(files("mod b;\npub use b::run;\npub struct Shared;")).graph();
    assert!(facade.keys().all(|m| cycle_through(&facade, m).is_none()), "a re-export is no dependency: {facade:?}");
    let tangled = Crate::new(files("mod b;\npub struct Shared;\nfn go() { b::run() }")).graph();
    assert_eq!(cycle_through(&tangled, &module("a")).unwrap(), ["a", "a::b", "a"]);
    let test_module =
        Crate::new(files("mod b;\npub struct Shared;\n#[cfg(test)]\nmod tests {\n    use super::b::run;\n}\n"));
    assert!(test_module.graph()[&module("a")].contains(&module("a::b")), "super in an inline module is the file's");
}

#[test]
fn error_is_a_leaf_and_the_sampler_knows_no_engine() {
    let graph = crates().0.graph();
    assert!(graph[&module("error")].is_empty(), "error imports {:?}", graph[&module("error")]);
    let lower = ["sampler", "schedule", "embeddings", "manifest", "text", "error"];
    for m in graph.keys().filter(|m| m.first().is_some_and(|top| lower.contains(&top.as_str()))) {
        assert!(!reaches(&graph, m, "ort"), "{} reaches the ONNX Runtime adapter", name(m));
    }
    let sampler = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sampler");
    for entry in std::fs::read_dir(sampler).unwrap() {
        let path = entry.unwrap().path();
        let code = code_of(&std::fs::read_to_string(&path).unwrap());
        assert!(!code.contains("ort::"), "{} names the ort crate", path.display());
    }
}
