//! The `noop` every prefetch container runs must work in any image: no shell, no libc, any
//! uid. Build the real artifact, prove it has no ELF interpreter (so no dynamic loader is
//! needed), run it, and have it install itself as the prefetch pods' init container does.

// Helpers of a test: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const PT_INTERP: u32 = 3;
const PT_DYNAMIC: u32 = 2;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/` of this build (the test executable lives in `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

fn build_noop() -> PathBuf {
    let out = target_dir().join("noop");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(workspace_root().join("noop/Cargo.toml"))
        .arg("--target-dir")
        .arg(&out)
        .status()
        .expect("running cargo");
    assert!(status.success(), "building noop failed");
    out.join("release/noop")
}

/// Program header types of a 64-bit little-endian ELF file.
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).map(|i| u32_at(phoff + i * phentsize)).collect()
}

#[test]
fn noop_is_static_tiny_and_exits_zero() {
    let path = build_noop();
    let elf = std::fs::read(&path).unwrap();
    let types = program_header_types(&elf);
    assert!(!types.is_empty(), "no program headers");
    assert!(
        !types.contains(&PT_INTERP),
        "noop has an ELF interpreter: {types:?}"
    );
    assert!(
        !types.contains(&PT_DYNAMIC),
        "noop is dynamically linked: {types:?}"
    );
    assert!(elf.len() < 64 * 1024, "noop is {} bytes", elf.len());

    let status = Command::new(&path).env_clear().status().unwrap();
    assert_eq!(status.code(), Some(0));
    // Arguments and a working directory it cannot write change nothing.
    let status = Command::new(&path)
        .args(["--anything", "x"])
        .current_dir("/")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn noop_installs_itself_where_the_init_container_asks() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    let path = build_noop();
    let dir = std::env::temp_dir().join(format!("noop-install-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("noop");
    // What the prefetch pods' init container runs, from an empty environment.
    let status = Command::new(&path)
        .args(["--install-to", copy.to_str().unwrap()])
        .env_clear()
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?} (signal {:?})",
        status.signal()
    );
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&path).unwrap());
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "any uid must be able to run the copy");
    // The prefetch containers run the copy; installing over an existing copy works too.
    assert_eq!(Command::new(&copy).status().unwrap().code(), Some(0));
    let again = Command::new(&path)
        .args(["--install-to", copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert_eq!(again.code(), Some(0));
    // Failures say which step failed, by exit code.
    let usage = Command::new(&path).arg("--install-to").status().unwrap();
    assert_eq!(usage.code(), Some(2), "no destination");
    let missing = dir.join("no/such/dir/noop");
    let unwritable = Command::new(&path)
        .args(["--install-to", missing.to_str().unwrap()])
        .status()
        .unwrap();
    assert_eq!(unwritable.code(), Some(11), "destination cannot be created");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_checker_sees_a_dynamic_executable() {
    // The test binary itself is dynamically linked: the ELF reading must say so.
    let elf = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(program_header_types(&elf).contains(&PT_INTERP));
}
