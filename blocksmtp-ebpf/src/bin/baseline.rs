//! Benchmark baseline, not part of the product: the smallest useful XDP program — one
//! hash lookup on the IPv4 source at a fixed offset, no parsing, no counters. The
//! dataplane benchmark measures blocksmtp's program against it in the same run.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, xdp_action},
    macros::{map, xdp},
    maps::HashMap,
    programs::XdpContext,
};

blocksmtp_ebpf::program_boilerplate!();

#[map]
static BASELINE_BANS: HashMap<u32, u64> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

#[xdp]
pub fn baseline_xdp(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 34 > end {
        return xdp_action::XDP_PASS;
    }
    let saddr = unsafe { *((start + 26) as *const u32) };
    if BASELINE_BANS.get_ptr(saddr).is_some() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}
