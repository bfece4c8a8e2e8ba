//! Exits 0 and does nothing else: the container exists only so the kubelet pulls its image.

#![no_std]
#![no_main]

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(1)
}

/// exit_group(2), the only system call this program makes.
fn exit(code: i32) -> ! {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: exit_group takes one integer argument and does not return.
    unsafe {
        core::arch::asm!("syscall", in("rax") 231, in("rdi") code, options(noreturn));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above, with the aarch64 system call convention.
    unsafe {
        core::arch::asm!("svc 0", in("x8") 94, in("x0") code, options(noreturn));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    compile_error!("noop supports x86_64 and aarch64");
}

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    exit(0)
}
