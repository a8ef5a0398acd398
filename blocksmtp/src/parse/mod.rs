//! Parse: recognise mail-log lines, one line at a time, on bytes.
//!
//! A line is first *framed* — its timestamp, host, syslog tag, pid and message are
//! located — by whichever shape it has: syslog with a BSD or RFC 3339 timestamp
//! ([`syslog`]), a `journalctl -o json` entry ([`journald`]) or an exim main-log line
//! ([`exim`]). The [`MailerFilter`] then keeps only lines of the mail programs (and,
//! if asked, of one host), and the MTA's parser ([`sendmail`], [`postfix`], [`exim`])
//! turns the message into an [`Event`].
//!
//! Nothing here allocates for an ordinary line of a syslog file: framing and the MTA
//! parsers work on borrowed bytes with fixed prefix/suffix checks and `memchr`. Bytes
//! need not be UTF-8; a line of no known shape is [`Parsed::Skipped`], never an error.
use std::{borrow::Cow, net::IpAddr};

pub mod client;
pub mod exim;
pub mod journald;
pub mod postfix;
pub mod sendmail;
pub mod stored;
pub mod syslog;
pub mod time;

pub use time::{RawTime, TimeResolver};

/// A framed log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub time: RawTime<'a>,
    /// Host name written by syslog; empty where the format has none (exim main log).
    pub host: &'a [u8],
    /// Syslog tag (`sm-mta`, `postfix/smtpd`); `exim` for exim main-log lines.
    pub tag: &'a [u8],
    pub pid: Option<u32>,
    pub msg: Cow<'a, [u8]>,
    /// An exim main-log line (not from syslog).
    pub exim_mainlog: bool,
}

/// The mail program a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mta {
    Sendmail,
    Postfix,
    Exim,
}

impl Mta {
    pub fn name(self) -> &'static str {
        match self {
            Mta::Sendmail => "sendmail",
            Mta::Postfix => "postfix",
            Mta::Exim => "exim",
        }
    }
}

impl std::fmt::Display for Mta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a guess was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuessKind {
    /// `RCPT TO` an address that does not exist.
    UnknownRecipient,
    /// `VRFY name`.
    Vrfy,
    /// `EXPN name`.
    Expn,
}

