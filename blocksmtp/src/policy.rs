//! Policy: when a source is banned and for how long — and [`Detector`], the engine
//! that runs parse → correlate → policy over log lines for the daemon and for
//! `blocksmtp replay`.
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
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    addr::SourceAddr,
    correlate::{Attributed, Correlator, CorrelatorLimits, CorrelatorStats, LiveAttribution},
    duration::{HumanDuration, format_duration},
    parse::{Event, GuessKind, MailerFilter, Mta, Parsed, TimeResolver, time::format_rfc3339, with_parsed},
    whitelist::{Whitelist, WhitelistError},
};

/// The detection and policy settings, shared by `blocksmtp run` (flattened) and
/// `blocksmtp replay`, and read from the daemon's TOML config (same names, `_` for
/// `-`; durations as `"10m"` or seconds).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectArgs {
    /// Ban a source after this many guesses (unknown recipients, VRFY/EXPN probes)
    /// within --window.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unknown: u32,
    /// The sliding window guesses are counted in (30s, 10m, 1h, 7d, 1h30m; a bare
    /// number is seconds).
    #[arg(long, value_name = "DUR", default_value = "10m")]
    pub window: HumanDuration,
    /// How long a first offence is banned.
    #[arg(long, value_name = "DUR", default_value = "1h")]
    pub ban_time: HumanDuration,
    /// Repeat offences double the ban time up to this; offence history is kept this
    /// long.
    #[arg(long, value_name = "DUR", default_value = "7d")]
    pub ban_time_max: HumanDuration,
    /// IPv6 sources are counted and banned per prefix of this many bits.
    #[arg(long, value_name = "BITS", default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=128))]
    pub v6_prefix: u8,
    /// Never ban these: one address, CIDR prefix or address/netmask per line, `#`
    /// comments. Loopback is always whitelisted.
    #[arg(long, value_name = "FILE")]
    pub white_list: Option<PathBuf>,
    /// Only lines with this syslog tag count (repeatable; `postfix` also takes
    /// `postfix/smtpd` etc.). Default: sm-mta, sendmail, postfix/*, exim.
    #[arg(long = "mailer-syslog-name", value_name = "TAG")]
    pub mailer_syslog_name: Vec<String>,
    /// Only lines logged by this host count (for central log servers).
    #[arg(long, value_name = "NAME")]
    pub mailer_syslog_host: Option<String>,
}

impl Default for DetectArgs {
    fn default() -> Self {
        Self {
            max_unknown: 5,
            window: HumanDuration::from_secs(600),
            ban_time: HumanDuration::from_secs(3600),
            ban_time_max: HumanDuration::from_secs(7 * 86_400),
            v6_prefix: 64,
            white_list: None,
            mailer_syslog_name: Vec::new(),
            mailer_syslog_host: None,
        }
    }
}

/// Settings that cannot work together, or a whitelist that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("--max-unknown must be at least 1")]
    MaxUnknown,
    #[error("--v6-prefix must be between 1 and 128, not {0}")]
    V6Prefix(u8),
    #[error("--window must be longer than 0s")]
    Window,
    #[error("--ban-time must be longer than 0s")]
    BanTime,
    #[error("--ban-time-max ({max}) is shorter than --ban-time ({ban})")]
    BanTimeMax { ban: HumanDuration, max: HumanDuration },
    #[error(transparent)]
    Whitelist(#[from] WhitelistError),
}

impl DetectArgs {
    /// Check values clap cannot check alone (and those from a config file).
    pub fn validate(&self) -> Result<(), DetectError> {
        if self.max_unknown == 0 {
            return Err(DetectError::MaxUnknown);
        }
        if !(1..=128).contains(&self.v6_prefix) {
            return Err(DetectError::V6Prefix(self.v6_prefix));
        }
        if self.window.0.is_zero() {
            return Err(DetectError::Window);
        }
        if self.ban_time.0.is_zero() {
            return Err(DetectError::BanTime);
        }
        if self.ban_time_max < self.ban_time {
            return Err(DetectError::BanTimeMax { ban: self.ban_time, max: self.ban_time_max });
        }
        Ok(())
    }

