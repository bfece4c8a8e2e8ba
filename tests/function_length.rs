//! No function of the product is longer than a reader takes in at a glance: 80 lines, from its
//! `fn` line to its closing brace, in the cores and in the shells alike. Test code is exempt
//! (a `#[cfg(test)]` module, a test module in a file of its own, `x/tests.rs` for
//! `#[cfg(test)] mod tests;` in `x.rs`, and files under `tests/`): a test reads top to bottom.

use std::path::Path;

use prefetch_tests::repo;

const LIMIT: usize = 80;

/// The crates whose code ships in a binary.
const PRODUCT: [&str; 8] = [
    "common/src",
    "shell/src",
    "controller/src",
    "controller/core/src",
    "webhook/src",
    "webhook/core/src",
    "certs/src",
    "noop/src",
];

/// (name, first line, length in lines) of each function in `text` before its test module. A
/// function starts at a line `fn name` (after any of pub, const, async) and ends at the first
/// line that is its own indentation and `}`; rustfmt lays every function out so.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text
        .lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .collect();
    let mut found = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let Some(name) = function_name(body) else {
            continue;
        };
        // A declaration without a body (in a trait) ends its signature with `;`.
        let signature_end = lines[at..]
            .iter()
            .map(|l| l.trim_end())
            .find(|l| l.ends_with('{') || l.ends_with(';') || l.ends_with('}'));
        if signature_end.is_none_or(|l| l.ends_with(';')) {
            continue;
        }
        let close = format!("{indent}}}");
        let end = lines[at..].iter().position(|l| {
            let l = l.trim_end();
            l == close || (l.starts_with(line.trim_end()) && l.ends_with('}'))
        });
        if let Some(end) = end {
            found.push((name, at + 1, end + 1));
        }
    }
    found
}

/// The name of the function a line declares, if it declares one with a body to follow.
fn function_name(line: &str) -> Option<String> {
    let mut rest = line;
    for qualifier in ["pub(crate) ", "pub(super) ", "pub ", "const ", "async "] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// A test module moved to a file of its own: `round/tests.rs`, declared by
/// `#[cfg(test)] mod tests;` in `round.rs`.
fn is_test_module(file: &Path) -> bool {
    file.file_name().is_some_and(|name| name == "tests.rs")
        && file.parent().is_some_and(|dir| {
            std::fs::read_to_string(dir.with_extension("rs"))
                .is_ok_and(|parent| parent.contains("#[cfg(test)]\nmod tests;"))
        })
}

#[test]
fn no_function_of_the_product_is_longer_than_80_lines() {
    let root = repo::root();
    let dirs: Vec<_> = PRODUCT.iter().map(|d| root.join(d)).collect();
    let mut long = Vec::new();
    let mut seen = 0;
    for file in repo::files_under(&dirs, &["rs"]) {
        if is_test_module(&file) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (name, line, length) in functions(&text) {
            seen += 1;
            if length > LIMIT {
                let path = file.strip_prefix(&root).unwrap_or(Path::new(""));
                long.push(format!("{}:{line} {name}: {length} lines", path.display()));
            }
        }
    }
    assert!(
        seen > 500,
        "only {seen} functions found: is the scan broken?"
    );
    assert!(
        long.is_empty(),
        "longer than {LIMIT} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_scan_measures_a_function_from_fn_to_its_brace() {
    let text = "pub async fn a(\n    x: u8,\n) -> u8 {\n    x\n}\n\nfn b();\nimpl X {\n    pub(crate) fn c() {}\n    fn d() {\n        1;\n    }\n}\n#[cfg(test)]\nfn e() {\n}\n";
    assert_eq!(
        functions(text),
        vec![("a".into(), 1, 5), ("c".into(), 9, 1), ("d".into(), 10, 3)],
        "a spans five lines; b has no body; c closes on its own line; e is test code"
    );
}
