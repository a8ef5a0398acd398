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

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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
    fn bench_mix_size() {
        let mut g = LogGen::new(Style::Bsd, 3, 1_795_782_947);
        g.bench_mix(10_000, 5);
        assert!((10_000..10_100).contains(&g.lines()));
        let log = g.finish();
        let harvest_lines = log.split(|&b| b == b'\n').filter(|l| l.windows(12).any(|w| w == b"User unknown")).count();
        assert!(harvest_lines >= 100, "{harvest_lines}");
    }
}
