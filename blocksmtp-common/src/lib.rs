//! Types shared by blocksmtp's eBPF programs and its daemon.
//!
//! Every type here crosses the kernel/user boundary through a BPF map, so each is
//! `#[repr(C)]` with explicit padding (bytemuck's `Pod` derive proves there is none).
//! The same source compiles for `bpfel-unknown-none` (the programs) and for the host
//! (the daemon, with the `user` feature), so the two sides cannot drift apart.
#![no_std]
#[cfg(test)]
extern crate std;

use bytemuck::{Pod, Zeroable};

/// Bumped whenever a map's key, value or config layout changes. The daemon pins maps
/// under `/sys/fs/bpf/blocksmtp/v{LAYOUT_VERSION}` so an old layout is never reused.
/// (The prefix-ban tries were added beside the v1 maps without changing any of them:
/// a v1 pin directory gains them, its bans stay. The 16-bit prefix-ban hint
/// `BANNET_HINT` became the 24-bit `BANNET_HINT24` under a new name rather than a bump:
/// the hint is derived from the tries and rebuilt at every load, so a v1 directory of
/// the release before keeps its bans and links, gains the new map, and loses the old
/// pin once the new programs are attached — no migration, no gap in enforcement.
/// IPv6 prefix bans longer than /48 moved from `BANNET_V6` to `BANNET_V6L` (with their
/// own hint, `BANNET_HINT6L`), again beside the v1 maps: a daemon started on older pins
/// copies them into the new trie at load, swaps its programs in, and only then deletes
/// them from `BANNET_V6`; both programs enforce either copy meanwhile.)
pub const LAYOUT_VERSION: u32 = 1;

/// Protected TCP destination ports (the old `--mailer-port`, plus `--ports`).
pub const MAX_PORTS: usize = 8;
/// Capacity of each ban map (IPv4 /32s, IPv6 prefixes). 2^20 ≥ the promised 1,000,000.
pub const MAX_BANS: u32 = 1 << 20;
/// Capacity of each allow-list trie.
pub const MAX_ALLOW: u32 = 1 << 16;
/// Capacity of each prefix-ban trie (networks banned as a whole: few, but not bounded
/// by the attacker more than address bans are).
pub const MAX_PREFIX_BANS: u32 = 1 << 16;
/// Bits of the prefix-ban hint bitmap (`BANNET_HINT24`) per family: IPv4 has one per
/// /24 (the source's first 24 bits, exact), IPv6 one per /48 folded to 24 bits (see
/// `hint_bit_v6`). A clear bit proves no prefix ban covers or lies inside the source's
/// /24 (/48): the trie lookup is skipped. 2 × 2^24 bits: a 4 MiB array in the kernel.
pub const HINT_BITS: u32 = 1 << 24;
/// Words of `BANNET_HINT24`: the IPv4 bits, then the IPv6 bits.
pub const HINT_WORDS: u32 = 2 * HINT_BITS / 64;
/// IPv6 prefix bans up to this length live in `BANNET_V6` (hinted in `BANNET_HINT24`),
/// longer ones in `BANNET_V6L` (hinted in `BANNET_HINT6L`): a /56 in a /48 no longer
/// sets the bit that sends the /48's clean hosts into a trie crowded with /48s.
pub const V6_SHORT_MAX: u8 = 48;
/// Bits of `BANNET_HINT6L`: one per IPv6 /56 that a ban longer than /48 covers or lies
/// in, folded to 24 bits (`hint_bit_v6l`). Finer than the other hint, as no ban of this
/// class fills a /48: a clean host of a /48 holding a /56 ban finds its own /56's bit
/// clear and walks no trie. 24 bits is the least for which a /32's /56s (2^24 of them)
/// all get bits of their own; a 2 MiB array in the kernel.
pub const HINT_LONG_BITS: u32 = 1 << 24;
/// Words of `BANNET_HINT6L`.
pub const HINT_LONG_WORDS: u32 = HINT_LONG_BITS / 64;
// The long hint's blocks (`2^(56 − len)` bits) assume its class starts past /48.
const _: () = assert!(HINT_LONG_BITS.is_power_of_two() && HINT_LONG_WORDS * 64 == HINT_LONG_BITS && V6_SHORT_MAX == 48);

