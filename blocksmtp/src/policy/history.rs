//! Offence history: every source's past and current bans (for escalation, reasons
//! and `list`), kept compact, and its persistence in the state file.
use std::{
    hash::Hash,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{
    Evidence, Policy,
    dictionary::NameStat,
    memory::{Bounded, FastMap},
    prefix::NetWindow,
    rounds::Suspect,
    surge::Surge,
};
use crate::{addr::SourceAddr, duration::format_duration, parse::Mta};

/// One ban of a source, kept as long as `--ban-time-max` after its end (escalation).
/// Compact (40 bytes): a mail server under attack keeps hundreds of thousands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offence {
    /// 1 for a first offence, n for the n-th in a row of repeat offences.
    #[serde(default)]
    pub number: u32,
    /// Unix seconds of the decision.
    pub at: u32,
    /// Ban length in seconds.
    pub duration: u32,
    /// Guesses that triggered it plus those made while banned.
    pub guesses: u32,
    /// Unix seconds of the first and last guess of this offence.
    pub first_seen: u32,
    pub last_seen: u32,
    /// Seconds from the first to the last of the guesses that made the ban.
    #[serde(default)]
    pub span: u32,
    /// Those guesses by kind: unknown recipients, VRFY, EXPN.
    #[serde(default)]
    pub kinds: [u16; 3],
    /// The MTA whose log proved it.
    #[serde(default)]
    pub mta: Option<Mta>,
    /// Lifted by an administrator before its end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lifted: bool,
    /// The rule that decided it (absent in the file: the per-address window).
    #[serde(default, skip_serializing_if = "Evidence::is_address")]
    pub evidence: Evidence,
    /// Distinct addresses behind a prefix ban; harvest-dictionary names behind a
    /// dictionary ban.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub addrs: u16,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

impl Offence {
    /// When the ban ends (or ended): its decision plus its length, or at once if lifted.
    pub fn until(&self) -> u64 {
        let at = u64::from(self.at);
        if self.lifted { at } else { at + u64::from(self.duration) }
    }

    /// E.g. `7 unknown recipients in 2m (sendmail)`; the same text as the decision's.
    pub fn reason(&self) -> String {
        self.reason_naming(None)
    }

    /// [`Self::reason`] naming the network of a prefix ban: `14 guesses from 9
    /// addresses of 192.0.2.0/24 in 12m (postfix)`.
    pub fn reason_for(&self, source: &SourceAddr) -> String {
        self.reason_naming(Some(source))
    }

    /// The reason, written into one string (a replay of a harvest makes thousands).
    fn reason_naming(&self, network: Option<&SourceAddr>) -> String {
        use std::fmt::Write;
        let plural = |out: &mut String, n: u32, one: &str, many: &str| {
            let _ = write!(out, "{n} {}", if n == 1 { one } else { many });
        };
        // The kinds of guesses: "3 unknown recipients, 2 VRFY probes", or the count.
        let kinds = |out: &mut String| {
            let mut any = false;
            for (n, one, many) in [
                (u32::from(self.kinds[0]), "unknown recipient", "unknown recipients"),
                (u32::from(self.kinds[1]), "VRFY probe", "VRFY probes"),
                (u32::from(self.kinds[2]), "EXPN probe", "EXPN probes"),
            ] {
                if n > 0 {
                    if any {
                        out.push_str(", ");
                    }
                    plural(out, n, one, many);
                    any = true;
                }
            }
            if !any {
                plural(out, self.guesses, "guess", "guesses");
            }
        };
        let mut out = String::with_capacity(96);
        let span = || format_duration(Duration::from_secs(self.span.into()));
        match self.evidence {
            Evidence::Address => {
                kinds(&mut out);
                let _ = write!(out, " in {}", span());
            }
            Evidence::Prefix => {
                plural(&mut out, self.guesses_at_decision(), "guess", "guesses");
                out.push_str(" from ");
                plural(&mut out, self.addrs.into(), "address", "addresses");
                match network {
                    Some(n) => {
                        let _ = write!(out, " of {n}");
                    }
                    None => out.push_str(" of its network"),
                }
                let _ = write!(out, " in {}", span());
            }
            Evidence::Dictionary => {
                plural(&mut out, self.addrs.into(), "guessed name", "guessed names");
                out.push_str(" from the harvest dictionary (");
                kinds(&mut out);
                out.push_str(", no valid mail)");
            }
            Evidence::Surge => {
                kinds(&mut out);
                out.push_str(" during a surge of unknown recipients, no valid mail");
            }
            Evidence::Returning => {
                kinds(&mut out);
                out.push_str(", back after an earlier ban");
            }
        }
        if let Some(m) = self.mta {
            let _ = write!(out, " ({m})");
        }
        out
    }

    /// Guesses of the decision itself (the kinds' sum; `guesses` grows while banned).
    fn guesses_at_decision(&self) -> u32 {
        let k: u32 = self.kinds.iter().map(|&n| u32::from(n)).sum();
        if k == 0 { self.guesses } else { k }
    }
}

/// The persisted policy state: every source's offence history and (since version 2)
/// the evidence beyond one address, so a restart neither forgets a harvest in progress
/// nor judges against a baseline of zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PolicyState {
    pub version: u32,
    pub offenders: Vec<Offender>,
    /// Absent in version 1 files: they load with no evidence memory.
    pub evidence: EvidenceState,
}

