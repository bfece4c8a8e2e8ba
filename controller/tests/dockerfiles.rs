//! The Dockerfiles cannot be built here (no Docker engine); `make images` builds the same
//! images without one, and tests/images.rs checks those and that the Dockerfiles' config
//! matches them. This checks how the Dockerfiles get there: each builds locked, lays out its
//! files with images/rootfs.sh as `make images` does (noop where the prefetch pods' init
//! container runs it, the others' stripped `image`-profile builds), copies nothing else into
//! a `scratch` stage, runs as a numeric non-root user and names no architecture.

// Helpers of a test: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

/// The one `images/rootfs.sh BINARY PATH_IN_IMAGE /rootfs` run of a Dockerfile: (binary, path).
fn rootfs_layout(name: &str, text: &str) -> (String, String) {
    let runs: Vec<Vec<String>> = instructions(text)
        .into_iter()
        .filter(|(k, rest)| k == "RUN" && rest.starts_with("images/rootfs.sh "))
        .map(|(_, rest)| rest.split_whitespace().skip(1).map(String::from).collect())
        .collect();
    assert_eq!(runs.len(), 1, "{name}: one images/rootfs.sh run");
    assert_eq!(runs[0].len(), 3, "{name}: {:?}", runs[0]);
    assert_eq!(runs[0][2], "/rootfs", "{name}");
    (runs[0][0].clone(), runs[0][1].clone())
}

#[test]
fn the_final_stage_is_scratch_with_only_the_rootfs_and_its_entrypoint() {
    for name in IMAGES {
        let text = workspace_file(name);
        let stage = final_stage(&text);
        assert_eq!(stage[0], ("FROM".into(), "scratch".into()), "{name}");
        let added: Vec<&(String, String)> = stage
            .iter()
            .filter(|(k, _)| k == "COPY" || k == "ADD")
            .collect();
        assert_eq!(
            added,
            [&("COPY".to_string(), "--from=build /rootfs/ /".to_string())],
            "{name}: the image holds what images/rootfs.sh laid out, nothing else"
        );
        let (_, path) = rootfs_layout(name, &text);
        assert!(
            stage.contains(&("ENTRYPOINT".into(), format!("[\"{path}\"]"))),
            "{name}: {stage:?}"
        );
    }
}

#[test]
fn the_noop_image_puts_noop_where_the_init_container_runs_it() {
    let text = workspace_file("Dockerfile.noop");
    let (binary, path) = rootfs_layout("Dockerfile.noop", &text);
    assert_eq!(path, NOOP_IMAGE_BINARY);
    assert_eq!(INSTALL_NOOP_COMMAND[0], NOOP_IMAGE_BINARY);
    // noop's own release build, which its profile strips.
    assert_eq!(binary, "target/noop/release/noop");
    let build = instructions(&text)
        .into_iter()
        .find(|(k, rest)| k == "RUN" && rest.contains("cargo build"))
        .expect("a cargo build");
    assert!(
        build.1.contains("--manifest-path noop/Cargo.toml")
            && build.1.contains("--release")
            && build.1.contains("--target-dir target/noop"),
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
        assert_eq!(
            rootfs_layout(name, &text),
            (
                format!("target/image/{binary}"),
                format!("/usr/local/bin/{binary}")
            ),
            "{name} ships the image-profile build"
        );
    }
}

#[test]
fn every_image_builds_locked_runs_as_non_root_on_any_arch() {
    let makefile = workspace_file("Makefile");
    for name in IMAGES {
        let text = workspace_file(name);
        assert!(
            makefile.contains(&format!(" -f {name} ")),
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
            "{name}: USER {user} must be a numeric non-root uid (runAsNonRoot checks it)"
        );
        assert!(
            all.iter().filter(|(k, _)| k == "FROM").count() >= 2,
            "{name}: multi-stage"
        );
        // Instructions only: the comments show a multi-arch buildx command.
        for (keyword, rest) in &all {
            for arch in ["amd64", "x86_64", "arm64", "aarch64"] {
                assert!(
                    !rest.contains(arch),
                    "{name}: {keyword} {rest} names {arch}"
                );
            }
        }
    }
}