/// IPv4 prefix bans up to this length set their /24s' bits in `BANNET_HINT24`; longer
/// ones (all in the same `BANNET_V4` trie) set their /28s' bits in `BANNET_HINT4L`: a /28
/// in a /24 no longer sends the /24's other clean hosts into the trie.
pub const V4_SHORT_MAX: u8 = 24;
/// Bits of `BANNET_HINT4L`: one per IPv4 /28 that a ban longer than /24 covers or lies
/// in, folded to 24 bits (`hint_bit_v4l`); a 2 MiB array in the kernel.
pub const HINT_V4L_BITS: u32 = 1 << 24;
/// Words of `BANNET_HINT4L`.
pub const HINT_V4L_WORDS: u32 = HINT_V4L_BITS / 64;
// The long IPv4 hint's blocks (`2^(28 − len)` bits) assume its class starts past /24.
const _: () = assert!(HINT_V4L_WORDS * 64 == HINT_V4L_BITS && V4_SHORT_MAX == 24);

/// Names of the maps in the eBPF object (kernel map names are at most 15 bytes).
pub mod map_names {
    pub const CONFIG: &str = "CONFIG";
    pub const BANS_V4: &str = "BANS_V4";
    pub const BANS_V6: &str = "BANS_V6";
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const STATS: &str = "STATS";
    pub const BANNET_V4: &str = "BANNET_V4";
    pub const BANNET_V6: &str = "BANNET_V6";
    pub const BANNET_HINT: &str = "BANNET_HINT24";
    /// IPv6 prefix bans longer than `V6_SHORT_MAX`, and their hint.
    pub const BANNET_V6_LONG: &str = "BANNET_V6L";
    pub const BANNET_HINT_LONG: &str = "BANNET_HINT6L";
    /// The hint of IPv4 prefix bans longer than `V4_SHORT_MAX` (their trie is `BANNET_V4`).
    pub const BANNET_HINT_V4_LONG: &str = "BANNET_HINT4L";
    pub const ALL: [&str; 12] = [
        CONFIG, BANS_V4, BANS_V6, ALLOW_V4, ALLOW_V6, STATS, BANNET_V4, BANNET_V6, BANNET_HINT, BANNET_V6_LONG, BANNET_HINT_LONG,
        BANNET_HINT_V4_LONG,
    ];
    /// Maps of earlier releases that this one no longer uses; their pins are removed once
    /// this build's programs are attached (`BANNET_HINT`: the 16-bit hint, derived data).
    pub const RETIRED: [&str; 1] = ["BANNET_HINT"];
    /// The benchmark's per-length hash design (blocksmtp-ebpf/src/bin/hash.rs), not the product's.
    pub const NETS_V4: &str = "NETS_V4";
    pub const NETS_V6: &str = "NETS_V6";
    pub const NET_LENS: &str = "NET_LENS";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    pub const XDP: &str = "blocksmtp_xdp";
    pub const TC: &str = "blocksmtp_tc";
}

/// Key of the IPv4 ban map: the source address as it sits in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct BanKeyV4 {
    pub addr: [u8; 4],
}

/// Key of the IPv6 ban map: the source address masked to `Config::v6_prefix_len` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct BanKeyV6 {
    pub prefix: [u8; 16],
}

/// The per-length hash design bench-dataplane measures against the tries (not loaded by
/// the daemon; see BENCHMARKS.md). Key of its IPv4 prefix-ban map: the length and the
/// network (address bits past `len` zero). One hash map holds every length; `NetLens`
/// says which are in use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct NetKeyV4 {
    pub len: u32,
    pub addr: [u8; 4],
}

/// Key of the IPv6 prefix-ban map (as `NetKeyV4`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct NetKeyV6 {
    pub len: u32,
    pub addr: [u8; 16],
}

