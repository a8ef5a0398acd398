//! Correlate: attribute guesses to the client that made them.
//!
//! Postfix, exim and sendmail's VRFY/EXPN lines name the client themselves. sendmail's
//! `<x>... User unknown` does not: its client is found through the queue id (which
//! embeds the pid, `6ARCZkEp018868` ↔ `sm-mta[18868]`) on a later line of the same
//! session — `Possible SMTP RCPT flood` (after 3 bad recipients), `lost input channel
//! from [ip]`, or the `from=… relay=[ip]` line written when the transaction ends
//! (QUIT, RSET, disconnect; after RSET the same pid continues under a new queue id).
//! Live, the daemon can also read the client from the serving child's process title
//! at the moment the guess is logged ([`LiveAttribution`]).
//!
//! Until then guesses are held per session — (host, pid, queue id) — with their
//! original times. The held state is bounded: sessions idle longer than
//! [`CorrelatorLimits::max_idle`] are dropped, and beyond
//! [`CorrelatorLimits::max_sessions`] the oldest are dropped first; their guesses are
//! counted as expired, never guessed at.
//!
//! Weighing sendmail's own alarms: a session's `Possible SMTP RCPT flood` line proves
//! at least BadRcptThrottle (3, sendmail's default) rejected recipients, so it tops the
//! session's attributed recipient guesses up to 3; `possible SMTP attack:
//! command=VRFY|EXPN, count=N` tops its probes up to N. Lines already counted are not
//! counted twice.
use std::{
    hash::{BuildHasherDefault, Hasher},
    net::IpAddr,
    time::{Duration, SystemTime},
};

pub use crate::parse::client::Sample;
use crate::parse::{
    Event, GuessKind, Mta,
    client::{SAMPLE_MAX, sample_text},
};

/// Live lookup of the client a sendmail child is serving, from its process title.
/// The daemon implements it over /proc (`crate::proctitle`); replay has none.
pub trait LiveAttribution {
    /// The client address of sendmail child `pid` while it serves queue id `queue_id`,
    /// read from its process title; `None` when unknown or when the title does not
    /// belong to that session (a recycled pid, a new transaction).
    fn client_of(&self, pid: u32, queue_id: &str) -> Option<std::net::IpAddr>;
}

/// sendmail's default BadRcptThrottle: a flood line proves this many bad recipients.
pub const BAD_RCPT_THROTTLE: u32 = 3;

/// Maximum recipient samples kept per held session.
const SAMPLES_PER_SESSION: usize = 8;
/// Beyond this many held guesses in one session, times are merged into the last.
const TIMES_PER_SESSION: usize = 4096;

/// A guess with its client, ready for the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributed {
    pub client: IpAddr,
    pub kind: GuessKind,
    pub mta: Mta,
    pub at: SystemTime,
    /// How many guesses this stands for (more than one for sendmail's alarms).
    pub count: u32,
    /// The guessed recipient or probed name (attacker text, sanitised), when known.
    pub sample: Option<Sample>,
}

/// Bounds of the held state.
#[derive(Clone, Copy, Debug)]
pub struct CorrelatorLimits {
    /// Sessions not heard of for this long are dropped.
    pub max_idle: Duration,
    /// At most this many sessions are held.
    pub max_sessions: usize,
}

impl Default for CorrelatorLimits {
    fn default() -> Self {
        // sendmail's own command timeout is one hour.
        Self { max_idle: Duration::from_secs(3600 + 300), max_sessions: 100_000 }
    }
}

#[derive(Debug)]
struct Session {
    client: Option<IpAddr>,
    mta: Mta,
    /// Recipient guesses attributed (or held) in this session.
    bad_rcpts: u32,
    /// VRFY/EXPN probes in this session.
    probes: u32,
    /// Held guesses: time and kind of each, samples of the first few.
    held: Vec<(SystemTime, GuessKind, u32)>,
    samples: Vec<Sample>,
    last_seen: SystemTime,
}