    /// The policy part of these settings.
    pub fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            max_unknown: self.max_unknown.max(1),
            window: self.window.0,
            ban_time: self.ban_time.0,
            ban_time_max: self.ban_time_max.0.max(self.ban_time.0),
            v6_prefix: self.v6_prefix,
        }
    }

    /// The line filter part of these settings.
    pub fn mailer_filter(&self) -> MailerFilter {
        MailerFilter::new(&self.mailer_syslog_name, self.mailer_syslog_host.as_deref())
    }
}

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

/// One past or current ban of a source (persisted).
/// One ban of a source, kept as long as `--ban-time-max` after its end (escalation).
/// Compact (36 bytes): a mail server under attack keeps hundreds of thousands.
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
}

impl Offence {
    /// When the ban ends (or ended): its decision plus its length, or at once if lifted.
    pub fn until(&self) -> u64 {
        let at = u64::from(self.at);
        if self.lifted { at } else { at + u64::from(self.duration) }
    }

    /// E.g. `7 unknown recipients in 2m (sendmail)`; the same text as the decision's.
    pub fn reason(&self) -> String {
        let plural = |n: u32, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut parts = Vec::new();
        for (n, one, many) in [
            (u32::from(self.kinds[0]), "unknown recipient", "unknown recipients"),
            (u32::from(self.kinds[1]), "VRFY probe", "VRFY probes"),
            (u32::from(self.kinds[2]), "EXPN probe", "EXPN probes"),
        ] {
            if n > 0 {
                parts.push(plural(n, one, many));
            }
        }
        if parts.is_empty() {
            parts.push(plural(self.guesses, "guess", "guesses"));
        }
        let mta = self.mta.map_or(String::new(), |m| format!(" ({m})"));
        format!("{} in {}{mta}", parts.join(", "), format_duration(Duration::from_secs(self.span.into())))
    }
}

/// The persisted policy state: every source's offence history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    pub version: u32,
    pub offenders: Vec<Offender>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offender {
    pub source: SourceAddr,
    pub offences: Vec<Offence>,
}

const STATE_VERSION: u32 = 1;
const EVIDENCE: usize = 5;

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Unix seconds as stored in an [`Offence`] (good until 2106).
pub fn secs32(t: SystemTime) -> u32 {
    u32::try_from(secs(t)).unwrap_or(u32::MAX)
}

/// A source's offences; nearly always one, kept inline (no allocation of its own).
type History = smallvec::SmallVec<[Offence; 1]>;

/// Offence histories by source, IPv4 keyed by a plain u32 (the common case, and the
/// bulk of the daemon's memory under a large attack: 52 bytes an offender).
#[derive(Debug, Default)]
struct Histories {
    v4: HashMap<u32, History>,
    v6: HashMap<(u128, u8), History>,
}

enum Key {
    V4(u32),
    V6((u128, u8)),
}

fn key(source: &SourceAddr) -> Key {
    match source.net() {
        ipnet::IpNet::V4(n) => Key::V4(u32::from(n.addr())),
        ipnet::IpNet::V6(n) => Key::V6((u128::from(n.network()), n.prefix_len())),
    }
}

impl Histories {
    fn get(&self, source: &SourceAddr) -> Option<&History> {
        match key(source) {
            Key::V4(k) => self.v4.get(&k),
            Key::V6(k) => self.v6.get(&k),
        }
    }

    fn get_mut(&mut self, source: &SourceAddr) -> Option<&mut History> {
        match key(source) {
            Key::V4(k) => self.v4.get_mut(&k),
            Key::V6(k) => self.v6.get_mut(&k),
        }
    }

    fn entry(&mut self, source: &SourceAddr) -> &mut History {
        match key(source) {
            Key::V4(k) => self.v4.entry(k).or_default(),
            Key::V6(k) => self.v6.entry(k).or_default(),
        }
    }

    fn insert(&mut self, source: &SourceAddr, h: History) {
        match key(source) {
            Key::V4(k) => self.v4.insert(k, h),
            Key::V6(k) => self.v6.insert(k, h),
        };
    }

    fn retain(&mut self, mut keep: impl FnMut(&mut History) -> bool) {
        self.v4.retain(|_, h| keep(h));
        self.v6.retain(|_, h| keep(h));
    }

    fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }

    /// Every (source, history), in address order.
    fn sorted(&self) -> Vec<(SourceAddr, &History)> {
        let mut v: Vec<(SourceAddr, &History)> = self
            .v4
            .iter()
            .map(|(k, h)| (SourceAddr::from_ip(std::net::Ipv4Addr::from(*k).into(), 128), h))
            .chain(self.v6.iter().map(|((a, len), h)| (SourceAddr::from_ip(std::net::Ipv6Addr::from(*a).into(), *len), h)))
            .collect();
        v.sort_unstable_by_key(|(s, _)| *s);
        v
    }
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

    /// The offence history, for saving.
    pub fn state(&self) -> PolicyState {
        let offenders: Vec<Offender> =
            self.history.sorted().into_iter().map(|(source, o)| Offender { source, offences: o.to_vec() }).collect();
        PolicyState { version: STATE_VERSION, offenders }
    }

    /// Load a saved history (replacing the current one). Offences older than the
    /// retention are dropped; a ban still running at `now` is known again, so the
    /// source's guesses make no new decision until it ends.
    pub fn restore(&mut self, state: PolicyState, now: SystemTime) {
        self.history.clear();
        for o in state.offenders {
            self.history.insert(&o.source, History::from_vec(o.offences));
        }
        // A ban still running is known from its offence: no tracker needed.
        self.sweep(now);
    }

    /// Write the history as [`PolicyState`] JSON straight from memory: no copy of it is
    /// made, however many offenders there are.
    pub fn write_state<W: std::io::Write>(&self, w: W) -> serde_json::Result<()> {
        struct Offenders<'a>(Vec<(SourceAddr, &'a History)>);
        impl Serialize for Offenders<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                #[derive(Serialize)]
                struct O<'a> {
                    source: &'a SourceAddr,
                    offences: &'a [Offence],
                }
                s.collect_seq(self.0.iter().map(|(source, offences)| O { source, offences: offences.as_slice() }))
            }
        }
        #[derive(Serialize)]
        struct State<'a> {
            version: u32,
            offenders: Offenders<'a>,
        }
        serde_json::to_writer(w, &State { version: STATE_VERSION, offenders: Offenders(self.history.sorted()) })
    }

    /// The history as JSON.
    pub fn save_json(&self) -> String {
        serde_json::to_string_pretty(&self.state()).expect("plain data serialises")
    }

    /// Restore from [`Self::save_json`] output.
    pub fn load_json(&mut self, json: &str, now: SystemTime) -> Result<(), serde_json::Error> {
        let state: PolicyState = serde_json::from_str(json)?;
        self.restore(state, now);
        Ok(())
    }
}


/// Where [`Detector`] takes the time of a guess from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Clock {
    /// The `now` given to [`Detector::feed`] (live: the wall clock).
    #[default]
    Wall,
    /// The line's own timestamp (replay); `now` where a line has none.
    Log,
}

/// Per-line and per-stage counters, for metrics, `status` and replay's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LineStats {
    /// Lines fed.
    pub lines: u64,
    /// Lines of no known shape (garbage, binary junk, a journald entry without a
    /// message).
    pub skipped: u64,
    /// Well-formed lines of other programs or hosts.
    pub foreign: u64,
    /// Lines of the mail programs.
    pub mail: u64,
    /// Of those: unknown-recipient lines (with or without the address).
    pub unknown_recipient: u64,
    /// VRFY / EXPN probe lines.
    pub probe: u64,
    /// sendmail `Possible SMTP RCPT flood` lines.
    pub flood: u64,
    /// sendmail `possible SMTP attack: command=VRFY|EXPN` lines.
    pub probe_attack: u64,
    /// sendmail lines naming a session's client (`from=… relay=`, lost input …).
    pub session: u64,
    /// Guess lines whose client could not be read safely.
    pub unattributable: u64,
    /// Mail lines of no interest.
    pub other: u64,
    /// Guesses ignored because the client is whitelisted.
    pub whitelisted: u64,
    /// Guess lines (unknown recipients and probes) by MTA: sendmail, Postfix, Exim.
    pub guesses_by_mta: [u64; 3],
}