/// Prefix lengths one family can have in use at once (a ban of a further length is
/// refused until one is free). The program does one lookup per length in use.
pub const MAX_NET_LENS: usize = 16;
/// A free slot of `NetLens`.
pub const NET_LEN_FREE: u8 = 0xff;

/// Slot 0 of `NET_LENS`: the prefix lengths in use, one per slot, in the order they came
/// into use; the program looks up one key per length in slots `0..end` until a ban in
/// force is found. A length keeps its slot while it is in use and user space changes
/// one slot (and `end`) per update, always while that length has no entries: a packet
/// racing the update sees each byte old or new, and either way every length that has
/// entries (a sorted list would shift them and could be read torn).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NetLens {
    /// IPv4 lengths 0..=31, `NET_LEN_FREE` for none.
    pub v4: [u8; MAX_NET_LENS],
    /// IPv6 lengths 0..=127.
    pub v6: [u8; MAX_NET_LENS],
    /// Slots past these are free (zeroed at map creation: nothing in use).
    pub v4_end: u8,
    pub v6_end: u8,
    pub _pad: [u8; 6],
}

impl NetLens {
    pub const EMPTY: Self = Self { v4: [NET_LEN_FREE; MAX_NET_LENS], v6: [NET_LEN_FREE; MAX_NET_LENS], v4_end: 0, v6_end: 0, _pad: [0; 6] };
}

/// The ban was set by hand (`blocksmtp ban`), not by detection.
pub const BAN_FLAG_MANUAL: u32 = 1;
/// Bits 8..16 of `BanValue::flags` hold a prefix ban's length: a trie lookup answers
/// with the longest covering entry, so user space checks it found the one it asked for.
pub const BAN_FLAG_LEN_SHIFT: u32 = 8;

/// Value of the ban maps and of the prefix-ban tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BanValue {
    /// End of the ban on CLOCK_BOOTTIME (`bpf_ktime_get_boot_ns`), so it keeps running
    /// across suspend and needs no userspace action to lift.
    pub expires_ns: u64,
    /// Packets dropped under this ban; the kernel adds to it atomically.
    pub dropped: u64,
    pub flags: u32,
    pub _pad: u32,
}

impl BanValue {
    pub const fn new(expires_ns: u64, flags: u32) -> Self {
        Self { expires_ns, dropped: 0, flags, _pad: 0 }
    }

    /// An expired entry is never enforced (the kernel checks this per packet).
    #[inline(always)]
    pub const fn active_at(&self, now_ns: u64) -> bool {
        now_ns < self.expires_ns
    }
}

/// Value of both allow-list tries (the key is an LPM key over the address bytes).
pub type AllowValue = u32;

/// The mailer-address filter is on for IPv4 packets (`Config::mailer_v4`).
pub const CONFIG_MAILER_V4: u8 = 1;
/// The mailer-address filter is on for IPv6 packets (`Config::mailer_v6`).
pub const CONFIG_MAILER_V6: u8 = 2;
/// `ALLOW_V4` holds entries (when clear, the program skips the trie: same verdict).
pub const CONFIG_ALLOW_V4: u8 = 4;
/// `ALLOW_V6` holds entries.
pub const CONFIG_ALLOW_V6: u8 = 8;
/// `BANNET_V4` holds entries (when clear, a source with no address ban passes at once);
/// one bit for both of its hints.
pub const CONFIG_BANNET_V4: u8 = 16;
/// `BANNET_V6` holds entries.
pub const CONFIG_BANNET_V6: u8 = 32;
/// Rare events (a ban's first dropped packet) go to aya-log (`--debug 3`). When clear
/// the program takes no logging path at all.
pub const CONFIG_LOG: u8 = 64;
/// `BANNET_V6L` holds entries (IPv6 prefix bans longer than /48). Programs of earlier
/// releases, which share the config map during an upgrade, ignore the bit.
pub const CONFIG_BANNET_V6L: u8 = 128;

