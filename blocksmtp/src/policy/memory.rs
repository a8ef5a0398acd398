//! Bounded memory for the evidence modules: a map with a size cap that forgets the
//! least recently touched entries first, and entries idle longer than a given age.
//! An attacker flooding it with sources only evicts old, quiet entries.
//!
//! The age is exact: an entry idle longer than it is never read (a touch starts it
//! afresh), whether or not a walk has removed it yet; the walks only bound memory.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A key for an address or a network: IPv4 as its IPv4-mapped IPv6 form, so the two
/// families never collide; networks are masked by the caller.
pub type Key = u128;

pub fn ip_key(ip: std::net::IpAddr) -> Key {
    match ip {
        std::net::IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

/// The key of the network of `v4_len` / `v6_len` bits holding `ip`.
pub fn net_key(ip: std::net::IpAddr, v4_len: u8, v6_len: u8) -> Key {
    let k = ip_key(ip);
    let len = if k >> 32 == 0xffff { 96 + u32::from(v4_len.min(32)) } else { u32::from(v6_len.min(128)) };
    if len == 0 { 0 } else { k & (u128::MAX << (128 - len)) }
}

/// The policy's maps: keyed by sources and networks an attacker chooses, so seeded at
/// random per process like std's SipHash, but several times cheaper per lookup (they
/// are touched on every guess).
pub type FastMap<K, V> = HashMap<K, V, foldhash::quality::RandomState>;

/// A short hash of text (names, domains), case-insensitive, for compact sets: FNV-1a of
/// the ASCII-lowercased bytes, no lowercased copy made. Stable across runs (replay and
/// daemon agree, and the state file keeps it); good enough for sets of a few.
pub fn hash32_lower(b: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for c in b {
        h ^= u32::from(c.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// A capped map of `V` with a last-touched time (unix seconds) per entry. In the state
/// file: a list of `[key, time, value]`.
#[derive(Clone, Debug)]
pub struct Bounded<V> {
    map: FastMap<Key, (V, u32)>,
    cap: usize,
    /// Entries idle longer than this (seconds) are gone.
    max_age: u32,
    /// No entry was touched before this (a lower bound): `expire` skips the walk then.
    min_touched: u32,
}

/// The entries decide (not the cap: a restored map is capped when adopted).
impl<V: PartialEq> PartialEq for Bounded<V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

/// Empty; uncapped until [`Bounded::adopt`]ed into a capped one.
impl<V> Default for Bounded<V> {
    fn default() -> Self {
        Self { map: FastMap::default(), cap: usize::MAX, max_age: u32::MAX, min_touched: u32::MAX }
    }
}

impl<V: Serialize> Serialize for Bounded<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.map.iter().map(|(k, (v, t))| (k, t, v)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Bounded<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<(Key, u32, V)>::deserialize(d)?;
        let min_touched = entries.iter().map(|&(_, t, _)| t).min().unwrap_or(u32::MAX);
        Ok(Self { map: entries.into_iter().map(|(k, t, v)| (k, (v, t))).collect(), cap: usize::MAX, max_age: u32::MAX, min_touched })
    }
}

impl<V: Default> Bounded<V> {
    /// At most `cap` entries, each forgotten once idle for `max_age` seconds.
    pub fn new(cap: usize, max_age: u32) -> Self {
        Self { map: FastMap::default(), cap: cap.max(8), max_age, min_touched: u32::MAX }
    }

    /// A new age (a reload); entries are judged by it from now on.
    pub fn set_max_age(&mut self, max_age: u32) {
        self.max_age = max_age;
    }

    /// Seconds an entry lasts idle.
    pub fn max_age(&self) -> u32 {
        self.max_age
    }

    /// Entries touched before this are gone at `now`.
    fn oldest(&self, now: u32) -> u32 {
        now.saturating_sub(self.max_age)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The entry of `k` at `now`, unless idle longer than the age.
    pub fn get(&self, k: &Key, now: u32) -> Option<&V> {
        self.map.get(k).filter(|(_, t)| *t >= self.oldest(now)).map(|(v, _)| v)
    }

    /// The entry of `k`, if any, without touching it.
    pub fn get_mut(&mut self, k: &Key) -> Option<&mut V> {
        self.map.get_mut(k).map(|(v, _)| v)
    }

    pub fn remove(&mut self, k: &Key) {
        self.map.remove(k);
    }

    /// The entry of `k`, created if missing (or afresh if idle longer than the age),
    /// marked as touched at `now`. At the cap, the least recently touched eighth is
    /// forgotten first (amortised O(1)).
    pub fn touch(&mut self, k: Key, now: u32) -> &mut V {
        if self.map.len() >= self.cap && !self.map.contains_key(&k) {
            self.evict();
        }
        let oldest = self.oldest(now);
        let e = self.map.entry(k).or_insert_with(|| (V::default(), now));
        if e.1 < oldest {
            e.0 = V::default();
        }
        e.1 = e.1.max(now);
        self.min_touched = self.min_touched.min(e.1);
        &mut e.0
    }

    fn evict(&mut self) {
        let mut times: Vec<u32> = self.map.values().map(|(_, t)| *t).collect();
        // Exactly the `nth` least recently touched go: all older than the nth time, then
        // as many of those touched at it as are needed (not whichever the table's order
        // meets first, which could keep the oldest for ever).
        let nth = (times.len() / 8).max(1);
        let (_, cut, _) = times.select_nth_unstable(nth - 1);
        let cut = *cut;
        let mut ties = nth - times.iter().filter(|&&t| t < cut).count();
        self.map.retain(|_, (_, t)| {
            if *t < cut {
                false
            } else if *t == cut && ties > 0 {
                ties -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Take over `from`'s entries (restored from the state file), keeping this map's cap:
    /// beyond it the least recently touched go.
    pub fn adopt(&mut self, from: Bounded<V>) {
        self.map = from.map;
        // Still a lower bound after evictions (they only remove entries).
        self.min_touched = from.min_touched;
        while self.map.len() > self.cap {
            self.evict();
        }
    }

    /// Remove entries idle longer than the age at `now` — once some entry is an eighth
    /// of the age past it (they are unread meanwhile: this bounds memory only).
    pub fn expire(&mut self, now: u32) {
        // Swept once a minute of log time: walking 80,000 senders each time was a seventh
        // of a harvest-heavy replay while nothing is old enough, and a third of a replay
        // of two days of clean mail once something is (every minute, one minute's worth).
        let oldest = self.oldest(now);
        if self.min_touched.saturating_add(self.max_age / 8) >= oldest {
            return;
        }
        let mut min = u32::MAX;
        self.map.retain(|_, (_, t)| {
            let keep = *t >= oldest;
            if keep {
                min = min.min(*t);
            }
            keep
        });
        self.min_touched = min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_caps() {
        let a = net_key("192.0.2.66".parse().unwrap(), 24, 48);
        assert_eq!(a, net_key("192.0.2.1".parse().unwrap(), 24, 48));
        assert_eq!(a, net_key("::ffff:192.0.2.9".parse().unwrap(), 24, 48));
        assert_ne!(a, net_key("192.0.3.1".parse().unwrap(), 24, 48));
        assert_eq!(net_key("2001:db8:bad:1::1".parse().unwrap(), 24, 48), net_key("2001:db8:bad:ff::2".parse().unwrap(), 24, 48));
        for age in [u32::MAX, 4] {
            let mut m: Bounded<u32> = Bounded::new(16, age);
            for i in 0..1000u32 {
                *m.touch(u128::from(i), i) += 1;
                assert!(m.len() <= 16);
            }
            // The newest survive eviction.
            assert!(m.get(&999, 999).is_some() && !m.map.contains_key(&0), "age {age}");
        }
        let mut m: Bounded<u32> = Bounded::new(16, 4);
        for i in 0..1000u32 {
            *m.touch(u128::from(i), i) += 1;
        }
        // Idle for longer than 4 s at 999: not read, and a touch starts afresh.
        assert!(m.get(&994, 999).is_none() && m.get(&995, 999) == Some(&1));
        *m.touch(990, 999) += 1;
        assert_eq!(m.get(&990, 999), Some(&1));
        m.expire(1003);
        assert_eq!(m.len(), 2, "walked once an entry is an eighth of the age past it");
    }
}