/// What one mail-program line means for detection. Byte slices borrow the line;
/// `target` (recipient / probed name) and `session` (queue id) are the MTA's text,
/// `target` being attacker-controlled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A guess whose client address is on the line itself.
    Guess { client: IpAddr, kind: GuessKind, target: &'a [u8], session: Option<&'a [u8]> },
    /// A guess without the client's address (sendmail's `<x>... User unknown`):
    /// attributed through its queue id `session`.
    PendingGuess { session: &'a [u8], kind: GuessKind, target: &'a [u8] },
    /// sendmail names the client of queue id `session`; `ends`: the transaction is over.
    Session { session: Option<&'a [u8]>, client: IpAddr, ends: bool },
    /// The client had mail accepted: Postfix's `QID: client=name[ip]` (written at the
    /// first accepted recipient), sendmail's `from=… nrcpts=N … relay=` with N > 0 (which
    /// also ends the transaction, like [`Event::Session`]). Evidence of a real sender.
    Delivered { session: Option<&'a [u8]>, client: IpAddr },
    /// sendmail's `Possible SMTP RCPT flood`: at least BadRcptThrottle (3) rejected
    /// recipients in this session.
    Flood { session: Option<&'a [u8]>, client: IpAddr },
    /// sendmail's `possible SMTP attack: command=VRFY|EXPN, count=N`: N probes so far.
    ProbeAttack { session: Option<&'a [u8]>, client: IpAddr, kind: GuessKind, count: u32 },
    /// A guess whose client cannot be read safely (ambiguous or missing address).
    Unattributable { kind: GuessKind, target: &'a [u8] },
    /// Any other line of a mail program.
    Other,
}

/// Which lines count: those of the mail programs (by syslog tag) and optionally of
/// one host.
///
/// Default tags: `sm-mta`, `sendmail`, `sendmail-mta`, `postfix` and every
/// `postfix/…` or `postfix-instance/…` program, `exim`, `exim4`, and exim's own
/// main-log lines. `names` replaces that set: a name matches a tag equal to it or
/// starting with `name/` (so `postfix` still takes `postfix/smtpd`); exim main-log
/// lines count as tag `exim`. `host` keeps only syslog/journald lines whose host field
/// equals it (exim main-log lines have no host field and are kept: such a file is
/// written on the mail server itself).
///
/// Journal entries must also pass [`JournalTrust`]: the syslog tag is the sender's
/// word, journald's `_UID`/`_EXE`/`_COMM` are not.
#[derive(Clone, Debug)]
pub struct MailerFilter {
    names: Vec<Vec<u8>>,
    host: Option<Vec<u8>>,
    trust: JournalTrust,
}

impl Default for MailerFilter {
    fn default() -> Self {
        Self::new(&[], None)
    }
}

impl MailerFilter {
    pub fn new(names: &[String], host: Option<&str>) -> Self {
        Self::with_rules(names, host, JournalTrust::mta_defaults())
    }

    /// As [`Self::new`], with these journal trust rules (their user lookups made once).
    pub fn with_rules(names: &[String], host: Option<&str>, trust: JournalTrust) -> Self {
        Self { names: names.iter().map(|n| n.as_bytes().to_vec()).collect(), host: host.map(|h| h.as_bytes().to_vec()), trust }
    }

    /// The default tags without journal trust rules, allocating nothing: a placeholder
    /// while the real filter is lent out, not for filtering.
    pub const fn none() -> Self {
        Self { names: Vec::new(), host: None, trust: JournalTrust { uids: None, exes: Vec::new(), comms: Vec::new() } }
    }

    /// Replace the journal trust rules.
    pub fn with_trust(mut self, trust: JournalTrust) -> Self {
        self.trust = trust;
        self
    }

    pub fn trust(&self) -> &JournalTrust {
        &self.trust
    }

    /// The MTA whose parser reads this frame, or `None` when the line is not counted.
    pub fn mta_of(&self, f: &Frame<'_>) -> Option<MtaHint> {
        if let Some(h) = &self.host
            && !f.exim_mainlog
            && f.host != h.as_slice()
        {
            return None;
        }
        let tag = f.tag;
        if self.names.is_empty() {
            return default_mta(tag).map(MtaHint::Known);
        }
        let named = self.names.iter().any(|n| {
            tag == n.as_slice() || (tag.len() > n.len() && tag.starts_with(n) && tag[n.len()] == b'/')
        });
        if !named {
            return None;
        }
        Some(default_mta(tag).map_or(MtaHint::Any, MtaHint::Known))
    }
}

/// Which journal entries came from the MTA, judged by the fields journald records about
/// the sending process (a client cannot set them): `_UID` must be one of `uids` (when
/// journald recorded it); `_EXE` one of `exes` (an entry ending in `/` takes every
/// program under that directory); where journald could not read `_EXE` (the process
/// had exited), `_COMM` one of `comms`; with neither, only a non-root uid of `uids` (a
/// user only the MTA runs as: postfix, Debian-exim) vouches for it. An entry with
/// no `_UID` at all was not received by journald from a local process (hand-written
/// JSON fed to replay or stdin) and is judged by its tag alone.
///
/// Defaults fit Debian's sendmail (root, /usr/libexec/sendmail/sendmail behind
/// /usr/sbin/sendmail-mta since Debian 12, /usr/lib/sm.bin/sendmail before), Postfix (user postfix, /usr/lib/postfix/sbin/) and Exim
/// (Debian-exim, /usr/sbin/exim4), and the same MTAs' paths on other distributions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalTrust {
    uids: Option<Uids>,
    pub exes: Vec<String>,
    pub comms: Vec<String>,
}

/// Trusted users (names or uids), their uids looked up through NSS when first needed:
/// a replay of syslog files never needs them, and the lookup loads NSS modules (half a
/// millisecond of a 300,000-line replay). Shared by the clones the parsing threads use.
#[derive(Clone, Debug)]
struct Uids(std::sync::Arc<(Vec<String>, std::sync::OnceLock<Vec<u32>>)>);

impl Uids {
    fn of(users: Vec<String>) -> Self {
        Self(std::sync::Arc::new((users, std::sync::OnceLock::new())))
    }

    /// Root always, then each user that exists here (a missing one is skipped).
    fn get(&self) -> &[u32] {
        self.0.1.get_or_init(|| {
            let mut uids: Vec<u32> = self.0.0.iter().filter_map(|u| u.parse().ok().or_else(|| user_uid(u))).collect();
            uids.push(0);
            uids.sort_unstable();
            uids.dedup();
            uids
        })
    }
}

impl PartialEq for Uids {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Uids {}

/// Users the MTAs run as (resolved at start; missing ones are skipped).
pub const MTA_USERS: &[&str] = &["root", "postfix", "Debian-exim", "exim", "mail"];
pub const MTA_EXES: &[&str] = &[
    "/usr/lib/sm.bin/",
    "/usr/sbin/sendmail",
    "/usr/sbin/sendmail-mta",
    "/usr/sbin/sendmail.sendmail",
    "/usr/libexec/sendmail/",
    "/usr/lib/postfix/",
    "/usr/libexec/postfix/",
    "/usr/sbin/exim4",
    "/usr/sbin/exim",
    "/usr/bin/exim",
];
pub const MTA_COMMS: &[&str] =
    &["sendmail", "sm-mta", "sendmail-mta", "smtpd", "postscreen", "smtp", "cleanup", "qmgr", "exim4", "exim"];

impl JournalTrust {
    pub fn mta_defaults() -> Self {
        Self {
            uids: Some(Uids::of(MTA_USERS.iter().map(|s| s.to_string()).collect())),
            exes: MTA_EXES.iter().map(|s| s.to_string()).collect(),
            comms: MTA_COMMS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The defaults, with `users` (names or uids) and `exes` replacing theirs where given.
    /// A user that does not exist here is skipped (root is always trusted).
    pub fn configured(users: &[String], exes: &[String]) -> Self {
        let mut t = Self::mta_defaults();
        if !users.is_empty() {
            t.uids = Some(Uids::of(users.to_vec()));
        }
        if !exes.is_empty() {
            t.exes = exes.to_vec();
        }
        t
    }

    /// These uids, programs and process names exactly.
    pub fn exactly(uids: &[u32], exes: &[String], comms: &[String]) -> Self {
        let uids = Uids::of(uids.iter().map(u32::to_string).collect());
        let _ = uids.0.1.set(uids.0.0.iter().filter_map(|u| u.parse().ok()).collect());
        Self { uids: Some(uids), exes: exes.to_vec(), comms: comms.to_vec() }
    }

    /// The trusted uids (looked up now if not yet).
    pub fn uids(&self) -> &[u32] {
        self.uids.as_ref().map_or(&[], Uids::get)
    }

    /// Whether an entry with these trusted fields came from the MTA.
    pub fn trusts(&self, o: &journald::Origin<'_>) -> bool {
        let Some(uid) = o.uid else { return true };
        if !self.uids().contains(&uid) {
            return false;
        }
        if let Some(exe) = &o.exe {
            // A binary replaced by an upgrade while running: still the MTA's path.
            let exe = exe.strip_suffix(" (deleted)").unwrap_or(exe);
            return self.exes.iter().any(|t| if t.ends_with('/') { exe.starts_with(t.as_str()) } else { exe == t });
        }
        match &o.comm {
            Some(c) => self.comms.iter().any(|t| t == c),
            // Only a dedicated MTA user's uid vouches on its own: root runs everything
            // (`logger` that exits at once leaves journald neither _EXE nor _COMM).
            None => uid != 0,
        }
    }
}

/// The uid of a local user, through NSS.
pub fn user_uid(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes only into pw and buf (sizes given), result into out.
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some(pw.pw_uid)
}

/// Which parser reads a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtaHint {
    Known(Mta),
    /// A tag chosen with `--mailer-syslog-name` that names no known program: each
    /// parser is tried in turn.
    Any,
}

fn default_mta(tag: &[u8]) -> Option<Mta> {
    // By the first byte: most lines' tags are other programs' (CRON, sshd, kernel),
    // refused here without a comparison.
    match tag.first()? {
        b's' => matches!(tag, b"sm-mta" | b"sendmail" | b"sendmail-mta").then_some(Mta::Sendmail),
        b'e' => matches!(tag, b"exim" | b"exim4").then_some(Mta::Exim),
        b'p' => (tag == b"postfix" || postfix_tag(tag)).then_some(Mta::Postfix),
        _ => None,
    }
}

/// `postfix/PROG`, `postfix/SERVICE/PROG` (master.cf's `-o syslog_name=postfix/submission`)
/// and the multi-instance `postfix-NAME/…`: every part a plain name (no `.`, `..` or
/// empty part: `postfix/../../evil` is not Postfix).
fn postfix_tag(t: &[u8]) -> bool {
    let Some(slash) = memchr::memchr(b'/', t) else { return false };
    let (inst, rest) = (&t[..slash], &t[slash + 1..]);
    let name = |p: &[u8]| !p.is_empty() && p.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    let inst_ok = inst == b"postfix" || inst.strip_prefix(b"postfix-").is_some_and(name);
    inst_ok && rest.split(|b| *b == b'/').all(name)
}

/// Parse a message with the right MTA parser.
pub fn parse_message(hint: MtaHint, msg: &[u8]) -> (Mta, Event<'_>) {
    match hint {
        MtaHint::Known(Mta::Sendmail) => (Mta::Sendmail, sendmail::parse(msg)),
        MtaHint::Known(Mta::Postfix) => (Mta::Postfix, postfix::parse(msg)),
        MtaHint::Known(Mta::Exim) => (Mta::Exim, exim::parse(msg)),
        MtaHint::Any => {
            for (mta, f) in [
                (Mta::Sendmail, sendmail::parse as fn(&[u8]) -> Event<'_>),
                (Mta::Postfix, postfix::parse),
                (Mta::Exim, exim::parse),
            ] {
                let e = f(msg);
                if e != Event::Other {
                    return (mta, e);
                }
            }
            (Mta::Sendmail, Event::Other)
        }
    }
}

/// The outcome of parsing one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'f, 'a> {
    /// No known line shape (or a journald entry without a message).
    Skipped,
    /// A well-formed line of another program or host.
    Foreign,
    /// A line of a mail program.
    Mail { frame: &'f Frame<'a>, mta: Mta, event: Event<'f> },
}

/// Drop a trailing `\n` / `\r\n`.
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Frame and parse `line`, handing the result to `f` (the result borrows the line,
/// or a journald entry decoded from it, for the duration of the call).
pub fn with_parsed<R>(line: &[u8], filter: &MailerFilter, f: impl FnOnce(Parsed<'_, '_>) -> R) -> R {
    let line = trim_eol(line);
    if line.first() == Some(&b'{') {
        return match journald::parse(line) {
            Some(j) if !filter.trust.trusts(&j.origin) => f(Parsed::Foreign),
            Some(j) => {
                let frame = j.as_frame();
                dispatch(&frame, filter, f)
            }
            None => f(Parsed::Skipped),
        };
    }
    match syslog::frame(line).or_else(|| exim::frame(line)) {
        Some(frame) => dispatch(&frame, filter, f),
        None => f(Parsed::Skipped),
    }
}

fn dispatch<R>(frame: &Frame<'_>, filter: &MailerFilter, f: impl FnOnce(Parsed<'_, '_>) -> R) -> R {
    match filter.mta_of(frame) {
        None => f(Parsed::Foreign),
        Some(hint) => {
            let (mta, event) = parse_message(hint, &frame.msg);
            f(Parsed::Mail { frame, mta, event })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(line: &[u8], filter: &MailerFilter) -> String {
        with_parsed(line, filter, |p| match p {
            Parsed::Skipped => "skipped".to_string(),
            Parsed::Foreign => "foreign".to_string(),
            Parsed::Mail { mta, event, .. } => format!("{mta}:{}", match event {
                Event::Guess { .. } => "guess",
                Event::PendingGuess { .. } => "pending",
                Event::Session { .. } => "session",
                Event::Delivered { .. } => "delivered",
                Event::Flood { .. } => "flood",
                Event::ProbeAttack { .. } => "attack",
                Event::Unattributable { .. } => "unattributable",
                Event::Other => "other",
            }),
        })
    }

    #[test]
    fn formats_and_default_filter() {
        let d = MailerFilter::default();
        let cases: &[(&[u8], &str)] = &[
            (b"2026-11-27T12:35:47.342721+00:00 mx sm-mta[18868]: 6ARCZkEp018868: <tpwjzbwb15@example.com>... User unknown\n", "sendmail:pending"),
            (b"Nov 27 12:35:47 mx sm-mta[18868]: 6ARCZkEp018868: [192.0.2.66]: Possible SMTP RCPT flood, throttling.\r\n", "sendmail:flood"),
            (b"Nov 27 12:35:45 mx sendmail[18808]: alias database /etc/mail/aliases rebuilt by root", "sendmail:other"),
            (b"Nov 27 12:35:45 mx bsh-harness: harness: syslog receiver up (impl=rsyslog)", "foreign"),
            (b"Nov 27 12:35:45 mx cron[1]: [192.0.2.66]: VRFY root", "foreign"),
            (b"Nov 27 12:00:00 mx postfix/smtpd[4242]: NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 550 5.1.1 <a@example.com>: Recipient address rejected: User unknown in local recipient table; from=<> to=<a@example.com> proto=ESMTP helo=<x>", "postfix:guess"),
            (b"Nov 27 12:00:00 mx postfix-out/smtpd[4242]: connect from unknown[192.0.2.66]", "postfix:other"),
            (b"Nov 27 12:00:00 mx postfix/submission/smtpd[4242]: connect from unknown[192.0.2.66]", "postfix:other"),
            (b"Nov 27 12:00:00 mx postfix/../../evil[4242]: NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 550 5.1.1 <a@example.com>: Recipient address rejected: User unknown in local recipient table; from=<> to=<a@example.com> proto=ESMTP helo=<x>", "foreign"),
            (b"Nov 27 12:00:00 mx postfix//smtpd[4242]: connect from unknown[192.0.2.66]", "foreign"),
            (b"Nov 27 12:00:00 mx postfix-/smtpd[4242]: connect from unknown[192.0.2.66]", "foreign"),
            (b"2026-11-27 12:00:00 H=[192.0.2.66] F=<> rejected RCPT <a@example.com>: Unknown user", "exim:guess"),
            (b"Nov 27 12:00:00 mx exim[77]: H=[192.0.2.66] F=<> rejected RCPT <a@example.com>: Unknown user", "exim:guess"),
            (b"Nov 27 12:00:00 mx exim[77]: 2026-11-27 12:00:00 H=[192.0.2.66] F=<> rejected RCPT <a@example.com>: Unknown user", "exim:guess"),
            (b"2026-11-27T12:00:00.000000+00:00 mx exim4[77]: 2026-11-27 12:00:00 +0000 [77] H=(x) [192.0.2.66]:4 F=<> rejected RCPT <a@example.com>: Rejected for too many bad recipients", "exim:guess"),
            (br#"{"MESSAGE":"2026-11-27 12:00:00 H=[192.0.2.66] F=<> rejected RCPT <a@example.com>: Unrouteable address","SYSLOG_IDENTIFIER":"exim"}"#, "exim:guess"),
            (br#"{"MESSAGE":"6ARCZkEp018868: <a@example.com>... User unknown","SYSLOG_IDENTIFIER":"sm-mta","_PID":"18868","_HOSTNAME":"mx","__REALTIME_TIMESTAMP":"1795782947342721"}"#, "sendmail:pending"),
            (b"{not json", "skipped"),
            (b"", "skipped"),
            (b"\xff\xfe\x00garbage\x00", "skipped"),
        ];
        for (line, want) in cases {
            assert_eq!(kind(line, &d), *want, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn journal_entries_count_only_from_the_mta_processes() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let d = MailerFilter::default().with_trust(JournalTrust::exactly(&[0, 107], &strings(MTA_EXES), &strings(MTA_COMMS)));
        let msg = r#""MESSAGE":"6ARCZkEp018868: <a@example.com>... User unknown","SYSLOG_IDENTIFIER":"sm-mta""#;
        let pf = r#""MESSAGE":"NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 550 5.1.1 <a@example.com>: Recipient address rejected: User unknown in local recipient table; from=<> to=<a@example.com> proto=ESMTP helo=<x>","SYSLOG_IDENTIFIER":"postfix/smtpd""#;
        let cases: &[(String, &str)] = &[
            // Debian's sendmail: root, /usr/sbin/sendmail-mta -> /usr/lib/sm.bin/sendmail.
            (format!(r#"{{{msg},"_UID":"0","_EXE":"/usr/lib/sm.bin/sendmail","_COMM":"sendmail-mta"}}"#), "sendmail:pending"),
            (format!(r#"{{{msg},"_UID":"0","_EXE":"/usr/lib/sm.bin/sendmail (deleted)"}}"#), "sendmail:pending"),
            // Postfix's smtpd as user postfix.
            (format!(r#"{{{pf},"_UID":"107","_EXE":"/usr/lib/postfix/sbin/smtpd","_COMM":"smtpd"}}"#), "postfix:guess"),
            // journald could not read /proc (the process had exited): the name, then the uid.
            (format!(r#"{{{pf},"_UID":"107","_COMM":"smtpd"}}"#), "postfix:guess"),
            (format!(r#"{{{pf},"_UID":"107"}}"#), "postfix:guess"),
            (format!(r#"{{{msg},"_UID":"0"}}"#), "foreign"),
            // Forged with logger: by root, by nobody, by postfix's uid running another program.
            (format!(r#"{{{msg},"_UID":"0","_EXE":"/usr/bin/logger","_COMM":"logger"}}"#), "foreign"),
            (format!(r#"{{{msg},"_UID":"65534","_EXE":"/usr/lib/sm.bin/sendmail"}}"#), "foreign"),
            (format!(r#"{{{pf},"_UID":"65534","_COMM":"smtpd"}}"#), "foreign"),
            (format!(r#"{{{pf},"_UID":"107","_COMM":"logger"}}"#), "foreign"),
            (format!(r#"{{{pf},"_UID":"107","_EXE":"/usr/lib/postfixevil/smtpd"}}"#), "foreign"),
            (format!(r#"{{{pf},"_UID":"0","_EXE":"/usr/sbin/sendmail-mta2"}}"#), "foreign"),
        ];
        for (line, want) in cases {
            assert_eq!(kind(line.as_bytes(), &d), *want, "{line}");
        }
        assert_eq!(user_uid("root"), Some(0));
        let c = JournalTrust::configured(&["107".into(), "no-such-user-here".into()], &["/opt/mta/bin/".into()]);
        assert_eq!((c.uids(), &c.exes[..]), (&[0, 107][..], &["/opt/mta/bin/".to_string()][..]));
        assert!(JournalTrust::mta_defaults().uids().contains(&0));
    }

    #[test]
    fn named_tags_and_host() {
        let f = MailerFilter::new(&["postfix".to_string()], None);
        assert_eq!(kind(b"Nov 27 12:00:00 mx postfix/postscreen[1]: CONNECT from [192.0.2.66]:1 to [192.0.2.25]:25", &f), "postfix:other");
        assert_eq!(kind(b"Nov 27 12:00:00 mx sm-mta[1]: x", &f), "foreign");
        let f = MailerFilter::new(&["mta".to_string()], None);
        assert_eq!(kind(b"Nov 27 12:00:00 mx mta[1]: 6ARCZkEp018868: [192.0.2.66]: VRFY root", &f), "sendmail:guess");
        assert_eq!(kind(b"Nov 27 12:00:00 mx mta[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 550 5.1.1 <a@b>: Recipient address rejected: User unknown in local recipient table; from=<>", &f), "postfix:guess");
        assert_eq!(kind(b"Nov 27 12:00:00 mx mta-other[1]: x", &f), "foreign");
        let f = MailerFilter::new(&[], Some("mx1"));
        assert_eq!(kind(b"Nov 27 12:00:00 mx1 sm-mta[1]: x", &f), "sendmail:other");
        assert_eq!(kind(b"Nov 27 12:00:00 mx2 sm-mta[1]: x", &f), "foreign");
        assert_eq!(kind(b"2026-11-27 12:00:00 H=[192.0.2.66] F=<> rejected RCPT <a@example.com>: Unknown user", &f), "exim:guess");
    }
}
