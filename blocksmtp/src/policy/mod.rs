//! Policy: when a source is banned and for how long.
//!
//! Rules:
//! * A source (an IPv4 address, or an IPv6 prefix of `--v6-prefix` bits) making
//!   `--max-unknown` guesses within `--window` is banned for `--ban-time`.
//! * A repeat offence doubles the previous ban, up to `--ban-time-max`. An offence
//!   repeats while the previous one ended less than `--ban-time-max` ago; the history
//!   is kept that long, and can be saved and restored ([`PolicyState`]).
//! * While a source is banned its guesses are counted on the offence but make no new
//!   decision; after the ban the window starts empty.
//! * Guesses from whitelisted addresses are ignored; a source the whitelist overlaps
//!   (an IPv6 prefix holding a whitelisted host) is never banned.
//! * Guesses attributed late (sendmail's `from=` line) keep their own times; a guess
//!   older than the window relative to the source's newest guess does not count.
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    addr::SourceAddr,
    correlate::Attributed,
    detect::DetectArgs,
    parse::{GuessKind, Mta, time::format_rfc3339},
    whitelist::Whitelist,
};

pub mod history;

pub use history::{Offence, Offender, PolicyState, secs32};
use history::{Histories, secs};

const EVIDENCE: usize = 5;

/// The numbers the policy works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    pub max_unknown: u32,
    pub window: Duration,
    pub ban_time: Duration,
    pub ban_time_max: Duration,
    pub v6_prefix: u8,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        DetectArgs::default().policy_config()
    }
}

/// A decision to ban `source` for `duration` from now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BanDecision {
    pub source: SourceAddr,
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    /// Guesses within the window that triggered the ban.
    pub guesses: u32,
    #[serde(serialize_with = "ser_time")]
    pub first_seen: SystemTime,
    #[serde(serialize_with = "ser_time")]
    pub last_seen: SystemTime,
    /// The first few guessed recipients / probed names (attacker text, sanitised).
    pub evidence: Vec<String>,
    /// E.g. `7 unknown recipients in 2m (sendmail)`.
    pub reason: String,
    pub mta: Mta,
    /// 1 for a first offence, 2 for the second within the history, …
    pub offence: u32,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*t))
}

#[derive(Debug)]
struct Entry {
    at: SystemTime,
    kind: GuessKind,
    count: u32,
    sample: Option<String>,
}

#[derive(Debug)]
struct Tracker {
    entries: VecDeque<Entry>,
    in_window: u32,
    latest: SystemTime,
}

/// Counters of the policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyStats {
    /// Guesses counted against sources.
    pub guesses: u64,
    /// Of those, made while the source was banned.
    pub guesses_while_banned: u64,
    /// Guesses too old for the window when they were attributed.
    pub guesses_too_old: u64,
    pub bans: u64,
    /// Sources that reached the threshold but overlap the whitelist.
    pub bans_whitelisted: u64,
}

/// Sliding-window counting and escalating bans per source.
#[derive(Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    whitelist: Whitelist,
    sources: HashMap<SourceAddr, Tracker>,
    history: Histories,
    stats: PolicyStats,
    last_sweep: Option<SystemTime>,
}