/// Counters of the correlator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CorrelatorStats {
    /// Guesses held for a while before their client became known.
    pub held: u64,
    /// Held guesses dropped because their session was never attributed.
    pub expired: u64,
    /// Guesses attributed through [`LiveAttribution`].
    pub live: u64,
    /// Guesses added by sendmail's flood / attack lines beyond the lines seen.
    pub implied: u64,
}

/// A fast hash for session keys (host, pid and queue id are written by syslog and
/// the MTA, not chosen by clients, so hash flooding is not a concern).
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyMap<V> = hashbrown::HashMap<Vec<u8>, V, BuildHasherDefault<KeyHasher>>;

/// Holds per-session state and turns [`Event`]s into [`Attributed`] guesses.
#[derive(Debug)]
pub struct Correlator {
    limits: CorrelatorLimits,
    sessions: KeyMap<Session>,
    key: Vec<u8>,
    stats: CorrelatorStats,
    next_sweep: Option<SystemTime>,
}

impl Default for Correlator {
    fn default() -> Self {
        Self::new(CorrelatorLimits::default())
    }
}

impl Correlator {
    pub fn new(limits: CorrelatorLimits) -> Self {
        Self { limits, sessions: KeyMap::default(), key: Vec::with_capacity(96), stats: Default::default(), next_sweep: None }
    }

    pub fn stats(&self) -> CorrelatorStats {
        self.stats
    }

    /// Sessions currently held.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether `event` can change anything. A sendmail line naming the client of a
    /// finished transaction matters only when some session holds guesses (whether its
    /// own does is one lookup, made once, in [`Self::on_event`]).
    pub fn wants(&self, event: &Event<'_>) -> bool {
        match *event {
            Event::Session { ends: true, .. } => !self.sessions.is_empty(),
            Event::Unattributable { .. } | Event::Other => false,
            _ => true,
        }
    }

    fn make_key(&mut self, host: &[u8], pid: Option<u32>, session: Option<&[u8]>) {
        self.key.clear();
        self.key.extend_from_slice(&(host.len() as u32).to_le_bytes());
        self.key.extend_from_slice(host);
        self.key.extend_from_slice(&pid.unwrap_or(0).to_le_bytes());
        self.key.extend_from_slice(session.unwrap_or(b""));
    }

    fn session_mut(&mut self, mta: Mta, at: SystemTime) -> &mut Session {
        if self.sessions.len() >= self.limits.max_sessions && !self.sessions.contains_key(self.key.as_slice()) {
            self.evict_oldest();
        }
        // One hash per line; the key is copied only for a new session.
        let s = self.sessions.entry_ref(self.key.as_slice()).or_insert_with(|| Session {
            client: None,
            mta,
            bad_rcpts: 0,
            probes: 0,
            held: Vec::new(),
            samples: Vec::new(),
            last_seen: at,
        });
        s.last_seen = s.last_seen.max(at);
        s
    }

    fn evict_oldest(&mut self) {
        // Drop the oldest tenth at once so this stays rare.
        let mut ages: Vec<(SystemTime, Vec<u8>)> =
            self.sessions.iter().map(|(k, s)| (s.last_seen, k.clone())).collect();
        ages.sort_unstable_by_key(|(t, _)| *t);
        let n = (ages.len() / 10).max(1);
        for (_, k) in ages.into_iter().take(n) {
            if let Some(s) = self.sessions.remove(&k) {
                self.stats.expired += s.held.iter().map(|h| u64::from(h.2)).sum::<u64>();
            }
        }
    }

    /// Drop sessions idle for longer than the limit. Called by [`Self::on_event`]
    /// about once a minute of log time; callers may call it too.
    pub fn sweep(&mut self, now: SystemTime) {
        // (Only at the end of representable time does the addition fail.)
        self.next_sweep = Some(now.checked_add(Duration::from_secs(60)).unwrap_or(now));
        let Some(cutoff) = now.checked_sub(self.limits.max_idle) else { return };
        let stats = &mut self.stats;
        self.sessions.retain(|_, s| {
            let keep = s.last_seen >= cutoff;
            if !keep {
                stats.expired += s.held.iter().map(|h| u64::from(h.2)).sum::<u64>();
            }
            keep
        });
    }