/// The evidence memories as they are (each entry with its last-touched time, so it is
/// forgotten when it would have been had the daemon run on).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvidenceState {
    /// The host's rate of unknown recipients and its baseline (`surge.rs`).
    #[serde(default)]
    surge: Surge,
    /// Per network, its recent guesses (`prefix.rs`).
    #[serde(default)]
    prefixes: Bounded<NetWindow>,
    /// The harvest dictionary (`dictionary.rs`).
    #[serde(default)]
    names: Bounded<NameStat>,
    /// Per source, its distinct unknown recipients across rounds (`rounds.rs`).
    #[serde(default)]
    suspects: Bounded<Suspect>,
    /// Addresses and networks that delivered valid mail (`surge.rs`).
    #[serde(default)]
    senders: Bounded<()>,
    #[serde(default)]
    sender_nets: Bounded<()>,
}

impl EvidenceState {
    /// Entries held (not counting the surge's counters).
    pub fn len(&self) -> usize {
        self.prefixes.len() + self.names.len() + self.suspects.len() + self.senders.len() + self.sender_nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.surge == Surge::default()
    }
}

/// The evidence memories borrowed for writing (same fields as [`EvidenceState`]).
#[derive(Serialize)]
struct EvidenceRef<'a> {
    surge: &'a Surge,
    prefixes: &'a Bounded<NetWindow>,
    names: &'a Bounded<NameStat>,
    suspects: &'a Bounded<Suspect>,
    senders: &'a Bounded<()>,
    sender_nets: &'a Bounded<()>,
}

/// [`PolicyState`] read into a history as it is parsed (`Policy::restore_from_reader`,
/// the one reader of the format): the number of offenders and the evidence. `version`
/// and `offenders` are required, `evidence` optional (version 1 has none), unknown
/// fields ignored.
struct StreamedState<'h>(&'h mut Histories);

impl<'de> serde::de::DeserializeSeed<'de> for StreamedState<'_> {
    type Value = (usize, EvidenceState);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StreamedState<'_> {
    type Value = (usize, EvidenceState);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("blocksmtp state")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let (mut version, mut offenders, mut evidence) = (None::<u32>, None, None);
        while let Some(key) = m.next_key::<std::borrow::Cow<'_, str>>()? {
            match &*key {
                "version" => version = Some(m.next_value()?),
                "offenders" => offenders = Some(m.next_value_seed(StreamedOffenders(&mut *self.0))?),
                "evidence" => evidence = Some(m.next_value()?),
                _ => {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        version.ok_or_else(|| A::Error::missing_field("version"))?;
        Ok((offenders.ok_or_else(|| A::Error::missing_field("offenders"))?, evidence.unwrap_or_default()))
    }
}

/// The `offenders` list, each put into the history as it is read.
struct StreamedOffenders<'h>(&'h mut Histories);

impl<'de> serde::de::DeserializeSeed<'de> for StreamedOffenders<'_> {
    type Value = usize;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StreamedOffenders<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of offenders")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(o) = seq.next_element::<Offender>()? {
            self.0.insert(&o.source, o.offences);
            n += 1;
        }
        Ok(n)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offender {
    pub source: SourceAddr,
    /// Inline for the one offence nearly every source has: reading a state file of
    /// 100,000 offenders made a small vector each (160 bytes: serde grows a vector to 4).
    pub offences: SmallVec<[Offence; 1]>,
}

/// 2: the evidence beyond one address is kept too. Version 1 files (offences only) load.
const STATE_VERSION: u32 = 2;
/// Versions this release reads.
const STATE_VERSIONS: std::ops::RangeInclusive<u32> = 1..=STATE_VERSION;