// Each flag its own bit. The byte is full now: a ninth flag needs a wider field, which
// is a layout change (LAYOUT_VERSION).
const _: () = {
    let all = [
        CONFIG_MAILER_V4, CONFIG_MAILER_V6, CONFIG_ALLOW_V4, CONFIG_ALLOW_V6, CONFIG_BANNET_V4, CONFIG_BANNET_V6, CONFIG_LOG,
        CONFIG_BANNET_V6L,
    ];
    let (mut or, mut sum, mut i) = (0u32, 0u32, 0);
    while i < all.len() {
        assert!(all[i].is_power_of_two());
        or |= all[i] as u32;
        sum += all[i] as u32;
        i += 1;
    }
    assert!(or == sum);
};

/// Runtime configuration, in slot 0 of the one-slot `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// Protected destination ports in network byte order (compared to the packet as is).
    pub ports_be: [u16; MAX_PORTS],
    pub n_ports: u8,
    /// `CONFIG_*` bits.
    pub flags: u8,
    pub v6_prefix_len: u8,
    pub _pad: u8,
    /// Only packets to this destination are dropped when `CONFIG_MAILER_V4` is set.
    pub mailer_v4: [u8; 4],
    /// Only packets to this destination are dropped when `CONFIG_MAILER_V6` is set.
    pub mailer_v6: [u8; 16],
    /// `v6_prefix_len` as a byte mask, precomputed so the program only ANDs.
    pub v6_mask: [u8; 16],
}

// The program reads these 16-byte fields as two u64 words; map values are 8-aligned.
const _: () = assert!(core::mem::offset_of!(Config, mailer_v6) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Config, v6_mask) % 8 == 0);

impl Config {
    /// A config protecting `ports` (at most `MAX_PORTS`; extra ones are ignored) with
    /// IPv6 bans per `/v6_prefix_len`, no mailer-address filter.
    pub fn new(ports: &[u16], v6_prefix_len: u8) -> Self {
        let mut cfg = Self::zeroed();
        let mut n = 0;
        while n < ports.len() && n < MAX_PORTS {
            cfg.ports_be[n] = ports[n].to_be();
            n += 1;
        }
        cfg.n_ports = n as u8;
        cfg.v6_prefix_len = if v6_prefix_len > 128 { 128 } else { v6_prefix_len };
        cfg.v6_mask = prefix_mask(cfg.v6_prefix_len);
        cfg
    }

    pub fn with_mailer_v4(mut self, addr: [u8; 4]) -> Self {
        self.mailer_v4 = addr;
        self.flags |= CONFIG_MAILER_V4;
        self
    }

    pub fn with_mailer_v6(mut self, addr: [u8; 16]) -> Self {
        self.mailer_v6 = addr;
        self.flags |= CONFIG_MAILER_V6;
        self
    }

    /// Host-order ports, for display.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports_be[..self.n_ports as usize].iter().map(|p| u16::from_be(*p))
    }
}

/// A byte mask with the first `len` bits set.
pub const fn prefix_mask(len: u8) -> [u8; 16] {
    let mut mask = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bits = len as i32 - (i as i32) * 8;
        mask[i] = if bits >= 8 {
            0xff
        } else if bits <= 0 {
            0
        } else {
            0xffu8 << (8 - bits)
        };
        i += 1;
    }
    mask
}

/// The IPv6 ban key for `addr`: the address ANDed with `mask` (`Config::v6_mask`).
#[inline(always)]
pub fn v6_key(addr: &[u8; 16], mask: &[u8; 16]) -> BanKeyV6 {
    let mut prefix = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        prefix[i] = addr[i] & mask[i];
        i += 1;
    }
    BanKeyV6 { prefix }
}

/// The hint bit of an IPv4 source: its /24 (`first24`: the address's first 24 bits).
#[inline(always)]
pub const fn hint_bit_v4(first24: u32) -> u32 {
    first24 & (HINT_BITS - 1)
}

