//! Synthetic mail logs shaped on real sendmail 8.17 / Postfix / exim output, for the
//! replay tests and the replay benchmark. Deterministic for a given seed; standard
//! library only (the blocksmtp integration tests include this file by path).
//!
//! ```
//! use blocksmtp_tests::loggen::{LogGen, Style};
//! let mut g = LogGen::new(Style::Rfc3339, 1, 1_800_000_000);
//! g.sendmail_harvest("192.0.2.66".parse().unwrap(), 20, 1.0, true);
//! g.sendmail_legit("192.0.2.10".parse().unwrap(), 2, 1);
//! let log: Vec<u8> = g.finish();
//! assert!(log.split(|&b| b == b'\n').count() > 20);
//! ```
use std::net::IpAddr;

use blocksmtp::parse::time::civil_from_days;

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `Nov 27 12:35:47 mx sm-mta[18868]: …`
    Bsd,
    /// `2026-11-27T12:35:47.342721+00:00 mx sm-mta[18868]: …`
    Rfc3339,
    /// `journalctl -o json`
    Journald,
}

/// A small deterministic PRNG (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A lowercase word of `min..=max` letters.
    pub fn word(&mut self, min: usize, max: usize) -> String {
        let len = min + self.below((max - min + 1) as u64) as usize;
        (0..len).map(|_| (b'a' + self.below(26) as u8) as char).collect()
    }
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// sendmail's way of writing a client: `[192.0.2.66]`, `[IPv6:2001:db8:0:0:0:0:0:66]`.
pub fn sendmail_bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => {
            let s = v6.segments().iter().map(|s| format!("{s:x}")).collect::<Vec<_>>().join(":");
            format!("[IPv6:{s}]")
        }
    }
}

fn json_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// Builds a log in memory, advancing its own clock.
#[derive(Clone, Debug)]
pub struct LogGen {
    pub rng: Rng,
    style: Style,
    /// Microseconds since the epoch.
    now_us: i64,
    host: String,
    next_pid: u32,
    seq: u64,
    out: Vec<u8>,
    lines: u64,
}

impl LogGen {
    /// A generator writing `style` lines from `start` (Unix seconds), host `mx`.
    pub fn new(style: Style, seed: u64, start: i64) -> Self {
        Self {
            rng: Rng::new(seed),
            style,
            now_us: start * 1_000_000,
            host: "mx".into(),
            next_pid: 18_000,
            seq: 0,
            out: Vec::new(),
            lines: 0,
        }
    }

    /// Write further lines as host `name`.
    pub fn set_host(&mut self, name: &str) {
        self.host = name.to_string();
    }

    /// Move the clock forward.
    pub fn advance(&mut self, secs: f64) {
        self.now_us += (secs * 1e6) as i64;
    }

    /// Current time, Unix seconds.
    pub fn now(&self) -> i64 {
        self.now_us.div_euclid(1_000_000)
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    pub fn bytes(&self) -> usize {
        self.out.len()
    }

    /// The log so far.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    /// Take the log so far, keep generating into an empty buffer.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn pid(&mut self) -> u32 {
        self.next_pid += 1 + self.rng.below(3) as u32;
        if self.next_pid > 4_000_000 {
            self.next_pid = 1000;
        }
        self.next_pid
    }

    /// A sendmail queue id for `pid`: 8 characters of time and sequence + pid.
    pub fn queue_id(&mut self, pid: u32) -> String {
        self.seq += 1;
        let mut s = String::with_capacity(14);
        let mut v = (self.now() as u64).wrapping_mul(62) ^ self.seq;
        for _ in 0..8 {
            s.push(B62[(v % 62) as usize] as char);
            v /= 62;
        }
        s.push_str(&format!("{pid:06}"));
        s
    }

    /// Write one syslog line `tag[pid]: msg` in the generator's style.
    pub fn syslog(&mut self, tag: &str, pid: Option<u32>, msg: &str) {
        let secs = self.now_us.div_euclid(1_000_000);
        let micros = self.now_us.rem_euclid(1_000_000);
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        let (hh, mm, ss) = (sod / 3600, sod / 60 % 60, sod % 60);
        let tagpid = match pid {
            Some(p) => format!("{tag}[{p}]"),
            None => tag.to_string(),
        };
        let line = match self.style {
            Style::Bsd => {
                format!("{} {d:>2} {hh:02}:{mm:02}:{ss:02} {} {tagpid}: {msg}\n", MONTHS[m as usize - 1], self.host)
            }
            Style::Rfc3339 => format!(
                "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}+00:00 {} {tagpid}: {msg}\n",
                self.host
            ),
            Style::Journald => {
                let mut l = String::with_capacity(msg.len() + 160);
                l.push_str(&format!("{{\"__REALTIME_TIMESTAMP\":\"{}\",\"_HOSTNAME\":\"", self.now_us));
                json_escape(&self.host, &mut l);
                l.push_str("\",\"SYSLOG_IDENTIFIER\":\"");
                json_escape(tag, &mut l);
                l.push('"');
                if let Some(p) = pid {
                    l.push_str(&format!(",\"_PID\":\"{p}\""));
                }
                l.push_str(",\"PRIORITY\":\"6\",\"MESSAGE\":\"");
                json_escape(msg, &mut l);
                l.push_str("\"}\n");
                l
            }
        };
        self.out.extend_from_slice(line.as_bytes());
        self.lines += 1;
    }