pub(super) fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Unix seconds as stored in an [`Offence`] (good until 2106).
pub fn secs32(t: SystemTime) -> u32 {
    super::clamp32(secs(t))
}

/// Offences of the sources of one kind of key. Nearly every source has one offence: it
/// sits inline in `one` (an IPv4 bucket is 44 bytes: the bulk of the daemon's memory
/// under a large attack); a repeat offender's history moves to `many`. A source is in
/// one of the two, never both.
#[derive(Debug)]
struct Table<K> {
    one: Sharded<K, Offence>,
    many: FastMap<K, Vec<Offence>>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Self { one: Sharded::default(), many: FastMap::default() }
    }
}

/// Parts a [`Sharded`] map is split into.
const SHARDS: usize = 16;

/// A map split by key into [`SHARDS`] parts, each growing on its own: a hash table
/// doubles by copying itself, and the copy beside the table was the daemon's peak
/// memory (2.5 MiB over its resident size after 100,000 offences); a part's copy is a
/// sixteenth of that.
#[derive(Debug)]
struct Sharded<K, V> {
    parts: [FastMap<K, V>; SHARDS],
}

impl<K, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Self { parts: std::array::from_fn(|_| FastMap::default()) }
    }
}

/// Which part a key is in: the top bits of a multiplicative hash (every bit of the key
/// counts, so networks, whose low bits are zero, spread too).
trait Spread {
    fn part(&self) -> usize;
}

impl Spread for u32 {
    fn part(&self) -> usize {
        (self.wrapping_mul(0x9e37_79b9) >> 28) as usize
    }
}

impl Spread for (u32, u8) {
    fn part(&self) -> usize {
        (self.0 ^ u32::from(self.1)).part()
    }
}

impl Spread for (u128, u8) {
    fn part(&self) -> usize {
        let folded = (self.0 >> 64) as u64 ^ self.0 as u64 ^ u64::from(self.1);
        (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize
    }
}

impl<K: Hash + Eq + Spread, V> Sharded<K, V> {
    fn get(&self, k: &K) -> Option<&V> {
        self.parts[k.part()].get(k)
    }

    fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.parts[k.part()].get_mut(k)
    }

    fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.parts[k.part()].insert(k, v)
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        self.parts[k.part()].remove(k)
    }

    fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for p in &mut self.parts {
            p.retain(&mut keep);
            // After a mass expiry hand the part back rather than carry it empty.
            if p.capacity() > 1024 && p.len() < p.capacity() / 4 {
                p.shrink_to_fit();
            }
        }
    }

    fn extend(&mut self, items: impl IntoIterator<Item = (K, V)>) {
        for (k, v) in items {
            self.insert(k, v);
        }
    }

    fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.parts.iter().flat_map(|p| p.iter())
    }

    fn keys(&self) -> impl Iterator<Item = &K> {
        self.parts.iter().flat_map(|p| p.keys())
    }
}

impl<K: Hash + Eq + Copy + Ord + Spread> Table<K> {
    fn get(&self, k: &K) -> Option<&[Offence]> {
        if let Some(o) = self.one.get(k) {
            return Some(std::slice::from_ref(o));
        }
        if self.many.is_empty() {
            return None;
        }
        self.many.get(k).map(Vec::as_slice)
    }

    fn get_mut(&mut self, k: &K) -> Option<&mut [Offence]> {
        if let Some(o) = self.one.get_mut(k) {
            return Some(std::slice::from_mut(o));
        }
        self.many.get_mut(k).map(Vec::as_mut_slice)
    }

    fn push(&mut self, k: K, o: Offence) {
        if let Some(v) = self.many.get_mut(&k) {
            v.push(o);
        } else if let Some(prev) = self.one.remove(&k) {
            self.many.insert(k, vec![prev, o]);
        } else {
            self.one.insert(k, o);
        }
    }

    fn set(&mut self, k: K, mut offences: SmallVec<[Offence; 1]>) {
        self.one.remove(&k);
        self.many.remove(&k);
        match offences.len() {
            0 => {}
            1 => {
                self.one.insert(k, offences.pop().expect("one"));
            }
            _ => {
                self.many.insert(k, offences.into_vec());
            }
        }
    }

