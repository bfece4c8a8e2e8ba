// Shared by common/build.rs and noop/build.rs (`include!`), so every binary reports the same
// git revision in `--version`. Image builds set PREFETCH_REVISION: their build context has no
// `.git` (.dockerignore), and a release must name the commit it was tagged from.

/// The commit this build comes from: $PREFETCH_REVISION, else `git rev-parse HEAD`, else
/// "unknown". Tells cargo to run the build script again when either changes.
fn git_revision() -> String {
    println!("cargo:rerun-if-env-changed=PREFETCH_REVISION");
    if let Ok(revision) = std::env::var("PREFETCH_REVISION")
        && !revision.trim().is_empty()
    {
        return revision.trim().to_owned();
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_owned())
    };
    // A new commit moves HEAD or the branch it points to (loose or packed). Only files that
    // exist: cargo reruns the script on every build for a missing one.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        for file in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
            let path = std::path::Path::new(&git_dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}