/// The bit of `BANNET_HINT4L` for an IPv4 source: its /28 (`first28`: the address's
/// first 28 bits) folded to 24 by XOR of its top 4 bits into the low ones. The /28s of
/// one /4 get distinct bits (XOR with their common top is a bijection): the three IPv4
/// documentation networks, all in 192.0.0.0/4, never collide; an aligned block of /28s
/// (a /25 … /27 ban) maps to an aligned block of bits.
#[inline(always)]
pub const fn hint_bit_v4l(first28: u32) -> u32 {
    (first28 ^ (first28 >> 24)) & (HINT_V4L_BITS - 1)
}

/// The hint bit of an IPv6 source, after the IPv4 half: its /48 (`first48`: the
/// address's first 48 bits) folded to 24 by XOR of the halves. The /48s of one /24 get
/// distinct bits (XOR with their common upper half is a bijection), so bans crowded in
/// one network never collide; an aligned block of /48s (a wider ban) maps to an aligned
/// block of bits.
#[inline(always)]
pub const fn hint_bit_v6(first48: u64) -> u32 {
    HINT_BITS + (((first48 >> 24) ^ first48) as u32 & (HINT_BITS - 1))
}

/// The bit of `BANNET_HINT6L` for an IPv6 source: its /56 (`first56`: the address's
/// first 56 bits) folded to 24 bits by XOR of its 24-bit pieces. The low piece is the
/// /56's bits below its /32, so the /56s of one /32 get distinct bits (XOR with a
/// function of the common upper bits is a bijection): 2001:db8::/32, or any provider's
/// /32, never collides with itself; an aligned block of /56s (a /49 … /55 ban) maps to
/// an aligned block of bits.
#[inline(always)]
pub const fn hint_bit_v6l(first56: u64) -> u32 {
    ((first56 ^ (first56 >> 24) ^ (first56 >> 48)) as u32) & (HINT_LONG_BITS - 1)
}

/// The IPv4 prefix-ban key of `addr` (packet order) at `len` (0..=32) bits.
#[inline(always)]
pub const fn net_key_v4(addr: [u8; 4], len: u32) -> NetKeyV4 {
    let mask = if len == 0 { 0 } else { u32::MAX.wrapping_shl(32 - len) };
    NetKeyV4 { len, addr: (u32::from_be_bytes(addr) & mask).to_be_bytes() }
}

/// The IPv6 prefix-ban key at `len` (0..=128) bits of an address given as its two
/// host-order 64-bit halves (the program has them in registers).
#[inline(always)]
pub fn net_key_v6(hi: u64, lo: u64, len: u32) -> NetKeyV6 {
    let hm = if len == 0 { 0 } else if len >= 64 { u64::MAX } else { u64::MAX.wrapping_shl(64 - len) };
    let lm = if len <= 64 { 0 } else { u64::MAX.wrapping_shl(128 - len) };
    let words: [u64; 2] = [(hi & hm).to_be(), (lo & lm).to_be()];
    // Two stores instead of sixteen byte moves.
    NetKeyV6 { len, addr: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) } }
}

/// Why the program let a packet through, or that it dropped it. Doubles as the index
/// into the per-CPU `STATS` array: each packet bumps exactly one counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Neither IPv4 nor IPv6 (ARP, LLDP, …).
    PassNotIp = 0,
    /// IP, but not TCP (UDP, ICMP, …).
    PassNotTcp = 1,
    /// A non-first IPv4 fragment or an IPv6 fragment: no TCP header to read.
    PassFragment = 2,
    /// TCP to a port (or destination address) that is not protected.
    PassNotProtected = 3,
    /// To a protected port, from a source with no ban.
    PassNotBanned = 4,
    /// The source's ban has expired; the daemon will sweep the entry.
    PassExpired = 5,
    /// Banned, but the source is on the allow-list.
    PassAllowListed = 6,
    /// Cut short or not parseable (too many IPv6 extension headers, bad IHL).
    PassMalformed = 7,
    /// Dropped: a banned source to a protected port.
    Drop = 8,
}