    /// Write one exim main-log line (`2026-11-27 12:00:00 msg`).
    pub fn exim(&mut self, msg: &str) {
        let secs = self.now();
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        let line = format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} {msg}\n", sod / 3600, sod / 60 % 60, sod % 60);
        self.out.extend_from_slice(line.as_bytes());
        self.lines += 1;
    }

    /// Raw bytes as one line (junk); a newline is added.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        self.out.push(b'\n');
        self.lines += 1;
    }

    fn relay(&mut self, ip: IpAddr, name: Option<&str>) -> String {
        match name {
            Some(n) => format!("{n} {}", sendmail_bracket(ip)),
            None => sendmail_bracket(ip),
        }
    }

    /// A sendmail session delivering `ok` recipients, with `unknown` mistyped ones
    /// (each logged as `User unknown` before the `from=` line).
    pub fn sendmail_legit(&mut self, ip: IpAddr, ok: u32, unknown: u32) {
        let pid = self.pid();
        let qid = self.queue_id(pid);
        for _ in 0..unknown {
            let w = self.rng.word(4, 9);
            self.syslog("sm-mta", Some(pid), &format!("{qid}: <{w}@example.com>... User unknown"));
            self.advance(0.2);
        }
        let sender = self.rng.word(3, 8);
        let relay = self.relay(ip, Some("mail.example.net"));
        let size = 500 + self.rng.below(50_000);
        self.syslog(
            "sm-mta",
            Some(pid),
            &format!(
                "{qid}: from=<{sender}@example.net>, size={size}, class=0, nrcpts={ok}, msgid=<{}.{}@example.net>, proto=ESMTP, daemon=MTA-v4, relay={relay}",
                self.seq, sender
            ),
        );
        if ok > 0 {
            let dpid = self.pid();
            self.advance(0.5);
            for _ in 0..ok {
                let r = self.rng.word(3, 8);
                self.syslog(
                    "sm-mta",
                    Some(dpid),
                    &format!(
                        "{qid}: to=<{r}@example.com>, delay=00:00:01, xdelay=00:00:01, mailer=local, pri={}, dsn=2.0.0, stat=Sent",
                        30_000 + size
                    ),
                );
            }
        }
    }

    /// A sendmail harvest: `guesses` unknown recipients `spacing` seconds apart in one
    /// transaction, sendmail's flood line after the third (when `flood`), then the
    /// `from=` line that names the client.
    pub fn sendmail_harvest(&mut self, ip: IpAddr, guesses: u32, spacing: f64, flood: bool) {
        let pid = self.pid();
        let qid = self.queue_id(pid);
        self.sendmail_transaction(ip, pid, &qid, guesses, spacing, flood, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn sendmail_transaction(
        &mut self,
        ip: IpAddr,
        pid: u32,
        qid: &str,
        guesses: u32,
        spacing: f64,
        flood: bool,
        name: Option<&str>,
    ) {
        let relay = self.relay(ip, name);
        for i in 0..guesses {
            let w = self.rng.word(5, 10);
            self.syslog("sm-mta", Some(pid), &format!("{qid}: <{w}{i}@example.com>... User unknown"));
            if flood && i == 2 {
                self.syslog("sm-mta", Some(pid), &format!("{qid}: {relay}: Possible SMTP RCPT flood, throttling."));
            }
            self.advance(spacing);
        }
        let s = self.rng.word(5, 8);
        self.syslog(
            "sm-mta",
            Some(pid),
            &format!("{qid}: from=<{s}@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay={relay}"),
        );
    }

    /// One connection that RSETs between transactions: the pid stays, the queue id
    /// changes for each transaction of `per_txn` guesses; no flood line (each stays
    /// under sendmail's throttle).
    pub fn sendmail_rset_cycle(&mut self, ip: IpAddr, txns: u32, per_txn: u32, spacing: f64) {
        let pid = self.pid();
        for _ in 0..txns {
            let qid = self.queue_id(pid);
            self.sendmail_transaction(ip, pid, &qid, per_txn, spacing, false, None);
        }
    }

    /// A harvest through sendmail's `ruleset=check_rcpt` rejects (the client on each
    /// line; what fail2ban's sendmail-reject filter reads).
    pub fn sendmail_check_rcpt_harvest(&mut self, ip: IpAddr, guesses: u32, spacing: f64) {
        let pid = self.pid();
        let qid = self.queue_id(pid);
        let relay = self.relay(ip, None);
        for i in 0..guesses {
            let w = self.rng.word(5, 10);
            self.syslog(
                "sm-mta",
                Some(pid),
                &format!("{qid}: ruleset=check_rcpt, arg1=<{w}{i}@example.com>, relay={relay}, reject=550 5.1.1 <{w}{i}@example.com>... User unknown"),
            );
            self.advance(spacing);
        }
        let s = self.rng.word(5, 8);
        self.syslog(
            "sm-mta",
            Some(pid),
            &format!("{qid}: from=<{s}@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay={relay}"),
        );
    }

    /// VRFY / EXPN probes of `names`, with sendmail's attack line after the sixth.
    pub fn sendmail_vrfy(&mut self, ip: IpAddr, names: u32, spacing: f64) {
        let pid = self.pid();
        let qid = self.queue_id(pid);
        let relay = self.relay(ip, None);
        for i in 0..names {
            let cmd = if i % 2 == 0 { "VRFY" } else { "EXPN" };
            let w = self.rng.word(4, 9);
            self.syslog("sm-mta", Some(pid), &format!("{qid}: {relay}: {cmd} {w}"));
            if i == 5 {
                self.syslog("sm-mta", Some(pid), &format!("{qid}: {relay}: possible SMTP attack: command={cmd}, count=6"));
            }
            self.advance(spacing);
        }
    }

    /// Postfix: `unknown` rejected recipients from `ip` (`unknown[ip]` or `name[ip]`).
    pub fn postfix_harvest(&mut self, ip: IpAddr, name: Option<&str>, unknown: u32, spacing: f64) {
        let pid = self.pid();
        let client = format!("{}[{ip}]", name.unwrap_or("unknown"));
        self.syslog("postfix/smtpd", Some(pid), &format!("connect from {client}"));
        for _ in 0..unknown {
            let w = self.rng.word(4, 10);
            self.syslog(
                "postfix/smtpd",
                Some(pid),
                &format!("NOQUEUE: reject: RCPT from {client}: 550 5.1.1 <{w}@example.com>: Recipient address rejected: User unknown in local recipient table; from=<x@example.net> to=<{w}@example.com> proto=ESMTP helo=<harvester.invalid>"),
            );
            self.advance(spacing);
        }
        self.syslog("postfix/smtpd", Some(pid), &format!("disconnect from {client} ehlo=1 mail=1 rcpt=0/{unknown} quit=1 commands=3/{}", 3 + unknown));
    }

    /// Postfix: an accepted message, plus greylisting and relay-denied rejects that
    /// are not guesses.
    pub fn postfix_legit(&mut self, ip: IpAddr) {
        let pid = self.pid();
        let client = format!("mail.example.net[{ip}]");
        self.syslog("postfix/smtpd", Some(pid), &format!("connect from {client}"));
        self.syslog("postfix/smtpd", Some(pid), &format!("NOQUEUE: reject: RCPT from {client}: 450 4.2.0 <a@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html; from=<b@example.net> to=<a@example.com> proto=ESMTP helo=<mail.example.net>"));
        self.syslog("postfix/smtpd", Some(pid), &format!("NOQUEUE: reject: RCPT from {client}: 554 5.7.1 <v@example.org>: Relay access denied; from=<b@example.net> to=<v@example.org> proto=ESMTP helo=<mail.example.net>"));
        self.syslog("postfix/smtpd", Some(pid), &format!("4F1A2B{:04X}: client={client}", self.seq % 0xffff));
        let qpid = self.pid();
        self.syslog("postfix/qmgr", Some(qpid), "4F1A2B3C4D: from=<b@example.net>, size=1234, nrcpt=1 (queue active)");
        self.syslog("postfix/smtpd", Some(pid), &format!("disconnect from {client} ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"));
    }

    /// exim: `unknown` rejected recipients from `ip`, with `helo` in parentheses.
    pub fn exim_harvest(&mut self, ip: IpAddr, helo: &str, unknown: u32, spacing: f64) {
        let port = 40_000 + self.rng.below(20_000);
        for _ in 0..unknown {
            let w = self.rng.word(4, 10);
            self.exim(&format!("H=({helo}) [{ip}]:{port} I=[192.0.2.25]:25 F=<x@example.net> rejected RCPT <{w}@example.com>: Unknown user"));
            self.advance(spacing);
        }
    }

    /// exim: an accepted message and a relay refusal (not guesses).
    pub fn exim_legit(&mut self, ip: IpAddr) {
        let port = 40_000 + self.rng.below(20_000);
        self.exim(&format!("1tXyzA-000Abc-1F <= b@example.net H=mail.example.net [{ip}]:{port} I=[192.0.2.25]:25 P=esmtps S=2345 id=x@example.net"));
        self.exim(&format!("H=mail.example.net [{ip}]:{port} I=[192.0.2.25]:25 F=<b@example.net> rejected RCPT <v@example.org>: relay not permitted"));
        self.exim("1tXyzA-000Abc-1F => alice <alice@example.com> R=local_user T=mail_spool");
        self.exim("1tXyzA-000Abc-1F Completed");
    }

    /// Lines of other programs.
    pub fn noise(&mut self, n: u32) {
        for _ in 0..n {
            let pid = self.pid();
            match self.rng.below(4) {
                0 => self.syslog("CRON", Some(pid), "(root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)"),
                1 => self.syslog("sshd", Some(pid), "Connection closed by 198.51.100.7 port 50022 [preauth]"),
                2 => self.syslog("kernel", None, "[12345.678901] nf_conntrack: table full, dropping packet"),
                _ => self.syslog("dovecot", None, "imap-login: Login: user=<alice>, method=PLAIN, rip=192.0.2.10, lip=192.0.2.25"),
            }
        }
    }

    /// Malformed and binary lines: invalid UTF-8, NULs, a long line, truncated headers.
    pub fn junk(&mut self) {
        self.raw(b"\xff\xfe\xfd binary \x00\x01\x02 junk \x80\x81");
        self.raw(b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00");
        self.raw(b"Nov 27 12:3");
        self.raw(b"2026-11-27T12:35:47.342721+00:00");
        self.raw(b"{\"MESSAGE\": \"truncated");
        self.raw(b"not a log line at all");
        let mut long = b"Nov 27 12:35:47 mx sm-mta[1]: ".to_vec();
        long.extend(std::iter::repeat_n(b'A', 200_000));
        self.raw(&long);
    }

    /// The benchmark mix: ordinary sendmail traffic (deliveries, a few mistyped
    /// recipients, other programs' lines) with `harvesters` check_rcpt harvests of 20
    /// guesses each spread through it, until `lines` lines are written.
    pub fn bench_mix(&mut self, lines: u64, harvesters: u32) {
        let every = (lines / u64::from(harvesters.max(1))).max(1);
        let mut next_harvest = every / 2;
        let mut h = 0u32;
        while self.lines < lines {
            if h < harvesters && self.lines >= next_harvest {
                let ip = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, (h % 250) as u8 + 1));
                self.sendmail_check_rcpt_harvest(ip, 20, 0.5);
                h += 1;
                next_harvest += every;
                continue;
            }
            // Ordinary senders: 65,536 addresses of 198.18.0.0/16 (benchmarking range),
            // 2% of sessions with one mistyped recipient.
            let n = self.rng.below(65_536) as u32;
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(198, 18 + (n >> 16) as u8, (n >> 8) as u8, n as u8));
            match self.rng.below(50) {
                0..=4 => self.noise(1),
                5 => self.sendmail_legit(ip, 1, 1),
                _ => {
                    let ok = 1 + self.rng.below(3) as u32;
                    self.sendmail_legit(ip, ok, 0);
                }
            }
            self.advance(0.05);
        }
    }
}

