//! Every relative link in README.md and in the book under docs/ resolves: the file (or
//! directory) it names exists, and a `#anchor` names a heading of the target file under the
//! slug rules GitHub and mdBook share (lower-case; spaces become '-'; every character that is
//! not a letter, a digit, '-' or '_' is dropped; a repeated heading gets `-1`, `-2`, ...).
//! Every chapter under docs/src/ is listed in SUMMARY.md, or mdBook would not render it.
//!
//! Reads files only: no network, no mdbook binary. Links to http(s) and mailto are not checked.
//! Links are found with a line-based scanner (`[text](target)`, `![alt](target)`,
//! `[label]: target`), outside fenced code blocks and inline code spans.
//!
//! Source comments cite the book the same way: a `docs/src/<file>.md` or
//! `docs/src/<file>.md#<anchor>` in a `//`, `///` or `//!` comment of any `.rs` file of the
//! workspace (and of `noop/`; `target/` skipped) must name a file that exists and, with an
//! anchor, a heading of that file under the same slug rule. A comment that still cites the
//! design file that used to live outside the repository (by its old upper-case name) fails
//! too: the design is docs/src/design.md.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use prefetch_tests::repo;

/// README.md and every Markdown file under docs/.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    files.extend(repo::files_under(&[root.join("docs")], &["md"]));
    files
}

/// A line's text with inline code spans removed (their content is not Markdown).
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let fence = &rest[start..start + ticks];
        let after = &rest[start + ticks..];
        if let Some(end) = after.find(fence) {
            rest = &after[end + ticks..];
        } else {
            // An unclosed span is literal text.
            out.push_str(fence);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The lines of a Markdown file that are not inside fenced code blocks, with their numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = if trimmed.starts_with("```") {
            Some("```")
        } else if trimmed.starts_with("~~~") {
            Some("~~~")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => lines.push((i + 1, line)),
            _ => {}
        }
    }
    lines
}

/// The link targets of one line of prose: `](target)` and `[label]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(close) = trimmed.find("]:")
    {
        let target = trimmed[close + 2..].split_whitespace().next().unwrap_or("");
        if !target.is_empty() && !trimmed[1..close].contains(']') {
            targets.push(target.trim_matches(|c| c == '<' || c == '>').to_string());
        }
    }
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let (target, consumed) = if let Some(inner) = after.strip_prefix('<') {
            let end = inner.find('>').unwrap_or(inner.len());
            (&inner[..end], end + 1)
        } else {
            // Up to the closing parenthesis (balanced) or a title after whitespace.
            let mut depth = 0usize;
            let mut end = after.len();
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        end = i;
                        break;
                    }
                    ')' => depth -= 1,
                    c if c.is_whitespace() => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            (&after[..end], end)
        };
        targets.push(target.to_string());
        rest = &after[consumed.min(after.len())..];
    }
    targets
}

fn is_external(target: &str) -> bool {
    let lower = target.to_ascii_lowercase();
    ["http://", "https://", "mailto:"]
        .iter()
        .any(|scheme| lower.starts_with(scheme))
}

/// A heading's anchor: GitHub's and mdBook's rule on the heading's rendered text.
fn slug(heading: &str) -> String {
    // Rendered text: code spans lose their backticks, links keep their text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](") {
            Some(mid) if after[mid + 2..].contains(')') => {
                text.push_str(&after[..mid]);
                let tail = &after[mid + 2..];
                rest = &tail[tail.find(')').unwrap() + 1..];
            }
            _ => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// The anchors of a Markdown file's ATX headings (`#` to `######`), duplicates numbered.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let mut heading = line[hashes..].trim().trim_end_matches('#').trim_end();
        // mdBook's explicit id: `## Heading {#id}`.
        if let Some(open) = heading.rfind("{#")
            && heading.ends_with('}')
        {
            anchors.insert(heading[open + 2..heading.len() - 1].to_string());
            continue;
        }
        heading = heading.trim();
        let base = slug(heading);
        let count = seen.entry(base.clone()).or_insert(0);
        let anchor = if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        };
        *count += 1;
        anchors.insert(anchor);
    }
    anchors
}

/// Every broken relative link of the given documents, as `file:line: target: why`.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut anchor_cache: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut broken = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (number, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if is_external(&target) {
                    continue;
                }
                let mut report =
                    |why: String| broken.push(format!("{shown}:{number}: ({target}): {why}"));
                if target.is_empty() {
                    report("empty link target".into());
                    continue;
                }
                let (path_part, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let path_part = path_part.split('?').next().unwrap();
                let resolved = if path_part.is_empty() {
                    file.clone()
                } else if let Some(from_root) = path_part.strip_prefix('/') {
                    root.join(from_root)
                } else {
                    file.parent().unwrap().join(path_part)
                };
                if !resolved.exists() {
                    report(format!("{} does not exist", resolved.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if resolved.extension().is_none_or(|e| e != "md") {
                    report("an anchor into a file that is not Markdown".into());
                    continue;
                }
                let key = resolved.canonicalize().unwrap();
                let known = anchor_cache
                    .entry(key)
                    .or_insert_with(|| anchors(&std::fs::read_to_string(&resolved).unwrap()));
                if !known.contains(anchor) {
                    report(format!(
                        "no heading with anchor #{anchor} in {}",
                        resolved.strip_prefix(root).unwrap_or(&resolved).display()
                    ));
                }
            }
        }
    }
    broken
}

