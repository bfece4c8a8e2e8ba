// Bakes the git revision into the crate (see ../build/revision.rs), for `--version`.
include!("../build/revision.rs");

fn main() {
    println!("cargo:rustc-env=PREFETCH_REVISION={}", git_revision());
}
