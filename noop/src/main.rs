//! Exits 0 and does nothing else: the container exists only so the kubelet pulls its image.
//!
//! One more job, because the noop image holds nothing but this file (`FROM scratch`, no shell,
//! no `cp`): `noop --install-to PATH` copies this executable to PATH with mode 0755. The
//! prefetch pods' init container runs that to put noop into the emptyDir their containers
//! share. `noop --version` prints the release and the git revision it was built from. Any
//! other arguments are ignored, so a prefetch container always exits 0.

#![no_std]
#![no_main]

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(1)
}

/// Exit codes of `--install-to`, so a failed init container says which step failed.
mod code {
    pub const OPEN_SELF: i32 = 10;
    pub const OPEN_TARGET: i32 = 11;
    pub const READ: i32 = 12;
    pub const WRITE: i32 = 13;
    pub const CHMOD: i32 = 14;
    pub const CLOSE: i32 = 15;
    pub const USAGE: i32 = 2;
}

/// What `--version` prints: the same form as the other binaries' (`prefetch_common::version`).
const VERSION_LINE: &str = concat!(
    "noop ",
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("PREFETCH_REVISION"),
    ")\n"
);
const STDOUT: usize = 1;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const FCHMOD: usize = 91;
    pub const OPENAT: usize = 257;
    pub const EXIT_GROUP: usize = 231;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const READ: usize = 63;
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const FCHMOD: usize = 52;
    pub const OPENAT: usize = 56;
    pub const EXIT_GROUP: usize = 94;
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("noop supports x86_64 and aarch64");

/// A Linux system call with up to four arguments; returns the raw result (negative errno on
/// failure).
fn syscall4(number: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the kernel's x86_64 convention; rcx and r11 are clobbered by `syscall`. Every
    // caller passes pointers to live, correctly sized buffers or NUL-terminated strings.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") number as isize => ret,
            in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above, with the aarch64 convention.
    unsafe {
        core::arch::asm!("svc 0", in("x8") number, inlateout("x0") a as isize => ret,
            in("x1") b, in("x2") c, in("x3") d, options(nostack));
    }
    ret
}

fn exit(code: i32) -> ! {
    syscall4(nr::EXIT_GROUP, code as usize, 0, 0, 0);
    // exit_group does not return; satisfy the type without unsafe.
    #[allow(clippy::empty_loop)]
    loop {}
}

const AT_FDCWD: isize = -100;
const O_RDONLY: usize = 0;
const O_WRONLY: usize = 1;
const O_CREAT: usize = 0o100;
const O_TRUNC: usize = 0o1000;
const O_CLOEXEC: usize = 0o2000000;
const EINTR: isize = -4;

/// Writes all of `bytes` to `fd`; false if the kernel refused.
fn write_all(fd: usize, bytes: &[u8]) -> bool {
    let mut written = 0usize;
    while written < bytes.len() {
        let n = syscall4(
            nr::WRITE,
            fd,
            bytes[written..].as_ptr() as usize,
            bytes.len() - written,
            0,
        );
        if n == EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        written += n as usize;
    }
    true
}

/// `path` must be NUL-terminated.
fn open(path: *const u8, flags: usize, mode: usize) -> isize {
    syscall4(nr::OPENAT, AT_FDCWD as usize, path as usize, flags, mode)
}

/// Copies /proc/self/exe (this very program, wherever it lives) to `target`, mode 0755.
fn install(target: *const u8) -> i32 {
    let source = open(c"/proc/self/exe".as_ptr().cast(), O_RDONLY | O_CLOEXEC, 0);
    if source < 0 {
        return code::OPEN_SELF;
    }
    let dest = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755);
    if dest < 0 {
        return code::OPEN_TARGET;
    }
    let mut buffer = [0u8; 4096];
    loop {
        let read = syscall4(
            nr::READ,
            source as usize,
            buffer.as_mut_ptr() as usize,
            buffer.len(),
            0,
        );
        if read == EINTR {
            continue;
        }
        if read < 0 {
            return code::READ;
        }
        if read == 0 {
            break;
        }
        if !write_all(dest as usize, &buffer[..read as usize]) {
            return code::WRITE;
        }
    }
    // The umask may have narrowed the mode given to open: the containers that run the copy
    // may be any uid, so set it exactly.
    if syscall4(nr::FCHMOD, dest as usize, 0o755, 0, 0) < 0 {
        return code::CHMOD;
    }
    // A failed close can mean a failed write-back: report it rather than leave a bad copy.
    if syscall4(nr::CLOSE, dest as usize, 0, 0, 0) < 0 {
        return code::CLOSE;
    }
    0
}

/// Whether the NUL-terminated `arg` equals `expected`.
///
/// # Safety
/// `arg` must point to a NUL-terminated string.
unsafe fn arg_is(arg: *const u8, expected: &[u8]) -> bool {
    for (i, byte) in expected.iter().enumerate() {
        // SAFETY: we stop at the first mismatch, and the terminator never matches a byte of
        // `expected`, so no read goes past the string's NUL.
        if unsafe { *arg.add(i) } != *byte {
            return false;
        }
    }
    // SAFETY: every byte before index `expected.len()` was non-NUL, so this is in bounds.
    unsafe { *arg.add(expected.len()) == 0 }
}

/// Entered from `_start` with the initial stack pointer: argc, then argv.
///
/// # Safety
/// `stack` must be the process's initial stack pointer as the kernel set it up.
unsafe extern "C" fn main(stack: *const usize) -> ! {
    // SAFETY: the kernel places argc at the initial stack pointer and the argv pointers right
    // after it, each a NUL-terminated string.
    let code = unsafe {
        let argc = *stack;
        let argv = stack.add(1) as *const *const u8;
        if argc == 2 && arg_is(*argv.add(1), b"--version") {
            if write_all(STDOUT, VERSION_LINE.as_bytes()) {
                0
            } else {
                code::WRITE
            }
        } else if argc >= 2 && arg_is(*argv.add(1), b"--install-to") {
            if argc == 3 {
                install(*argv.add(2))
            } else {
                code::USAGE
            }
        } else {
            0
        }
    };
    exit(code)
}

#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn _start() -> ! {
    // Pass the initial stack pointer (argc, argv...) and align the stack for the call.
    core::arch::naked_asm!("mov rdi, rsp", "and rsp, -16", "call {main}", main = sym main)
}

#[cfg(target_arch = "aarch64")]
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!("mov x0, sp", "bl {main}", main = sym main)
}
