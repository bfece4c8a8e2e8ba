// Freestanding: no C runtime start files, no libc, statically linked, so the kernel runs it
// directly without an ELF interpreter.
include!("../build/revision.rs");

fn main() {
    println!("cargo:rustc-link-arg-bins=-nostartfiles");
    println!("cargo:rustc-link-arg-bins=-nostdlib");
    println!("cargo:rustc-link-arg-bins=-static");
    // The same revision the workspace's binaries report (../build/revision.rs).
    println!("cargo:rustc-env=PREFETCH_REVISION={}", git_revision());
}
