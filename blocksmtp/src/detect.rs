//! The detection engine: parse → correlate → policy over log lines, for the daemon
//! and for `blocksmtp replay` — and the settings it runs with ([`DetectArgs`]).
use std::{net::IpAddr, path::PathBuf, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{
    correlate::{Attributed, Correlator, CorrelatorLimits, CorrelatorStats, LiveAttribution},
    duration::HumanDuration,
    parse::{Event, GuessKind, MailerFilter, Mta, Parsed, RawTime, TimeResolver, with_parsed},
    policy::{BanDecision, Policy, PolicyConfig, PolicyState, PolicyStats},
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
    /// Journal lines count only from processes of these users (repeatable; journald's
    /// _UID). Default: root, postfix, Debian-exim, exim, mail.
    #[arg(long, value_name = "USER")]
    pub journal_trusted_user: Vec<String>,
    /// Journal lines count only from these programs (repeatable; journald's _EXE; a path
    /// ending in / takes the programs under it). Default: sendmail's, Postfix's and Exim's
    /// usual paths (/usr/libexec/sendmail/, /usr/lib/sm.bin/, /usr/lib/postfix/, /usr/sbin/exim4, …).
    #[arg(long, value_name = "PATH")]
    pub journal_trusted_exe: Vec<String>,
    /// Judge every address alone (the --max-unknown window only): no prefix,
    /// harvest-dictionary, surge or round evidence.
    #[arg(long)]
    pub per_address_only: bool,
    /// IPv4 networks of this many bits are counted (and banned) as a whole.
    #[arg(long, value_name = "BITS", default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=32))]
    pub prefix_v4: u8,
    /// IPv6 networks of this many bits are counted (and banned) as a whole; their
    /// sources are the --v6-prefix networks inside.
    #[arg(long, value_name = "BITS", default_value_t = 48, value_parser = clap::value_parser!(u8).range(16..=128))]
    pub prefix_v6: u8,
    /// The window a network's guesses are counted in.
    #[arg(long, value_name = "DUR", default_value = "1h")]
    pub prefix_window: HumanDuration,
    /// Ban a network when this many of its sources guessed within --prefix-window …
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..))]
    pub prefix_addresses: u32,
    /// … making at least this many guesses together (both doubled for a network with
    /// senders of valid mail).
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = clap::value_parser!(u32).range(2..))]
    pub prefix_guesses: u32,
    /// A name guessed by harvesters of this many different networks joins the harvest
    /// dictionary.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=6))]
    pub dictionary_sources: u32,
    /// A source without valid mail is banned after this many distinct unknown
    /// recipients when they are dictionary names, during a surge, or when it was
    /// banned before (one dictionary name is enough during a surge).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub strict_unknown: u32,
    /// A surge: unknown recipients per --window at this many times the host's baseline …
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub surge_factor: u32,
    /// … and at least this many.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub surge_min: u32,
    /// How long a first ban on evidence beyond one address (network, dictionary,
    /// surge, rounds) lasts: such harvests come back in rounds.
    #[arg(long, value_name = "DUR", default_value = "4h")]
    pub campaign_ban_time: HumanDuration,
    /// How long quiet suspects, harvest-dictionary names and senders of valid mail are
    /// remembered (exactly; memory is capped as well).
    #[arg(long, value_name = "DUR", default_value = "1d")]
    pub memory: HumanDuration,
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
            journal_trusted_user: Vec::new(),
            journal_trusted_exe: Vec::new(),
            per_address_only: false,
            prefix_v4: 24,
            prefix_v6: 48,
            prefix_window: HumanDuration::from_secs(3600),
            prefix_addresses: 3,
            prefix_guesses: 6,
            dictionary_sources: 3,
            strict_unknown: 2,
            surge_factor: 4,
            surge_min: 8,
            campaign_ban_time: HumanDuration::from_secs(4 * 3600),
            memory: HumanDuration::from_secs(86_400),
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
    #[error("--prefix-v4 must be between 8 and 32, --prefix-v6 between 16 and 128 (got /{0}, /{1})")]
    Prefix(u8, u8),
    #[error("--{0} must be at least {1}")]
    AtLeast(&'static str, u32),
    #[error("--{0} must be longer than 0s")]
    Zero(&'static str),
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
        if !(8..=32).contains(&self.prefix_v4) || !(16..=128).contains(&self.prefix_v6) {
            return Err(DetectError::Prefix(self.prefix_v4, self.prefix_v6));
        }
        for (name, v, min) in [
            ("prefix-addresses", self.prefix_addresses, 2),
            ("prefix-guesses", self.prefix_guesses, 2),
            ("dictionary-sources", self.dictionary_sources, 2),
            ("strict-unknown", self.strict_unknown, 1),
            ("surge-factor", self.surge_factor, 1),
            ("surge-min", self.surge_min, 1),
        ] {
            if v < min {
                return Err(DetectError::AtLeast(name, min));
            }
        }
        for (name, d) in [("prefix-window", self.prefix_window), ("campaign-ban-time", self.campaign_ban_time), ("memory", self.memory)] {
            if d.0.is_zero() {
                return Err(DetectError::Zero(name));
            }
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
            evidence: crate::policy::EvidenceConfig {
                enabled: !self.per_address_only,
                prefix_v4: self.prefix_v4,
                prefix_v6: self.prefix_v6,
                prefix_window: self.prefix_window.0,
                prefix_addresses: self.prefix_addresses.max(2),
                prefix_guesses: self.prefix_guesses.max(2),
                dictionary_sources: self.dictionary_sources.clamp(2, 6),
                strict_unknown: self.strict_unknown.max(1),
                surge_factor: self.surge_factor.max(1),
                surge_min: self.surge_min.max(1),
                campaign_ban_time: self.campaign_ban_time.0,
                // The memory must at least cover the per-network window.
                memory: self.memory.0.max(self.prefix_window.0),
            },
        }
    }

    /// The line filter part of these settings.
    pub fn mailer_filter(&self) -> MailerFilter {
        MailerFilter::with_rules(&self.mailer_syslog_name, self.mailer_syslog_host.as_deref(), self.journal_trust())
    }

    /// Which journal entries count as the MTA's (see [`crate::parse::JournalTrust`]).
    pub fn journal_trust(&self) -> crate::parse::JournalTrust {
        crate::parse::JournalTrust::configured(&self.journal_trusted_user, &self.journal_trusted_exe)
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
    /// Guess lines (unknown recipients and probes) by MTA: sendmail, Postfix, Exim
    /// (JSON: `{"sendmail": N, "postfix": N, "exim": N}`).
    #[serde(serialize_with = "by_mta_name")]
    pub guesses_by_mta: [u64; 3],
}

fn by_mta_name<S: serde::Serializer>(v: &[u64; 3], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut m = s.serialize_map(Some(3))?;
    for mta in [Mta::Sendmail, Mta::Postfix, Mta::Exim] {
        m.serialize_entry(mta.name(), &v[mta_index(mta)])?;
    }
    m.end()
}

impl LineStats {
    /// Count one line; the mail line when it may matter for detection (a guess, a
    /// session's client, accepted mail, sendmail's alarms), else `None`.
    pub fn count<'p, 'f, 'a>(&mut self, p: &'p Parsed<'f, 'a>) -> Option<&'p Parsed<'f, 'a>> {
        self.lines += 1;
        match p {
            Parsed::Skipped => self.skipped += 1,
            Parsed::Foreign => self.foreign += 1,
            Parsed::Mail { mta, event, .. } => {
                self.mail += 1;
                if matches!(event, Event::Guess { .. } | Event::PendingGuess { .. }) {
                    self.guesses_by_mta[mta_index(*mta)] += 1;
                }
                let counter = match event {
                    Event::Other => {
                        self.other += 1;
                        return None;
                    }
                    Event::Guess { kind: GuessKind::UnknownRecipient, .. }
                    | Event::PendingGuess { kind: GuessKind::UnknownRecipient, .. } => &mut self.unknown_recipient,
                    Event::Guess { .. } | Event::PendingGuess { .. } => &mut self.probe,
                    Event::Session { .. } | Event::Delivered { .. } => &mut self.session,
                    Event::Flood { .. } => &mut self.flood,
                    Event::ProbeAttack { .. } => &mut self.probe_attack,
                    Event::Unattributable { .. } => {
                        self.unattributable += 1;
                        return None;
                    }
                };
                *counter += 1;
                return Some(p);
            }
        }
        None
    }

    /// Add another set of counts.
    pub fn add(&mut self, o: &LineStats) {
        self.lines += o.lines;
        self.skipped += o.skipped;
        self.foreign += o.foreign;
        self.mail += o.mail;
        self.unknown_recipient += o.unknown_recipient;
        self.probe += o.probe;
        self.flood += o.flood;
        self.probe_attack += o.probe_attack;
        self.session += o.session;
        self.unattributable += o.unattributable;
        self.other += o.other;
        self.whitelisted += o.whitelisted;
        for (a, b) in self.guesses_by_mta.iter_mut().zip(o.guesses_by_mta) {
            *a += b;
        }
    }

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
/// # use blocksmtp::detect::{Detector, DetectArgs};
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
    steps: Steps,
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

