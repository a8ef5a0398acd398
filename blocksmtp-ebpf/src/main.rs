//! blocksmtp's dataplane: drop the SMTP packets of banned sources.
//!
//! One classifier, two attach points: XDP (earliest, preferred) and TC ingress (for
//! NICs and stacks where XDP is unavailable). Per packet, cheapest tests first:
//! protocol, port, destination, then one hash lookup; the prefix-ban trie only when
//! prefix bans exist (a config bit) and the address has none of its own; the allow-list
//! trie only for a source that is actually banned. Every packet bumps exactly one per-CPU counter,
//! indexed by its verdict.
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
    CONFIG_MAILER_V4, CONFIG_MAILER_V6, Config, HINT_WORDS, MAX_ALLOW, MAX_BANS, MAX_PORTS, MAX_PREFIX_BANS, STAT_COUNT,
    Verdict, hint_bit_v4, hint_bit_v6,
};

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
// No preallocation: a million-entry map costs memory only for the bans it holds.
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
// Networks banned as a whole (any prefix length): one longest-prefix lookup.
#[map]
static BANNET_V4: LpmTrie<[u8; 4], BanValue> = LpmTrie::with_max_entries(MAX_PREFIX_BANS, 0);
#[map]
static BANNET_V6: LpmTrie<[u8; 16], BanValue> = LpmTrie::with_max_entries(MAX_PREFIX_BANS, 0);
// One bit per IPv4 /16 (IPv6: per folded /32) that some prefix ban covers: an array
// lookup (inlined by the verifier) keeps the trie off a clean packet's path.
#[map]
static BANNET_HINT: Array<u64> = Array::with_max_entries(HINT_WORDS, 0);

/// Whether hint bit `bit` is set (a prefix ban may cover the source).
#[inline(always)]
fn hinted(bit: u32) -> bool {
    match BANNET_HINT.get(bit / 64) {
        Some(w) => *w & (1u64 << (bit % 64)) != 0,
        None => false,
    }
}

// EtherTypes and protocol numbers as they appear in the packet (network byte order).
const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
const ETH_P_8021AD: u16 = 0x88A8u16.to_be();
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
/// Extension headers walked before giving up (real SYNs carry none or one).
const MAX_IPV6_EXT: usize = 4;

#[xdp]
pub fn blocksmtp_xdp(ctx: XdpContext) -> u32 {
    match verdict(ctx.data(), ctx.data_end()) {
        Verdict::Drop => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[classifier]
pub fn blocksmtp_tc(ctx: TcContext) -> i32 {
    let mut v = classify(ctx.data(), ctx.data_end());
    // Headers may sit partly outside the linear area of an skb: pull them in once.
    if v == Verdict::PassMalformed && ctx.len() as usize > ctx.data_end() - ctx.data() {
        let want = if ctx.len() < 256 { ctx.len() } else { 256 };
        if ctx.pull_data(want).is_ok() {
            v = classify(ctx.data(), ctx.data_end());
        }
    }
    count(v);
    match v {
        Verdict::Drop => TC_ACT_SHOT as i32,
        // UNSPEC: let later TC/TCX programs see the packet too.
        _ => TC_ACT_UNSPEC,
    }
}

#[inline(always)]
fn verdict(start: usize, end: usize) -> Verdict {
    let v = classify(start, end);
    count(v);
    v
}

#[inline(always)]
fn count(v: Verdict) {
    if let Some(c) = STATS.get_ptr_mut(v as u32) {
        // Per-CPU slot: no other writer, no atomics needed.
        unsafe { *c += 1 };
    }
}

/// A pointer to a `T` at `off` bytes into the packet, if the packet is long enough.
#[inline(always)]
fn at<T>(start: usize, end: usize, off: usize) -> Option<*const T> {
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Load a `T` with one instruction. Packet fields are not always naturally aligned
/// (IP starts at offset 14); x86-64 and arm64 allow that, and `read_unaligned` would
/// compile to one load per byte on BPF.
#[inline(always)]
fn load<T: Copy>(start: usize, end: usize, off: usize) -> Option<T> {
    at::<T>(start, end, off).map(|p| unsafe { *p })
}

#[inline(always)]
fn classify(start: usize, end: usize) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::PassNotProtected;
    };
    let Some(mut proto) = load::<u16>(start, end, 12) else {
        return Verdict::PassMalformed;
    };
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, 802.1ad QinQ).
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let Some(inner) = load::<u16>(start, end, off + 2) else {
            return Verdict::PassMalformed;
        };
        proto = inner;
        off += VLAN_HLEN;
    }
    if proto == ETH_P_IP {
        ipv4(cfg, start, end, off)
    } else if proto == ETH_P_IPV6 {
        ipv6(cfg, start, end, off)
    } else {
        Verdict::PassNotIp
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[inline(always)]
fn ipv4(cfg: &Config, start: usize, end: usize, off: usize) -> Verdict {
    let Some(ip) = at::<Ipv4Hdr>(start, end, off) else {
        return Verdict::PassMalformed;
    };
    let ip = unsafe { &*ip };
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Verdict::PassMalformed;
    }
    // Fragment offset ≠ 0: no TCP header here (the first fragment carries it).
    if u16::from_be(ip.frag_off) & 0x1fff != 0 {
        return Verdict::PassFragment;
    }
    if ip.protocol != IPPROTO_TCP {
        return Verdict::PassNotTcp;
    }
    let Some(dport) = tcp_dport(start, end, off + ihl) else {
        return Verdict::PassMalformed;
    };
    if !protected_port(cfg, dport)
        || (cfg.flags & CONFIG_MAILER_V4 != 0 && ip.daddr != u32::from_ne_bytes(cfg.mailer_v4))
    {
        return Verdict::PassNotProtected;
    }
    let saddr = ip.saddr.to_ne_bytes();
    let mut miss = Verdict::PassNotBanned;
    let mut found = None;
    if let Some(ban) = BANS_V4.get_ptr_mut(BanKeyV4 { addr: saddr }) {
        if expired(ban) { miss = Verdict::PassExpired } else { found = Some(ban) }
    }
    if found.is_none()
        && cfg.flags & CONFIG_BANNET_V4 != 0
        && hinted(hint_bit_v4(u16::from_be_bytes([saddr[0], saddr[1]])))
        && let Some(ban) = BANNET_V4.get(Key::new(32, saddr))
    {
        let ban = ban as *const BanValue as *mut BanValue;
        if expired(ban) { miss = Verdict::PassExpired } else { found = Some(ban) }
    }
    let Some(ban) = found else {
        return miss;
    };
    if cfg.flags & CONFIG_ALLOW_V4 != 0 && ALLOW_V4.get(Key::new(32, saddr)).is_some() {
        return Verdict::PassAllowListed;
    }
    charge(ban)
}