/// The crates whose sources may cite the book.
const SOURCE_DIRS: [&str; 8] = [
    "common",
    "shell",
    "webhook",
    "controller",
    "certs",
    "tests",
    "bench",
    "noop",
];

/// The old citation of the design file that lived outside the repository.
const OUT_OF_REPO_DESIGN: &str = "DESIGN.md";

/// Every `.rs` file under the source directories, `target/` directories skipped.
fn rust_sources(root: &Path) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = SOURCE_DIRS.iter().map(|d| root.join(d)).collect();
    repo::files_under(&dirs, &["rs"])
}

/// The comment of one line of Rust: the text after `//` (`///` and `//!` included), either
/// the whole line or a trailing comment after code (a `//` inside a string literal is not one).
fn comment_of(line: &str) -> Option<&str> {
    let mut in_string = false;
    let mut escaped = false;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            return Some(&line[i..]);
        }
    }
    None
}

/// The book references of a comment: `docs/src/<file>.md`, with `#<anchor>` when present,
/// as (file under docs/src, anchor).
fn book_references(comment: &str) -> Vec<(String, Option<String>)> {
    const PREFIX: &str = "docs/src/";
    let mut found = Vec::new();
    let mut rest = comment;
    while let Some(at) = rest.find(PREFIX) {
        let after = &rest[at + PREFIX.len()..];
        let path_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
            .unwrap_or(after.len());
        let path = &after[..path_len];
        let Some(md) = path.find(".md") else {
            rest = after;
            continue;
        };
        let file = &path[..md + 3];
        let tail = &after[md + 3..];
        let (anchor, consumed) = match tail.strip_prefix('#') {
            Some(anchor_text) => {
                let len = anchor_text
                    .find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
                    .unwrap_or(anchor_text.len());
                (Some(anchor_text[..len].to_string()), md + 4 + len)
            }
            None => (None, md + 3),
        };
        found.push((file.to_string(), anchor));
        rest = &after[consumed..];
    }
    found
}

/// Every unresolved book reference and every out-of-repository design citation in the
/// comments of `text` (shown as `shown`), as `file:line: reference: why`.
fn broken_source_references(
    root: &Path,
    shown: &str,
    text: &str,
    anchor_cache: &mut HashMap<PathBuf, Option<BTreeSet<String>>>,
) -> Vec<String> {
    let mut broken = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(comment) = comment_of(line) else {
            continue;
        };
        let number = i + 1;
        if comment.contains(OUT_OF_REPO_DESIGN) {
            broken.push(format!(
                "{shown}:{number}: cites {OUT_OF_REPO_DESIGN}, which is not in the repository: \
                 cite docs/src/design.md#<anchor>"
            ));
        }
        for (file, anchor) in book_references(comment) {
            let target = root.join("docs/src").join(&file);
            let shown_ref = match &anchor {
                Some(a) => format!("docs/src/{file}#{a}"),
                None => format!("docs/src/{file}"),
            };
            let known = anchor_cache
                .entry(target.clone())
                .or_insert_with(|| std::fs::read_to_string(&target).ok().map(|t| anchors(&t)));
            match (known, anchor) {
                (None, _) => broken.push(format!(
                    "{shown}:{number}: {shown_ref}: {} does not exist",
                    target.display()
                )),
                (Some(known), Some(anchor)) if !known.contains(&anchor) => broken.push(format!(
                    "{shown}:{number}: {shown_ref}: no heading with anchor #{anchor} in docs/src/{file}"
                )),
                _ => {}
            }
        }
    }
    broken
}

