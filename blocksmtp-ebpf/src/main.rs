//! blocksmtp's dataplane: drop the SMTP packets of banned sources.
//!
//! One classifier, two attach points: XDP (earliest, preferred) and TC ingress (for
//! NICs and stacks where XDP is unavailable). Per packet, cheapest tests first:
//! protocol, port, destination (`hdr::parse`), then one hash lookup; prefix bans only
//! when some exist (a config bit), the address has none of its own and the source's
//! hint bit is set — then one longest-prefix lookup in a trie; the allow-list trie only
//! for a source that is actually banned. Every packet bumps exactly one per-CPU
//! counter, indexed by its verdict. With the config's log bit set (`--debug 3`), a ban's
//! first dropped packet is reported through aya-log; with it clear, no logging code runs.
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
use aya_log_ebpf::info;
use blocksmtp_common::{
    AllowValue, BanKeyV4, BanKeyV6, BanValue, CONFIG_ALLOW_V4, CONFIG_ALLOW_V6, CONFIG_BANNET_V4, CONFIG_BANNET_V6, CONFIG_LOG,
    CONFIG_MAILER_V4, CONFIG_MAILER_V6, Config, HINT_WORDS, MAX_ALLOW, MAX_BANS, MAX_PORTS, MAX_PREFIX_BANS, STAT_COUNT,
    Verdict, BAN_FLAG_LEN_SHIFT, hint_bit_v4, hint_bit_v6,
};
use blocksmtp_ebpf::hdr::{self, Tcp};

blocksmtp_ebpf::program_boilerplate!();

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
// Networks banned as a whole (any length): one longest-prefix lookup. Measured against
// per-length hash maps (bench-dataplane): a hash lookup per length in use costs more
// than the trie's walk for a clean packet (BENCHMARKS.md).
#[map]
static BANNET_V4: LpmTrie<[u8; 4], BanValue> = LpmTrie::with_max_entries(MAX_PREFIX_BANS, 0);
#[map]
static BANNET_V6: LpmTrie<[u8; 16], BanValue> = LpmTrie::with_max_entries(MAX_PREFIX_BANS, 0);
// One bit per IPv4 /24 (IPv6: per folded /48) that a prefix ban covers or lies in: an
// array lookup (inlined by the verifier) keeps the trie off a clean packet's path.
#[map]
static BANNET_HINT24: Array<u64> = Array::with_max_entries(HINT_WORDS, 0);

#[xdp]
pub fn blocksmtp_xdp(ctx: XdpContext) -> u32 {
    let v = classify(ctx.data(), ctx.data_end());
    count(v);
    match v {
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
fn count(v: Verdict) {
    if let Some(c) = STATS.get_ptr_mut(v as u32) {
        // Per-CPU slot: no other writer, no atomics needed.
        unsafe { *c += 1 };
    }
}

/// The verdict: a protected packet, then its ban (address, else prefix), then the allow-list.
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
            let (mut found, mut miss) = ban_state(BANS_V4.get_ptr_mut(BanKeyV4 { addr: saddr }), 32);
            if found.is_none()
                && cfg.flags & CONFIG_BANNET_V4 != 0
                && hinted(hint_bit_v4(u32::from_be_bytes(saddr) >> 8))
            {
                (found, miss) = net_ban(&BANNET_V4, saddr, miss);
            }
            let Some((ban, len)) = found else { return miss };
            if cfg.flags & CONFIG_ALLOW_V4 != 0 && ALLOW_V4.get(Key::new(32, saddr)).is_some() {
                return Verdict::PassAllowListed;
            }
            if cfg.flags & CONFIG_LOG != 0 && first_drop(ban) {
                info!(&(), "first packet dropped for the ban of {:i}/{}: to port {}", saddr, len, u16::from_be(dport_be));
            }
            charge(ban)
        }
        Ok(Tcp::V6 { saddr, daddr, dport_be }) => {
            if !protected_port(cfg, dport_be) || (cfg.flags & CONFIG_MAILER_V6 != 0 && daddr != words(&cfg.mailer_v6)) {
                return Verdict::PassNotProtected;
            }
            let mask = words(&cfg.v6_mask);
            let key = bytes([saddr[0] & mask[0], saddr[1] & mask[1]]);
            let (mut found, mut miss) = ban_state(BANS_V6.get_ptr_mut(BanKeyV6 { prefix: key }), cfg.v6_prefix_len);
            if found.is_none()
                && cfg.flags & CONFIG_BANNET_V6 != 0
                && hinted(hint_bit_v6(u64::from_be(saddr[0]) >> 16))
            {
                (found, miss) = net_ban(&BANNET_V6, bytes(saddr), miss);
            }
            let Some((ban, len)) = found else { return miss };
            if cfg.flags & CONFIG_ALLOW_V6 != 0 && ALLOW_V6.get(Key::new(128, bytes(saddr))).is_some() {
                return Verdict::PassAllowListed;
            }
            if cfg.flags & CONFIG_LOG != 0 && first_drop(ban) {
                info!(&(), "first packet dropped for the ban of {:i}/{}: to port {}", bytes(saddr), len, u16::from_be(dport_be));
            }
            charge(ban)
        }
    }
}

