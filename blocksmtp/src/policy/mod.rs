//! Policy: when a source is banned and for how long.
//!
//! Rules, each with its evidence module:
//! * [`address`]: a source (an IPv4 address, or an IPv6 prefix of `--v6-prefix` bits)
//!   making `--max-unknown` guesses within `--window` is banned for `--ban-time`.
//! * [`prefix`]: a network (`--prefix-v4`, `--prefix-v6` bits) whose sources together
//!   make `--prefix-guesses` guesses from `--prefix-addresses` distinct sources within
//!   `--prefix-window` is banned as a whole (twice the thresholds for a network some of
//!   whose addresses deliver valid mail).
//! * [`dictionary`]: a source without valid mail guessing names that independent
//!   harvesters guessed before is banned after `--strict-unknown` such guesses (one
//!   during a surge).
//! * [`surge`]: while unknown recipients arrive far above the host's own baseline,
//!   sources without valid mail (address and network) are banned after
//!   `--strict-unknown` distinct unknown recipients.
//! * [`rounds`]: a source banned before that comes back is judged as strictly.
//! * Bans on network, dictionary and surge evidence last `--campaign-ban-time`
//!   (harvests come back in rounds); a repeat offence doubles the previous ban, up to `--ban-time-max`.
//!   An offence repeats while the previous one ended less than `--ban-time-max` ago;
//!   the history is kept that long, and can be saved and restored ([`PolicyState`]).
//! * While a source (or a network holding it) is banned its guesses are counted on the
//!   offence but make no decision and feed no evidence (live, they never reach the
//!   log); after the ban the window starts empty.
//! * The whitelist is checked here, once: guesses from whitelisted addresses are
//!   ignored; a source or network the whitelist overlaps is never banned.
//! * Guesses attributed late (sendmail's `from=` line) keep their own times; a guess
//!   older than the window relative to the source's newest guess does not count.
//! * `--per-address-only` turns every rule but the first off (today's behaviour).
//!
//! Memory stays bounded: each evidence module holds a capped map that forgets the
//! least recently seen entries first, and entries idle longer than `--memory`.
use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    addr::SourceAddr,
    correlate::Attributed,
    detect::DetectArgs,
    parse::{Mta, time::format_rfc3339},
    whitelist::Whitelist,
};

mod address;
mod dictionary;
pub mod history;
mod memory;
mod prefix;
mod rounds;
mod surge;

use address::{Added, Tracker};
pub use history::{Offence, Offender, PolicyState, secs32};
use history::{Histories, secs};

const EVIDENCE: usize = 5;
/// Caps of the evidence memories (entries): about 5 MB at most all together (the
/// daemon's target is 20 MB at 100,000 bans).
const CAP_SUSPECTS: usize = 16_384;
const CAP_PREFIXES: usize = 8_192;
const CAP_NAMES: usize = 16_384;
const CAP_REPUTATION: usize = 65_536;

/// A setting in whole seconds, as the evidence memories count.
fn secs_u32(d: Duration) -> u32 {
    clamp32(d.as_secs())
}

/// Unix seconds (or a span) as the u32 the memories and offences hold (good until 2106).
fn clamp32(s: u64) -> u32 {
    u32::try_from(s).unwrap_or(u32::MAX)
}

/// Which rule decided a ban.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Evidence {
    /// The source's own guesses in the window.
    #[default]
    Address,
    /// Guesses from many addresses of one network.
    Prefix,
    /// Names of the harvest dictionary.
    Dictionary,
    /// Unknown recipients during a surge, from a source without valid mail.
    Surge,
    /// Back after an earlier ban.
    Returning,
}

impl Evidence {
    pub fn is_address(&self) -> bool {
        *self == Evidence::Address
    }

    pub fn name(self) -> &'static str {
        match self {
            Evidence::Address => "address",
            Evidence::Prefix => "prefix",
            Evidence::Dictionary => "dictionary",
            Evidence::Surge => "surge",
            Evidence::Returning => "returning",
        }
    }
}

/// Settings of the evidence beyond one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvidenceConfig {
    /// Off: per-address counting only.
    pub enabled: bool,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub prefix_window: Duration,
    pub prefix_addresses: u32,
    pub prefix_guesses: u32,
    /// Independent networks that make a name a harvest-dictionary name.
    pub dictionary_sources: u32,
    /// Distinct unknown recipients that ban a source without valid mail under the
    /// stricter rules (dictionary, surge, returning).
    pub strict_unknown: u32,
    /// A surge: this many times the baseline rate, and at least `surge_min` per window.
    pub surge_factor: u32,
    pub surge_min: u32,
    pub campaign_ban_time: Duration,
    /// How long quiet sources, names and senders of valid mail are remembered.
    pub memory: Duration,
}

