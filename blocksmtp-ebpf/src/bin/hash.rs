//! Benchmark peer, not part of the product: prefix bans in per-length hash maps, kept
//! so bench-dataplane measures both designs in the same run — the product's classifier
//! (main.rs), but prefix bans in one hash map per family keyed by (length, network), one
//! lookup per length in use (`NET_LENS`), instead of one LPM trie per family.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
};
use blocksmtp_common::{
    AllowValue, BanKeyV4, BanKeyV6, BanValue, CONFIG_ALLOW_V4, CONFIG_ALLOW_V6, CONFIG_BANNET_V4, CONFIG_BANNET_V6,
    CONFIG_MAILER_V4, CONFIG_MAILER_V6, Config, HINT_WORDS, MAX_ALLOW, MAX_BANS, MAX_NET_LENS, NET_LEN_FREE, NetKeyV4,
    NetKeyV6, NetLens, STAT_COUNT, Verdict, hint_bit_v4, hint_bit_v6, net_key_v4, net_key_v6,
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
#[map]
static NETS_V4: HashMap<NetKeyV4, BanValue> = HashMap::with_max_entries(MAX_BANS, BPF_F_NO_PREALLOC);
#[map]
static NETS_V6: HashMap<NetKeyV6, BanValue> = HashMap::with_max_entries(MAX_BANS, BPF_F_NO_PREALLOC);
#[map]
static NET_LENS: Array<NetLens> = Array::with_max_entries(1, 0);
// One bit per IPv4 /24 (IPv6: per folded /48) that a prefix ban covers or lies in: an
// array lookup (inlined by the verifier) keeps the prefix lookups off a clean packet's path.
#[map]
static BANNET_HINT24: Array<u64> = Array::with_max_entries(HINT_WORDS, 0);

blocksmtp_ebpf::entry_points!(xdp: hash_xdp, tc: hash_tc, classify: classify, stats: STATS);

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
                && hinted(&BANNET_HINT24, hint_bit_v4(u32::from_be_bytes(saddr) >> 8))
            {
                (found, miss) = net_ban_v4(saddr, miss);
            }
            let Some((ban, _len)) = found else { return miss };
            if cfg.flags & CONFIG_ALLOW_V4 != 0 && ALLOW_V4.get(Key::new(32, saddr)).is_some() {
                return Verdict::PassAllowListed;
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
            if found.is_none()
                && cfg.flags & CONFIG_BANNET_V6 != 0
                && hinted(&BANNET_HINT24, hint_bit_v6(u64::from_be(saddr[0]) >> 16))
            {
                (found, miss) = net_ban_v6(u64::from_be(saddr[0]), u64::from_be(saddr[1]), miss);
            }
            let Some((ban, _len)) = found else { return miss };
            if cfg.flags & CONFIG_ALLOW_V6 != 0 && ALLOW_V6.get(Key::new(128, bytes(saddr))).is_some() {
                return Verdict::PassAllowListed;
            }
            // SAFETY: `ban` is the lookup's pointer (ban_state / in_force).
            unsafe { charge(ban) }
        }
    }
}

/// The first prefix ban in force covering an IPv4 source: one lookup per length in use.
#[inline(always)]
fn net_ban_v4(saddr: [u8; 4], mut miss: Verdict) -> (Found, Verdict) {
    let Some(lens) = NET_LENS.get(0) else { return (None, miss) };
    // Only the loop counter and `miss` cross iterations: the verifier sees two states
    // per round, not one per path so far.
    for i in 0..MAX_NET_LENS {
        if i >= lens.v4_end as usize {
            break;
        }
        let len = lens.v4[i];
        if len == NET_LEN_FREE {
            continue;
        }
        if let Some(ban) = NETS_V4.get_ptr_mut(net_key_v4(saddr, len as u32)) {
            // SAFETY: the lookup's pointer, valid for this run.
            if !unsafe { expired(ban) } {
                return (Some((ban, len)), miss);
            }
            miss = Verdict::PassExpired;
        }
    }
    (None, miss)
}

/// As `net_ban_v4`, for an IPv6 source given as host-order halves.
#[inline(always)]
fn net_ban_v6(hi: u64, lo: u64, mut miss: Verdict) -> (Found, Verdict) {
    let Some(lens) = NET_LENS.get(0) else { return (None, miss) };
    for i in 0..MAX_NET_LENS {
        if i >= lens.v6_end as usize {
            break;
        }
        let len = lens.v6[i];
        if len == NET_LEN_FREE {
            continue;
        }
        if let Some(ban) = NETS_V6.get_ptr_mut(net_key_v6(hi, lo, len as u32)) {
            // SAFETY: the lookup's pointer, valid for this run.
            if !unsafe { expired(ban) } {
                return (Some((ban, len)), miss);
            }
            miss = Verdict::PassExpired;
        }
    }
    (None, miss)
}

