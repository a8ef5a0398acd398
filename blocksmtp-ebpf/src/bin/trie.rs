//! Benchmark peer, not part of the product: the previous prefix-ban design, kept so
//! bench-dataplane can measure both in the same run — the same classifier as main.rs,
//! but prefix bans in one LPM trie per family (one longest-prefix lookup, whose cost
//! grows with the trie's depth) instead of the per-length hash maps.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_ktime_get_boot_ns,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use blocksmtp_common::{
    AllowValue, BanKeyV4, BanKeyV6, BanValue, CONFIG_ALLOW_V4, CONFIG_ALLOW_V6, CONFIG_BANNET_V4, CONFIG_BANNET_V6,
    CONFIG_MAILER_V4, CONFIG_MAILER_V6, Config, HINT_WORDS, LEGACY_MAX_PREFIX_BANS, MAX_ALLOW, MAX_BANS, MAX_PORTS,
    STAT_COUNT, Verdict, hint_bit_v4, hint_bit_v6,
};
use blocksmtp_ebpf::hdr::{self, Tcp};

blocksmtp_ebpf::program_boilerplate!();

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static BANS_V4: HashMap<BanKeyV4, BanValue> = HashMap::with_max_entries(MAX_BANS, BPF_F_NO_PREALLOC);
#[map]
static BANS_V6: HashMap<BanKeyV6, BanValue> = HashMap::with_max_entries(MAX_BANS, BPF_F_NO_PREALLOC);
#[map]
static ALLOW_V4: LpmTrie<[u8; 4], AllowValue> = LpmTrie::with_max_entries(MAX_ALLOW, 0);
#[map]
static ALLOW_V6: LpmTrie<[u8; 16], AllowValue> = LpmTrie::with_max_entries(MAX_ALLOW, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);
#[map]
static BANNET_V4: LpmTrie<[u8; 4], BanValue> = LpmTrie::with_max_entries(LEGACY_MAX_PREFIX_BANS, 0);
#[map]
static BANNET_V6: LpmTrie<[u8; 16], BanValue> = LpmTrie::with_max_entries(LEGACY_MAX_PREFIX_BANS, 0);
#[map]
static BANNET_HINT: Array<u64> = Array::with_max_entries(HINT_WORDS, 0);

#[xdp]
pub fn trie_xdp(ctx: XdpContext) -> u32 {
    let v = classify(ctx.data(), ctx.data_end());
    count(v);
    if v == Verdict::Drop { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[classifier]
pub fn trie_tc(ctx: TcContext) -> i32 {
    let v = classify(ctx.data(), ctx.data_end());
    count(v);
    if v == Verdict::Drop { TC_ACT_SHOT as i32 } else { TC_ACT_UNSPEC }
}

#[inline(always)]
fn count(v: Verdict) {
    if let Some(c) = STATS.get_ptr_mut(v as u32) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn classify(start: usize, end: usize) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::PassNotProtected;
    };
    match hdr::parse(start, end) {
        Err(v) => v,
        Ok(Tcp::V4 { saddr, daddr, dport_be }) => {
            if !protected_port(cfg, dport_be) || (cfg.flags & CONFIG_MAILER_V4 != 0 && daddr != cfg.mailer_v4) {
                return Verdict::PassNotProtected;
            }
            let (mut found, mut miss) = state(BANS_V4.get_ptr_mut(BanKeyV4 { addr: saddr }), Verdict::PassNotBanned);
            if found.is_none()
                && cfg.flags & CONFIG_BANNET_V4 != 0
                && hinted(hint_bit_v4(u16::from_be_bytes([saddr[0], saddr[1]])))
            {
                let net = BANNET_V4.get(Key::new(32, saddr)).map(|b| b as *const BanValue as *mut BanValue);
                (found, miss) = state(net, miss);
            }
            let Some(ban) = found else { return miss };
            if cfg.flags & CONFIG_ALLOW_V4 != 0 && ALLOW_V4.get(Key::new(32, saddr)).is_some() {
                return Verdict::PassAllowListed;
            }
            charge(ban)
        }
        Ok(Tcp::V6 { saddr, daddr, dport_be }) => {
            if !protected_port(cfg, dport_be) || (cfg.flags & CONFIG_MAILER_V6 != 0 && daddr != words(&cfg.mailer_v6)) {
                return Verdict::PassNotProtected;
            }
            let mask = words(&cfg.v6_mask);
            let key = bytes([saddr[0] & mask[0], saddr[1] & mask[1]]);
            let (mut found, mut miss) = state(BANS_V6.get_ptr_mut(BanKeyV6 { prefix: key }), Verdict::PassNotBanned);
            if found.is_none()
                && cfg.flags & CONFIG_BANNET_V6 != 0
                && hinted(hint_bit_v6(u32::from_be(saddr[0] as u32)))
            {
                let net = BANNET_V6.get(Key::new(128, bytes(saddr))).map(|b| b as *const BanValue as *mut BanValue);
                (found, miss) = state(net, miss);
            }
            let Some(ban) = found else { return miss };
            if cfg.flags & CONFIG_ALLOW_V6 != 0 && ALLOW_V6.get(Key::new(128, bytes(saddr))).is_some() {
                return Verdict::PassAllowListed;
            }
            charge(ban)
        }
    }
}

#[inline(always)]
fn state(ban: Option<*mut BanValue>, miss: Verdict) -> (Option<*mut BanValue>, Verdict) {
    match ban {
        Some(b) if !unsafe { &*b }.active_at(unsafe { bpf_ktime_get_boot_ns() }) => (None, Verdict::PassExpired),
        Some(b) => (Some(b), miss),
        None => (None, miss),
    }
}

#[inline(always)]
fn hinted(bit: u32) -> bool {
    BANNET_HINT.get(bit / 64).is_some_and(|w| *w & (1u64 << (bit % 64)) != 0)
}

#[inline(always)]
fn words(b: &[u8; 16]) -> [u64; 2] {
    unsafe { *(b.as_ptr() as *const [u64; 2]) }
}

#[inline(always)]
fn bytes(w: [u64; 2]) -> [u8; 16] {
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(w) }
}

#[inline(always)]
fn protected_port(cfg: &Config, dport: u16) -> bool {
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

#[inline(always)]
fn charge(ban: *mut BanValue) -> Verdict {
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(&raw mut (*ban).dropped, 1)
    };
    Verdict::Drop
}