#[test]
fn every_book_reference_in_a_source_comment_resolves() {
    let root = repo::root();
    let files = rust_sources(&root);
    assert!(
        files.iter().any(|f| f.ends_with("tests/doc_links.rs")),
        "the source scan found no tests/doc_links.rs"
    );
    let mut cache = HashMap::new();
    let mut broken = Vec::new();
    let mut references = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        references += text
            .lines()
            .filter_map(comment_of)
            .map(|c| book_references(c).len())
            .sum::<usize>();
        broken.extend(broken_source_references(&root, &shown, &text, &mut cache));
    }
    assert!(
        references > 0,
        "no source comment cites docs/src/: the scan is looking in the wrong place"
    );
    assert!(
        broken.is_empty(),
        "{} broken reference(s) in source comments:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_source_checker_reports_a_bad_reference() {
    let root = repo::root();
    let mut cache = HashMap::new();
    let text = concat!(
        "//! Fine (design: docs/src/design.md#warm-rollouts), and docs/src/api.md too.\n",
        "/// A wrong anchor: docs/src/design.md#no-such-heading.\n",
        "let s = \"// docs/src/design.md#in-a-string-literal is not a comment\";\n",
        "fn f() {} // a missing file: docs/src/nowhere.md#x\n",
    );
    let broken = broken_source_references(&root, "example.rs", text, &mut cache);
    assert_eq!(
        broken,
        vec![
            "example.rs:2: docs/src/design.md#no-such-heading: no heading with anchor \
             #no-such-heading in docs/src/design.md"
                .to_string(),
            format!(
                "example.rs:4: docs/src/nowhere.md#x: {} does not exist",
                root.join("docs/src/nowhere.md").display()
            ),
        ]
    );
    let old = format!("// see {OUT_OF_REPO_DESIGN} section 9\n");
    let broken = broken_source_references(&root, "old.rs", &old, &mut cache);
    assert_eq!(broken.len(), 1);
    assert!(broken[0].starts_with("old.rs:1: cites "), "{broken:?}");
    assert_eq!(
        book_references("see docs/src/design.md#warm-nodes, docs/src/api.md."),
        vec![
            ("design.md".to_string(), Some("warm-nodes".to_string())),
            ("api.md".to_string(), None)
        ]
    );
    assert_eq!(comment_of("let url = \"https://example.com\";"), None);
    assert_eq!(comment_of("x(); // note"), Some("// note"));
}

#[test]
fn every_relative_link_in_the_readme_and_the_book_resolves() {
    let root = repo::root();
    let files = documents(&root);
    assert!(
        files.iter().any(|f| f.ends_with("docs/src/SUMMARY.md")),
        "the book's docs/src/SUMMARY.md is missing"
    );
    let broken = broken_links(&root, &files);
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn every_chapter_is_in_the_summary() {
    let src = repo::root().join("docs/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).unwrap();
    let listed: BTreeSet<PathBuf> = prose_lines(&summary)
        .into_iter()
        .flat_map(|(_, line)| link_targets(line))
        .map(|t| src.join(t.split('#').next().unwrap()))
        .collect();
    let missing: Vec<String> = documents(&repo::root())
        .into_iter()
        .filter(|f| f.starts_with(&src) && !f.ends_with("SUMMARY.md") && !listed.contains(f))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "chapters not listed in SUMMARY.md: {missing:?}"
    );
}

#[test]
fn the_readme_starts_with_its_two_commands() {
    let readme = std::fs::read_to_string(repo::root().join("README.md")).unwrap();
    let fence = readme.find("```sh\n").expect("a sh block");
    let block = &readme[fence..];
    let demo = block
        .find("\nmake demo ")
        .expect("make demo in the first sh block");
    let test = block
        .find("\nmake test ")
        .expect("make test in the first sh block");
    assert!(demo < test && test < block[1..].find("```").unwrap());
    assert!(
        readme
            .lines()
            .position(|l| l.starts_with("make demo"))
            .unwrap()
            < 15
    );
}

#[test]
fn slugs_follow_the_github_and_mdbook_rule() {
    assert_eq!(slug("Full image lists"), "full-image-lists");
    assert_eq!(
        slug("Certificates: `make certs`"),
        "certificates-make-certs"
    );
    assert_eq!(
        slug("Shutdown, readiness and API outages"),
        "shutdown-readiness-and-api-outages"
    );
    assert_eq!(
        slug("prefetch-controller flags"),
        "prefetch-controller-flags"
    );
    assert_eq!(
        slug("Compared with the original operator and kube-fledged"),
        "compared-with-the-original-operator-and-kube-fledged"
    );
    assert_eq!(
        slug("Measured (2026-12-04, x86_64 with AVX2)"),
        "measured-2026-12-04-x86_64-with-avx2"
    );
    assert_eq!(slug("See [the API](api.md)"), "see-the-api");
    let text = "# A\n## Same\n```\n## Not a heading\n```\n## Same\n";
    let found = anchors(text);
    assert!(found.contains("a") && found.contains("same") && found.contains("same-1"));
    assert!(!found.contains("not-a-heading"));
}

#[test]
fn the_scanner_finds_links_and_skips_code() {
    assert_eq!(
        link_targets("see [a](a.md#x), ![img](i.png \"t\") and `[no](code.md)` [b](<b c.md>)"),
        vec!["a.md#x", "i.png", "b c.md"]
    );
    assert_eq!(link_targets("[label]: other.md#y"), vec!["other.md#y"]);
    assert_eq!(
        link_targets("[w](https://example.com) [m](mailto:a@b)").len(),
        2
    );
    assert!(is_external("https://example.com") && is_external("mailto:a@b"));
    assert!(!is_external("docs/src/api.md"));
    let text = "[in](a.md)\n```sh\n[out](b.md)\n```\n~~~\n[out](c.md)\n~~~\n[in](d.md)\n";
    let found: Vec<String> = prose_lines(text)
        .into_iter()
        .flat_map(|(_, l)| link_targets(l))
        .collect();
    assert_eq!(found, vec!["a.md", "d.md"]);
}
