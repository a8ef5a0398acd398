//! The prefix-ban hints (`BANNET_HINT24`, `BANNET_HINT4L` for IPv4 bans longer than /24,
//! `BANNET_HINT6L` for IPv6 bans longer than /48) as user space keeps them: which bits must be set for the prefix bans in the
//! tries, and which kernel words change when one comes or goes.
//!
//! Every prefix ban sets an aligned block of hint bits: one bit for an IPv4 /24 or longer
//! (an IPv6 /48), 2^(24 − len) bits for a wider IPv4 ban, 2^(48 − len) for an
//! IPv6 ban of /24 to /47 (the XOR fold maps an aligned block of /48s to an aligned block
//! of bits), every IPv6 bit for a ban wider than /24. Blocks are counted, not bits: a /8
//! is one entry, not 65,536, so memory follows the number of bans whatever their width.
//! The bitmap itself is mirrored in 512-byte chunks (4,096 bits: an IPv4 /12), allocated on
//! a chunk's first set bit and freed when it clears: a thousand scattered /24s cost at most
//! 500 KiB, an IPv4 /0 2 MiB while it lasts. The long class's hint (IPv6 /49 and longer)
//! is the same structure over `HINT_LONG_WORDS`: one bit per folded /56, 2^(56 − len)
//! bits for a /49 … /55 (`Block::v6_long`); so is the long IPv4 class's, one bit per
//! folded /28, 2^(28 − len) bits for a /25 … /27 (`Block::v4_long`). During an upgrade
//! a long IPv4 ban also counts its /24's block (`Block::v4`) in `BANNET_HINT24`, the bit
//! older programs read for it.
use std::collections::HashMap;

use blocksmtp_common::{HINT_BITS, HINT_LONG_WORDS, HINT_V4L_WORDS, HINT_WORDS, hint_bit_v4, hint_bit_v4l, hint_bit_v6, hint_bit_v6l};

/// Words per mirror chunk (512 bytes).
const CHUNK: usize = 64;
/// Below this many bits a lifted block's sub-blocks are looked up one by one; above it,
/// the counts are walked instead.
const PROBE_BITS: u32 = 1 << 12;

/// An aligned block of hint bits: `start` (a multiple of `1 << log2`) .. `start + (1 << log2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub start: u32,
    pub log2: u8,
}

impl Block {
    /// The block of the IPv4 prefix ban `addr`/`len`.
    pub fn v4(addr: [u8; 4], len: u8) -> Self {
        let log2 = 24u8.saturating_sub(len).min(24);
        let first24 = u32::from_be_bytes(addr) >> 8;
        Self { start: hint_bit_v4(first24) & !((1 << log2) - 1), log2 }
    }

    /// The block of `BANNET_HINT4L` for the IPv4 prefix ban `addr`/`len`, longer than /24:
    /// 2^(28 − len) bits for a /25 … /27, one bit (its /28's) for a /28 or longer.
    pub fn v4_long(addr: [u8; 4], len: u8) -> Self {
        let log2 = 28u8.saturating_sub(len).min(3);
        Self { start: hint_bit_v4l(u32::from_be_bytes(addr) >> 4) & !((1 << log2) - 1), log2 }
    }

    /// The block of the IPv6 prefix ban `addr`/`len`.
    pub fn v6(addr: [u8; 16], len: u8) -> Self {
        let log2 = if len < 24 { 24 } else { 48u8.saturating_sub(len) };
        let first48 = u64::from_be_bytes([0, 0, addr[0], addr[1], addr[2], addr[3], addr[4], addr[5]]);
        let bit = hint_bit_v6(first48);
        Self { start: bit & !((1 << log2) - 1), log2 }
    }