/// What the policy is to do for a run of mail lines, in their order: the guesses the
/// correlator attributed, and accepted mail (a real sender's evidence), each delivery
/// recorded before the guesses of its own line and after those of the lines before.
#[derive(Debug, Default)]
pub struct Steps {
    guesses: Vec<Attributed>,
    /// `(guesses before it, client, time)`.
    deliveries: Vec<(usize, IpAddr, SystemTime)>,
}

/// Detection's first in-order stage: a mail line's time (from the log under
/// [`Clock::Log`]), and the correlation of its event into attributed guesses.
#[derive(Debug)]
pub struct Correlating<'d> {
    resolver: &'d mut TimeResolver,
    correlator: &'d mut Correlator,
    clock: Clock,
    last_log_time: &'d mut Option<SystemTime>,
}

impl Correlating<'_> {
    /// One mail line's event; what the policy is to do goes to `steps`.
    #[allow(clippy::too_many_arguments)]
    pub fn event(
        &mut self,
        host: &[u8],
        pid: Option<u32>,
        time: RawTime<'_>,
        mta: Mta,
        event: &Event<'_>,
        now: SystemTime,
        live: Option<&(dyn LiveAttribution + Send)>,
        steps: &mut Steps,
    ) {
        if !self.correlator.wants(event) {
            return;
        }
        let at = match self.clock {
            Clock::Wall => now,
            Clock::Log => {
                let t = self.resolver.resolve(time, now).or(*self.last_log_time).unwrap_or(now);
                *self.last_log_time = Some(t);
                t
            }
        };
        // Accepted mail first: a session's guesses attributed on this very line
        // are judged knowing the client delivers valid mail.
        if let Event::Delivered { client, .. } = *event {
            steps.deliveries.push((steps.guesses.len(), client, at));
        }
        self.correlator.on_event(host, pid, mta, event, at, live, &mut steps.guesses);
    }
}