/// The numbers the policy works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    pub max_unknown: u32,
    pub window: Duration,
    pub ban_time: Duration,
    pub ban_time_max: Duration,
    pub v6_prefix: u8,
    pub evidence: EvidenceConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        DetectArgs::default().policy_config()
    }
}

impl PolicyConfig {
    /// Today's rule alone: per-address counting.
    pub fn per_address_only(mut self) -> Self {
        self.evidence.enabled = false;
        self
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
    /// The rule that decided it.
    pub rule: Evidence,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*t))
}

/// Counters of the policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyStats {
    /// Guesses counted against sources.
    pub guesses: u64,
    /// Of those, made while the source (or its network) was banned.
    pub guesses_while_banned: u64,
    /// Guesses too old for the window when they were attributed.
    pub guesses_too_old: u64,
    /// Guesses from whitelisted addresses (not counted).
    pub guesses_whitelisted: u64,
    pub bans: u64,
    /// Sources that reached the threshold but overlap the whitelist.
    pub bans_whitelisted: u64,
    /// Bans by rule beyond the per-address window.
    pub bans_prefix: u64,
    pub bans_dictionary: u64,
    pub bans_surge: u64,
    pub bans_returning: u64,
    /// Networks that reached the prefix thresholds but overlap the whitelist.
    pub prefixes_whitelisted: u64,
    /// Surges of unknown recipients seen.
    pub surges: u64,
    /// Mail deliveries seen (evidence of real senders).
    pub deliveries: u64,
}

/// What one guess added to the evidence beyond its source.
#[derive(Debug, Default)]
struct Observed {
    prefix: Option<prefix::PrefixCount>,
    net: memory::Key,
    /// Neither the address nor its network delivered valid mail.
    no_mail: bool,
    network_good: bool,
    distinct: u32,
    dict_hits: u32,
    surge: bool,
}

/// Sliding-window counting and escalating bans per source, and the evidence beyond one
/// source.
#[derive(Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    whitelist: Whitelist,
    sources: memory::FastMap<SourceAddr, Tracker>,
    history: Histories,
    stats: PolicyStats,
    last_sweep: Option<SystemTime>,
    /// The last guess's time and its unix seconds: guesses come in runs of the same
    /// time, and the conversion (9 ns) was a thirtieth of a replay's CPU.
    secs_memo: (SystemTime, u64),
    /// No offence is past its retention before this (unix s): until then, and for
    /// 1/64 of the retention after, the sweep leaves the history unwalked. Reads of it
    /// check retention themselves, so this only bounds memory.
    history_due: u64,
    prefixes: prefix::Prefixes,
    dictionary: dictionary::Dictionary,
    surge: surge::Surge,
    reputation: surge::Reputation,
    suspects: rounds::Suspects,
}