impl Policy {
    pub fn new(cfg: PolicyConfig, whitelist: Whitelist) -> Self {
        Self { cfg, whitelist, sources: HashMap::new(), history: Histories::default(), stats: Default::default(), last_sweep: None }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    pub fn whitelist(&self) -> &Whitelist {
        &self.whitelist
    }

    pub fn stats(&self) -> PolicyStats {
        self.stats
    }

    /// Sources with guesses in their window. A banned source is not tracked: its ban
    /// lives in its offence history only (memory stays small with many bans).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// The end (unix seconds) of `source`'s current ban, if one runs at `now_s`.
    fn banned_until(&self, source: &SourceAddr, now_s: u64) -> Option<u64> {
        let until = self.history.get(source)?.last()?.until();
        (until > now_s).then_some(until)
    }

    /// Count one attributed guess; a ban decision when it crosses the threshold.
    /// The caller has already dropped whitelisted addresses.
    pub fn record(&mut self, g: &Attributed) -> Option<BanDecision> {
        let source = SourceAddr::from_ip(g.client, self.cfg.v6_prefix);
        let at = g.at;
        self.maybe_sweep(at);
        self.stats.guesses += u64::from(g.count);
        let window = self.cfg.window;
        if self.banned_until(&source, secs(at)).is_some() {
            self.stats.guesses_while_banned += u64::from(g.count);
            if let Some(o) = self.history.get_mut(&source).and_then(|h| h.last_mut()) {
                o.guesses = o.guesses.saturating_add(g.count);
                o.last_seen = o.last_seen.max(secs32(at));
            }
            return None;
        }
        let t = self.sources.entry(source).or_insert_with(|| Tracker { entries: VecDeque::new(), in_window: 0, latest: at });
        t.latest = t.latest.max(at);
        let cutoff = t.latest.checked_sub(window).unwrap_or(UNIX_EPOCH);
        if at < cutoff {
            self.stats.guesses_too_old += u64::from(g.count);
            return None;
        }
        t.entries.push_back(Entry { at, kind: g.kind, count: g.count, sample: g.sample.clone() });
        t.in_window = t.in_window.saturating_add(g.count);
        // Drop entries now outside the window (at most max_unknown are held).
        let mut removed = 0;
        t.entries.retain(|e| {
            let keep = e.at >= cutoff;
            if !keep {
                removed += e.count;
            }
            keep
        });
        t.in_window -= removed;
        if t.in_window < self.cfg.max_unknown {
            return None;
        }
        let mut entries: Vec<Entry> = std::mem::take(&mut t.entries).into();
        let guesses = t.in_window;
        // Decided: the window's guesses move into the offence; the tracker goes.
        self.sources.remove(&source);
        entries.sort_by_key(|e| e.at);
        let first_seen = entries.first().map_or(at, |e| e.at);
        let last_seen = entries.last().map_or(at, |e| e.at);
        if self.whitelist.overlaps(&source) {
            self.stats.bans_whitelisted += 1;
            return None;
        }
        let now_s = secs(at);
        let keep = self.cfg.ban_time_max.as_secs();
        let history = self.history.entry(&source);
        history.retain(|o| o.until().saturating_add(keep) >= now_s);
        // A repeat offence (the previous one ended less than ban_time_max ago) doubles
        // the previous ban.
        let (duration, number) = match history.last() {
            Some(prev) => (
                Duration::from_secs(u64::from(prev.duration) * 2).clamp(self.cfg.ban_time, self.cfg.ban_time_max),
                prev.number.max(1) + 1,
            ),
            None => (self.cfg.ban_time, 1),
        };
        let mut kinds = [0u16; 3];
        for e in &entries {
            let k = match e.kind {
                GuessKind::UnknownRecipient => 0,
                GuessKind::Vrfy => 1,
                GuessKind::Expn => 2,
            };
            kinds[k] = kinds[k].saturating_add(u16::try_from(e.count).unwrap_or(u16::MAX));
        }
        let offence = Offence {
            number,
            at: secs32(at),
            duration: u32::try_from(duration.as_secs()).unwrap_or(u32::MAX),
            guesses,
            first_seen: secs32(first_seen),
            last_seen: secs32(last_seen),
            mta: Some(g.mta),
            kinds,
            span: u32::try_from(last_seen.duration_since(first_seen).unwrap_or_default().as_secs()).unwrap_or(u32::MAX),
            lifted: false,
        };
        let reason = offence.reason();
        history.push(offence);
        self.stats.bans += 1;
        Some(BanDecision {
            source,
            duration,
            guesses,
            first_seen,
            last_seen,
            evidence: entries.iter().filter_map(|e| e.sample.clone()).take(EVIDENCE).collect(),
            reason,
            mta: g.mta,
            offence: number,
        })
    }

    fn maybe_sweep(&mut self, now: SystemTime) {
        match self.last_sweep {
            Some(t) if now.duration_since(t).map_or(true, |d| d < Duration::from_secs(60)) => {}
            _ => self.sweep(now),
        }
    }

    /// Forget sources with nothing in their window and no active ban, and offences
    /// older than `ban_time_max` past their end.
    pub fn sweep(&mut self, now: SystemTime) {
        self.last_sweep = Some(now);
        let window = self.cfg.window;
        self.sources.retain(|_, t| t.in_window > 0 && t.latest.checked_add(window).is_some_and(|end| end > now));
        let now_s = secs(now);
        let keep = self.cfg.ban_time_max.as_secs();
        self.history.retain(|h| {
            h.retain(|o| o.until().saturating_add(keep) >= now_s);
            !h.is_empty()
        });
    }

    /// Whether `source` is under a ban decided by this policy at `now`.
    pub fn is_banned(&self, source: &SourceAddr, now: SystemTime) -> bool {
        self.banned_until(source, secs(now)).is_some()
    }

    /// End `source`'s current ban early (an administrator's unban); its history stays,
    /// so a new offence still counts as a repeat.
    pub fn lift(&mut self, source: &SourceAddr) -> bool {
        let now_s = secs(SystemTime::now());
        match self.history.get_mut(source).and_then(|h| h.last_mut()) {
            Some(o) if o.until() > now_s => {
                o.lifted = true;
                true
            }
            _ => false,
        }
    }

    /// The offence behind `source`'s current ban, if it is banned at `now`.
    pub fn current_offence(&self, source: &SourceAddr, now: SystemTime) -> Option<&Offence> {
        self.history.get(source)?.last().filter(|o| o.until() > secs(now))
    }

    /// The offences on record for `source`, oldest first.
    pub fn offences(&self, source: &SourceAddr) -> &[Offence] {
        self.history.get(source).map_or(&[], |h| h.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn guess(ip: &str, at: SystemTime) -> Attributed {
        Attributed {
            client: ip.parse::<IpAddr>().unwrap(),
            kind: GuessKind::UnknownRecipient,
            mta: Mta::Postfix,
            at,
            count: 1,
            sample: Some(format!("<g{}@example.com>", secs(at) % 1000)),
        }
    }

    fn policy(max: u32, window: u64) -> Policy {
        let cfg = PolicyConfig { max_unknown: max, window: Duration::from_secs(window), ..PolicyConfig::default() };
        Policy::new(cfg, Whitelist::new())
    }

    #[test]
    fn threshold_within_window() {
        let mut p = policy(5, 600);
        for i in 0..4 {
            assert!(p.record(&guess("192.0.2.66", t(i * 30))).is_none());
        }
        let b = p.record(&guess("192.0.2.66", t(120))).expect("fifth guess bans");
        assert_eq!(b.source.to_string(), "192.0.2.66");
        assert_eq!((b.guesses, b.duration, b.offence), (5, Duration::from_secs(3600), 1));
        assert_eq!((b.first_seen, b.last_seen), (t(0), t(120)));
        assert_eq!(b.reason, "5 unknown recipients in 2m (postfix)");
        assert_eq!(b.evidence.len(), 5);
        assert_eq!(b.evidence[0], "<g0@example.com>");
        // Banned: more guesses are counted but decide nothing.
        for i in 0..20 {
            assert!(p.record(&guess("192.0.2.66", t(130 + i))).is_none());
        }
        assert_eq!(p.offences(&b.source)[0].guesses, 25);
        assert_eq!(p.stats().guesses_while_banned, 20);
    }

    #[test]
    fn slow_guesser_is_not_banned() {
        let mut p = policy(5, 600);
        for i in 0..50 {
            assert!(p.record(&guess("192.0.2.70", t(i * 200))).is_none(), "guess {i}");
        }
    }

    #[test]
    fn late_attributed_old_guesses() {
        let mut p = policy(3, 600);
        assert!(p.record(&guess("192.0.2.66", t(1000))).is_none());
        // Held guesses arrive with their earlier times; one is older than the window.
        assert!(p.record(&guess("192.0.2.66", t(100))).is_none());
        assert_eq!(p.stats().guesses_too_old, 1);
        assert!(p.record(&guess("192.0.2.66", t(900))).is_none());
        let b = p.record(&guess("192.0.2.66", t(1001))).unwrap();
        assert_eq!((b.first_seen, b.last_seen, b.guesses), (t(900), t(1001), 3));
    }

    #[test]
    fn escalation_doubles_up_to_max() {
        let cfg = PolicyConfig {
            max_unknown: 2,
            window: Duration::from_secs(600),
            ban_time: Duration::from_secs(3600),
            ban_time_max: Duration::from_secs(3 * 3600),
            v6_prefix: 64,
        };
        let mut p = Policy::new(cfg, Whitelist::new());
        let mut now = 0;
        let mut durations = Vec::new();
        for _ in 0..4 {
            p.record(&guess("192.0.2.66", t(now)));
            let b = p.record(&guess("192.0.2.66", t(now + 1))).unwrap();
            durations.push((b.duration.as_secs() / 3600, b.offence));
            now += b.duration.as_secs() + 10;
        }
        assert_eq!(durations, vec![(1, 1), (2, 2), (3, 3), (3, 4)]);
        // Long after the history's retention, a new offence is a first offence again.
        now += 7 * 86_400;
        p.record(&guess("192.0.2.66", t(now)));
        let b = p.record(&guess("192.0.2.66", t(now + 1))).unwrap();
        assert_eq!((b.duration.as_secs(), b.offence), (3600, 1));
    }

    #[test]
    fn ipv6_counts_per_prefix_and_whitelist_overlap_blocks() {
        let mut p = policy(4, 600);
        assert!(p.record(&guess("2001:db8::1", t(0))).is_none());
        assert!(p.record(&guess("2001:db8::2", t(1))).is_none());
        assert!(p.record(&guess("2001:db8::3:4", t(2))).is_none());
        let b = p.record(&guess("2001:db8::ffff", t(3))).unwrap();
        assert_eq!(b.source.to_string(), "2001:db8::/64");

        let wl = Whitelist::from_nets(["2001:db8:1::25/128".parse().unwrap()]);
        let mut p = Policy::new(PolicyConfig { max_unknown: 2, ..PolicyConfig::default() }, wl);
        assert!(p.record(&guess("2001:db8:1::66", t(0))).is_none());
        assert!(p.record(&guess("2001:db8:1::67", t(1))).is_none());
        assert_eq!(p.stats().bans_whitelisted, 1);
    }

    #[test]
    fn reason_mixes_kinds() {
        let mut p = policy(4, 600);
        let mut g = guess("192.0.2.66", t(0));
        g.kind = GuessKind::Vrfy;
        p.record(&g);
        g.kind = GuessKind::Expn;
        g.count = 2;
        g.at = t(45);
        p.record(&g);
        let b = p.record(&guess("192.0.2.66", t(45))).unwrap();
        assert_eq!(b.reason, "1 unknown recipient, 1 VRFY probe, 2 EXPN probes in 45s (postfix)");
    }

    #[test]
    fn state_round_trips_and_keeps_escalating() {
        let mut p = policy(2, 600);
        p.record(&guess("192.0.2.66", t(0)));
        let b = p.record(&guess("192.0.2.66", t(1))).unwrap();
        let json = p.save_json();
        assert!(json.contains("\"192.0.2.66\""), "{json}");

        // A restarted daemon: still banned, then a second offence doubles.
        let mut q = policy(2, 600);
        q.load_json(&json, t(100)).unwrap();
        assert!(q.is_banned(&b.source, t(100)));
        assert!(q.record(&guess("192.0.2.66", t(200))).is_none());
        let after = 3600 + 100;
        q.record(&guess("192.0.2.66", t(after)));
        let b2 = q.record(&guess("192.0.2.66", t(after + 1))).unwrap();
        assert_eq!((b2.offence, b2.duration.as_secs()), (2, 7200));
        assert_eq!(q.state().offenders[0].offences.len(), 2);
        assert!(q.load_json("{\"version\":1,\"offenders\":[{\"source\":\"nope\",\"offences\":[]}]}", t(0)).is_err());
    }
}