impl LogGen {
    /// The harvest-heavy benchmark mix: about 40% of the lines are `User unknown`
    /// guesses from `harvesters` sources (198.19.0.0/16, benchmarking range) in short
    /// sessions of 3–8 guesses (a quarter as `ruleset=check_rcpt` rejects, the rest the
    /// short form attributed through the queue id, sendmail's flood line after the
    /// third), among ordinary deliveries and CRON, sshd, kernel and dovecot lines,
    /// until `lines` lines are written.
    pub fn harvest_heavy_mix(&mut self, lines: u64, harvesters: u32) {
        let harvesters = harvesters.max(1);
        while self.lines < lines {
            match self.rng.below(100) {
                0..=29 => {
                    let h = self.rng.below(u64::from(harvesters)) as u32;
                    // Spread over 256 networks: few harvesters share a /24.
                    let ip = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, h as u8, 1 + (h >> 8) as u8));
                    let guesses = 3 + self.rng.below(6) as u32;
                    if self.rng.below(4) == 0 {
                        self.sendmail_check_rcpt_harvest(ip, guesses, 0.3);
                    } else {
                        self.sendmail_harvest(ip, guesses, 0.3, true);
                    }
                }
                30..=69 => {
                    let cmd = ["(root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)", "(root) CMD (   cd / && run-parts --report /etc/cron.hourly)"];
                    let pid = self.pid();
                    let c = cmd[self.rng.below(2) as usize];
                    self.syslog("CRON", Some(pid), c);
                    self.noise(1);
                }
                _ => {
                    let n = self.rng.below(65_536) as u32;
                    let ip = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, (n >> 8) as u8, n as u8));
                    let ok = 1 + self.rng.below(3) as u32;
                    let typo = u32::from(self.rng.below(30) == 0);
                    self.sendmail_legit(ip, ok, typo);
                }
            }
            self.advance(0.01);
        }
    }
}

