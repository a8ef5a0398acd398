//! Evidence of a wordlist: recipient names (local parts) that several independent
//! harvesters guessed — sources of different networks, each with several distinct
//! unknown recipients and no valid mail, across domains. A new source trying such a
//! name is recognised after one or two guesses.
//!
//! What must not become dictionary evidence: a departed employee's address that many
//! real senders still write to. Those senders deliver valid mail (the MTA's accepted
//! lines) and try one unknown name each, so they never contribute.
use serde::{Deserialize, Serialize};

use super::memory::{Bounded, Key, hash32_lower};

/// Contributors and domains remembered per name (enough for any threshold we use).
const SLOTS: usize = 6;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct NameStat {
    /// Networks that guessed the name (folded keys), and domains it was tried at.
    nets: [u32; SLOTS],
    domains: [u32; SLOTS],
}

fn add_slot(slots: &mut [u32; SLOTS], v: u32) {
    if slots.contains(&v) {
        return;
    }
    if let Some(s) = slots.iter_mut().find(|s| **s == 0) {
        *s = v;
    }
}

fn filled(slots: &[u32; SLOTS]) -> usize {
    slots.iter().filter(|s| **s != 0).count()
}

/// A guessed recipient split for the dictionary: hashes of its lowercased local part
/// and domain (0 for a bare VRFY/EXPN name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "(u32, u32)", into = "(u32, u32)")]
pub(super) struct Name {
    pub local: u32,
    pub domain: u32,
}

impl From<(u32, u32)> for Name {
    fn from((local, domain): (u32, u32)) -> Self {
        Self { local, domain }
    }
}

impl From<Name> for (u32, u32) {
    fn from(n: Name) -> Self {
        (n.local, n.domain)
    }
}

impl Name {
    /// From a sanitised sample (`<John@Example.com>`, `john`); `None` when empty.
    pub fn of(sample: &str) -> Option<Self> {
        // Per guess: hashed lowercase without a lowercased copy.
        let s = sample.trim().trim_start_matches('<').trim_end_matches('>').trim();
        let (local, domain) = match s.rfind('@') {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (s, ""),
        };
        if local.is_empty() {
            return None;
        }
        let domain = if domain.is_empty() { 0 } else { hash32_lower(domain.as_bytes()) };
        Some(Self { local: hash32_lower(local.as_bytes()), domain })
    }

    /// The recipient as a whole (for counting distinct recipients).
    pub fn whole(&self) -> u32 {
        (self.local.rotate_left(7) ^ self.domain).max(1)
    }
}

#[derive(Debug)]
pub(super) struct Dictionary {
    pub names: Bounded<NameStat>,
    /// Independent networks a name needs.
    sources: usize,
}

impl Dictionary {
    /// At most `cap` names, each for `memory` seconds; `sources`: independent networks a name needs.
    pub fn new(cap: usize, sources: u32, memory: u32) -> Self {
        Self { names: Bounded::new(cap, memory), sources: sources.max(2) as usize }
    }

    pub fn set_memory(&mut self, memory: u32) {
        self.names.set_max_age(memory);
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// A harvester of network `net` guessed `name` at `now`.
    pub fn contribute(&mut self, name: Name, net: Key, now: u32) {
        let n = self.names.touch(u128::from(name.local), now);
        add_slot(&mut n.nets, ((net ^ (net >> 64)) as u32).max(1));
        if name.domain != 0 {
            add_slot(&mut n.domains, name.domain);
        }
    }

    /// Whether `name` is a harvest-dictionary name: guessed by enough independent
    /// networks, at two domains or more (or, on a one-domain host, by twice as many).
    pub fn contains(&self, name: Name, now: u32) -> bool {
        self.names.get(&u128::from(name.local), now).is_some_and(|n| {
            let nets = filled(&n.nets);
            nets >= self.sources && (filled(&n.domains) >= 2 || nets >= (2 * self.sources).min(SLOTS))
        })
    }

    pub fn expire(&mut self, now: u32) {
        self.names.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::of(s).unwrap()
    }

    #[test]
    fn names_parse() {
        assert_eq!(name("<John@Example.COM>"), name("john@example.com"));
        assert_ne!(name("john@a.example").whole(), name("john@b.example").whole());
        assert_eq!(name("john@a.example").local, name("JOHN").local);
        assert_eq!(name("john").domain, 0);
        assert!(Name::of("<>").is_none());
    }

    #[test]
    fn membership_table() {
        // (contributions as (network, recipient)) → is `john` in the dictionary (3 sources)?
        let cases: &[(&[(u128, &str)], bool)] = &[
            (&[(1, "john@a.example"), (2, "john@b.example")], false),
            (&[(1, "john@a.example"), (2, "john@b.example"), (3, "john@c.example")], true),
            // One network many times is one source.
            (&[(1, "john@a.example"), (1, "john@b.example"), (1, "john@c.example"), (1, "john@d.example")], false),
            // One domain: needs twice the sources.
            (&[(1, "john@a.example"), (2, "john@a.example"), (3, "john@a.example")], false),
            (&[(1, "john@a.example"), (2, "john@a.example"), (3, "john@a.example"), (4, "john@a.example"), (5, "john@a.example"), (6, "john@a.example")], true),
        ];
        for (contribs, want) in cases {
            let mut d = Dictionary::new(64, 3, 3600);
            for (net, r) in *contribs {
                d.contribute(name(r), *net << 64, 0);
            }
            assert_eq!(d.contains(name("john@z.example"), 3600), *want, "{contribs:?}");
            assert!(!d.contains(name("john@z.example"), 3601), "forgotten after its memory");
            assert!(!d.contains(name("mary@a.example"), 0));
        }
    }
}
