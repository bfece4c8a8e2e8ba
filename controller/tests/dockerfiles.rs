//! The Dockerfiles cannot be built here (no Docker engine), so this checks what the code and
//! the nodes rely on: the noop image is `FROM scratch` holding only noop, where the prefetch
//! pods' init container runs it; the other images ship stripped release binaries; every image
//! builds locked, runs as a non-root user and names no architecture.

use std::path::{Path, PathBuf};

use prefetch_controller::core::pod::{INSTALL_NOOP_COMMAND, NOOP_IMAGE_BINARY};

const IMAGES: [&str; 3] = [
    "Dockerfile.controller",
    "Dockerfile.webhook",
    "Dockerfile.noop",
];

fn workspace_file(name: &str) -> String {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Instructions (keyword, rest) of a Dockerfile, comments and blank lines left out.
fn instructions(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((keyword, rest)) => (keyword.to_uppercase(), rest.trim().to_string()),
            None => (l.to_uppercase(), String::new()),
        })
        .collect()
}

/// The instructions of the last stage (what the image is made of).
fn final_stage(text: &str) -> Vec<(String, String)> {
    let all = instructions(text);
    let start = all.iter().rposition(|(k, _)| k == "FROM").expect("no FROM");
    all[start..].to_vec()
}

/// (source, destination) of every `COPY --from=` in `stage`.
fn copies_from_build(stage: &[(String, String)]) -> Vec<(String, String)> {
    stage
        .iter()
        .filter(|(k, _)| k == "COPY")
        .filter_map(|(_, rest)| rest.strip_prefix("--from="))
        .map(|rest| {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(parts.len(), 3, "COPY --from=stage SRC DEST: {rest}");
            (parts[1].to_string(), parts[2].to_string())
        })
        .collect()
}

/// `key = value` lines of a `[section]` of a TOML file (enough for Cargo profiles).
fn toml_section(text: &str, section: &str) -> Vec<(String, String)> {
    let header = format!("[{section}]");
    text.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

#[test]
fn the_noop_image_is_scratch_with_only_noop_where_the_init_container_runs_it() {
    let text = workspace_file("Dockerfile.noop");
    let stage = final_stage(&text);
    assert_eq!(stage[0], ("FROM".into(), "scratch".into()));
    let added: Vec<&(String, String)> = stage
        .iter()
        .filter(|(k, _)| k == "COPY" || k == "ADD")
        .collect();
    assert_eq!(added.len(), 1, "the noop image holds one file: {added:?}");
    let copies = copies_from_build(&stage);
    assert_eq!(copies.len(), 1);
    let (source, destination) = &copies[0];
    assert_eq!(destination, NOOP_IMAGE_BINARY);
    assert_eq!(INSTALL_NOOP_COMMAND[0], NOOP_IMAGE_BINARY);
    assert!(
        stage.contains(&("ENTRYPOINT".into(), format!("[\"{NOOP_IMAGE_BINARY}\"]"))),
        "{stage:?}"
    );
    // The copied file is noop's own release build, which its profile strips.
    assert!(source.ends_with("/release/noop"), "{source}");
    let build = instructions(&text)
        .into_iter()
        .find(|(k, rest)| k == "RUN" && rest.contains("cargo build"))
        .expect("a cargo build");
    assert!(
        build.1.contains("--manifest-path noop/Cargo.toml") && build.1.contains("--release"),
        "{build:?}"
    );
    let profile = toml_section(&workspace_file("noop/Cargo.toml"), "profile.release");
    assert!(
        profile.contains(&("strip".into(), "true".into())),
        "{profile:?}"
    );
}

#[test]
fn the_controller_and_webhook_images_ship_stripped_release_binaries() {
    let profile = toml_section(&workspace_file("Cargo.toml"), "profile.image");
    assert!(
        profile.contains(&("inherits".into(), "release".into())),
        "{profile:?}"
    );
    assert!(
        profile.contains(&("strip".into(), "true".into())),
        "{profile:?}"
    );
    for (name, binary) in [
        ("Dockerfile.controller", "prefetch-controller"),
        ("Dockerfile.webhook", "prefetch-webhook"),
    ] {
        let text = workspace_file(name);
        let builds: Vec<String> = instructions(&text)
            .into_iter()
            .filter(|(k, rest)| k == "RUN" && rest.contains("cargo build"))
            .map(|(_, rest)| rest)
            .collect();
        assert_eq!(builds.len(), 1, "{name}");
        assert!(builds[0].contains("--profile image"), "{name}: {builds:?}");
        let destination = format!("/usr/local/bin/{binary}");
        assert_eq!(
            copies_from_build(&final_stage(&text)),
            [(format!("/src/target/image/{binary}"), destination.clone())],
            "{name} ships the image-profile build and nothing else"
        );
        assert!(text.contains(&format!("ENTRYPOINT [\"{destination}\"]")));
    }
}

#[test]
fn every_image_builds_locked_runs_as_non_root_on_any_arch() {
    let makefile = workspace_file("Makefile");
    for name in IMAGES {
        let text = workspace_file(name);
        assert!(
            makefile.contains(&format!("docker build -f {name} ")),
            "make docker-build builds {name}"
        );
        let all = instructions(&text);
        let builds: Vec<&String> = all
            .iter()
            .filter(|(k, rest)| k == "RUN" && rest.contains("cargo build"))
            .map(|(_, rest)| rest)
            .collect();
        assert!(!builds.is_empty(), "{name}");
        for build in builds {
            assert!(build.contains("--locked"), "{name}: {build}");
        }
        let user = final_stage(&text)
            .into_iter()
            .rev()
            .find(|(k, _)| k == "USER")
            .map(|(_, u)| u)
            .unwrap_or_else(|| panic!("{name}: no USER"));
        let uid = user.split(':').next().unwrap_or("");
        assert!(
            uid.parse::<u32>().is_ok_and(|uid| uid != 0),
            "{name}: USER {user} must be a numeric non-root uid (scratch has no /etc/passwd)"
        );
        assert!(
            all.iter().filter(|(k, _)| k == "FROM").count() >= 2,
            "{name}: multi-stage"
        );
        for arch in ["amd64", "x86_64", "arm64", "aarch64"] {
            assert!(!text.contains(arch), "{name} names {arch}");
        }
    }
}