// ---- distributed harvests and their innocents ------------------------------------

/// A harvest dictionary's head: what botnets try first, on every domain.
pub const HARVEST_NAMES: &[&str] = &[
    "john", "mary", "david", "michael", "sarah", "james", "linda", "robert", "susan", "william", "karen", "richard",
    "lisa", "thomas", "nancy", "charles", "betty", "daniel", "helen", "paul", "sandra", "mark", "donna", "george",
    "carol", "steven", "ruth", "kevin", "sharon", "brian", "laura", "edward", "cynthia", "ronald", "amy", "anthony",
    "angela", "jason", "anna", "frank", "emma", "peter", "julia", "scott", "alice", "eric", "diane", "henry",
];

/// The name of `i` in an endless harvest wordlist: the dictionary's head, then
/// first-name + initial and first.last variants (distinct for every `i`).
pub fn harvest_name(i: usize) -> String {
    let n = HARVEST_NAMES.len();
    let first = HARVEST_NAMES[i % n];
    match i / n {
        0 => first.to_string(),
        k if k <= 26 => format!("{first}{}", (b'a' + (k - 1) as u8) as char),
        k => format!("{first}{k}"),
    }
}

/// Which MTA a scenario's lines are written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Sendmail,
    Postfix,
}

impl Form {
    pub const ALL: [Form; 2] = [Form::Sendmail, Form::Postfix];

    pub fn name(self) -> &'static str {
        match self {
            Form::Sendmail => "sendmail",
            Form::Postfix => "postfix",
        }
    }
}

/// What a session tried, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Try {
    /// RCPT TO this address; `true` when it exists (accepted).
    Rcpt(String, bool),
    /// VRFY (`true`) or EXPN (`false`) of a name (always refused as unknown).
    Probe(bool, String),
}

/// One SMTP session of a scenario.
#[derive(Clone, Debug)]
pub struct Sess {
    /// Start, microseconds since the epoch.
    pub at_us: i64,
    pub ip: IpAddr,
    pub tries: Vec<Try>,
    /// Part of the campaign (its guesses are what a benchmark counts).
    pub campaign: bool,
}

/// A scenario: sessions of a campaign and of innocents, with the addresses of each
/// known to the caller. Deterministic for a seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    /// Unix seconds of the first session.
    pub start: i64,
    pub sessions: Vec<Sess>,
    /// The campaign's client addresses.
    pub campaign: std::collections::BTreeSet<IpAddr>,
    /// Addresses of innocents (whitelisted ones included): none may be banned.
    pub innocents: std::collections::BTreeSet<IpAddr>,
    /// Networks to whitelist for this scenario (CIDR lines).
    pub whitelist: Vec<String>,
    pub rng: Rng,
    /// Wordlist position of the campaign (each shape takes the next slice).
    next_name: usize,
}

/// A scenario written out.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub log: Vec<u8>,
    /// Time (µs since the epoch, as written on its line) and client of every campaign guess.
    pub campaign_guesses: Vec<(i64, IpAddr)>,
    /// Same for innocents' guesses (mistyped and stale recipients).
    pub innocent_guesses: Vec<(i64, IpAddr)>,
}

const HOUR_US: i64 = 3_600_000_000;
const MIN_US: i64 = 60_000_000;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
}

fn v6(segs: [u16; 8]) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::from(segs))
}

impl Scenario {
    /// An empty scenario starting at `start` (Unix seconds).
    pub fn new(name: &str, seed: u64, start: i64) -> Self {
        Self {
            name: name.to_string(),
            start,
            sessions: Vec::new(),
            campaign: Default::default(),
            innocents: Default::default(),
            whitelist: Vec::new(),
            rng: Rng::new(seed),
            next_name: 0,
        }
    }