pub const STAT_COUNT: u32 = 9;

impl Verdict {
    pub const ALL: [Verdict; STAT_COUNT as usize] = [
        Verdict::PassNotIp,
        Verdict::PassNotTcp,
        Verdict::PassFragment,
        Verdict::PassNotProtected,
        Verdict::PassNotBanned,
        Verdict::PassExpired,
        Verdict::PassAllowListed,
        Verdict::PassMalformed,
        Verdict::Drop,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::PassNotIp => "pass_not_ip",
            Verdict::PassNotTcp => "pass_not_tcp",
            Verdict::PassFragment => "pass_fragment",
            Verdict::PassNotProtected => "pass_not_protected",
            Verdict::PassNotBanned => "pass_not_banned",
            Verdict::PassExpired => "pass_expired",
            Verdict::PassAllowListed => "pass_allow_listed",
            Verdict::PassMalformed => "pass_malformed",
            Verdict::Drop => "drop",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C) and bytemuck::Pod (no padding, any bit pattern valid).
    unsafe impl aya::Pod for super::BanKeyV4 {}
    unsafe impl aya::Pod for super::BanKeyV6 {}
    unsafe impl aya::Pod for super::BanValue {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::NetKeyV4 {}
    unsafe impl aya::Pod for super::NetKeyV6 {}
    unsafe impl aya::Pod for super::NetLens {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask(0), [0; 16]);
        assert_eq!(prefix_mask(128), [0xff; 16]);
        let m = prefix_mask(64);
        assert_eq!(&m[..8], &[0xff; 8]);
        assert_eq!(&m[8..], &[0; 8]);
        let m = prefix_mask(57);
        assert_eq!(m[7], 0x80);
        assert_eq!(m[6], 0xff);
        assert_eq!(m[8], 0);
    }

    #[test]
    fn config_ports_are_network_order_and_bounded() {
        let cfg = Config::new(&[25, 587, 1, 2, 3, 4, 5, 6, 7, 8], 64);
        assert_eq!(cfg.n_ports as usize, MAX_PORTS);
        assert_eq!(cfg.ports_be[0], 25u16.to_be());
        assert_eq!(cfg.ports().collect::<std::vec::Vec<_>>()[..2], [25, 587]);
        assert_eq!(Config::new(&[25], 200).v6_prefix_len, 128);
    }