    /// The block of `BANNET_HINT6L` for the IPv6 prefix ban `addr`/`len`, longer than /48:
    /// 2^(56 − len) bits for a /49 … /55, one bit (its /56's) for a /56 or longer.
    pub fn v6_long(addr: [u8; 16], len: u8) -> Self {
        let log2 = 56u8.saturating_sub(len).min(7);
        let first56 = u64::from_be_bytes([0, addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6]]);
        Self { start: hint_bit_v6l(first56) & !((1 << log2) - 1), log2 }
    }

    fn key(self) -> u32 {
        self.start | u32::from(self.log2) << 25
    }

    fn from_key(k: u32) -> Self {
        Self { start: k & ((1 << 25) - 1), log2: (k >> 25) as u8 }
    }

    fn len(self) -> u32 {
        1 << self.log2
    }

    fn contains(self, other: Block) -> bool {
        other.log2 <= self.log2 && other.start >= self.start && other.start - self.start < self.len()
    }

    /// The words the block touches, each with the block's bits in it.
    pub(super) fn words(self) -> impl Iterator<Item = (u32, u64)> {
        let (first, n) = if self.log2 >= 6 { (self.start / 64, self.len() / 64) } else { (self.start / 64, 1) };
        let mask = if self.log2 >= 6 { u64::MAX } else { ((1u64 << self.len()) - 1) << (self.start % 64) };
        (first..first + n).map(move |w| (w, mask))
    }
}

/// The hint's counts and bitmap mirror.
pub struct Hint {
    /// Prefix bans per block (`Block::key`).
    counts: HashMap<u32, u32, foldhash::quality::RandomState>,
    chunks: Vec<Option<Box<[u64; CHUNK]>>>,
}

impl Default for Hint {
    /// `BANNET_HINT24`'s.
    fn default() -> Self {
        Self::with_words(HINT_WORDS)
    }
}

impl Hint {
    /// `BANNET_HINT6L`'s.
    pub fn long() -> Self {
        Self::with_words(HINT_LONG_WORDS)
    }

    /// `BANNET_HINT4L`'s.
    pub fn v4_long() -> Self {
        Self::with_words(HINT_V4L_WORDS)
    }

    fn with_words(words: u32) -> Self {
        Self { counts: HashMap::default(), chunks: (0..words as usize / CHUNK).map(|_| None).collect() }
    }

    /// The mirror's word `w` (what the kernel holds once changes are written).
    pub fn word(&self, w: u32) -> u64 {
        self.chunks[w as usize / CHUNK].as_ref().map_or(0, |c| c[w as usize % CHUNK])
    }

    /// Whether hint bit `bit` is set.
    pub fn bit(&self, bit: u32) -> bool {
        self.word(bit / 64) & 1 << (bit % 64) != 0
    }

    fn set_word(&mut self, w: u32, v: u64) {
        let slot = &mut self.chunks[w as usize / CHUNK];
        match slot {
            Some(c) => {
                c[w as usize % CHUNK] = v;
                if v == 0 && c.iter().all(|x| *x == 0) {
                    *slot = None;
                }
            }
            None if v == 0 => {}
            None => {
                let mut c = Box::new([0u64; CHUNK]);
                c[w as usize % CHUNK] = v;
                *slot = Some(c);
            }
        }
    }

    /// Words with a bit set.
    pub fn nonzero_words(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.chunks.iter().enumerate().filter_map(|(i, c)| Some((i, c.as_ref()?))).flat_map(|(i, c)| {
            c.iter().enumerate().filter(|(_, v)| **v != 0).map(move |(j, v)| ((i * CHUNK + j) as u32, *v))
        })
    }