    fn at(&self, offset_us: i64) -> i64 {
        self.start * 1_000_000 + offset_us
    }

    fn jitter(&mut self, span_us: i64) -> i64 {
        self.rng.below(span_us.max(1) as u64) as i64
    }

    fn push(&mut self, at_us: i64, ip: IpAddr, tries: Vec<Try>, campaign: bool) {
        if campaign {
            self.campaign.insert(ip);
        } else {
            self.innocents.insert(ip);
        }
        self.sessions.push(Sess { at_us, ip, tries, campaign });
    }

    fn names(&mut self, n: usize, domain: &str) -> Vec<Try> {
        let start = self.next_name;
        self.next_name += n;
        (start..start + n).map(|i| Try::Rcpt(format!("{}@{domain}", harvest_name(i)), false)).collect()
    }

    fn valid(&mut self, n: u32, domain: &str) -> Vec<Try> {
        (0..n).map(|_| Try::Rcpt(format!("{}@{domain}", ["alice", "bob", "carol.h", "dave", "erin", "frank.o", "grace", "heidi"][self.rng.below(8) as usize]), true)).collect()
    }

    // ---- campaign shapes ------------------------------------------------------------

    /// One network, many addresses: `addrs` hosts of the IPv4 /24 `net`, `per_addr`
    /// guesses each in one session, spread over `span_min` minutes from `from_min`.
    pub fn one_network_v4(&mut self, net: [u8; 3], addrs: u8, per_addr: usize, from_min: i64, span_min: i64) {
        for i in 0..addrs {
            let at = { let j = self.jitter(span_min * MIN_US); self.at(from_min * MIN_US + j) };
            let ip = v4(net[0], net[1], net[2], 10 + i);
            let tries = self.names(per_addr, "example.com");
            self.push(at, ip, tries, true);
        }
    }

    /// One network, IPv6: one address in each of `addrs` /64s of the /48 `net`.
    pub fn one_network_v6(&mut self, net: [u16; 3], addrs: u16, per_addr: usize, from_min: i64, span_min: i64) {
        for i in 0..addrs {
            let at = { let j = self.jitter(span_min * MIN_US); self.at(from_min * MIN_US + j) };
            let ip = v6([net[0], net[1], net[2], 0x100 + i, 0, 0, 0, 0x25 + self.rng.below(200) as u16]);
            let tries = self.names(per_addr, "example.com");
            self.push(at, ip, tries, true);
        }
    }

    /// Scattered, in rounds: `addrs` addresses in as many /24s of 198.18.0.0/16, two or
    /// three guesses each on one domain per round; the same addresses come back 30–60
    /// minutes later for the next slice of the wordlist. `probes`: every fifth address
    /// uses VRFY/EXPN instead of RCPT.
    pub fn scattered_rounds(&mut self, addrs: u8, rounds: u32, from_min: i64, probes: bool) {
        let ips: Vec<IpAddr> = (0..addrs).map(|i| v4(198, 18, i, 1 + self.rng.below(250) as u8)).collect();
        let mut round_start = from_min * MIN_US;
        for _ in 0..rounds {
            for (k, ip) in ips.iter().enumerate() {
                let at = { let j = self.jitter(10 * MIN_US); self.at(round_start + j) };
                let n = 2 + self.rng.below(2) as usize;
                let mut tries = self.names(n, "example.com");
                if probes && k % 5 == 0 {
                    tries = tries
                        .into_iter()
                        .enumerate()
                        .map(|(j, t)| match t {
                            Try::Rcpt(a, _) => Try::Probe(j % 2 == 0, a.split('@').next().unwrap_or("").to_string()),
                            t => t,
                        })
                        .collect();
                }
                self.push(at, *ip, tries, true);
            }
            round_start += 30 * MIN_US + self.jitter(30 * MIN_US);
        }
    }

    /// Many domains on one MX: the same names tried at domain after domain, each of
    /// `addrs` addresses (one per /24 of 198.18.100.0–) making two guesses.
    pub fn many_domains(&mut self, addrs: u8, domains: usize, from_min: i64, span_min: i64) {
        let mut pair = 0usize;
        let mut slots: Vec<i64> = (0..addrs).map(|_| from_min * MIN_US + self.jitter(span_min * MIN_US)).collect();
        slots.sort_unstable();
        for (i, off) in slots.into_iter().enumerate() {
            let ip = v4(198, 18, 100 + i as u8, 1 + self.rng.below(250) as u8);
            let tries = (0..2)
                .map(|_| {
                    let (name, dom) = (HARVEST_NAMES[pair / domains % HARVEST_NAMES.len()], pair % domains);
                    pair += 1;
                    Try::Rcpt(format!("{name}@dom{dom}.example"), false)
                })
                .collect();
            let at = self.at(off);
            self.push(at, ip, tries, true);
        }
    }

    // ---- innocents ------------------------------------------------------------------

    /// Ordinary senders over `hours` (the host's baseline): `senders` addresses of
    /// 198.19.64.0/18 delivering valid mail, one session every few minutes.
    pub fn background(&mut self, senders: u32, hours: i64) {
        let mut t = 0;
        while t < hours * HOUR_US {
            let n = self.rng.below(u64::from(senders)) as u32;
            let ip = v4(198, 19, 64 + (n / 200) as u8, 1 + (n % 200) as u8);
            let k = 1 + self.rng.below(3) as u32;
            let tries = self.valid(k, "example.com");
            let at = self.at(t);
            self.push(at, ip, tries, false);
            t += MIN_US / 2 + self.jitter(3 * MIN_US);
        }
    }

