//! What `--version` prints: the release and the commit it was built from, so an image's
//! binary can be traced to its source.

/// The release, from the workspace's Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The full git commit the binary was built from, or "unknown" (build.rs).
pub const REVISION: &str = env!("PREFETCH_REVISION");

/// `--version`'s text after the program name, e.g. `0.2.0 (revision 1f3c…)`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("PREFETCH_REVISION"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_version_names_the_release_and_the_revision() {
        assert_eq!(LONG, format!("{VERSION} (revision {REVISION})"));
        assert!(!REVISION.is_empty());
    }
}
