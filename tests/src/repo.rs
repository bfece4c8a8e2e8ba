//! The repository's own files, for the tests that read them (docs, manifests, sources).

use std::path::{Path, PathBuf};

/// The repository's root: the parent of this crate (`tests/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every file under `dirs`, recursively, whose extension is one of `extensions`, sorted;
/// `target/` directories (build output) are skipped. Panics on a directory it cannot read.
pub fn files_under(dirs: &[PathBuf], extensions: &[&str]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = dirs.to_vec();
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                if !path.ends_with("target") {
                    pending.push(path);
                }
            } else if path
                .extension()
                .is_some_and(|ext| extensions.iter().any(|e| ext == *e))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