/// A ban in force, and its prefix length (for the log).
type Found = Option<(*mut BanValue, u8)>;

/// A ban entry found (or not): in force, or the verdict of a source without one.
#[inline(always)]
fn ban_state(ban: Option<*mut BanValue>, len: u8) -> (Found, Verdict) {
    match ban {
        Some(b) if expired(b) => (None, Verdict::PassExpired),
        Some(b) => (Some((b, len)), Verdict::PassNotBanned),
        None => (None, Verdict::PassNotBanned),
    }
}

/// Nested prefix bans looked through when the longest one has expired (the sweep
/// deletes expired entries within 500 ms; this covers the time until then, and a
/// daemon that is not running).
const MAX_NESTED: usize = 4;

/// The longest prefix ban in force covering a source (`N`: 4 or 16 address bytes). A
/// trie answers with the longest covering entry only: when that has expired, ask again
/// below its length.
#[inline(always)]
fn net_ban<const N: usize>(trie: &LpmTrie<[u8; N], BanValue>, saddr: [u8; N], mut miss: Verdict) -> (Found, Verdict) {
    let mut max = (N * 8) as u32;
    for _ in 0..MAX_NESTED {
        let Some(ban) = trie.get(Key::new(max, saddr)) else { break };
        match in_force(ban) {
            Ok(found) => return (Some(found), miss),
            Err(0) => return (None, Verdict::PassExpired),
            Err(len) => (miss, max) = (Verdict::PassExpired, u32::from(len) - 1),
        }
    }
    (None, miss)
}

/// A trie entry in force, with its length (the value carries it: `BAN_FLAG_LEN_SHIFT`),
/// or the length of an expired one.
#[inline(always)]
fn in_force(ban: &BanValue) -> Result<(*mut BanValue, u8), u8> {
    let len = (ban.flags >> BAN_FLAG_LEN_SHIFT) as u8;
    let ban = ban as *const BanValue as *mut BanValue;
    if expired(ban) { Err(len) } else { Ok((ban, len)) }
}

/// Whether hint bit `bit` is set (a prefix ban may cover the source).
#[inline(always)]
fn hinted(bit: u32) -> bool {
    match BANNET_HINT24.get(bit / 64) {
        Some(w) => *w & (1u64 << (bit % 64)) != 0,
        None => false,
    }
}

/// 16 config bytes as two words (the fields sit 8-byte aligned in the map value).
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

/// An expired ban is never enforced, whether or not the daemon has swept it yet.
#[inline(always)]
fn expired(ban: *mut BanValue) -> bool {
    !unsafe { &*ban }.active_at(unsafe { bpf_ktime_get_boot_ns() })
}

/// No packet was dropped under this ban yet. A plain read: two CPUs dropping a ban's
/// first packets at once may both say so (fetch-and-add, which would decide it, needs
/// Linux 5.12).
#[inline(always)]
fn first_drop(ban: *mut BanValue) -> bool {
    unsafe { core::ptr::read_volatile(&raw const (*ban).dropped) == 0 }
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