    /// The words that differ from `old`'s, with their values here (what to write to a
    /// kernel map that holds `old`).
    pub fn diff(&self, old: &Hint) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        for (i, (a, b)) in old.chunks.iter().zip(&self.chunks).enumerate() {
            if a.is_none() && b.is_none() {
                continue;
            }
            for j in 0..CHUNK {
                let w = (i * CHUNK + j) as u32;
                let (was, now) = (old.word(w), self.word(w));
                if was != now {
                    out.push((w, now));
                }
            }
        }
        out
    }

    /// Blocks in use (distinct), and the mirror's chunks in bytes.
    pub fn footprint(&self) -> (usize, usize) {
        (self.counts.len(), self.chunks.iter().filter(|c| c.is_some()).count() * CHUNK * 8)
    }

    /// A block another one in use contains (itself included when `strict` is false).
    fn covered(&self, b: Block, strict: bool) -> bool {
        let from = if strict { b.log2 + 1 } else { b.log2 };
        (from..=24).any(|l| {
            let outer = Block { start: b.start & !((1u32 << l) - 1), log2: l };
            // Blocks never straddle the IPv4/IPv6 halves (both are 2^24 aligned).
            self.counts.get(&outer.key()).is_some_and(|n| *n > 0)
        })
    }

    /// Count a prefix ban's block; returns the words that changed (new values), to be
    /// written before the ban's trie entry exists.
    pub fn add(&mut self, b: Block) -> Vec<(u32, u64)> {
        let covered = self.covered(b, false);
        *self.counts.entry(b.key()).or_insert(0) += 1;
        if covered {
            return Vec::new();
        }
        let mut changed = Vec::new();
        for (w, mask) in b.words() {
            let old = self.word(w);
            if old | mask != old {
                self.set_word(w, old | mask);
                changed.push((w, old | mask));
            }
        }
        changed
    }

    /// Uncount a prefix ban's block (its trie entry is gone); returns the words that
    /// changed: bits no other ban needs are cleared.
    pub fn remove(&mut self, b: Block) -> Vec<(u32, u64)> {
        match self.counts.get_mut(&b.key()) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return Vec::new();
            }
            Some(_) => {
                self.counts.remove(&b.key());
            }
            None => return Vec::new(),
        }
        if self.covered(b, true) {
            return Vec::new();
        }
        // What stays set inside the block: the blocks in use within it.
        let inner: Vec<Block> = if b.len() <= PROBE_BITS {
            (0..b.log2)
                .flat_map(|l| (0..b.len() >> l).map(move |i| Block { start: b.start + (i << l), log2: l }))
                .filter(|x| self.counts.contains_key(&x.key()))
                .collect()
        } else {
            self.counts.keys().map(|k| Block::from_key(*k)).filter(|x| b.contains(*x)).collect()
        };
        let mut changed = Vec::new();
        let mut keep: HashMap<u32, u64, foldhash::fast::RandomState> = HashMap::default();
        for x in inner {
            for (w, m) in x.words() {
                *keep.entry(w).or_insert(0) |= m;
            }
        }
        for (w, mask) in b.words() {
            let old = self.word(w);
            let new = (old & !mask) | keep.get(&w).copied().unwrap_or(0);
            if new != old {
                self.set_word(w, new);
                changed.push((w, new));
            }
        }
        changed
    }

}