    /// Keep the offences `keep` says to, of every source (`only`: of that one).
    fn retain(&mut self, only: Option<&K>, mut keep: impl FnMut(&Offence) -> bool) {
        let mut back = Vec::new();
        let mut prune = |k: &K, v: &mut Vec<Offence>| {
            v.retain(|o| keep(o));
            match v.len() {
                0 => false,
                1 => {
                    back.push((*k, v.pop().expect("one")));
                    false
                }
                _ => true,
            }
        };
        match only {
            Some(k) => {
                if let Some(v) = self.many.get_mut(k)
                    && !prune(k, v)
                {
                    self.many.remove(k);
                }
                if self.one.get(k).is_some_and(|o| !keep(o)) {
                    self.one.remove(k);
                }
            }
            None => {
                self.many.retain(|k, v| prune(k, v));
                self.one.retain(|_, o| keep(o));
            }
        }
        self.one.extend(back);
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    fn len(&self) -> usize {
        self.one.len() + self.many.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &[Offence])> {
        self.one.iter().map(|(k, o)| (k, std::slice::from_ref(o))).chain(self.many.iter().map(|(k, v)| (k, v.as_slice())))
    }

    /// The keys in order (4 bytes an IPv4 source: the state file is written from it).
    fn sorted_keys(&self) -> Vec<K> {
        let mut v: Vec<K> = self.one.keys().chain(self.many.keys()).copied().collect();
        v.sort_unstable();
        v
    }
}

/// Offence histories by source, IPv4 addresses keyed by a plain u32 (the common case);
/// IPv6 prefixes and IPv4 networks (prefix bans) by network and length.
#[derive(Debug, Default)]
pub(super) struct Histories {
    v4: Table<u32>,
    v6: Table<(u128, u8)>,
    v4net: Table<(u32, u8)>,
}

enum Key {
    V4(u32),
    V6((u128, u8)),
    V4Net((u32, u8)),
}

fn key(source: &SourceAddr) -> Key {
    match source.net() {
        ipnet::IpNet::V4(n) if n.prefix_len() == 32 => Key::V4(u32::from(n.addr())),
        ipnet::IpNet::V4(n) => Key::V4Net((u32::from(n.network()), n.prefix_len())),
        ipnet::IpNet::V6(n) => Key::V6((u128::from(n.network()), n.prefix_len())),
    }
}

fn v4_source(k: u32) -> SourceAddr {
    SourceAddr::from_ip(std::net::Ipv4Addr::from(k).into(), 128)
}

fn v6_source(&(a, len): &(u128, u8)) -> SourceAddr {
    SourceAddr::from_ip(std::net::Ipv6Addr::from(a).into(), len)
}

fn v4net_source(&(a, len): &(u32, u8)) -> SourceAddr {
    SourceAddr::prefix_of(std::net::Ipv4Addr::from(a).into(), len, 128)
}

impl Histories {
    pub(super) fn get(&self, source: &SourceAddr) -> Option<&[Offence]> {
        match key(source) {
            Key::V4(k) => self.v4.get(&k),
            Key::V6(k) => self.v6.get(&k),
            Key::V4Net(k) => self.v4net.get(&k),
        }
    }

    pub(super) fn get_mut(&mut self, source: &SourceAddr) -> Option<&mut [Offence]> {
        match key(source) {
            Key::V4(k) => self.v4.get_mut(&k),
            Key::V6(k) => self.v6.get_mut(&k),
            Key::V4Net(k) => self.v4net.get_mut(&k),
        }
    }

    /// Append an offence to `source`'s history.
    pub(super) fn push(&mut self, source: &SourceAddr, o: Offence) {
        match key(source) {
            Key::V4(k) => self.v4.push(k, o),
            Key::V6(k) => self.v6.push(k, o),
            Key::V4Net(k) => self.v4net.push(k, o),
        }
    }

    pub(super) fn insert(&mut self, source: &SourceAddr, h: SmallVec<[Offence; 1]>) {
        match key(source) {
            Key::V4(k) => self.v4.set(k, h),
            Key::V6(k) => self.v6.set(k, h),
            Key::V4Net(k) => self.v4net.set(k, h),
        }
    }

    /// Keep the offences `keep` says to, of every source.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Offence) -> bool) {
        self.v4.retain(None, &mut keep);
        self.v6.retain(None, &mut keep);
        self.v4net.retain(None, &mut keep);
    }

    /// Keep the offences `keep` says to, of `source` only.
    pub(super) fn retain_of(&mut self, source: &SourceAddr, keep: impl FnMut(&Offence) -> bool) {
        match key(source) {
            Key::V4(k) => self.v4.retain(Some(&k), keep),
            Key::V6(k) => self.v6.retain(Some(&k), keep),
            Key::V4Net(k) => self.v4net.retain(Some(&k), keep),
        }
    }