    #[test]
    fn v6_key_masks() {
        let addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0xde, 0xad, 0, 0, 0, 0, 0, 0x66];
        let k = v6_key(&addr, &prefix_mask(64));
        assert_eq!(&k.prefix[..8], &addr[..8]);
        assert_eq!(&k.prefix[8..], &[0; 8]);
    }

    #[test]
    fn net_keys_mask_past_the_length() {
        assert_eq!(net_key_v4([192, 0, 2, 77], 24), NetKeyV4 { len: 24, addr: [192, 0, 2, 0] });
        assert_eq!(net_key_v4([192, 0, 2, 77], 0).addr, [0; 4]);
        assert_eq!(net_key_v4([192, 0, 2, 77], 32).addr, [192, 0, 2, 77]);
        assert_eq!(net_key_v4([203, 0, 113, 9], 9).addr, [203, 0, 0, 0]);
        let a: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad, 0, 1, 0xde, 0xad, 0, 0, 0, 0, 0, 0x66];
        let (hi, lo) = (u64::from_be_bytes(a[..8].try_into().unwrap()), u64::from_be_bytes(a[8..].try_into().unwrap()));
        let k = net_key_v6(hi, lo, 48);
        assert_eq!(&k.addr[..6], &a[..6]);
        assert_eq!(&k.addr[6..], &[0; 10]);
        assert_eq!(net_key_v6(hi, lo, 0).addr, [0; 16]);
        assert_eq!(net_key_v6(hi, lo, 128).addr, a);
        assert_eq!(&net_key_v6(hi, lo, 72).addr[..9], &a[..9]);
        assert_eq!(&net_key_v6(hi, lo, 72).addr[9..], &[0; 7]);
        assert_eq!(net_key_v6(hi, lo, 64).addr[..8], a[..8]);
    }

    #[test]
    fn hint_bits() {
        assert_eq!(hint_bit_v4(0xc0_00_02), 0xc0_00_02);
        assert_eq!(hint_bit_v4(u32::from_be_bytes([192, 0, 2, 77]) >> 8), 0xc0_00_02);
        // The /48s of one /24 get distinct bits; a /48's bit lies in the IPv6 half.
        let mut seen = std::collections::BTreeSet::new();
        for low in 0..(1u64 << 16) {
            let b = hint_bit_v6(0x2001_0d00_0000 | low << 8 | 0xb8);
            assert!((HINT_BITS..2 * HINT_BITS).contains(&b));
            assert!(seen.insert(b));
        }
        assert_eq!(hint_bit_v6(0x2001_0db8_0bad), HINT_BITS + (0x20010d ^ 0xb80bad));
        assert_eq!(HINT_WORDS, 1 << 19);
    }

    #[test]
    fn long_hint_bits() {
        // Every /56 of 2001:db8::/32 on its own bit (every bit once), inside the map.
        let mut seen = std::vec![0u64; HINT_LONG_WORDS as usize];
        for low in 0..(1u64 << 24) {
            let b = hint_bit_v6l(0x2001_0db8 << 24 | low);
            assert!(b < HINT_LONG_BITS);
            assert_eq!(seen[b as usize / 64] & 1 << (b % 64), 0, "{low:#x}");
            seen[b as usize / 64] |= 1 << (b % 64);
        }
        // The /56s of a /49 form an aligned block of 128 bits.
        let first = hint_bit_v6l((0x2001_0db8_0bad << 8) | 0x80);
        let block: std::collections::BTreeSet<u32> = (0..128).map(|i| hint_bit_v6l((0x2001_0db8_0bad << 8) | 0x80 | i)).collect();
        assert_eq!(block, (first & !127..(first & !127) + 128).collect());
        // A twin in another /32 (3fff::/20, documentation) does collide: the fixture uses it.
        assert_eq!(hint_bit_v6l((0x3fff_0000_f5a0 << 8) | 0xa6), hint_bit_v6l((0x2001_0db8_0bad << 8) | 0x01));
        assert_eq!(HINT_LONG_WORDS, 1 << 18);
    }

    #[test]
    fn long_v4_hint_bits() {
        // Every /28 of a /4 on its own bit (every bit once), inside the map.
        let mut seen = std::vec![0u64; HINT_V4L_WORDS as usize];
        for low in 0..(1u32 << 24) {
            let b = hint_bit_v4l(0xc << 24 | low);
            assert!(b < HINT_V4L_BITS);
            assert_eq!(seen[b as usize / 64] & 1 << (b % 64), 0, "{low:#x}");
            seen[b as usize / 64] |= 1 << (b % 64);
        }
        let f = |a: [u8; 4]| hint_bit_v4l(u32::from_be_bytes(a) >> 4);
        // The /28s of a /26 form an aligned block of 4 bits.
        let block: std::collections::BTreeSet<u32> = (0..4).map(|i| f([203, 0, 115, 64 + 16 * i])).collect();
        let first = f([203, 0, 115, 64]);
        assert_eq!(block, (first & !3..(first & !3) + 4).collect());
        // Twins lie in other /4s: 208.0.2.48/28 (in 208.0.0.0/4; the fixture uses it in test
        // packets only) shares the bit of 192.0.2.32/28.
        assert_eq!(f([208, 0, 2, 48]), f([192, 0, 2, 32]));
        assert_ne!(f([208, 0, 2, 32]), f([192, 0, 2, 32]));
        assert_eq!(HINT_V4L_WORDS, 1 << 18);
    }

    #[test]
    fn verdict_indices_are_dense() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as u32, i as u32);
        }
    }

}
