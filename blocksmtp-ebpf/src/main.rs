//! blocksmtp's dataplane: drop the SMTP packets of banned sources.
//!
//! One classifier, two attach points: XDP (earliest, preferred) and TC ingress (for
//! NICs and stacks where XDP is unavailable). Per packet, cheapest tests first:
//! protocol, port, destination (`hdr::parse`), then one hash lookup; prefix bans only
//! when some exist (a config bit), the address has none of its own and the source's
//! hint bit is set — then one longest-prefix lookup in a trie (IPv4: one trie, two hints,
//! bans up to /24 per /24 and longer ones per /28; IPv6: bans longer than /48 first, in
//! their own trie with their own hint, then the rest); the allow-list trie only
//! for a source that is actually banned. Every packet bumps exactly one per-CPU
//! counter, indexed by its verdict. With the config's log bit set (`--debug 3`), a ban's
//! first dropped packet is reported through aya-log; with it clear, no logging code runs.
//! The entry points and the map-free steps are the lib's (shared with bin/hash.rs).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
};
use aya_log_ebpf::info;
use blocksmtp_common::{
    AllowValue, BanKeyV4, BanKeyV6, BanValue, CONFIG_ALLOW_V4, CONFIG_ALLOW_V6, CONFIG_BANNET_V4, CONFIG_BANNET_V6,
    CONFIG_BANNET_V6L, CONFIG_LOG, CONFIG_MAILER_V4, CONFIG_MAILER_V6, Config, HINT_LONG_WORDS, HINT_WORDS, MAX_ALLOW,
    HINT_V4L_WORDS, MAX_BANS, MAX_PREFIX_BANS, STAT_COUNT, Verdict, BAN_FLAG_LEN_SHIFT, hint_bit_v4, hint_bit_v4l, hint_bit_v6,
    hint_bit_v6l,
};
use blocksmtp_ebpf::{Found, ban_state, bytes, charge, expired, hdr::{self, Tcp}, hinted, protected_port, words};

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
// One bit per IPv4 /24 that a prefix ban up to /24 covers (IPv6: per folded /48 that a
// ban up to /48 covers or lies in): an array lookup (inlined by the verifier) keeps the
// trie off a clean packet's path. Programs of earlier builds read the IPv4 half as "any
// prefix ban covers or lies in the /24"; user space keeps that superset until this
// build's programs are on every link.
#[map]
static BANNET_HINT24: Array<u64> = Array::with_max_entries(HINT_WORDS, 0);
// IPv4 bans longer than /24 (in BANNET_V4 too): one bit per folded /28 they cover or lie
// in. A clean host of a /24 holding a /28 ban finds both its bits clear: no walk.
#[map]
static BANNET_HINT4L: Array<u64> = Array::with_max_entries(HINT_V4L_WORDS, 0);
// IPv6 prefix bans longer than /48, apart from the rest: a clean host of a /48 that
// holds a /56 ban walks no trie (its /56's bit here is clear, its /48's in the other
// hint too), at most this small one, never the one holding every banned /48. Its hint
// has one bit per folded /56 that such a ban covers or lies in.
#[map]
static BANNET_V6L: LpmTrie<[u8; 16], BanValue> = LpmTrie::with_max_entries(MAX_PREFIX_BANS, 0);
#[map]
static BANNET_HINT6L: Array<u64> = Array::with_max_entries(HINT_LONG_WORDS, 0);

blocksmtp_ebpf::entry_points!(xdp: blocksmtp_xdp, tc: blocksmtp_tc, classify: classify, stats: STATS);

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
            let src = u32::from_be_bytes(saddr);
            if found.is_none()
                && cfg.flags & CONFIG_BANNET_V4 != 0
                && (hinted(&BANNET_HINT24, hint_bit_v4(src >> 8)) || hinted(&BANNET_HINT4L, hint_bit_v4l(src >> 4)))
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
            // SAFETY: `ban` is the lookup's pointer (ban_state / in_force).
            unsafe { charge(ban) }
        }
        Ok(Tcp::V6 { saddr, daddr, dport_be }) => {
            if !protected_port(cfg, dport_be) || (cfg.flags & CONFIG_MAILER_V6 != 0 && daddr != words(&cfg.mailer_v6)) {
                return Verdict::PassNotProtected;
            }
            let mask = words(&cfg.v6_mask);
            let key = bytes([saddr[0] & mask[0], saddr[1] & mask[1]]);
            let (mut found, mut miss) = ban_state(BANS_V6.get_ptr_mut(BanKeyV6 { prefix: key }), cfg.v6_prefix_len);
            let first64 = u64::from_be(saddr[0]);
            // The longer class first: any ban of it in force is more specific than one of
            // the other, and an expired one there leaves the other to answer.
            if found.is_none() && cfg.flags & CONFIG_BANNET_V6L != 0 && hinted(&BANNET_HINT6L, hint_bit_v6l(first64 >> 8)) {
                (found, miss) = net_ban(&BANNET_V6L, bytes(saddr), miss);
            }
            if found.is_none() && cfg.flags & CONFIG_BANNET_V6 != 0 && hinted(&BANNET_HINT24, hint_bit_v6(first64 >> 16)) {
                (found, miss) = net_ban(&BANNET_V6, bytes(saddr), miss);
            }
            let Some((ban, len)) = found else { return miss };
            if cfg.flags & CONFIG_ALLOW_V6 != 0 && ALLOW_V6.get(Key::new(128, bytes(saddr))).is_some() {
                return Verdict::PassAllowListed;
            }
            if cfg.flags & CONFIG_LOG != 0 && first_drop(ban) {
                info!(&(), "first packet dropped for the ban of {:i}/{}: to port {}", bytes(saddr), len, u16::from_be(dport_be));
            }
            // SAFETY: `ban` is the lookup's pointer (ban_state / in_force).
            unsafe { charge(ban) }
        }
    }
}

/// Nested prefix bans looked through when the longest one has expired (the sweep
/// deletes expired entries within 500 ms; this covers the time until then, and a
/// daemon that is not running). Per trie: IPv6 looks through as many in each class.
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
    // SAFETY: from the reference to the trie's value.
    if unsafe { expired(ban) } { Err(len) } else { Ok((ban, len)) }
}

/// No packet was dropped under this ban yet. A plain read: two CPUs dropping a ban's
/// first packets at once may both say so (fetch-and-add, which would decide it, needs
/// Linux 5.12).
#[inline(always)]
fn first_drop(ban: *mut BanValue) -> bool {
    unsafe { core::ptr::read_volatile(&raw const (*ban).dropped) == 0 }
}

