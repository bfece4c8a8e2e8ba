//! The Dockerfiles cannot be built here (no Docker engine), so this checks what the code relies
//! on: the controller image holds the binary where prefetch pods run `install-noop` from, and
//! noop where `install-noop` reads it; both images build locked release binaries, run as a
//! non-root user and name no architecture.

use std::path::Path;

use prefetch_controller::pod::{BUNDLED_NOOP_PATH, INSTALL_NOOP_COMMAND};

fn dockerfile(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (source, destination) of every `COPY --from=` line.
fn copies_from_build(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("COPY --from="))
        .map(|rest| {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            (parts[1].to_string(), parts[2].to_string())
        })
        .collect()
}

#[test]
fn the_controller_image_holds_what_prefetch_pods_run() {
    let text = dockerfile("Dockerfile.controller");
    let destinations: Vec<String> = copies_from_build(&text)
        .into_iter()
        .map(|(_, to)| to)
        .collect();
    assert!(
        destinations.contains(&INSTALL_NOOP_COMMAND[0].to_string()),
        "prefetch pods run {}",
        INSTALL_NOOP_COMMAND[0]
    );
    assert!(destinations.contains(&BUNDLED_NOOP_PATH.to_string()));
    assert!(text.contains(&format!("ENTRYPOINT [\"{}\"]", INSTALL_NOOP_COMMAND[0])));
}

#[test]
fn both_images_build_locked_release_binaries_run_as_non_root_on_any_arch() {
    for name in ["Dockerfile.controller", "Dockerfile.webhook"] {
        let text = dockerfile(name);
        let builds: Vec<&str> = text.lines().filter(|l| l.contains("cargo build")).collect();
        assert!(!builds.is_empty(), "{name}");
        for build in builds {
            assert!(
                build.contains("--locked") && build.contains("--release"),
                "{name}: {build}"
            );
        }
        let user = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{name}: no USER"));
        assert!(
            !user.starts_with("0") && !user.starts_with("root"),
            "{name}"
        );
        assert!(
            text.lines().filter(|l| l.starts_with("FROM ")).count() >= 2,
            "{name}: multi-stage"
        );
        for arch in ["amd64", "x86_64", "arm64", "aarch64"] {
            assert!(!text.contains(arch), "{name} names {arch}");
        }
    }
}