#[inline(always)]
fn ipv6(cfg: &Config, start: usize, end: usize, off: usize) -> Verdict {
    let Some(mut next) = load::<u8>(start, end, off + 6) else {
        return Verdict::PassMalformed;
    };
    // Addresses as two 64-bit words each: two loads, two compares, two ANDs.
    let (Some(saddr), Some(daddr)) = (
        load::<[u64; 2]>(start, end, off + 8),
        load::<[u64; 2]>(start, end, off + 24),
    ) else {
        return Verdict::PassMalformed;
    };
    let mut l4 = off + IPV6_HLEN;
    // Skip hop-by-hop, routing and destination-options headers.
    for _ in 0..MAX_IPV6_EXT {
        if next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS {
            break;
        }
        let Some(ext) = load::<[u8; 2]>(start, end, l4) else {
            return Verdict::PassMalformed;
        };
        next = ext[0];
        l4 += (ext[1] as usize + 1) * 8;
    }
    if next == IPPROTO_FRAGMENT {
        return Verdict::PassFragment;
    }
    if next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS {
        return Verdict::PassMalformed;
    }
    if next != IPPROTO_TCP {
        return Verdict::PassNotTcp;
    }
    let Some(dport) = tcp_dport(start, end, l4) else {
        return Verdict::PassMalformed;
    };
    if !protected_port(cfg, dport) || (cfg.flags & CONFIG_MAILER_V6 != 0 && daddr != words(&cfg.mailer_v6)) {
        return Verdict::PassNotProtected;
    }
    let mask = words(&cfg.v6_mask);
    let key: [u64; 2] = [saddr[0] & mask[0], saddr[1] & mask[1]];
    let mut miss = Verdict::PassNotBanned;
    let mut found = None;
    if let Some(ban) = BANS_V6.get_ptr_mut(BanKeyV6 { prefix: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(key) } }) {
        if expired(ban) { miss = Verdict::PassExpired } else { found = Some(ban) }
    }
    if found.is_none()
        && cfg.flags & CONFIG_BANNET_V6 != 0
        && hinted(hint_bit_v6(u32::from_be(saddr[0] as u32)))
        && let Some(ban) = BANNET_V6.get(Key::new(128, unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(saddr) }))
    {
        let ban = ban as *const BanValue as *mut BanValue;
        if expired(ban) { miss = Verdict::PassExpired } else { found = Some(ban) }
    }
    let Some(ban) = found else {
        return miss;
    };
    if cfg.flags & CONFIG_ALLOW_V6 != 0 && ALLOW_V6.get(Key::new(128, unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(saddr) })).is_some() {
        return Verdict::PassAllowListed;
    }
    charge(ban)
}

/// 16 config bytes as two words (the fields sit 8-byte aligned in the map value).
#[inline(always)]
fn words(b: &[u8; 16]) -> [u64; 2] {
    unsafe { *(b.as_ptr() as *const [u64; 2]) }
}

/// The TCP destination port (network order), if a whole TCP header is present.
#[inline(always)]
fn tcp_dport(start: usize, end: usize, off: usize) -> Option<u16> {
    at::<[u8; TCP_HLEN]>(start, end, off)?;
    load::<u16>(start, end, off + 2)
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

/// An expired ban is never enforced, whether or not the daemon has swept it yet.
#[inline(always)]
fn expired(ban: *mut BanValue) -> bool {
    !unsafe { &*ban }.active_at(unsafe { bpf_ktime_get_boot_ns() })
}

/// Drop, and charge the packet to the ban's counter.
#[inline(always)]
fn charge(ban: *mut BanValue) -> Verdict {
    // Shared across CPUs: atomic add (BPF_ATOMIC_ADD). core's AtomicU64 has no
    // fetch_add on the BPF target, the intrinsic lowers to the right instruction.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            &raw mut (*ban).dropped,
            1,
        )
    };
    Verdict::Drop
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