    /// A sender who mistypes one recipient once, among its valid mail.
    pub fn typo(&mut self, hours: i64) {
        let ip = v4(198, 19, 201, 20);
        for k in 0..6 {
            let mut tries = self.valid(1, "example.com");
            if k == 3 {
                tries.push(Try::Rcpt("alcie@example.com".into(), false));
            }
            let at = { let j = self.jitter(10 * MIN_US); self.at(k * hours * HOUR_US / 6 + j) };
            self.push(at, ip, tries, false);
        }
    }

    /// Many senders (`senders` networks of 198.19.0.0/18) all still writing to a
    /// departed employee's address, each alongside valid recipients, over `hours`.
    pub fn departed_employee(&mut self, senders: u8, hours: i64) {
        for i in 0..senders {
            let ip = v4(198, 19, i, 1 + self.rng.below(250) as u8);
            let sessions = 1 + self.rng.below(3);
            for _ in 0..sessions {
                let k = 1 + self.rng.below(2) as u32;
                let mut tries = self.valid(k, "example.com");
                let pos = self.rng.below(2) as usize;
                tries.insert(pos, Try::Rcpt("karen.whitfield@example.com".into(), false));
                let at = { let j = self.jitter(hours * HOUR_US); self.at(j) };
                self.push(at, ip, tries, false);
            }
        }
    }

    /// A newsletter host with a stale list: every 10–12 minutes all day a send with a
    /// few unknown recipients (below the per-address threshold) among many valid ones.
    pub fn newsletter(&mut self, hours: i64) {
        let ip = v4(198, 19, 200, 10);
        let stale: Vec<String> = (0..40).map(|i| format!("subscriber{i}.{}@example.com", self.rng.word(4, 7))).collect();
        let mut t = self.jitter(5 * MIN_US);
        while t < hours * HOUR_US {
            let k = 15 + self.rng.below(10) as u32;
            let mut tries = self.valid(k, "example.com");
            for _ in 0..2 + self.rng.below(3) {
                let s = stale[self.rng.below(stale.len() as u64) as usize].clone();
                let pos = self.rng.below(tries.len() as u64) as usize;
                tries.insert(pos, Try::Rcpt(s, false));
            }
            let at = self.at(t);
            self.push(at, ip, tries, false);
            t += 10 * MIN_US + 30_000_000 + self.jitter(2 * MIN_US);
        }
    }

    /// A /24 shared by many legitimate senders (a provider's NAT pool, 198.51.100.0/24)
    /// and two addresses making two guesses each: the network must not be banned.
    pub fn nat_pool(&mut self, hours: i64) {
        for i in 0..60u8 {
            let ip = v4(198, 51, 100, 10 + i);
            for _ in 0..2 {
                let k = 1 + self.rng.below(2) as u32;
                let tries = self.valid(k, "example.com");
                let at = { let j = self.jitter(hours * HOUR_US); self.at(j) };
                self.push(at, ip, tries, false);
            }
        }
        for (k, host) in [200u8, 201].into_iter().enumerate() {
            let tries = vec![
                Try::Rcpt(format!("{}@example.com", ["bobb", "info2"][k]), false),
                Try::Rcpt(format!("{}@example.com", ["carl", "sales1"][k]), false),
            ];
            let at = { let j = self.jitter(hours * HOUR_US); self.at(j) };
            self.push(at, v4(198, 51, 100, host), tries, false);
        }
    }

    /// A whitelisted network (192.0.2.0/24 and 2001:db8:0:25::/64): the monitoring
    /// host probes and guesses freely.
    pub fn whitelisted(&mut self, hours: i64) {
        self.whitelist.push("192.0.2.0/24".into());
        self.whitelist.push("2001:db8:0:25::/64".into());
        for (ip, base) in [(v4(192, 0, 2, 30), 0), (v6([0x2001, 0xdb8, 0, 0x25, 0, 0, 0, 0x30]), 1000)] {
            for k in 0..(hours * 2) {
                let tries = (0..6)
                    .map(|j| {
                        if j % 3 == 0 {
                            Try::Probe(true, harvest_name(base + j))
                        } else {
                            Try::Rcpt(format!("{}@example.com", harvest_name(base + k as usize * 6 + j)), false)
                        }
                    })
                    .collect();
                let at = { let j = self.jitter(MIN_US); self.at(k * 30 * MIN_US + j) };
                self.push(at, ip, tries, false);
            }
        }
    }

    /// Every innocent over `hours`, with the host's ordinary traffic.
    pub fn all_innocents(&mut self, hours: i64) {
        self.background(400, hours);
        self.typo(hours);
        self.departed_employee(40, hours);
        self.newsletter(hours);
        self.nat_pool(hours);
        self.whitelisted(hours);
    }

    /// Write the scenario as `form` log lines (RFC 3339 syslog), sessions in time order.
    pub fn render(&self, form: Form, seed: u64) -> Rendered {
        let mut order: Vec<&Sess> = self.sessions.iter().collect();
        order.sort_by_key(|s| s.at_us);
        let mut g = LogGen::new(Style::Rfc3339, seed, self.start);
        let mut r = Rendered { log: Vec::new(), campaign_guesses: Vec::new(), innocent_guesses: Vec::new() };
        for s in order {
            g.now_us = g.now_us.max(s.at_us);
            match form {
                Form::Sendmail => g.sendmail_session(s, &mut r),
                Form::Postfix => g.postfix_session(s, &mut r),
            }
        }
        r.log = g.finish();
        r
    }
}

impl LogGen {
    fn note_guess(&self, s: &Sess, r: &mut Rendered) {
        if s.campaign { &mut r.campaign_guesses } else { &mut r.innocent_guesses }.push((self.now_us, s.ip));
    }

