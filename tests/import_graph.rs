//! The workspace's layout, checked: no crate's modules import each other in a circle, and the
//! pure crates (`common`, `controller/core`, `webhook/core`) reach neither a client, a clock, a
//! lock nor the runtime. The compiler enforces most of it: a pure crate's manifest lists no
//! kube client, no tokio and no shell crate, which is checked here too. What a manifest cannot
//! say (a clock read through jiff or std, a lock from std) is read from the sources as text: a
//! `crate::a::b` or `super::b` path is an import of the module file it names, wherever it
//! stands (a `use`, a type, a test).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 10] = [
    "common",
    "shell",
    "controller",
    "controller/core",
    "webhook",
    "webhook/core",
    "certs",
    "bench",
    "tests",
    "noop",
];

/// The crates that decide: pure functions of their inputs and of the time passed in as a value.
const PURE: [&str; 3] = ["common", "controller/core", "webhook/core"];

/// Dependencies a pure crate may not have: the API client, the runtime, the shells.
const IMPURE_DEPENDENCIES: [&str; 8] = [
    "kube",
    "kube-client",
    "kube-runtime",
    "tokio",
    "prefetch-shell",
    "prefetch-controller",
    "prefetch-webhook",
    "prometheus-client",
];

/// What a pure crate's code may not use: the API client, the clock, locks, the runtime.
const IMPURE: [&str; 13] = [
    "kube::Client",
    "kube::Api",
    "kube::{",
    "Api<",
    "Timestamp::now",
    "Zoned::now",
    "SystemTime::now",
    "Instant::now",
    "Mutex",
    "RwLock",
    "tokio::",
    "std::thread",
    "std::net",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, as (module path, text): `shell/reconciler.rs` is
/// `shell::reconciler`, `shell/mod.rs` is `shell`, `lib.rs` and `main.rs` are the crate root `""`; `bin/x.rs` and
/// files outside `src/` are crate roots of their own, left out.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            found.insert(parts.join("::"), std::fs::read_to_string(&path).unwrap());
        }
    }
    found
}

/// The text without comments (a path named in a comment is not an import).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths `crate::…` and `super::…` in `text`, resolved to absolute module paths (without
/// the leading `crate::`), each as far as it goes.
fn paths(module: &str, text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (at, _) in text
        .match_indices("crate::")
        .chain(text.match_indices("super::"))
    {
        if text[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let tail: String = text[at..].chars().take_while(|c| ident(*c)).collect();
        let mut segments: Vec<String> = tail.split("::").map(String::from).collect();
        let mut base: Vec<String> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").map(String::from).collect()
        };
        match segments.first().map(String::as_str) {
            Some("crate") => base.clear(),
            _ => {
                // `super` counts from the module: in a file module, its parent.
                while segments.first().map(String::as_str) == Some("super") {
                    segments.remove(0);
                    base.pop();
                }
                segments.insert(0, "crate".into());
            }
        }
        segments.remove(0);
        base.extend(segments.into_iter().filter(|s| !s.is_empty()));
        out.push(base);
    }
    out
}

/// Module -> the other modules it imports (the longest known module each path names; a path
/// to the module itself or to one of its ancestors, whose files only declare modules and
/// re-export, is not an import).
fn graph(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (module, text) in modules {
        let mut targets = BTreeSet::new();
        for path in paths(module, &code(text)) {
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|candidate| modules.contains_key(candidate));
            if let Some(target) = target {
                let ancestor = module == &target
                    || target.is_empty()
                    || module.starts_with(&format!("{target}::"));
                if !ancestor {
                    targets.insert(target);
                }
            }
        }
        edges.insert(module.clone(), targets);
    }
    edges
}

/// One import circle, if there is any.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|start| visit(start, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_circle() {
    for krate in CRATES {
        let modules = modules(&workspace().join(krate).join("src"));
        assert!(!modules.is_empty(), "{krate}/src has no modules");
        if let Some(found) = circle(&graph(&modules)) {
            panic!("{krate}: import circle {}", found.join(" -> "));
        }
    }
}

/// The package names in a Cargo.toml's `[dependencies]` table (one `name = ...` a line, as
/// every manifest here writes it).
fn dependencies(manifest: &str) -> BTreeSet<String> {
    manifest
        .lines()
        .skip_while(|line| line.trim() != "[dependencies]")
        .skip(1)
        .take_while(|line| !line.trim_start().starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(name, _)| name.trim().to_string())
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .collect()
}

#[test]
fn a_pure_crate_depends_on_no_client_runtime_or_shell() {
    for krate in PURE {
        let manifest = std::fs::read_to_string(workspace().join(krate).join("Cargo.toml")).unwrap();
        let found: Vec<String> = dependencies(&manifest)
            .into_iter()
            .filter(|d| IMPURE_DEPENDENCIES.contains(&d.as_str()))
            .collect();
        assert!(found.is_empty(), "{krate} depends on {found:?}");
    }
}

#[test]
fn a_pure_crate_reads_no_clock_and_takes_no_lock() {
    for krate in PURE {
        let modules = modules(&workspace().join(krate).join("src"));
        assert!(!modules.is_empty(), "{krate}/src has no modules");
        // Tests (a `#[cfg(test)]` module or its sibling file `x/tests.rs`) may build their
        // inputs however they like.
        let product = modules.iter().filter(|(m, _)| !m.ends_with("tests"));
        for (module, text) in product {
            let decisions = code(text.split("#[cfg(test)]").next().unwrap_or(""));
            for word in IMPURE {
                assert!(
                    !decisions.contains(word),
                    "{krate}::{module} uses {word}: a core decides, the shell does"
                );
            }
        }
    }
}

#[test]
fn a_shell_crate_has_no_core_module_of_its_own() {
    // Decisions live in the core crates, where the compiler keeps them pure.
    for krate in ["controller", "webhook"] {
        let modules = modules(&workspace().join(krate).join("src"));
        let inside: Vec<&String> = modules
            .keys()
            .filter(|m| *m == "core" || m.starts_with("core::"))
            .collect();
        assert!(inside.is_empty(), "{krate}/src holds {inside:?}");
    }
}

#[test]
fn the_checks_see_a_circle_and_an_impure_core() {
    let modules: BTreeMap<String, String> = [
        ("", "pub mod a; pub mod b;"),
        ("a", "use crate::b::thing;"),
        ("b", "fn f() { super::a::other() }"),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_string(), t.to_string()))
    .collect();
    let found = circle(&graph(&modules)).expect("a -> b -> a");
    assert_eq!(found.first(), found.last());
    let commented: BTreeMap<String, String> =
        [("a", "// see crate::b::thing"), ("b", "use crate::a::x;")]
            .into_iter()
            .map(|(m, t)| (m.to_string(), t.to_string()))
            .collect();
    assert_eq!(circle(&graph(&commented)), None, "comments are not imports");
    let manifest = "[package]\nname = \"x\"\n[dependencies]\nserde = \"1\"\nkube = { workspace = true }\n[dev-dependencies]\ntokio = \"1\"\n";
    let found = dependencies(manifest);
    assert!(
        found.contains("kube") && found.contains("serde"),
        "{found:?}"
    );
    assert!(
        !found.contains("tokio"),
        "dev-dependencies are not dependencies"
    );
}