    pub(super) fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
        self.v4net.clear();
    }

    pub(super) fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.v4net.len()
    }

    /// Every (source, history), in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (SourceAddr, &[Offence])> {
        self.v4
            .iter()
            .map(|(k, h)| (v4_source(*k), h))
            .chain(self.v6.iter().map(|(k, h)| (v6_source(k), h)))
            .chain(self.v4net.iter().map(|(k, h)| (v4net_source(k), h)))
    }

    /// Every (source, history), by kind of source (IPv4 addresses, IPv4 networks, IPv6)
    /// and in address order within each, made while iterating: only the sorted keys
    /// are held.
    pub(super) fn for_each_sorted<E>(&self, mut f: impl FnMut(SourceAddr, &[Offence]) -> Result<(), E>) -> Result<(), E> {
        for k in self.v4.sorted_keys() {
            f(v4_source(k), self.v4.get(&k).expect("key of the table"))?;
        }
        for k in self.v4net.sorted_keys() {
            f(v4net_source(&k), self.v4net.get(&k).expect("key of the table"))?;
        }
        for k in self.v6.sorted_keys() {
            f(v6_source(&k), self.v6.get(&k).expect("key of the table"))?;
        }
        Ok(())
    }
}

impl Policy {
    /// The offence history, for saving.
    pub fn state(&self) -> PolicyState {
        let mut offenders: Vec<Offender> = Vec::with_capacity(self.history.len());
        let _ = self.history.for_each_sorted(|source, o| -> Result<(), ()> {
            offenders.push(Offender { source, offences: o.iter().cloned().collect() });
            Ok(())
        });
        let evidence = EvidenceState {
            surge: self.surge.clone(),
            prefixes: self.prefixes.nets.clone(),
            names: self.dictionary.names.clone(),
            suspects: self.suspects.map.clone(),
            senders: self.reputation.addrs.clone(),
            sender_nets: self.reputation.nets.clone(),
        };
        PolicyState { version: STATE_VERSION, offenders, evidence }
    }

