//! What blocksmtp's eBPF programs share: packet headers (`hdr`), the steps of a verdict
//! that touch no map of their own (`ban_state`, `protected_port`, `charge`, …), the two
//! entry points over a program's classifier (`entry_points!`), and the panic handler and
//! licence every BPF object needs (`program_boilerplate!`). The product (main.rs) and the
//! benchmark's per-length hash design (bin/hash.rs) differ only in their maps and prefix
//! lookup.
#![no_std]
// The atomic add of `charge` (BPF only: `cargo test --workspace` builds this crate for the
// host too, on stable).
#![cfg_attr(target_arch = "bpf", allow(internal_features), feature(core_intrinsics))]

pub mod hdr;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_ktime_get_boot_ns,
    maps::{Array, PerCpuArray},
};
use blocksmtp_common::{BanValue, Config, MAX_PORTS, Verdict};

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

/// The XDP and TC entry points `$xdp` and `$tc` over `$classify(start, end) -> Verdict`,
/// counting each packet's verdict in the per-CPU array `$stats`. TC pulls headers that sit
/// partly outside an skb's linear area in once, and classifies again.
#[macro_export]
macro_rules! entry_points {
    (xdp: $xdp:ident, tc: $tc:ident, classify: $classify:ident, stats: $stats:ident) => {
        #[aya_ebpf::macros::xdp]
        pub fn $xdp(ctx: aya_ebpf::programs::XdpContext) -> u32 {
            let v = $classify(ctx.data(), ctx.data_end());
            $crate::count(&$stats, v);
            $crate::xdp_action(v)
        }

        #[aya_ebpf::macros::classifier]
        pub fn $tc(ctx: aya_ebpf::programs::TcContext) -> i32 {
            let mut v = $classify(ctx.data(), ctx.data_end());
            if v == blocksmtp_common::Verdict::PassMalformed && ctx.len() as usize > ctx.data_end() - ctx.data() {
                let want = if ctx.len() < 256 { ctx.len() } else { 256 };
                if ctx.pull_data(want).is_ok() {
                    v = $classify(ctx.data(), ctx.data_end());
                }
            }
            $crate::count(&$stats, v);
            $crate::tc_action(v)
        }
    };
}

#[inline(always)]
pub fn xdp_action(v: Verdict) -> u32 {
    match v {
        Verdict::Drop => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
pub fn tc_action(v: Verdict) -> i32 {
    match v {
        Verdict::Drop => TC_ACT_SHOT,
        // UNSPEC: let later TC/TCX programs see the packet too.
        _ => TC_ACT_UNSPEC,
    }
}

/// Bump the verdict's counter.
#[inline(always)]
pub fn count(stats: &PerCpuArray<u64>, v: Verdict) {
    if let Some(c) = stats.get_ptr_mut(v as u32) {
        // Per-CPU slot: no other writer, no atomics needed.
        unsafe { *c += 1 };
    }
}

/// A ban in force, and its prefix length (for the log).
pub type Found = Option<(*mut BanValue, u8)>;

/// A ban entry found (or not): in force, or the verdict of a source without one.
#[inline(always)]
pub fn ban_state(ban: Option<*mut BanValue>, len: u8) -> (Found, Verdict) {
    match ban {
        // SAFETY: a map lookup's pointer, valid for this run of the program.
        Some(b) if unsafe { expired(b) } => (None, Verdict::PassExpired),
        Some(b) => (Some((b, len)), Verdict::PassNotBanned),
        None => (None, Verdict::PassNotBanned),
    }
}

/// Whether bit `bit` of the prefix-ban hint is set (a prefix ban may cover the source).
/// One array lookup, which the verifier inlines.
#[inline(always)]
pub fn hinted(hint: &Array<u64>, bit: u32) -> bool {
    match hint.get(bit / 64) {
        Some(w) => *w & (1u64 << (bit % 64)) != 0,
        None => false,
    }
}

/// 16 config bytes as two words (the fields sit 8-byte aligned in the map value).
#[inline(always)]
pub fn words(b: &[u8; 16]) -> [u64; 2] {
    unsafe { *(b.as_ptr() as *const [u64; 2]) }
}

#[inline(always)]
pub fn bytes(w: [u64; 2]) -> [u8; 16] {
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(w) }
}

#[inline(always)]
pub fn protected_port(cfg: &Config, dport: u16) -> bool {
    for i in 0..MAX_PORTS {
        if i >= cfg.n_ports as usize {
            break;
        }
        if cfg.ports_be[i] == dport {
            return true;
        }
    }
    false
}

/// An expired ban is never enforced, whether or not the daemon has swept it yet.
///
/// # Safety
/// `ban` points at a map value (a lookup's result, valid for this run of the program).
#[inline(always)]
pub unsafe fn expired(ban: *mut BanValue) -> bool {
    !unsafe { &*ban }.active_at(unsafe { bpf_ktime_get_boot_ns() })
}

/// Drop, and charge the packet to the ban's counter.
///
/// # Safety
/// As [`expired`]: `ban` points at a map value.
#[inline(always)]
pub unsafe fn charge(ban: *mut BanValue) -> Verdict {
    // Shared across CPUs: atomic add (BPF_ATOMIC_ADD). core's AtomicU64 has no
    // fetch_add on the BPF target, the intrinsic lowers to the right instruction.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            &raw mut (*ban).dropped,
            1,
        )
    };
    // Elsewhere (a host's `cargo check`/clippy of the workspace) the same add in core's
    // terms; the programs run only on the BPF target.
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(&raw mut (*ban).dropped) }.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    Verdict::Drop
}