    /// One scenario session as sendmail logs it.
    fn sendmail_session(&mut self, s: &Sess, r: &mut Rendered) {
        let pid = self.pid();
        let qid = self.queue_id(pid);
        let relay = if s.campaign { sendmail_bracket(s.ip) } else { format!("mail.example.net {}", sendmail_bracket(s.ip)) };
        let (mut ok, mut bad, mut rcpts) = (Vec::new(), 0, 0);
        for t in &s.tries {
            match t {
                Try::Rcpt(a, true) => {
                    ok.push(a.clone());
                    rcpts += 1;
                }
                Try::Rcpt(a, false) => {
                    rcpts += 1;
                    self.note_guess(s, r);
                    self.syslog("sm-mta", Some(pid), &format!("{qid}: <{a}>... User unknown"));
                    bad += 1;
                    if bad == 3 {
                        self.syslog("sm-mta", Some(pid), &format!("{qid}: {relay}: Possible SMTP RCPT flood, throttling."));
                    }
                }
                Try::Probe(vrfy, name) => {
                    self.note_guess(s, r);
                    let cmd = if *vrfy { "VRFY" } else { "EXPN" };
                    self.syslog("sm-mta", Some(pid), &format!("{qid}: {}: {cmd} {name}", sendmail_bracket(s.ip)));
                }
            }
            let d = 0.3 + self.rng.below(100) as f64 / 100.0;
            self.advance(d);
        }
        if rcpts == 0 {
            return;
        }
        let sender = self.rng.word(3, 8);
        let size = if ok.is_empty() { 0 } else { 500 + self.rng.below(50_000) };
        self.syslog(
            "sm-mta",
            Some(pid),
            &format!(
                "{qid}: from=<{sender}@example.net>, size={size}, class=0, nrcpts={}, msgid=<{}.{sender}@example.net>, proto=ESMTP, daemon=MTA-v4, relay={relay}",
                ok.len(),
                self.seq
            ),
        );
        if !ok.is_empty() {
            let dpid = self.pid();
            self.advance(0.4);
            for a in ok {
                self.syslog(
                    "sm-mta",
                    Some(dpid),
                    &format!("{qid}: to=<{a}>, delay=00:00:01, xdelay=00:00:01, mailer=local, pri={}, dsn=2.0.0, stat=Sent", 30_000 + size),
                );
            }
        }
    }

    /// One scenario session as Postfix logs it (smtpd rejects, the queue file's
    /// `client=` line at the first accepted recipient, local deliveries).
    fn postfix_session(&mut self, s: &Sess, r: &mut Rendered) {
        let pid = self.pid();
        let client = if s.campaign { format!("unknown[{}]", s.ip) } else { format!("mail.example.net[{}]", s.ip) };
        let helo = if s.campaign { "harvester.invalid" } else { "mail.example.net" };
        self.syslog("postfix/smtpd", Some(pid), &format!("connect from {client}"));
        let qid = format!("4{:09X}", (self.seq * 7919 + u64::from(pid)) % 0xf_ffff_ffff);
        self.seq += 1;
        let (mut ok, mut bad, mut probes) = (Vec::new(), 0, 0);
        for t in &s.tries {
            match t {
                Try::Rcpt(a, true) => {
                    if ok.is_empty() {
                        self.syslog("postfix/smtpd", Some(pid), &format!("{qid}: client={client}"));
                    }
                    ok.push(a.clone());
                }
                Try::Rcpt(a, false) => {
                    self.note_guess(s, r);
                    bad += 1;
                    self.syslog("postfix/smtpd", Some(pid), &format!("NOQUEUE: reject: RCPT from {client}: 550 5.1.1 <{a}>: Recipient address rejected: User unknown in local recipient table; from=<x@example.net> to=<{a}> proto=ESMTP helo=<{helo}>"));
                }
                // Postfix answers EXPN with 502 (not logged): probes are VRFY.
                Try::Probe(_, name) => {
                    self.note_guess(s, r);
                    probes += 1;
                    self.syslog("postfix/smtpd", Some(pid), &format!("NOQUEUE: reject: VRFY from {client}: 550 5.1.1 <{name}>: Recipient address rejected: User unknown in local recipient table; to=<{name}> proto=SMTP helo=<{helo}>"));
                }
            }
            let d = 0.3 + self.rng.below(100) as f64 / 100.0;
            self.advance(d);
        }
        let rcpts = ok.len() + bad;
        if !ok.is_empty() {
            let qpid = self.pid();
            let size = 800 + self.rng.below(40_000);
            self.syslog("postfix/qmgr", Some(qpid), &format!("{qid}: from=<b@example.net>, size={size}, nrcpt={} (queue active)", ok.len()));
            let lpid = self.pid();
            for a in &ok {
                self.syslog("postfix/local", Some(lpid), &format!("{qid}: to=<{a}>, relay=local, delay=0.1, delays=0.05/0.01/0/0.04, dsn=2.0.0, status=sent (delivered to mailbox)"));
            }
            self.syslog("postfix/qmgr", Some(qpid), &format!("{qid}: removed"));
        }
        let data = if ok.is_empty() { String::new() } else { " data=1".into() };
        let vrfy = if probes > 0 { format!(" vrfy=0/{probes}") } else { String::new() };
        self.syslog(
            "postfix/smtpd",
            Some(pid),
            &format!("disconnect from {client} ehlo=1 mail=1 rcpt={}/{rcpts}{data}{vrfy} quit=1 commands={}", ok.len(), 3 + rcpts + probes),
        );
    }
}