    /// Take one mail line's event; attributed guesses go to `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_event(
        &mut self,
        host: &[u8],
        pid: Option<u32>,
        mta: Mta,
        event: &Event<'_>,
        at: SystemTime,
        live: Option<&(dyn LiveAttribution + Send)>,
        out: &mut Vec<Attributed>,
    ) {
        // A comparison per line, not a duration: the same test as `at - last < 60 s`.
        if self.next_sweep.is_none_or(|next| at >= next) {
            self.sweep(at);
        }
        match *event {
            Event::Guess { client, kind, target, session } => {
                if let Some(session) = session {
                    self.make_key(host, pid, Some(session));
                    let s = self.session_mut(mta, at);
                    s.client = Some(client);
                    bump(s, kind, 1);
                }
                out.push(Attributed { client, kind, mta, at, count: 1, sample: Some(sample_text(target, SAMPLE_MAX)) });
            }
            Event::PendingGuess { session, kind, target } => {
                self.make_key(host, pid, Some(session));
                let s = self.session_mut(mta, at);
                bump(s, kind, 1);
                let known = s.client.is_some();
                let mut client = s.client;
                if client.is_none()
                    && let (Some(live), Some(pid)) = (live, pid)
                    && let Ok(qid) = std::str::from_utf8(session)
                    && let Some(ip) = live.client_of(pid, qid)
                {
                    s.client = Some(ip);
                    client = Some(ip);
                }
                match client {
                    Some(client) => {
                        out.push(Attributed { client, kind, mta, at, count: 1, sample: Some(sample_text(target, SAMPLE_MAX)) })
                    }
                    None => {
                        if s.held.len() < TIMES_PER_SESSION {
                            s.held.push((at, kind, 1));
                        } else if let Some(last) = s.held.last_mut() {
                            *last = (at, kind, last.2 + 1);
                        }
                        if s.samples.len() < SAMPLES_PER_SESSION {
                            s.samples.push(sample_text(target, SAMPLE_MAX));
                        }
                    }
                }
                match (known, client) {
                    (false, Some(_)) => self.stats.live += 1,
                    (_, None) => self.stats.held += 1,
                    _ => {}
                }
            }
            // Accepted mail ends sendmail's transaction like its plain `from=` line.
            Event::Delivered { session, client } => {
                self.make_key(host, pid, session);
                if let Some(mut s) = self.sessions.remove(self.key.as_slice()) {
                    flush(&mut s, client, out);
                }
            }
            Event::Session { session, client, ends } => {
                self.make_key(host, pid, session);
                if ends {
                    if let Some(mut s) = self.sessions.remove(self.key.as_slice()) {
                        flush(&mut s, client, out);
                    }
                } else {
                    let s = self.session_mut(mta, at);
                    s.client = Some(client);
                    flush(s, client, out);
                }
            }
            Event::Flood { session, client } => {
                self.make_key(host, pid, session);
                let s = self.session_mut(mta, at);
                s.client = Some(client);
                flush(s, client, out);
                if s.bad_rcpts < BAD_RCPT_THROTTLE {
                    let extra = BAD_RCPT_THROTTLE - s.bad_rcpts;
                    s.bad_rcpts = BAD_RCPT_THROTTLE;
                    self.stats.implied += u64::from(extra);
                    out.push(Attributed { client, kind: GuessKind::UnknownRecipient, mta, at, count: extra, sample: None });
                }
            }
            Event::ProbeAttack { session, client, kind, count } => {
                self.make_key(host, pid, session);
                let s = self.session_mut(mta, at);
                s.client = Some(client);
                flush(s, client, out);
                if s.probes < count {
                    let extra = count - s.probes;
                    s.probes = count;
                    self.stats.implied += u64::from(extra);
                    out.push(Attributed { client, kind, mta, at, count: extra, sample: None });
                }
            }
            Event::Unattributable { .. } | Event::Other => {}
        }
    }
}

