// Freestanding: no C runtime start files, no libc, statically linked, so the kernel runs it
// directly without an ELF interpreter.
fn main() {
    println!("cargo:rustc-link-arg-bins=-nostartfiles");
    println!("cargo:rustc-link-arg-bins=-nostdlib");
    println!("cargo:rustc-link-arg-bins=-static");
}