/// Detection's second in-order stage: the policy's decisions.
#[derive(Debug)]
pub struct Deciding<'d> {
    policy: &'d mut Policy,
    stats: &'d mut LineStats,
}

impl Deciding<'_> {
    /// Do `steps` (leaving it empty); bans go to `bans`.
    pub fn steps(&mut self, steps: &mut Steps, bans: &mut Vec<BanDecision>) {
        let whitelisted = self.policy.stats().guesses_whitelisted;
        let mut deliveries = steps.deliveries.drain(..).peekable();
        for (i, g) in steps.guesses.drain(..).enumerate() {
            while let Some((_, client, at)) = deliveries.next_if(|d| d.0 <= i) {
                self.policy.record_delivery(client, at);
            }
            // The policy checks the whitelist (once, there).
            if let Some(ban) = self.policy.record(&g) {
                bans.push(ban);
            }
        }
        for (_, client, at) in deliveries {
            self.policy.record_delivery(client, at);
        }
        self.stats.whitelisted += self.policy.stats().guesses_whitelisted - whitelisted;
    }

    /// Count one line (see [`LineStats::count`]).
    pub fn count<'p, 'f, 'a>(&mut self, p: &'p Parsed<'f, 'a>) -> Option<&'p Parsed<'f, 'a>> {
        self.stats.count(p)
    }

    /// Add counts of lines counted elsewhere ([`LineStats::count`]).
    pub fn add_line_stats(&mut self, s: &LineStats) {
        self.stats.add(s);
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
            steps: Steps::default(),
        }
    }

    /// Attribute sendmail's address-less guesses at once through process titles.
    /// (The daemon's path: its trusted users are looked up here, at start, rather than
    /// on the first journal entry, which replay leaves to need.)
    pub fn with_live_attribution(mut self, live: Box<dyn LiveAttribution + Send>) -> Self {
        self.live = Some(live);
        let _ = self.filter.trust().uids();
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
        let mut bans = Vec::new();
        // Lent out for the line (an empty filter allocates nothing), as are the live
        // attribution and the steps: the two stages borrow the rest of `self`.
        let filter = std::mem::replace(&mut self.filter, MailerFilter::none());
        let live = self.live.take();
        let mut steps = std::mem::take(&mut self.steps);
        let (mut correlating, mut deciding) = self.stages();
        with_parsed(line, &filter, |p| {
            if let Some(Parsed::Mail { frame, mta, event }) = deciding.count(&p) {
                correlating.event(frame.host, frame.pid, frame.time, *mta, event, now, live.as_deref(), &mut steps);
                deciding.steps(&mut steps, &mut bans);
            }
        });
        self.steps = steps;
        self.live = live;
        self.filter = filter;
        bans
    }

    /// The two in-order stages apart, for replay to run them on different threads,
    /// one block of lines behind the other (see [`Correlating`] and [`Deciding`]);
    /// [`Self::feed`] runs them one after the other.
    pub fn stages(&mut self) -> (Correlating<'_>, Deciding<'_>) {
        (
            Correlating {
                resolver: &mut self.resolver,
                correlator: &mut self.correlator,
                clock: self.clock,
                last_log_time: &mut self.last_log_time,
            },
            Deciding { policy: &mut self.policy, stats: &mut self.stats },
        )
    }

    /// The line filter this detector frames lines with.
    pub fn filter(&self) -> &MailerFilter {
        &self.filter
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn guesses_by_mta_are_labelled_in_json() {
        let st = LineStats { guesses_by_mta: [3, 2, 1], ..LineStats::default() };
        let v = serde_json::to_value(st).unwrap();
        assert_eq!(v["guesses_by_mta"], serde_json::json!({"sendmail": 3, "postfix": 2, "exim": 1}));
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
