//! What blocksmtp's eBPF programs share: packet headers (`hdr`), and the panic handler
//! and licence every BPF object needs (`program_boilerplate!`).
#![no_std]

pub mod hdr;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The licence section: GPL, so the kernel lets the programs call GPL-only helpers
/// (the clock, aya-log's perf output). Expanded in each binary: a static in this rlib
/// would be dropped by the linker, as nothing refers to it.
#[macro_export]
macro_rules! program_boilerplate {
    () => {
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";
    };
}