impl Policy {
    pub fn new(cfg: PolicyConfig, whitelist: Whitelist) -> Self {
        let (memory, prefix_window) = (secs_u32(cfg.evidence.memory), secs_u32(cfg.evidence.prefix_window));
        Self {
            cfg,
            whitelist,
            sources: memory::FastMap::default(),
            history: Histories::default(),
            stats: Default::default(),
            last_sweep: None,
            secs_memo: (std::time::UNIX_EPOCH, 0),
            history_due: 0,
            prefixes: prefix::Prefixes::new(CAP_PREFIXES, prefix_window),
            dictionary: dictionary::Dictionary::new(CAP_NAMES, cfg.evidence.dictionary_sources, memory),
            surge: surge::Surge::default(),
            reputation: surge::Reputation::new(CAP_REPUTATION, memory),
            suspects: rounds::Suspects::new(CAP_SUSPECTS, memory),
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    pub fn whitelist(&self) -> &Whitelist {
        &self.whitelist
    }

    pub fn stats(&self) -> PolicyStats {
        PolicyStats { surges: self.surge.surges, ..self.stats }
    }

    /// Sources with guesses in their window. A banned source is not tracked: its ban
    /// lives in its offence history only (memory stays small with many bans).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Entries held by the evidence beyond one address (networks, names, suspects,
    /// senders of valid mail); each bounded.
    pub fn evidence_entries(&self) -> usize {
        self.prefixes.len() + self.dictionary.len() + self.suspects.len() + self.reputation.len()
    }

    /// Whether `source` has an offence still within the history's retention at `now_s`.
    fn has_history(&self, source: &SourceAddr, now_s: u64) -> bool {
        let keep = self.cfg.ban_time_max.as_secs();
        self.history.get(source).is_some_and(|h| h.iter().any(|o| o.until().saturating_add(keep) >= now_s))
    }

    /// The end (unix seconds) of `source`'s current ban, if one runs at `now_s`.
    fn banned_until(&self, source: &SourceAddr, now_s: u64) -> Option<u64> {
        let until = self.history.get(source)?.last()?.until();
        (until > now_s).then_some(until)
    }

    /// The network of `ip` a prefix ban would cover (none when prefixes are no wider
    /// than a source).
    fn network_of(&self, ip: IpAddr) -> Option<SourceAddr> {
        let e = &self.cfg.evidence;
        Some(SourceAddr::prefix_of(ip, e.prefix_v4, e.prefix_v6)).filter(|net| net.is_prefix_ban(self.cfg.v6_prefix))
    }

    /// The network ban (decided by this policy) covering `ip` at `now`, if any.
    pub fn covering_ban(&self, ip: IpAddr, now: SystemTime) -> Option<SourceAddr> {
        let net = self.network_of(ip)?;
        self.banned_until(&net, secs(now)).map(|_| net)
    }

    /// If `banned` is under a ban at `now_s`, count `count` guesses made while banned on
    /// its offence.
    fn charge_ban(&mut self, banned: &SourceAddr, count: u32, now_s: u64) -> bool {
        let Some(o) = self.history.get_mut(banned).and_then(|h| h.last_mut()).filter(|o| o.until() > now_s) else {
            return false;
        };
        o.guesses = o.guesses.saturating_add(count);
        o.last_seen = o.last_seen.max(clamp32(now_s));
        self.stats.guesses_while_banned += u64::from(count);
        true
    }

    /// Unix seconds of `t` (see `secs_memo`).
    fn secs_of(&mut self, t: SystemTime) -> u64 {
        if self.secs_memo.0 != t {
            self.secs_memo = (t, secs(t));
        }
        self.secs_memo.1
    }

    fn unit_key(&self, ip: IpAddr) -> memory::Key {
        memory::net_key(ip, 32, self.cfg.v6_prefix)
    }

    /// The client had mail accepted at `at` (evidence of a real sender).
    pub fn record_delivery(&mut self, client: IpAddr, at: SystemTime) {
        self.stats.deliveries += 1;
        let e = self.cfg.evidence;
        let (addr, net) = (self.unit_key(client), memory::net_key(client, e.prefix_v4, e.prefix_v6));
        let at_s = clamp32(self.secs_of(at));
        self.reputation.note(addr, net, at_s);
    }

    /// Count one attributed guess; a ban decision when it completes the evidence for one.
    pub fn record(&mut self, g: &Attributed) -> Option<BanDecision> {
        if self.whitelist.contains(&g.client) {
            self.stats.guesses_whitelisted += u64::from(g.count);
            return None;
        }
        let source = SourceAddr::from_ip(g.client, self.cfg.v6_prefix);
        let at = g.at;
        self.maybe_sweep(at);
        self.stats.guesses += u64::from(g.count);
        // The guess's time in seconds, once: the rules below all count in seconds.
        let now_s = self.secs_of(at);
        // Nearly every guess of a harvest-heavy log comes from a source already banned:
        // one lookup charges it to the ban (the source's own, else its network's).
        if self.charge_ban(&source, g.count, now_s) {
            return None;
        }
        if let Some(net) = self.network_of(g.client)
            && self.charge_ban(&net, g.count, now_s)
        {
            return None;
        }
        let observed = if self.cfg.evidence.enabled { Some(self.observe(g, now_s)) } else { None };
        let t = self.sources.entry(source).or_insert_with(|| Tracker::new(at));
        match t.add(g, self.cfg.window) {
            Added::TooOld => {
                self.stats.guesses_too_old += u64::from(g.count);
                return None;
            }
            Added::InWindow(n) if n >= self.cfg.max_unknown => {
                let first_seen = t.entries.iter().map(|e| e.at).min().unwrap_or(at);
                return self.decide(source, Evidence::Address, g, n, first_seen, 0);
            }
            Added::InWindow(_) => {}
        }
        self.beyond_one_address(g, source, observed?, now_s)
    }

    /// Feed the evidence beyond one source with a guess (no decision).
    fn observe(&mut self, g: &Attributed, now_s: u64) -> Observed {
        let e = self.cfg.evidence;
        let at_s = clamp32(now_s);
        let addr = self.unit_key(g.client);
        let net = memory::net_key(g.client, e.prefix_v4, e.prefix_v6);
        let address_good = self.reputation.address_good(addr, at_s);
        let network_good = self.reputation.network_good(net, at_s);
        let no_mail = !address_good && !network_good;
        let window = secs_u32(self.cfg.window);
        let name = g.sample.as_deref().and_then(dictionary::Name::of);
        let in_dictionary = name.is_some_and(|n| self.dictionary.contains(n, at_s));
        let s = self.suspects.note(addr, at_s, name, g.count, in_dictionary);
        let (distinct, dict_hits) = (s.distinct(), s.dict_hits());
        // The host's rate of unknown recipients from sources without valid mail of their
        // own, each source counted for its first two only: a surge is many sources, not
        // one noisy one (which the per-address window handles).
        let before = distinct.saturating_sub(g.count);
        let fresh = if address_good { 0 } else { g.count.min(2u32.saturating_sub(before)) };
        self.surge.note(at_s, fresh, window, e.surge_factor, e.surge_min);
        // Names of a source with several distinct unknown recipients and no valid mail
        // become dictionary evidence (a departed employee's senders have valid mail and
        // try one name each).
        if no_mail && distinct >= 2 {
            for n in s.uncontributed() {
                self.dictionary.contribute(n, net, at_s);
            }
        }
        let unit_is_narrower = SourceAddr::prefix_of(g.client, e.prefix_v4, e.prefix_v6).is_prefix_ban(self.cfg.v6_prefix);
        let prefix = (unit_is_narrower && !address_good).then(|| {
            self.prefixes.add(net, addr, at_s, g.count)
        });
        Observed { prefix, net, no_mail, network_good, distinct, dict_hits, surge: self.surge.active() }
    }

    /// The rules beyond one address's window, strongest first.
    fn beyond_one_address(&mut self, g: &Attributed, source: SourceAddr, o: Observed, now_s: u64) -> Option<BanDecision> {
        let e = self.cfg.evidence;
        if let Some(pc) = o.prefix {
            // A network some of whose addresses deliver valid mail needs twice the evidence.
            let k = if o.network_good { 2 } else { 1 };
            if u32::from(pc.addrs) >= e.prefix_addresses * k && pc.guesses >= e.prefix_guesses * k {
                let net = SourceAddr::prefix_of(g.client, e.prefix_v4, e.prefix_v6);
                if self.whitelist.overlaps(&net) {
                    self.stats.prefixes_whitelisted += 1;
                } else {
                    self.prefixes.forget(o.net);
                    let first = std::time::UNIX_EPOCH + Duration::from_secs(pc.first.into());
                    return self.decide(net, Evidence::Prefix, g, pc.guesses, first, pc.addrs);
                }
            }
        }
        if !o.no_mail {
            return None;
        }
        let strict = e.strict_unknown.max(1);
        let first = self.sources.get(&source).and_then(|t| t.entries.iter().map(|e| e.at).min()).unwrap_or(g.at);
        let rule = if o.dict_hits >= strict || (o.surge && o.dict_hits >= 1) {
            Evidence::Dictionary
        } else if o.distinct >= strict && self.has_history(&source, now_s) {
            Evidence::Returning
        } else if o.distinct >= strict && o.surge {
            Evidence::Surge
        } else {
            return None;
        };
        let addrs = if rule == Evidence::Dictionary { u16::try_from(o.dict_hits).unwrap_or(u16::MAX) } else { 0 };
        self.decide(source, rule, g, o.distinct, first, addrs)
    }

    /// Ban `source` on `rule`'s evidence: escalate, record the offence, report.
    fn decide(
        &mut self,
        source: SourceAddr,
        rule: Evidence,
        g: &Attributed,
        guesses: u32,
        first_seen: SystemTime,
        addrs: u16,
    ) -> Option<BanDecision> {
        let at = g.at;
        // Decided: the window's guesses move into the offence; the tracker goes.
        let mut entries: Vec<address::Entry> = match self.sources.remove(&source) {
            Some(t) => t.entries.into(),
            None => Vec::new(),
        };
        entries.sort_by_key(|e| e.at);
        let last_seen = entries.last().map_or(at, |e| e.at).max(at);
        let first_seen = first_seen.min(last_seen);
        if self.whitelist.overlaps(&source) {
            self.stats.bans_whitelisted += 1;
            return None;
        }
        let now_s = secs(at);
        let keep = self.cfg.ban_time_max.as_secs();
        let base = match rule {
            // A returning source escalates as it would have on its own window.
            Evidence::Address | Evidence::Returning => self.cfg.ban_time,
            _ => self.cfg.evidence.campaign_ban_time.clamp(self.cfg.ban_time, self.cfg.ban_time_max),
        };
        self.history.retain_of(&source, |o| o.until().saturating_add(keep) >= now_s);
        // A repeat offence (the previous one ended less than ban_time_max ago) doubles
        // the previous ban.
        let (duration, number) = match self.history.get(&source).and_then(|h| h.last()) {
            Some(prev) => (
                Duration::from_secs(u64::from(prev.duration) * 2).clamp(base, self.cfg.ban_time_max),
                prev.number.max(1) + 1,
            ),
            None => (base, 1),
        };
        let kinds = match rule {
            Evidence::Prefix => [u16::try_from(guesses).unwrap_or(u16::MAX), 0, 0],
            _ => Tracker::kinds(&entries),
        };
        let offence = Offence {
            number,
            at: secs32(at),
            duration: secs_u32(duration),
            guesses,
            first_seen: secs32(first_seen),
            last_seen: secs32(last_seen),
            mta: Some(g.mta),
            kinds,
            span: secs_u32(last_seen.duration_since(first_seen).unwrap_or_default()),
            lifted: false,
            evidence: rule,
            addrs,
        };
        let reason = offence.reason_for(&source);
        self.history_due = self.history_due.min(offence.until().saturating_add(keep));
        self.history.push(&source, offence);
        // After the ban the source's recipients count afresh (its offence remembers it).
        self.suspects.forget(self.unit_key(g.client));
        if rule == Evidence::Address {
            let e = self.cfg.evidence;
            self.prefixes.answered(memory::net_key(g.client, e.prefix_v4, e.prefix_v6), self.unit_key(g.client));
        }
        self.stats.bans += 1;
        match rule {
            Evidence::Address => {}
            Evidence::Prefix => self.stats.bans_prefix += 1,
            Evidence::Dictionary => self.stats.bans_dictionary += 1,
            Evidence::Surge => self.stats.bans_surge += 1,
            Evidence::Returning => self.stats.bans_returning += 1,
        }
        let mut evidence: Vec<String> = entries.iter().filter_map(|e| e.sample.as_deref().map(String::from)).take(EVIDENCE).collect();
        if evidence.is_empty()
            && let Some(s) = &g.sample
        {
            evidence.push(s.to_string());
        }
        Some(BanDecision { source, duration, guesses, first_seen, last_seen, evidence, reason, mta: g.mta, offence: number, rule })
    }

    fn maybe_sweep(&mut self, now: SystemTime) {
        // Compared, not subtracted: this runs for every guess.
        match self.last_sweep {
            Some(t) if t.checked_add(Duration::from_secs(60)).is_none_or(|end| now < end) => {}
            _ => self.sweep(now),
        }
    }

    /// Forget sources with nothing in their window and no active ban, offences older
    /// than `ban_time_max` past their end, and evidence idle longer than its memory.
    pub fn sweep(&mut self, now: SystemTime) {
        self.last_sweep = Some(now);
        let window = self.cfg.window;
        self.sources.retain(|_, t| t.in_window > 0 && t.latest.checked_add(window).is_some_and(|end| end > now));
        let now_s = secs(now);
        let keep = self.cfg.ban_time_max.as_secs();
        // Walking every offence each log minute was a fifth of a harvest-heavy replay.
        if now_s > self.history_due.saturating_add(keep / 64) {
            let mut due = u64::MAX;
            self.history.retain(|o| {
                let end = o.until().saturating_add(keep);
                let kept = end >= now_s;
                if kept {
                    due = due.min(end);
                }
                kept
            });
            self.history_due = due;
        }
        // The memories are exact on reading; these walks (each once an entry is an eighth
        // of its age past due) only hand memory back.
        let now_s = clamp32(now_s);
        self.prefixes.expire(now_s);
        self.dictionary.expire(now_s);
        self.suspects.expire(now_s);
        self.reputation.expire(now_s);
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
        self.history.get(source).unwrap_or(&[])
    }
}

#[cfg(test)]
impl Attributed {
    fn with_client(mut self, ip: IpAddr) -> Self {
        self.client = ip;
        self
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::UNIX_EPOCH};

    use super::*;
    use crate::parse::GuessKind;

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
            sample: Some(format!("<g{}@example.com>", secs(at) % 1000).into()),
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
            ..PolicyConfig::default()
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

    fn named(ip: &str, at: SystemTime, rcpt: &str) -> Attributed {
        Attributed { sample: Some(format!("<{rcpt}>").into()), ..guess(ip, at) }
    }

    /// One row: guesses (address, second, recipient) and deliveries (address, second),
    /// interleaved by time → the bans made (source, rule).
    struct Case {
        name: &'static str,
        guesses: Vec<(String, u64, String)>,
        deliveries: Vec<(String, u64)>,
        want: Vec<(&'static str, Evidence)>,
    }

    fn run(c: &Case, cfg: PolicyConfig, wl: Whitelist) -> Vec<(String, Evidence, String)> {
        let mut p = Policy::new(cfg, wl);
        // (time, guess, delivery)
        type Event<'a> = (u64, Option<&'a (String, u64, String)>, Option<&'a String>);
        let mut events: Vec<Event> =
            c.guesses.iter().map(|g| (g.1, Some(g), None)).chain(c.deliveries.iter().map(|d| (d.1, None, Some(&d.0)))).collect();
        events.sort_by_key(|e| (e.0, e.2.is_none()));
        let mut bans = Vec::new();
        for (at, g, d) in events {
            if let Some(ip) = d {
                p.record_delivery(ip.parse().unwrap(), t(at));
            }
            if let Some((ip, _, rcpt)) = g
                && let Some(b) = p.record(&named(ip, t(at), rcpt))
            {
                bans.push((b.source.to_string(), b.rule, b.reason));
            }
        }
        bans
    }

    fn cases() -> Vec<Case> {
        let ip = |n: u32| format!("203.0.113.{n}");
        let scattered = |i: u32| format!("198.18.{i}.7");
        let mut v = Vec::new();
        // 9 addresses of one /24, two guesses each, over 12 minutes: the network goes at
        // the third address's second guess.
        v.push(Case {
            name: "one network",
            guesses: (0..9).flat_map(|a| (0..2).map(move |k| (ip(10 + a), u64::from(a) * 80 + k * 5, format!("n{a}x{k}@example.com")))).collect(),
            deliveries: vec![],
            want: vec![("203.0.113.0/24", Evidence::Prefix)],
        });
        // A NAT pool: two guessing addresses (two each) among senders of valid mail.
        v.push(Case {
            name: "nat pool",
            guesses: (0..2).flat_map(|a| (0..2).map(move |k| (ip(200 + a), 100 + u64::from(a) * 60 + k, format!("x{a}{k}@example.com")))).collect(),
            deliveries: (0..30).map(|a| (ip(10 + a), u64::from(a) * 10)).collect(),
            want: vec![],
        });
        // Harvesters of three networks try john/mary at several domains: a fourth
        // network's source is banned after two dictionary names.
        let mut g = Vec::new();
        for (i, d) in [(0u32, "a"), (1, "b"), (2, "c")] {
            g.push((scattered(i), u64::from(i) * 400, format!("john@{d}.example")));
            g.push((scattered(i), u64::from(i) * 400 + 1, format!("mary@{d}.example")));
        }
        g.push((scattered(9), 3000, "john@z.example".into()));
        g.push((scattered(9), 3001, "mary@z.example".into()));
        v.push(Case { name: "dictionary", guesses: g, deliveries: vec![], want: vec![("198.18.9.7", Evidence::Dictionary)] });
        // A departed employee: thirty senders of valid mail each try her address once.
        v.push(Case {
            name: "departed employee",
            guesses: (0..30).map(|i| (scattered(i), u64::from(i) * 30 + 1, "karen@example.com".into())).collect(),
            deliveries: (0..30).map(|i| (scattered(i), u64::from(i) * 30)).collect(),
            want: vec![],
        });
        // A surge: forty sources in forty networks, two guesses each within minutes.
        v.push(Case {
            name: "surge",
            guesses: (0..40).flat_map(|i| (0..2).map(move |k| (scattered(i), 5000 + u64::from(i) * 5 + k, format!("s{i}k{k}@example.com")))).collect(),
            deliveries: vec![],
            want: (0..40).map(|_| ("", Evidence::Surge)).collect(),
        });
        v
    }

    #[test]
    fn evidence_beyond_one_address_table() {
        for c in cases() {
            let got = run(&c, PolicyConfig::default(), Whitelist::new());
            if c.name == "surge" {
                // The first sources make the surge; every later one is banned on it.
                let n = got.iter().filter(|b| b.1 == Evidence::Surge).count();
                assert!((30..=40).contains(&n), "{}: {got:?}", c.name);
                assert!(got[0].2.contains("during a surge of unknown recipients"), "{got:?}");
                continue;
            }
            let rules: Vec<(String, Evidence)> = got.iter().map(|b| (b.0.clone(), b.1)).collect();
            let want: Vec<(String, Evidence)> = c.want.iter().map(|(s, e)| (s.to_string(), *e)).collect();
            assert_eq!(rules, want, "{}: {got:?}", c.name);
            // Per-address counting alone bans none of these.
            assert!(run(&c, PolicyConfig::default().per_address_only(), Whitelist::new()).is_empty(), "{}", c.name);
        }
    }

    #[test]
    fn prefix_ban_reason_covering_and_whitelist() {
        let c = &cases()[0];
        let mut p = Policy::new(PolicyConfig::default(), Whitelist::new());
        let mut ban = None;
        for (ip, at, r) in &c.guesses {
            if let Some(b) = p.record(&named(ip, t(*at), r)) {
                ban = Some((b, *at));
            }
        }
        let (b, at) = ban.unwrap();
        assert_eq!(b.reason, "6 guesses from 3 addresses of 203.0.113.0/24 in 2m45s (postfix)");
        assert_eq!(b.duration, Duration::from_secs(4 * 3600));
        // Every address of the network is covered now; a new one's guesses count on it.
        assert_eq!(p.covering_ban("203.0.113.99".parse().unwrap(), t(at + 1)).unwrap().to_string(), "203.0.113.0/24");
        assert!(p.record(&guess("203.0.113.99", t(at + 2))).is_none());
        assert!(p.stats().guesses_while_banned > 0);
        let net: SourceAddr = "203.0.113.0/24".parse().unwrap();
        assert!(p.offences(&net)[0].reason().contains("of its network"));
        // Saved and restored as a network.
        let mut q = Policy::new(PolicyConfig::default(), Whitelist::new());
        q.load_json(&p.save_json(), t(at + 3)).unwrap();
        assert!(q.is_banned(&net, t(at + 3)));
        // A whitelisted host inside: the network is never banned (its addresses still can be).
        let wl = Whitelist::from_nets(["203.0.113.250/32".parse().unwrap()]);
        let got = run(c, PolicyConfig::default(), wl);
        assert!(got.iter().all(|b| b.1 != Evidence::Prefix && !b.0.contains('/')), "{got:?}");
        assert!(!got.is_empty(), "the surge rule still bans its addresses");
    }

    #[test]
    fn returning_source_is_judged_strictly() {
        let mut p = policy(5, 600);
        for i in 0..5 {
            p.record(&named("198.18.5.5", t(i), &format!("r{i}@example.com")));
        }
        assert_eq!(p.stats().bans, 1);
        // Two hours later (the ban over) two guesses are enough.
        assert!(p.record(&named("198.18.5.5", t(7200), "q1@example.com")).is_none());
        let b = p.record(&named("198.18.5.5", t(7201), "q2@example.com")).unwrap();
        assert_eq!((b.rule, b.offence), (Evidence::Returning, 2));
        assert!(b.reason.ends_with("back after an earlier ban (postfix)"), "{}", b.reason);
        // With valid mail from it, it is not.
        let mut p = policy(5, 600);
        for i in 0..5 {
            p.record(&named("198.18.5.5", t(i), &format!("r{i}@example.com")));
        }
        p.record_delivery("198.18.5.5".parse().unwrap(), t(7000));
        assert!(p.record(&named("198.18.5.5", t(7200), "q1@example.com")).is_none());
        assert!(p.record(&named("198.18.5.5", t(7201), "q2@example.com")).is_none());
    }

    /// Feed guesses (address, second, recipient) in order; the bans' (source, rule).
    fn feed(p: &mut Policy, guesses: &[(String, u64, String)]) -> Vec<(String, Evidence)> {
        guesses.iter().filter_map(|(ip, at, r)| p.record(&named(ip, t(*at), r))).map(|b| (b.source.to_string(), b.rule)).collect()
    }

    /// A restart (save, then load into a new policy) keeps the evidence beyond one
    /// address: a surge under way, the harvest dictionary, a busy host's baseline.
    #[test]
    fn evidence_survives_a_restart() {
        let restarted = |p: &Policy, at: u64| {
            let mut q = Policy::new(PolicyConfig::default(), Whitelist::new());
            let mut buf = Vec::new();
            p.write_state(&mut buf).unwrap();
            q.load_json(std::str::from_utf8(&buf).unwrap(), t(at)).unwrap();
            q
        };
        // A surge: forty sources, two guesses each; the restart comes after thirty.
        let surge = cases().into_iter().find(|c| c.name == "surge").unwrap().guesses;
        let (before, after) = surge.split_at(60);
        let mut p = Policy::new(PolicyConfig::default(), Whitelist::new());
        assert!(feed(&mut p, before).iter().any(|b| b.1 == Evidence::Surge), "the surge is on before the restart");
        let mut q = restarted(&p, before.last().unwrap().1);
        let got = feed(&mut q, after);
        assert_eq!(got.len(), 10, "every later source is judged under the surge at once: {got:?}");
        assert!(got.iter().all(|b| b.1 == Evidence::Surge), "{got:?}");
        assert_eq!(feed(&mut p, after), got, "as had it run on");
        // Without the state, the first sources after the restart pass (the rate starts at zero).
        let mut fresh = Policy::new(PolicyConfig::default(), Whitelist::new());
        assert!(feed(&mut fresh, after).len() < got.len());

        // The harvest dictionary: learnt before the restart, it bans the new source after.
        let dict = cases().into_iter().find(|c| c.name == "dictionary").unwrap().guesses;
        let (before, after) = dict.split_at(6);
        let mut p = Policy::new(PolicyConfig::default(), Whitelist::new());
        assert!(feed(&mut p, before).is_empty());
        let mut q = restarted(&p, 2000);
        assert_eq!(feed(&mut q, after), [("198.18.9.7".to_string(), Evidence::Dictionary)]);
        let mut fresh = Policy::new(PolicyConfig::default(), Whitelist::new());
        assert!(feed(&mut fresh, after).is_empty());

        // A busy host: 24 unknown recipients per 10 minutes (a new source every 50 s,
        // two each) for ten hours. Its baseline survives: the same rate right after the
        // restart is no surge, while a daemon that forgot it sees one.
        let busy: Vec<(String, u64, String)> = (0..720u64)
            .flat_map(|i| (0..2).map(move |k| (format!("198.18.{}.{}", i % 256, i / 256 + 1), i * 50 + k, format!("b{i}x{k}@example.com"))))
            .collect();
        let (before, after) = busy.split_at(1200);
        let mut p = Policy::new(PolicyConfig::default(), Whitelist::new());
        feed(&mut p, before);
        let at = before.last().unwrap().1;
        let mut q = restarted(&p, at);
        // The restored memories are the saved ones, entry for entry.
        p.sweep(t(at));
        assert_eq!(q.state(), p.state());
        assert!(!q.state().evidence.is_empty());
        let got = feed(&mut q, &after[..40]);
        assert!(got.is_empty(), "{got:?}");
        let mut fresh = Policy::new(PolicyConfig::default(), Whitelist::new());
        assert!(!feed(&mut fresh, &after[..40]).is_empty(), "a zero baseline judges a busy host's normal rate a surge");
    }

    /// A version 1 state file (offences only) loads: its bans are known again; the
    /// evidence starts empty; the next save writes version 2.
    #[test]
    fn version_1_state_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let v1 = r#"{"version":1,"offenders":[{"source":"192.0.2.66","offences":[{"number":1,"at":1800000000,"duration":3600,"guesses":5,"first_seen":1799999990,"last_seen":1800000000,"span":10,"kinds":[5,0,0],"mta":"sendmail"}]},{"source":"203.0.113.0/24","offences":[{"number":1,"at":1800000000,"duration":14400,"guesses":6,"first_seen":1799999900,"last_seen":1800000000,"span":100,"kinds":[6,0,0],"mta":"postfix","evidence":"prefix","addrs":3}]}]}"#;
        std::fs::write(&path, v1).unwrap();
        let mut p = Policy::new(PolicyConfig::default(), Whitelist::new());
        assert_eq!(history::load_state(&path, &mut p, t(100)).unwrap(), Some(2), "a version 1 file is read");
        assert_eq!(p.evidence_entries(), 0);
        assert!(p.is_banned(&"192.0.2.66".parse().unwrap(), t(100)));
        let net: SourceAddr = "203.0.113.0/24".parse().unwrap();
        assert!(p.is_banned(&net, t(100)));
        assert_eq!(p.offences(&net)[0].reason_for(&net), "6 guesses from 3 addresses of 203.0.113.0/24 in 1m40s (postfix)");
        history::write_state(&path, &p).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().starts_with(r#"{"version":2,"#));
        let mut again = Policy::new(PolicyConfig::default(), Whitelist::new());
        assert_eq!(history::load_state(&path, &mut again, t(100)).unwrap(), Some(2));
        assert_eq!(again.state(), p.state());
    }

    #[test]
    fn whitelist_is_checked_in_the_policy() {
        let wl = Whitelist::from_nets(["192.0.2.0/24".parse().unwrap()]);
        let mut p = Policy::new(PolicyConfig { max_unknown: 2, ..PolicyConfig::default() }, wl);
        for i in 0..20 {
            assert!(p.record(&guess("192.0.2.66", t(i))).is_none());
        }
        assert_eq!((p.stats().guesses_whitelisted, p.stats().guesses), (20, 0));
    }

    #[test]
    fn memory_is_bounded() {
        let mut p = Policy::new(PolicyConfig::default(), Whitelist::new());
        // 200,000 sources of as many networks, one guess each, one a second.
        for i in 0..200_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000u32.wrapping_add(i << 8) | 7));
            p.record(&Attributed { sample: Some(format!("<n{i}@example.com>").into()), ..guess("192.0.2.1", t(u64::from(i))) }.with_client(ip));
        }
        assert!(p.evidence_entries() <= CAP_SUSPECTS + CAP_PREFIXES + CAP_NAMES + CAP_REPUTATION + CAP_REPUTATION / 4);
    }
}
