//! No manifest, example or doc names an image a current container runtime cannot pull.
//!
//! Tags of official images last pushed before Docker Hub moved to the schema 2 manifest
//! (early 2016) exist only as Docker schema 1 manifests. containerd stopped pulling those in
//! 2.0 and removed the code in 2.1 (kind ships containerd 2.x since v0.27), so a walkthrough
//! that names one fails at its first pull. The table lists such tags of the official images a
//! walkthrough is likely to reach for: releases that were out of support, and so never pushed
//! again, by 2016.

use prefetch_tests::repo;

/// Official images and their tags that exist only as schema 1 manifests. A version names its
/// whole line: `1.7` is 1.7, 1.7.9 and 1.7-alpine, not 1.70.
const SCHEMA1_ONLY: &[(&str, &[&str])] = &[
    // nginx 1.0 to 1.7 (1.7.9 was the original operator's walkthrough), and the 1.8.0 and
    // 1.9.0 to 1.9.9 patch tags, all superseded before 2016.
    (
        "nginx",
        &[
            "1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8.0", "1.9.0", "1.9.1",
            "1.9.2", "1.9.3", "1.9.4", "1.9.5", "1.9.6", "1.9.7", "1.9.8", "1.9.9",
        ],
    ),
    // Ubuntu and Fedora releases that reached end of life before 2016.
    (
        "ubuntu",
        &[
            "12.10", "13.04", "13.10", "14.10", "quantal", "raring", "saucy", "utopic",
        ],
    ),
    ("fedora", &["20", "21", "heisenbug"]),
    // busybox's 2014 tags.
    (
        "busybox",
        &[
            "buildroot-2013.08.1",
            "buildroot-2014.02",
            "ubuntu-12.04",
            "ubuntu-14.04",
        ],
    ),
    ("redis", &["2.6"]),
    ("postgres", &["8.4", "9.0"]),
];

/// The official image name and tag of `reference`, if it names an official Docker Hub image
/// with a tag (`nginx:1.7.9`, `docker.io/library/nginx:1.7.9`, `library/nginx:1.7.9`).
fn official_name_and_tag(reference: &str) -> Option<(&str, &str)> {
    let reference = reference.strip_prefix("docker.io/").unwrap_or(reference);
    let reference = reference.strip_prefix("library/").unwrap_or(reference);
    let (name, tag) = reference.split_once(':')?;
    if name.contains('/') || tag.contains(['@', '/', ':']) || tag.is_empty() {
        return None;
    }
    Some((name, tag))
}

/// Whether `tag` is `version` or on its line (`1.7` matches 1.7.9 and 1.7-alpine, not 1.70).
fn on_line(version: &str, tag: &str) -> bool {
    tag.strip_prefix(version)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-']))
}

/// Every schema-1-only image named in `text`.
fn schema1_references(text: &str) -> Vec<String> {
    let is_reference_char = |c: char| c.is_ascii_alphanumeric() || "._/:@-".contains(c);
    text.split(|c: char| !is_reference_char(c))
        .map(|token| token.trim_end_matches(['.', ':']))
        .filter(|token| {
            official_name_and_tag(token).is_some_and(|(name, tag)| {
                SCHEMA1_ONLY.iter().any(|(image, patterns)| {
                    *image == name && patterns.iter().any(|version| on_line(version, tag))
                })
            })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn no_manifest_example_or_doc_names_a_schema1_image() {
    let root = repo::root();
    // What a user copies from: the README, the book, the examples and every install file.
    // The CHANGELOG is left out: it records which image the walkthrough stopped using.
    let dirs = ["docs", "examples", "manifests"].map(|dir| root.join(dir));
    let mut files = vec![root.join("README.md")];
    files.extend(repo::files_under(
        &dirs,
        &["md", "yaml", "yml", "json", "txt", "tpl", "toml"],
    ));
    assert!(files.len() > 20, "found only {} files", files.len());
    let offenders: Vec<String> = files
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let shown = path
                .strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string();
            schema1_references(&text)
                .into_iter()
                .map(move |image| format!("{shown}: {image}"))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "these images exist only as Docker schema 1 manifests, which containerd 2.x cannot \
         pull; use a current tag:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_check_finds_schema1_images_however_they_are_written() {
    for text in [
        "image: nginx:1.7.9",
        "image: \"nginx:1.7.9\"",
        "kubectl set image deploy/web web=docker.io/library/nginx:1.7.9",
        "`library/nginx:1.6`.",
        "- ubuntu:14.10",
        "postgres:9.0.23,",
        "nginx:1.7-alpine",
    ] {
        assert_eq!(schema1_references(text).len(), 1, "missed in {text:?}");
    }
    for text in [
        "image: nginx:1.27",
        "nginx:1.10",
        "nginx:1.19",
        "nginx:1.28",
        "nginx:1.70",
        "nginx:1.9.10",
        "nginx",
        "ghcr.io/example/nginx:1.7.9",
        "registry.local:5000/nginx:1.7.9",
        "ubuntu:24.04",
        "postgres:16.4",
        "busybox:1.37",
        "nginx@sha256:0123",
    ] {
        assert!(
            schema1_references(text).is_empty(),
            "false alarm in {text:?}"
        );
    }
}