impl LineStats {
    /// `(mta, guess lines)` for each MTA.
    pub fn guesses_per_mta(&self) -> [(Mta, u64); 3] {
        [Mta::Sendmail, Mta::Postfix, Mta::Exim].map(|m| (m, self.guesses_by_mta[mta_index(m)]))
    }
}

const fn mta_index(m: Mta) -> usize {
    match m {
        Mta::Sendmail => 0,
        Mta::Postfix => 1,
        Mta::Exim => 2,
    }
}

/// Everything [`Detector::stats`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DetectorStats {
    pub lines: LineStats,
    pub correlator: CorrelatorStats,
    pub policy: PolicyStats,
}

/// The detection engine: parse → correlate → policy, one line at a time.
///
/// ```no_run
/// # use blocksmtp::policy::{Detector, DetectArgs};
/// let mut d = Detector::new(&DetectArgs::default()).unwrap();
/// for ban in d.feed(b"Nov 27 12:35:47 mx sm-mta[18868]: ...", std::time::SystemTime::now()) {
///     println!("ban {} for {:?}: {}", ban.source, ban.duration, ban.reason);
/// }
/// ```
///
/// Ordinary lines cost no allocation: framing and parsing borrow the line, and the
/// timestamp is only resolved for lines that matter.
pub struct Detector {
    filter: MailerFilter,
    resolver: TimeResolver,
    correlator: Correlator,
    policy: Policy,
    stats: LineStats,
    live: Option<Box<dyn LiveAttribution + Send>>,
    clock: Clock,
    last_log_time: Option<SystemTime>,
    scratch: Vec<Attributed>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("clock", &self.clock)
            .field("stats", &self.stats)
            .field("live_attribution", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// A detector for `args`, reading `--white-list` if given. Uses [`Clock::Wall`].
    pub fn new(args: &DetectArgs) -> Result<Self, DetectError> {
        args.validate()?;
        let whitelist = match &args.white_list {
            Some(p) => Whitelist::load(p)?,
            None => Whitelist::new(),
        };
        Ok(Self::with_whitelist(args, whitelist))
    }

    /// A detector with an already loaded whitelist (`args.white_list` is ignored).
    pub fn with_whitelist(args: &DetectArgs, whitelist: Whitelist) -> Self {
        Self {
            filter: args.mailer_filter(),
            resolver: TimeResolver::new(),
            correlator: Correlator::new(CorrelatorLimits::default()),
            policy: Policy::new(args.policy_config(), whitelist),
            stats: LineStats::default(),
            live: None,
            clock: Clock::Wall,
            last_log_time: None,
            scratch: Vec::new(),
        }
    }

    /// Attribute sendmail's address-less guesses at once through process titles.
    pub fn with_live_attribution(mut self, live: Box<dyn LiveAttribution + Send>) -> Self {
        self.live = Some(live);
        self
    }

    /// Choose where guess times come from (replay: [`Clock::Log`]).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Read one log line (with or without its newline). `now` is the wall clock: the
    /// time of guesses under [`Clock::Wall`], and the anchor for the year of BSD
    /// timestamps. Returns the bans this line triggers (usually none; an empty `Vec`
    /// does not allocate).
    pub fn feed(&mut self, line: &[u8], now: SystemTime) -> Vec<BanDecision> {
        self.stats.lines += 1;
        let mut bans = Vec::new();
        with_parsed(line, &self.filter, |p| match p {
            Parsed::Skipped => self.stats.skipped += 1,
            Parsed::Foreign => self.stats.foreign += 1,
            Parsed::Mail { frame, mta, event } => {
                self.stats.mail += 1;
                if matches!(event, Event::Guess { .. } | Event::PendingGuess { .. }) {
                    self.stats.guesses_by_mta[mta_index(mta)] += 1;
                }
                let counter = match &event {
                    Event::Other => {
                        self.stats.other += 1;
                        return;
                    }
                    Event::Guess { kind: GuessKind::UnknownRecipient, .. }
                    | Event::PendingGuess { kind: GuessKind::UnknownRecipient, .. } => &mut self.stats.unknown_recipient,
                    Event::Guess { .. } | Event::PendingGuess { .. } => &mut self.stats.probe,
                    Event::Session { .. } => &mut self.stats.session,
                    Event::Flood { .. } => &mut self.stats.flood,
                    Event::ProbeAttack { .. } => &mut self.stats.probe_attack,
                    Event::Unattributable { .. } => &mut self.stats.unattributable,
                };
                *counter += 1;
                if !self.correlator.wants(frame.host, frame.pid, &event) {
                    return;
                }
                let at = match self.clock {
                    Clock::Wall => now,
                    Clock::Log => {
                        let t = self.resolver.resolve(frame.time, now).or(self.last_log_time).unwrap_or(now);
                        self.last_log_time = Some(t);
                        t
                    }
                };
                self.scratch.clear();
                self.correlator.on_event(frame.host, frame.pid, mta, &event, at, self.live.as_deref(), &mut self.scratch);
                for g in &self.scratch {
                    if self.policy.whitelist().contains(&g.client) {
                        self.stats.whitelisted += u64::from(g.count);
                    } else if let Some(ban) = self.policy.record(g) {
                        bans.push(ban);
                    }
                }
            }
        });
        bans
    }

    /// The per-line counters alone (cheap: no copy).
    pub fn line_stats(&self) -> &LineStats {
        &self.stats
    }

    /// Counters so far.
    pub fn stats(&self) -> DetectorStats {
        DetectorStats { lines: self.stats, correlator: self.correlator.stats(), policy: self.policy.stats() }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn policy_mut(&mut self) -> &mut Policy {
        &mut self.policy
    }

    pub fn whitelist(&self) -> &Whitelist {
        self.policy.whitelist()
    }

    /// The offence history to persist (see [`Policy::state`]).
    pub fn save_state(&self) -> PolicyState {
        self.policy.state()
    }

    /// Restore a persisted offence history (see [`Policy::restore`]).
    pub fn restore_state(&mut self, state: PolicyState, now: SystemTime) {
        self.policy.restore(state, now);
    }

    /// Housekeeping for quiet periods (the daemon calls it every minute or so): drop
    /// idle sessions, empty windows and expired history.
    pub fn tick(&mut self, now: SystemTime) {
        self.correlator.sweep(now);
        self.policy.sweep(now);
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

    #[test]
    fn args_validate_and_deserialize() {
        let a: DetectArgs = serde_json::from_str(
            r#"{"max_unknown": 7, "window": "2m", "ban_time": 60, "mailer_syslog_name": ["sm-mta"], "white_list": "/etc/blocksmtp/wl"}"#,
        )
        .unwrap();
        assert_eq!(a.max_unknown, 7);
        assert_eq!(a.window.0, Duration::from_secs(120));
        assert_eq!(a.ban_time.0, Duration::from_secs(60));
        assert_eq!(a.ban_time_max, DetectArgs::default().ban_time_max);
        assert!(a.validate().is_ok());
        let bad = DetectArgs { ban_time_max: HumanDuration::from_secs(10), ..DetectArgs::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("--ban-time-max (10s)"));
        let bad = DetectArgs { window: HumanDuration::from_secs(0), ..DetectArgs::default() };
        assert!(bad.validate().is_err());
        assert!(serde_json::from_str::<DetectArgs>(r#"{"window": "ten minutes"}"#).is_err());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        detect: DetectArgs,
    }

    #[test]
    fn flags() {
        use clap::Parser;
        let c = Cli::try_parse_from([
            "x", "--max-unknown", "3", "--window", "1h30m", "--ban-time", "2h", "--ban-time-max", "14d",
            "--v6-prefix", "56", "--mailer-syslog-name", "sm-mta", "--mailer-syslog-name", "postfix",
            "--mailer-syslog-host", "mx1",
        ])
        .unwrap();
        assert_eq!(c.detect.max_unknown, 3);
        assert_eq!(c.detect.window.0.as_secs(), 5400);
        assert_eq!(c.detect.v6_prefix, 56);
        assert_eq!(c.detect.mailer_syslog_name, ["sm-mta", "postfix"]);
        let d = Cli::try_parse_from(["x"]).unwrap().detect;
        assert_eq!(d, DetectArgs::default());
        let e = Cli::try_parse_from(["x", "--window", "soon"]).err().unwrap().to_string();
        assert!(e.contains("\"soon\""), "{e}");
        assert!(Cli::try_parse_from(["x", "--max-unknown", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--v6-prefix", "129"]).is_err());
    }
}