    fn evidence_ref(&self) -> EvidenceRef<'_> {
        EvidenceRef {
            surge: &self.surge,
            prefixes: &self.prefixes.nets,
            names: &self.dictionary.names,
            suspects: &self.suspects.map,
            senders: &self.reputation.addrs,
            sender_nets: &self.reputation.nets,
        }
    }

    /// Load a saved history (replacing the current one). Offences older than the
    /// retention are dropped; a ban still running at `now` is known again, so the
    /// source's guesses make no new decision until it ends.
    pub fn restore(&mut self, state: PolicyState, now: SystemTime) {
        self.history.clear();
        for o in state.offenders {
            self.history.insert(&o.source, o.offences);
        }
        self.restore_evidence(state.evidence, now);
    }

    /// [`Self::restore`] from [`PolicyState`] JSON read from `r`, each offender put into
    /// the history as it is read: no list of all of them is held (at 100,000 offenders
    /// that list, 7 MB, beside the tables being filled from it was the restart's peak).
    /// The number of offenders read; on an error the history is left empty.
    pub fn restore_from_reader(&mut self, r: impl std::io::Read, now: SystemTime) -> serde_json::Result<usize> {
        self.history.clear();
        let mut de = serde_json::Deserializer::from_reader(r);
        let read = serde::de::DeserializeSeed::deserialize(StreamedState(&mut self.history), &mut de).and_then(|s| {
            de.end()?;
            Ok(s)
        });
        match read {
            Ok((n, evidence)) => {
                self.restore_evidence(evidence, now);
                Ok(n)
            }
            Err(e) => {
                self.history.clear();
                Err(e)
            }
        }
    }

    fn restore_evidence(&mut self, e: EvidenceState, now: SystemTime) {
        self.surge = e.surge;
        self.prefixes.nets.adopt(e.prefixes);
        self.dictionary.names.adopt(e.names);
        self.suspects.map.adopt(e.suspects);
        self.reputation.addrs.adopt(e.senders);
        self.reputation.nets.adopt(e.sender_nets);
        // What is older than its memory goes now, as it would have had the daemon run on.
        self.last_sweep = None;
        self.history_due = 0;
        // A ban still running is known from its offence: no tracker needed.
        self.sweep(now);
    }

    /// Sources whose latest offence's ban runs at `now`, by the policy's own reckoning
    /// (the daemon checks them against the enforcer: the kernel is the truth).
    /// In no particular order; nothing is copied.
    pub fn current_bans(&self, now: SystemTime) -> impl Iterator<Item = SourceAddr> + '_ {
        let now_s = secs(now);
        self.history.iter().filter(move |(_, h)| h.last().is_some_and(|o| o.until() > now_s)).map(|(s, _)| s)
    }

    /// New settings and whitelist (a reload), keeping the windows, counters and history.
    pub fn reconfigure(&mut self, cfg: super::PolicyConfig, whitelist: crate::whitelist::Whitelist) {
        self.cfg = cfg;
        self.whitelist = whitelist;
        // A new retention: the next sweep walks the history.
        self.history_due = 0;
        let memory = super::secs_u32(cfg.evidence.memory);
        self.prefixes.set_window(super::secs_u32(cfg.evidence.prefix_window));
        self.dictionary.set_memory(memory);
        self.suspects.set_memory(memory);
        self.reputation.set_memory(memory);
    }

    /// Write the history as [`PolicyState`] JSON straight from memory: no copy of it is
    /// made, however many offenders there are.
    pub fn write_state<W: std::io::Write>(&self, w: W) -> serde_json::Result<()> {
        struct Offenders<'a>(&'a Histories);
        impl Serialize for Offenders<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq as _;
                #[derive(Serialize)]
                struct O<'a> {
                    source: &'a SourceAddr,
                    offences: &'a [Offence],
                }
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                self.0.for_each_sorted(|source, offences| seq.serialize_element(&O { source: &source, offences }))?;
                seq.end()
            }
        }
        #[derive(Serialize)]
        struct State<'a> {
            version: u32,
            offenders: Offenders<'a>,
            evidence: EvidenceRef<'a>,
        }
        serde_json::to_writer(w, &State { version: STATE_VERSION, offenders: Offenders(&self.history), evidence: self.evidence_ref() })
    }

    /// The history as JSON.
    pub fn save_json(&self) -> String {
        serde_json::to_string_pretty(&self.state()).expect("plain data serialises")
    }

    /// Restore from [`Self::save_json`] output.
    pub fn load_json(&mut self, json: &str, now: SystemTime) -> Result<(), serde_json::Error> {
        self.restore_from_reader(json.as_bytes(), now).map(|_| ())
    }
}