const _: () = assert!((HINT_WORDS as usize).is_multiple_of(CHUNK) && HINT_BITS.is_power_of_two());
const _: () = assert!((HINT_LONG_WORDS as usize).is_multiple_of(CHUNK) && (HINT_V4L_WORDS as usize).is_multiple_of(CHUNK));

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(h: &Hint) -> Vec<u32> {
        h.nonzero_words().flat_map(|(w, v)| (0..64).filter(move |i| v & 1 << i != 0).map(move |i| w * 64 + i)).collect()
    }

    #[test]
    fn blocks_of_prefix_bans() {
        assert_eq!(Block::v4([192, 0, 2, 0], 24), Block { start: 0xc00002, log2: 0 });
        assert_eq!(Block::v4([192, 0, 2, 64], 28), Block { start: 0xc00002, log2: 0 });
        assert_eq!(Block::v4([192, 0, 0, 0], 16), Block { start: 0xc00000, log2: 8 });
        assert_eq!(Block::v4([0, 0, 0, 0], 0), Block { start: 0, log2: 24 });
        assert_eq!(Block::v4([128, 0, 0, 0], 1), Block { start: 0x800000, log2: 23 });
        // IPv6: the /48 2001:db8:bad:: folds 0x20010d ^ 0xb80bad.
        let a: [u8; 16] = "2001:db8:bad::".parse::<std::net::Ipv6Addr>().unwrap().octets();
        assert_eq!(Block::v6(a, 48), Block { start: HINT_BITS + (0x20010d ^ 0xb80bad), log2: 0 });
        assert_eq!(Block::v6(a, 56), Block::v6(a, 48));
        let a32: [u8; 16] = "2001:db8::".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let b = Block::v6(a32, 32);
        assert_eq!(b.log2, 16);
        // Every /48 of the /32 lies in the /32's block, each on its own bit.
        let mut seen = std::collections::HashSet::new();
        for i in 0..65_536u32 {
            let mut x = a32;
            x[4..6].copy_from_slice(&(i as u16).to_be_bytes());
            let one = Block::v6(x, 48);
            assert!(b.contains(one), "/48 {i}");
            assert!(seen.insert(one.start));
        }
        assert_eq!(Block::v6(a32, 16), Block { start: HINT_BITS, log2: 24 });
    }

    #[test]
    fn long_bans_set_their_56s() {
        let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let mut h = Hint::long();
        // A /56 and a /64 in it: one bit, kept until the last is lifted.
        let b = Block::v6_long(a("2001:db8:bad:100::"), 56);
        assert_eq!(b, Block::v6_long(a("2001:db8:bad:1ff::"), 64));
        assert_eq!(b, Block { start: hint_bit_v6l((0x2001_0db8_0bad << 8) | 0x01), log2: 0 });
        assert_eq!(h.add(b).len(), 1);
        assert!(h.add(b).is_empty());
        assert!(h.remove(b).is_empty());
        assert!(h.bit(b.start));
        assert_eq!(h.remove(b), vec![(b.start / 64, 0)]);
        assert_eq!(h.footprint(), (0, 0));
        // The next /56 of the same /48 has its own bit: its clean hosts walk no trie.
        assert_ne!(Block::v6_long(a("2001:db8:bad:200::"), 56).start, b.start);
        // A /52 is 16 bits, a /49 128 (two whole words), aligned.
        let b52 = Block::v6_long(a("2001:db8:bad:1000::"), 52);
        assert_eq!((b52.log2, b52.start % 16), (4, 0));
        assert!(b52.contains(Block::v6_long(a("2001:db8:bad:1f00::"), 56)));
        assert!(!b52.contains(Block::v6_long(a("2001:db8:bad:2000::"), 56)));
        let w = h.add(Block::v6_long(a("2001:db8:bad:8000::"), 49));
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(|(_, v)| *v == u64::MAX));
        assert_eq!(h.chunks.len() * CHUNK, HINT_LONG_WORDS as usize, "the mirror is the long map's size");
    }

    #[test]
    fn long_v4_bans_set_their_28s() {
        let mut h = Hint::v4_long();
        // A /28 and a /30 in it: one bit, kept until the last is lifted.
        let b = Block::v4_long([203, 0, 115, 16], 28);
        assert_eq!(b, Block::v4_long([203, 0, 115, 28], 30));
        assert_eq!(b, Block { start: hint_bit_v4l(u32::from_be_bytes([203, 0, 115, 16]) >> 4), log2: 0 });
        assert_eq!(h.add(b).len(), 1);
        assert!(h.add(Block::v4_long([203, 0, 115, 28], 30)).is_empty());
        assert!(h.remove(b).is_empty());
        assert!(h.bit(b.start));
        assert_eq!(h.remove(b), vec![(b.start / 64, 0)]);
        assert_eq!(h.footprint(), (0, 0));
        // The other /28s of the /24 have bits of their own: their clean hosts walk no trie.
        for i in 0..16u8 {
            assert_eq!(Block::v4_long([203, 0, 115, 16 * i], 28).start == b.start, i == 1, "/28 {i}");
        }
        // A /25 is 8 bits, a /27 2, aligned; a /25 holds its /28s.
        let b25 = Block::v4_long([203, 0, 115, 128], 25);
        assert_eq!((b25.log2, b25.start % 8), (3, 0));
        assert!(b25.contains(Block::v4_long([203, 0, 115, 240], 28)));
        assert!(!b25.contains(Block::v4_long([203, 0, 115, 112], 28)));
        assert_eq!(Block::v4_long([203, 0, 115, 32], 27).log2, 1);
        assert_eq!(h.chunks.len() * CHUNK, HINT_V4L_WORDS as usize, "the mirror is the map's size");
    }

    #[test]
    fn counts_keep_shared_bits_and_clear_the_rest() {
        let mut h = Hint::default();
        let n24 = Block::v4([192, 0, 2, 0], 24);
        let n28 = Block::v4([192, 0, 2, 16], 28);
        let n16 = Block::v4([192, 0, 0, 0], 16);
        assert_eq!(h.add(n24), vec![(0xc00002 / 64, 1 << (0xc00002 % 64))]);
        assert!(h.add(n28).is_empty(), "same /24: same bit, nothing to write");
        assert!(h.remove(n24).is_empty(), "the /28 still needs it");
        assert!(h.bit(0xc00002));
        let w = h.add(n16);
        assert_eq!(w.len(), 4, "a /16 is 256 bits: 4 whole words");
        assert!(w.iter().all(|(_, v)| *v == u64::MAX));
        assert!(h.remove(n28).is_empty(), "inside the /16: stays set");
        assert_eq!(h.remove(n16).len(), 4);
        assert!(bits(&h).is_empty());
        assert_eq!(h.footprint(), (0, 0), "chunks freed once clear");
        // A /16 lifted with a /24 inside it keeps that one bit.
        h.add(n16);
        h.add(n24);
        let w = h.remove(n16);
        assert_eq!(bits(&h), vec![0xc00002]);
        assert_eq!(w.len(), 4);
        assert!(h.remove(Block::v4([198, 51, 100, 0], 24)).is_empty(), "never counted: nothing changes");
    }

    #[test]
    fn diff_is_what_to_write_over_the_old_state() {
        let empty = Hint::default();
        let mut a = Hint::default();
        a.add(Block::v4([192, 0, 2, 0], 24));
        assert_eq!(a.diff(&empty), vec![(0xc00002 / 64, 1 << (0xc00002 % 64))]);
        assert!(a.diff(&a).is_empty());
        let mut b = Hint::default();
        b.add(Block::v4([203, 0, 113, 0], 24));
        let d = b.diff(&a);
        assert_eq!(d, vec![(0xc00002 / 64, 0), (0xcb0071 / 64, 1 << (0xcb0071 % 64))]);
    }

    #[test]
    fn the_widest_bans_work_and_cost_chunks_not_entries() {
        let mut h = Hint::default();
        let inner = Block::v4([203, 0, 113, 0], 24);
        h.add(inner);
        let w = h.add(Block::v4([0; 4], 0));
        assert_eq!(w.len(), HINT_BITS as usize / 64, "every IPv4 word, each written once");
        assert_eq!(h.footprint().0, 2);
        assert!(!h.bit(HINT_BITS), "IPv6 untouched");
        let w = h.remove(Block::v4([0; 4], 0));
        assert_eq!(w.len(), HINT_BITS as usize / 64);
        assert_eq!(bits(&h), vec![0xcb0071]);
        let all6 = Block::v6([0; 16], 0);
        h.add(all6);
        assert!(h.bit(HINT_BITS) && h.bit(2 * HINT_BITS - 1));
        h.remove(all6);
        assert_eq!(bits(&h), vec![0xcb0071]);
    }
}