fn bump(s: &mut Session, kind: GuessKind, n: u32) {
    match kind {
        GuessKind::UnknownRecipient => s.bad_rcpts = s.bad_rcpts.saturating_add(n),
        GuessKind::Vrfy | GuessKind::Expn => s.probes = s.probes.saturating_add(n),
    }
}

/// Hand a session's held guesses to `client`.
fn flush(s: &mut Session, client: IpAddr, out: &mut Vec<Attributed>) {
    let mut samples = std::mem::take(&mut s.samples).into_iter();
    for (at, kind, count) in s.held.drain(..) {
        out.push(Attributed { client, kind, mta: s.mta, at, count, sample: samples.next() });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::parse::sendmail;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn feed(c: &mut Correlator, pid: u32, msg: &[u8], at: SystemTime, live: Option<&(dyn LiveAttribution + Send)>) -> Vec<Attributed> {
        let mut out = Vec::new();
        c.on_event(b"mx", Some(pid), Mta::Sendmail, &sendmail::parse(msg), at, live, &mut out);
        out
    }

    fn total(v: &[Attributed]) -> u32 {
        v.iter().map(|a| a.count).sum()
    }

    #[test]
    fn unknown_users_wait_for_the_from_line() {
        let mut c = Correlator::default();
        for i in 0..4 {
            let line = format!("6ARCZkEp018868: <u{i}@example.com>... User unknown");
            assert!(feed(&mut c, 18868, line.as_bytes(), t(i), None).is_empty());
        }
        assert_eq!(c.sessions(), 1);
        let out = feed(&mut c, 18868, b"6ARCZkEp018868: from=<a@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=[192.0.2.66]", t(10), None);
        assert_eq!(total(&out), 4);
        assert!(out.iter().all(|a| a.client == ip("192.0.2.66")));
        assert_eq!(out[0].at, t(0), "original times are kept");
        assert_eq!(out[2].sample.as_deref(), Some("<u2@example.com>"));
        assert_eq!(c.sessions(), 0, "the transaction is over");
    }

    #[test]
    fn flood_attributes_and_tops_up() {
        let mut c = Correlator::default();
        let lines: [&[u8]; 3] = [
            b"6ARCalaA019042: <a@example.com>... User unknown",
            b"6ARCalaA019042: <b@example.com>... User unknown",
            b"6ARCalaA019042: <c@example.com>... User unknown",
        ];
        for l in lines {
            assert!(feed(&mut c, 19042, l, t(0), None).is_empty());
        }
        let out = feed(&mut c, 19042, b"6ARCalaA019042: harvester.example.net [192.0.2.67]: Possible SMTP RCPT flood, throttling.", t(1), None);
        assert_eq!(total(&out), 3, "three lines seen, nothing implied");
        // Further guesses of the session are attributed at once.
        let out = feed(&mut c, 19042, b"6ARCalaA019042: <d@example.com>... User unknown", t(2), None);
        assert_eq!((total(&out), out[0].client), (1, ip("192.0.2.67")));
        // After RSET: a new queue id, same pid — held again until its own evidence.
        assert!(feed(&mut c, 19042, b"6ARCalaB019042: <e@example.com>... User unknown", t(3), None).is_empty());
        let out = feed(&mut c, 19042, b"6ARCalaB019042: harvester.example.net [192.0.2.67]: Possible SMTP RCPT flood, throttling.", t(4), None);
        assert_eq!(total(&out), 3, "1 held + 2 implied by the flood line");
        assert_eq!(c.stats().implied, 2);
        // A flood line alone (User unknown not logged) proves three.
        let out = feed(&mut c, 18304, b"6ARCYmRS018304: [192.0.2.66]: Possible SMTP RCPT flood, throttling.", t(5), None);
        assert_eq!(total(&out), 3);
        let out = feed(&mut c, 18304, b"6ARCYmRS018304: [192.0.2.66]: Possible SMTP RCPT flood, shutting down connection.", t(6), None);
        assert_eq!(total(&out), 0, "not counted twice");
    }

    #[test]
    fn probe_attack_tops_up_probes() {
        let mut c = Correlator::default();
        for l in [&b"6ARCaM6m018977: [192.0.2.66]: VRFY a"[..], b"6ARCaM6m018977: [192.0.2.66]: EXPN b"] {
            assert_eq!(total(&feed(&mut c, 18977, l, t(0), None)), 1);
        }
        let out = feed(&mut c, 18977, b"6ARCaM6m018977: [192.0.2.66]: possible SMTP attack: command=EXPN, count=6", t(1), None);
        assert_eq!(total(&out), 4);
    }

    #[test]
    fn sessions_are_per_host_and_pid() {
        let mut c = Correlator::default();
        let mut out = Vec::new();
        let unknown = sendmail::parse(b"6ARCZkEp018868: <a@example.com>... User unknown");
        c.on_event(b"mx1", Some(18868), Mta::Sendmail, &unknown, t(0), None, &mut out);
        let from = sendmail::parse(b"6ARCZkEp018868: from=<a@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=[192.0.2.66]");
        c.on_event(b"mx2", Some(18868), Mta::Sendmail, &from, t(1), None, &mut out);
        assert!(out.is_empty(), "another host's session");
        c.on_event(b"mx1", Some(18868), Mta::Sendmail, &from, t(1), None, &mut out);
        assert_eq!(total(&out), 1);
    }

    struct Titles(Mutex<Vec<(u32, String)>>, IpAddr);
    impl LiveAttribution for Titles {
        fn client_of(&self, pid: u32, queue_id: &str) -> Option<IpAddr> {
            self.0.lock().unwrap().push((pid, queue_id.to_string()));
            (pid == 18992 && queue_id == "6ARCaTcj018992").then_some(self.1)
        }
    }

    #[test]
    fn live_attribution_counts_at_once() {
        let mut c = Correlator::default();
        let live = Titles(Mutex::new(Vec::new()), ip("2001:db8::66"));
        let out = feed(&mut c, 18992, b"6ARCaTcj018992: <mgzhq17@example.com>... User unknown", t(0), Some(&live));
        assert_eq!((total(&out), out[0].client), (1, ip("2001:db8::66")));
        // Known now: no second lookup for the same session.
        feed(&mut c, 18992, b"6ARCaTcj018992: <x@example.com>... User unknown", t(1), Some(&live));
        assert_eq!(live.0.lock().unwrap().as_slice(), &[(18992, "6ARCaTcj018992".to_string())]);
        // A title that does not match: held.
        assert!(feed(&mut c, 5, b"6ARCaTcj000005: <x@example.com>... User unknown", t(1), Some(&live)).is_empty());
        assert_eq!(c.stats().live, 1);
    }

    #[test]
    fn held_state_is_bounded() {
        let mut c = Correlator::new(CorrelatorLimits { max_idle: Duration::from_secs(600), max_sessions: 100 });
        for pid in 0..1000u32 {
            let line = format!("6ARCZkEp{pid:06}: <a@example.com>... User unknown");
            feed(&mut c, pid, line.as_bytes(), t(u64::from(pid)), None);
            assert!(c.sessions() <= 100);
        }
        assert!(c.stats().expired >= 900);
        // Idle sessions go at the next sweep.
        feed(&mut c, 1, b"6ARCZkEp000001: from=<a>, size=0, relay=[192.0.2.1]", t(5000), None);
        assert_eq!(c.sessions(), 0);
        assert_eq!(c.stats().expired, 1000);
    }
}