fn tmp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Read the state file into `policy` (its history replaced, see
/// [`Policy::restore_from_reader`]): the number of offenders restored, `None` when there
/// is no file yet (or it was corrupt: then the history is empty).
///
/// A temporary file left by a crash mid-write is removed (the state file itself is
/// intact: writes are atomic). A file that is not valid state is moved aside as
/// `<file>.corrupt-<unix time>` (nothing is lost) and the daemon starts without history;
/// a file of another version is refused, since running would overwrite it.
pub fn load_state(path: &Path, policy: &mut Policy, now: SystemTime) -> anyhow::Result<Option<usize>> {
    let tmp = tmp_path(path);
    if tmp.exists() {
        match std::fs::remove_file(&tmp) {
            Ok(()) => log::info!("state: removed {}, left by an interrupted write", tmp.display()),
            Err(e) => log::warn!("state: cannot remove stale {}: {e}", tmp.display()),
        }
    }
    // Read twice, streaming (the version, then the state): the file is never held whole
    // (18 MB at 100,000 offenders, on top of what it parses into).
    let open = || std::fs::File::open(path).map(|f| std::io::BufReader::with_capacity(64 * 1024, f));
    let reader = match open() {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading the state file {}", path.display()))),
    };
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let parsed = serde_json::from_reader::<_, Version>(reader).map_err(anyhow::Error::new).and_then(|v| {
        if !STATE_VERSIONS.contains(&v.version) {
            return Ok(Err(v.version));
        }
        let reader = open().with_context(|| format!("reading the state file {}", path.display()))?;
        Ok(Ok(policy.restore_from_reader(reader, now)?))
    });
    match parsed {
        Ok(Ok(n)) => Ok(Some(n)),
        Ok(Err(v)) => anyhow::bail!(
            "state file {} has version {v}, this blocksmtp reads versions 1 to {STATE_VERSION} (written by a \
             newer release?); refusing to overwrite it: move it away to start without the offence history",
            path.display()
        ),
        // A read that failed is no proof of a corrupt file: say so, move nothing.
        Err(e) if e.downcast_ref::<serde_json::Error>().is_some_and(serde_json::Error::is_io) || e.downcast_ref::<std::io::Error>().is_some() => {
            Err(e.context(format!("reading the state file {}", path.display())))
        }
        Err(e) => {
            let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            name.push(format!(".corrupt-{}", secs(SystemTime::now())));
            let aside = path.with_file_name(name);
            std::fs::rename(path, &aside).with_context(|| format!("moving the corrupt state file {} aside", path.display()))?;
            log::error!(
                "state file {} is not valid blocksmtp state ({e:#}); moved aside to {}; starting with no offence history",
                path.display(),
                aside.display()
            );
            Ok(None)
        }
    }
}

/// Write atomically: a crash mid-write leaves the previous state intact. Root-only: it
/// holds offenders' addresses and evidence.
pub fn write_state(path: &Path, policy: &Policy) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let tmp = tmp_path(path);
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    let mut w = std::io::BufWriter::new(f);
    policy.write_state(&mut w)?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    drop(f);
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sharded map is a map; and the keys an attack brings — one network's addresses,
    /// networks with zero low bits, IPv6 /64s — spread over every part.
    #[test]
    fn sharded_maps_spread_and_behave_as_one() {
        let mut m: Sharded<u32, u32> = Sharded::default();
        for i in 0..256u32 {
            m.insert(0xc000_0200 | i, i);
        }
        assert!(m.parts.iter().all(|p| !p.is_empty()), "one /24's addresses: {:?}", m.parts.iter().map(|p| p.len()).collect::<Vec<_>>());
        assert_eq!((m.len(), m.get(&0xc000_0242)), (256, Some(&0x42)));
        assert_eq!(m.remove(&0xc000_0242), Some(0x42));
        assert_eq!((m.len(), m.get(&0xc000_0242)), (255, None));
        m.retain(|_, v| *v % 2 == 0);
        assert_eq!((m.len(), m.iter().count(), m.keys().count()), (127, 127, 127));
        *m.get_mut(&0xc000_0200).unwrap() = 7;
        m.extend([(1, 1), (2, 2)]);
        assert_eq!((m.get(&0xc000_0200), m.len()), (Some(&7), 129));
        let nets: std::collections::HashSet<usize> = (0..256u32).map(|i| ((0xc600_0000 | (i << 8)), 24u8).part()).collect();
        let v6: std::collections::HashSet<usize> = (0..256u128).map(|i| ((0x2001_0db8u128 << 96) | (i << 64), 64u8).part()).collect();
        assert_eq!((nets.len(), v6.len()), (SHARDS, SHARDS));
    }

    fn offence(at: u32) -> Offence {
        Offence {
            number: 1,
            at,
            duration: 10,
            guesses: 1,
            first_seen: at,
            last_seen: at,
            span: 0,
            kinds: [1, 0, 0],
            mta: None,
            lifted: false,
            evidence: Evidence::Address,
            addrs: 0,
        }
    }

    /// Each rule's reason, word for word (the daemon logs them, replay prints them).
    #[test]
    fn reasons_name_the_rule_and_the_evidence() {
        let with = |evidence, kinds: [u16; 3], guesses, addrs, span, mta| Offence { evidence, kinds, guesses, addrs, span, mta, ..offence(0) };
        let net: SourceAddr = "192.0.2.0/24".parse().unwrap();
        let cases: &[(Offence, &str)] = &[
            (with(Evidence::Address, [7, 0, 0], 7, 0, 120, Some(Mta::Sendmail)), "7 unknown recipients in 2m (sendmail)"),
            (with(Evidence::Address, [1, 2, 1], 4, 0, 1, None), "1 unknown recipient, 2 VRFY probes, 1 EXPN probe in 1s"),
            (with(Evidence::Address, [0, 0, 0], 1, 0, 0, None), "1 guess in 0s"),
            (with(Evidence::Prefix, [14, 0, 0], 30, 9, 720, Some(Mta::Postfix)), "14 guesses from 9 addresses of its network in 12m (postfix)"),
            (with(Evidence::Prefix, [0, 0, 0], 1, 1, 0, None), "1 guess from 1 address of its network in 0s"),
            (with(Evidence::Dictionary, [2, 0, 0], 2, 2, 5, Some(Mta::Exim)), "2 guessed names from the harvest dictionary (2 unknown recipients, no valid mail) (exim)"),
            (with(Evidence::Surge, [0, 1, 0], 1, 0, 0, None), "1 VRFY probe during a surge of unknown recipients, no valid mail"),
            (with(Evidence::Returning, [3, 0, 0], 3, 0, 9, Some(Mta::Sendmail)), "3 unknown recipients, back after an earlier ban (sendmail)"),
        ];
        for (o, want) in cases {
            assert_eq!(o.reason(), *want);
        }
        assert_eq!(cases[3].0.reason_for(&net), "14 guesses from 9 addresses of 192.0.2.0/24 in 12m (postfix)");
        assert_eq!(cases[0].0.reason_for(&net), cases[0].1, "only a prefix ban names its network");
    }

    #[test]
    fn table_moves_between_one_and_many() {
        let mut t: Table<u32> = Table::default();
        t.push(7, offence(100));
        assert_eq!((t.one.len(), t.many.len()), (1, 0));
        t.push(7, offence(200));
        t.push(8, offence(300));
        assert_eq!((t.one.len(), t.many.len()), (1, 1), "a repeat offender moves to `many`");
        assert_eq!(t.get(&7).unwrap().iter().map(|o| o.at).collect::<Vec<_>>(), [100, 200]);
        t.get_mut(&7).unwrap().last_mut().unwrap().guesses = 5;
        assert_eq!(t.get(&7).unwrap()[1].guesses, 5);
        // The older offence expires: the source is back inline, once.
        t.retain(None, |o| o.at >= 150);
        assert_eq!((t.one.len(), t.many.len()), (2, 0));
        assert_eq!(t.get(&7).unwrap().len(), 1);
        t.retain(Some(&8), |_| false);
        assert!(t.get(&8).is_none() && t.get(&7).is_some());
        t.set(9, smallvec::smallvec![offence(1), offence(2), offence(3)]);
        assert_eq!(t.sorted_keys(), [7, 9]);
        assert_eq!(t.iter().map(|(_, h)| h.len()).sum::<usize>(), 4);
    }

    #[test]
    fn corrupt_file_is_moved_aside_unknown_version_refused_tmp_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(&p, "{\"version\":1,\"offenders\":[{\"source\":").unwrap();
        std::fs::write(dir.path().join("state.json.tmp"), "half").unwrap();
        let mut policy = Policy::new(super::super::PolicyConfig::default(), crate::whitelist::Whitelist::new());
        let now = SystemTime::now();
        assert!(load_state(&p, &mut policy, now).unwrap().is_none());
        let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("state.json.corrupt-"), "{names:?}");
        let kept = std::fs::read_to_string(dir.path().join(&names[0])).unwrap();
        assert!(kept.ends_with("\"source\":"), "moved aside unchanged");

        std::fs::write(&p, "{\"version\":999,\"offenders\":[]}").unwrap();
        let e = load_state(&p, &mut policy, now).unwrap_err().to_string();
        assert!(e.contains("version 999") && e.contains("refusing"), "{e}");
        assert!(p.exists(), "a newer file is left alone");

        // Corrupt after a valid offender: nothing of it is kept (not half a history).
        let one = r#"{"source":"192.0.2.66","offences":[{"number":1,"at":1800000000,"duration":3600,"guesses":5,"first_seen":1799999990,"last_seen":1800000000,"span":10,"kinds":[5,0,0],"mta":"sendmail"}]}"#;
        std::fs::write(&p, format!(r#"{{"version":2,"offenders":[{one},{{"source":"#)).unwrap();
        assert!(load_state(&p, &mut policy, now).unwrap().is_none());
        assert!(policy.offences(&"192.0.2.66".parse().unwrap()).is_empty(), "a corrupt file leaves no history");
        std::fs::write(&p, format!(r#"{{"version":2,"offenders":[{one}],"later":{{"x":[1]}}}}"#)).unwrap();
        assert_eq!(load_state(&p, &mut policy, now).unwrap(), Some(1), "unknown fields are ignored");
        assert_eq!(policy.offences(&"192.0.2.66".parse().unwrap()).len(), 1);
        std::fs::write(&p, r#"{"version":2}"#).unwrap();
        assert!(load_state(&p, &mut policy, now).unwrap().is_none(), "offenders are required");

        std::fs::write(&p, "{\"version\":1,\"offenders\":[]}").unwrap();
        assert_eq!(load_state(&p, &mut policy, now).unwrap(), Some(0));
        assert!(load_state(&dir.path().join("none.json"), &mut policy, now).unwrap().is_none());
    }
}