/// The campaign shapes the distributed-harvest benchmark and tests run, each with
/// every innocent, over ten hours; `(name, one-network shape, scenario)`.
pub fn distributed_shapes(seed: u64) -> Vec<(&'static str, bool, Scenario)> {
    let start = 1_795_780_800; // 2026-11-27T09:20:00Z
    let hours = 10;
    let mk = |name: &str, k: u64| {
        let mut s = Scenario::new(name, seed.wrapping_mul(31).wrapping_add(k), start);
        s.all_innocents(hours);
        s
    };
    let mut out = Vec::new();
    let mut s = mk("one-network-v4", 1);
    s.one_network_v4([203, 0, 113], 40, 2, 180, 30);
    out.push(("one-network-v4", true, s));
    let mut s = mk("one-network-v6", 2);
    s.one_network_v6([0x2001, 0xdb8, 0xbad], 40, 2, 180, 30);
    out.push(("one-network-v6", true, s));
    let mut s = mk("scattered-rounds", 3);
    s.scattered_rounds(100, 3, 180, false);
    out.push(("scattered-rounds", false, s));
    let mut s = mk("many-domains", 4);
    s.many_domains(60, 30, 180, 60);
    out.push(("many-domains", false, s));
    let mut s = mk("combined", 5);
    s.one_network_v4([203, 0, 113], 20, 2, 200, 30);
    s.scattered_rounds(60, 3, 180, true);
    s.many_domains(40, 20, 240, 60);
    out.push(("combined", false, s));
    out
}

/// Innocents alone, one scenario per kind (each must end with no ban).
pub fn innocent_scenarios(seed: u64) -> Vec<(&'static str, Scenario)> {
    let start = 1_795_780_800;
    let hours = 10;
    type Kind = (&'static str, fn(&mut Scenario, i64));
    let kinds: [Kind; 6] = [
        ("background", |s, h| s.background(400, h)),
        ("typo", Scenario::typo),
        ("departed-employee", |s, h| s.departed_employee(40, h)),
        ("newsletter", Scenario::newsletter),
        ("nat-pool", Scenario::nat_pool),
        ("whitelisted", Scenario::whitelisted),
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, (name, f))| {
            let mut s = Scenario::new(name, seed ^ (i as u64 + 100), start);
            s.background(400, hours);
            f(&mut s, hours);
            (name, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_well_formed() {
        let mk = || {
            let mut g = LogGen::new(Style::Rfc3339, 7, 1_795_782_947);
            g.sendmail_harvest("192.0.2.66".parse().unwrap(), 5, 1.0, true);
            g.finish()
        };
        assert_eq!(mk(), mk());
        let log = String::from_utf8(mk()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 7);
        assert!(lines[0].starts_with("2026-11-27T12:35:47.000000+00:00 mx sm-mta["), "{}", lines[0]);
        assert!(lines[0].ends_with("... User unknown"));
        assert!(lines[3].ends_with("[192.0.2.66]: Possible SMTP RCPT flood, throttling."));
        assert!(lines[6].contains("nrcpts=0") && lines[6].ends_with("relay=[192.0.2.66]"));
        // The queue id embeds the pid.
        let pid = lines[0].split('[').nth(1).unwrap().split(']').next().unwrap();
        let qid = lines[0].split(": ").nth(1).unwrap();
        assert_eq!(qid.len(), 14);
        assert!(qid.ends_with(&format!("{:06}", pid.parse::<u32>().unwrap())));
    }

    #[test]
    fn styles() {
        let mut g = LogGen::new(Style::Bsd, 1, 1_795_782_947);
        g.syslog("sm-mta", Some(5), "x");
        assert_eq!(String::from_utf8(g.take()).unwrap(), "Nov 27 12:35:47 mx sm-mta[5]: x\n");
        let mut g = LogGen::new(Style::Journald, 1, 1_795_782_947);
        g.syslog("sm-mta", Some(5), "a \"q\"");
        let l = String::from_utf8(g.finish()).unwrap();
        assert!(l.contains("\"MESSAGE\":\"a \\\"q\\\"\"") && l.contains("\"__REALTIME_TIMESTAMP\":\"1795782947000000\""), "{l}");
        assert_eq!(sendmail_bracket("2001:db8::66".parse().unwrap()), "[IPv6:2001:db8:0:0:0:0:0:66]");
    }

    #[test]
    fn scenarios_are_deterministic_and_know_their_addresses() {
        let a = distributed_shapes(9);
        let b = distributed_shapes(9);
        for ((name, _, x), (_, _, y)) in a.iter().zip(&b) {
            for form in Form::ALL {
                let (rx, ry) = (x.render(form, 1), y.render(form, 1));
                assert_eq!(rx.log, ry.log, "{name}");
                assert!(!rx.campaign_guesses.is_empty(), "{name}");
                assert!(rx.campaign_guesses.iter().all(|(_, ip)| x.campaign.contains(ip)), "{name}");
                assert!(rx.innocent_guesses.iter().all(|(_, ip)| x.innocents.contains(ip)), "{name}");
            }
            assert!(x.campaign.is_disjoint(&x.innocents), "{name}");
        }
        let s = &a[0].2;
        let log = String::from_utf8(s.render(Form::Postfix, 1).log).unwrap();
        assert!(log.contains("postfix/smtpd[") && log.contains(": client=mail.example.net[198.19."), "{}", &log[..400]);
        assert!(log.contains("RCPT from unknown[203.0.113."));
        let log = String::from_utf8(s.render(Form::Sendmail, 1).log).unwrap();
        assert!(log.contains("<karen.whitfield@example.com>... User unknown"));
        assert!(log.contains("nrcpts=0, msgid=") && log.contains("relay=[203.0.113."));
        assert_eq!(harvest_name(0), "john");
        let names: std::collections::BTreeSet<String> = (0..5000).map(harvest_name).collect();
        assert_eq!(names.len(), 5000);
    }

    #[test]
    fn bench_mix_size() {
        let mut g = LogGen::new(Style::Bsd, 3, 1_795_782_947);
        g.bench_mix(10_000, 5);
        assert!((10_000..10_100).contains(&g.lines()));
        let log = g.finish();
        let harvest_lines = log.split(|&b| b == b'\n').filter(|l| l.windows(12).any(|w| w == b"User unknown")).count();
        assert!(harvest_lines >= 100, "{harvest_lines}");
    }
}
