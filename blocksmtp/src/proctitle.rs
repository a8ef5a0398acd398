//! Sendmail process titles: who is each sendmail child serving, and in what state.
//!
//! Sendmail rewrites its argv area (`/proc/PID/cmdline`) with a status line, padded
//! with NULs. Titles seen from sendmail 8.17 (comm `sendmail-mta`):
//!
//! ```text
//! sendmail: MTA: accepting connections                       (listening daemon)
//! sendmail: MTA: ./6ARCa4t9018871 from queue                 (delivery from the queue)
//! sendmail: MTA: running queue: /var/spool/mqueue            (queue runner)
//! sendmail: MTA: startup with [192.0.2.66]                   (child, before reverse DNS)
//! sendmail: MTA: server [192.0.2.66] startup                 (child, greeting pause)
//! sendmail: MTA: server [192.0.2.66] cmd read                (child, waiting for a command)
//! sendmail: MTA: server forged.example.org [192.0.2.68] (may be forged) cmd read
//! sendmail: MTA: 6ARCaTcj018992 [IPv6:2001:db8:0:0:0:0:0:66]: RCPT TO:<x@example.com>
//! ```
//!
//! The `MTA: ` part is sendmail's configurable title prefix; it may be absent or
//! different. Only the first NUL-separated field of cmdline is the title: a process
//! started as `exec -a TITLE prog args` shows `TITLE\0args\0`.
//!
//! The reverse-DNS name and the command text are attacker-controlled; the client
//! address is taken only from its fixed position (the bracket group right after the
//! optional single-word name), never from the name or the command.
//!
//! Only processes whose role is [`Role::Client`] are ever signalled by this module or
//! by [`crate::reaper`]: the listening daemon, queue runners and deliveries are never
//! touched, nor pid 1 or this process.
use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use regex::Regex;

use crate::{
    addr::SourceAddr,
    correlate::LiveAttribution,
    parse::time::{civil_from_days, days_from_civil},
};

/// What a sendmail process is doing, as far as its title tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    /// The listening daemon (`accepting connections`, `rejecting connections …`).
    Daemon,
    /// A queue runner or a delivery from the queue (`running queue`, `Queue runner@…`,
    /// `./QID from queue`).
    QueueRunner,
    /// A child serving one SMTP client.
    Client,
    /// Anything else (a delivery agent, the MSP, an unknown title).
    Other,
}

/// A parsed sendmail process title.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Title {
    pub role: Role,
    /// Normalised client address (IPv6 compressed, IPv4-mapped IPv6 as IPv4).
    pub client: Option<IpAddr>,
    /// The queue id at the start of the title (`6ARCaTcj018992 [ip]: RCPT …`).
    pub queue_id: Option<String>,
    /// `cmd read`, `startup`, `RCPT TO:<…>`, `QUIT`, `accepting connections`, …
    pub state: String,
    /// The whole title, trimmed (prefix `sendmail: ` included).
    pub raw: String,
}

impl Title {
    /// Waiting for the client's next command (`server [ip] cmd read`).
    pub fn is_cmd_read(&self) -> bool {
        self.role == Role::Client && self.state == "cmd read"
    }
}

fn re_server() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    // server [name ][ip][ (may be forged)] STATE
    R.get_or_init(|| {
        Regex::new(
            r"^server (?:(?P<name>\S+) )?\[(?P<ip>(?:IPv6:)?[0-9A-Fa-f:.]+)\](?: \(may be forged\))? (?P<state>.+)$",
        )
        .unwrap()
    })
}

fn re_command() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    // [QID ][name ][ip][ (may be forged)]: COMMAND
    R.get_or_init(|| {
        Regex::new(
            r"^(?:(?P<qid>[0-9A-Za-x]{8}[0-9]{5,})\s)?(?:(?P<name>\S+) )?\[(?P<ip>(?:IPv6:)?[0-9A-Fa-f:.]+)\](?: \(may be forged\))?: (?P<state>.*)$",
        )
        .unwrap()
    })
}

fn re_startup() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"^startup with \[?(?P<ip>(?:IPv6:)?[0-9A-Fa-f:.]+)\]?$").unwrap())
}

fn re_prefix() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"^(?P<prefix>[A-Za-z][A-Za-z0-9_-]*): (?P<rest>.*)$").unwrap())
}

/// Parse a sendmail address as written in titles and logs: `192.0.2.66`,
/// `IPv6:2001:db8:0:0:0:0:0:66`; normalised (IPv4-mapped IPv6 becomes IPv4).
pub fn parse_sendmail_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim_start_matches('[').trim_end_matches(']');
    let s = s.strip_prefix("IPv6:").or_else(|| s.strip_prefix("ipv6:")).unwrap_or(s);
    let ip: IpAddr = s.parse().ok()?;
    Some(ip.to_canonical())
}

/// The title carried in raw `/proc/PID/cmdline` bytes: the first NUL-separated field,
/// trailing blanks removed. `None` when it is not valid UTF-8 or empty.
pub fn title_from_cmdline(raw: &[u8]) -> Option<String> {
    let first = raw.split(|b| *b == 0).next().unwrap_or(&[]);
    let s = std::str::from_utf8(first).ok()?.trim_end();
    (!s.is_empty()).then(|| s.to_string())
}

/// Parse a title (already cut at the first NUL). `None` unless it starts with
/// `sendmail: `.
pub fn parse_title(title: &str) -> Option<Title> {
    let title = title.trim_end_matches(['\0', ' ']);
    let body = title.strip_prefix("sendmail: ")?;
    let parsed = parse_body(body).or_else(|| {
        // Strip one configurable prefix (`MTA: `, `MSP: `), then try again.
        let c = re_prefix().captures(body)?;
        parse_body(c.name("rest").unwrap().as_str())
    });
    let (role, client, queue_id, state) = parsed.unwrap_or_else(|| {
        let rest = re_prefix()
            .captures(body)
            .map(|c| c.name("rest").unwrap().as_str())
            .unwrap_or(body);
        (classify_other(rest), None, None, rest.to_string())
    });
    Some(Title { role, client, queue_id, state, raw: title.to_string() })
}

type Parsed = (Role, Option<IpAddr>, Option<String>, String);

fn parse_body(body: &str) -> Option<Parsed> {
    if let Some(c) = re_server().captures(body) {
        let ip = parse_sendmail_ip(c.name("ip").unwrap().as_str())?;
        return Some((Role::Client, Some(ip), None, c.name("state").unwrap().as_str().trim().to_string()));
    }
    if let Some(c) = re_startup().captures(body) {
        let ip = parse_sendmail_ip(c.name("ip").unwrap().as_str())?;
        return Some((Role::Client, Some(ip), None, "startup".to_string()));
    }
    if let Some(c) = re_command().captures(body) {
        let ip = parse_sendmail_ip(c.name("ip").unwrap().as_str())?;
        let qid = c.name("qid").map(|m| m.as_str().to_string());
        return Some((Role::Client, Some(ip), qid, c.name("state").unwrap().as_str().trim().to_string()));
    }
    None
}

fn classify_other(rest: &str) -> Role {
    let lower = rest.to_ascii_lowercase();
    if lower.starts_with("accepting connections")
        || lower.starts_with("rejecting connections")
        || lower.starts_with("deferring connections")
    {
        Role::Daemon
    } else if lower.starts_with("running queue")
        || lower.starts_with("queue runner")
        || lower.starts_with("queue control")
        || lower.ends_with(" from queue")
    {
        Role::QueueRunner
    } else {
        Role::Other
    }
}

const QID_CHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwx";

/// What a sendmail 8.12+ queue id encodes: `YMDhmsNN` + pid. `6ARCaTcj018992` was
/// made by pid 18992 at 2026-11-27 12:36:29 (UTC, as sendmail's `gmtime`); the year
/// is known modulo 60, resolved to the one nearest `now`.
pub fn decode_queue_id(qid: &str, now: SystemTime) -> Option<(u32, SystemTime)> {
    let b = qid.as_bytes();
    if b.len() < 13 || !b[8..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let pid: u32 = qid[8..].parse().ok()?;
    let v = |i: usize| QID_CHARS.iter().position(|c| *c == b[i]).map(|p| p as i64);
    let (y60, mon, day, hour, min, sec) = (v(0)?, v(1)?, v(2)?, v(3)?, v(4)?, v(5)?);
    if mon > 11 || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let now_secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    let now_year = civil_from_days(now_secs.div_euclid(86400)).0;
    // tm_year = year - 1900; year % 60 == y60 of tm_year.
    let mut best: Option<(i64, i64)> = None;
    for year in (now_year - 61)..=(now_year + 1) {
        if (year - 1900).rem_euclid(60) != y60 {
            continue;
        }
        let t = days_from_civil(year, (mon + 1) as u32, day as u32) * 86400 + hour * 3600 + min * 60 + sec;
        let dist = (t - now_secs).abs();
        if best.is_none_or(|(_, d)| dist < d) {
            best = Some((t, dist));
        }
    }
    let (t, _) = best?;
    Some((pid, UNIX_EPOCH + Duration::from_secs(u64::try_from(t).ok()?)))
}

/// The queue id sendmail would make at `at` for `pid` (the inverse of
/// [`decode_queue_id`], in UTC; `seq` is the two sequence characters).
pub fn encode_queue_id(at: SystemTime, seq: &str, pid: u32) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let s = secs.rem_euclid(86400);
    let c = |v: i64| QID_CHARS[v as usize] as char;
    format!("{}{}{}{}{}{}{seq}{pid:06}", c((y - 1900) % 60), c(i64::from(m) - 1), c(i64::from(d)), c(s / 3600), c(s / 60 % 60), c(s % 60))
}

/// One sendmail process as read from /proc.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SendmailProcess {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22): with `pid`,
    /// identifies the process across pid recycling.
    pub start_ticks: u64,
    /// How long the process has been running.
    pub age: Duration,
    /// Bytes the process has read so far (`rchar` of `/proc/PID/io`), when readable:
    /// a change means the client sent something.
    pub read_bytes: Option<u64>,
    pub title: Title,
}

impl SendmailProcess {
    /// Wall-clock start time, derived from its age.
    pub fn started_at(&self, now: SystemTime) -> SystemTime {
        now.checked_sub(self.age).unwrap_or(UNIX_EPOCH)
    }
}

/// Slack when comparing a process start time with the second-resolution time in a
/// queue id.
const QID_TIME_SLACK: Duration = Duration::from_secs(2);

/// The sendmail processes of a /proc tree (the real `/proc` or a fake one for tests).
#[derive(Clone, Debug)]
pub struct ProcTitles {
    root: PathBuf,
    comms: Vec<String>,
    /// Our network namespace: only sendmail processes in it are ours to attribute, end
    /// or reap (a sendmail in another namespace is not behind the interfaces we guard).
    netns: Option<PathBuf>,
}

impl Default for ProcTitles {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcTitles {
    /// Over `/proc`, matching comm `sendmail-mta` or `sendmail`.
    pub fn new() -> Self {
        Self { netns: fs::read_link("/proc/self/ns/net").ok(), ..Self::with_root("/proc") }
    }

    /// Over another proc root (tests).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), comms: vec!["sendmail-mta".into(), "sendmail".into()], netns: None }
    }

    /// Replace the accepted process names (`comm`, at most 15 bytes).
    pub fn with_comms<I: IntoIterator<Item = S>, S: Into<String>>(mut self, comms: I) -> Self {
        self.comms = comms.into_iter().map(Into::into).collect();
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn uptime(&self) -> Option<Duration> {
        let s = fs::read_to_string(self.root.join("uptime")).ok()?;
        let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
        Some(Duration::from_secs_f64(secs))
    }

    /// Read one process; `None` if it is gone, is not sendmail, or has no sendmail title.
    pub fn read(&self, pid: u32) -> Option<SendmailProcess> {
        let uptime = self.uptime()?;
        self.read_with_uptime(pid, uptime)
    }

    fn read_with_uptime(&self, pid: u32, uptime: Duration) -> Option<SendmailProcess> {
        let dir = self.root.join(pid.to_string());
        let proc = procfs::process::Process::new_with_root(dir.clone()).ok()?;
        let stat = proc.stat().ok()?;
        if !self.comms.contains(&stat.comm) {
            return None;
        }
        if let Some(ours) = &self.netns
            && fs::read_link(dir.join("ns/net")).ok().as_ref() != Some(ours)
        {
            return None;
        }
        let raw = fs::read(dir.join("cmdline")).ok()?;
        let title = parse_title(&title_from_cmdline(&raw)?)?;
        let tps = procfs::ticks_per_second().max(1);
        let started = Duration::from_millis(stat.starttime.saturating_mul(1000) / tps);
        Some(SendmailProcess {
            pid,
            ppid: u32::try_from(stat.ppid).unwrap_or(0),
            comm: stat.comm,
            start_ticks: stat.starttime,
            age: uptime.saturating_sub(started),
            read_bytes: proc.io().ok().map(|io| io.rchar),
            title,
        })
    }

    /// Every sendmail process with a sendmail title.
    pub fn scan(&self) -> Vec<SendmailProcess> {
        let Some(uptime) = self.uptime() else { return Vec::new() };
        let Ok(dir) = fs::read_dir(&self.root) else { return Vec::new() };
        let mut out: Vec<_> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| self.read_with_uptime(pid, uptime))
            .collect();
        out.sort_by_key(|p| p.pid);
        out
    }

    /// Pids of sendmail children serving a client inside `source`.
    pub fn sessions_of(&self, source: &SourceAddr) -> Vec<u32> {
        self.sessions_in(source).into_iter().map(|p| p.pid).collect()
    }

    fn sessions_in(&self, source: &SourceAddr) -> Vec<SendmailProcess> {
        self.sessions_in_any(std::slice::from_ref(source))
    }

    /// Children serving a client inside any of `sources`: one scan of /proc for all.
    fn sessions_in_any(&self, sources: &[SourceAddr]) -> Vec<SendmailProcess> {
        self.scan()
            .into_iter()
            .filter(|p| {
                p.title.role == Role::Client && p.title.client.is_some_and(|ip| sources.iter().any(|s| s.contains(&ip)))
            })
            .filter(|p| is_signalable(p.pid))
            .collect()
    }

    /// SIGTERM every sendmail child serving a client inside `source` (its sessions end
    /// when it is banned). Returns the pids signalled.
    pub fn kill_sessions(&self, source: &SourceAddr) -> Vec<u32> {
        self.kill_sessions_of_any(std::slice::from_ref(source))
    }

    /// `kill_sessions` for several sources with one scan of /proc (a burst of bans).
    pub fn kill_sessions_of_any(&self, sources: &[SourceAddr]) -> Vec<u32> {
        let mut done = Vec::new();
        if sources.is_empty() {
            return done;
        }
        for p in self.sessions_in_any(sources) {
            match self.signal_if_same(&p, nix::sys::signal::Signal::SIGTERM) {
                Ok(true) => {
                    log::info!(
                        "ended sendmail session pid {} of {} ({})",
                        p.pid,
                        p.title.client.map(|c| c.to_string()).unwrap_or_default(),
                        p.title.state
                    );
                    done.push(p.pid);
                }
                Ok(false) => {}
                Err(e) => log::warn!("cannot signal sendmail pid {}: {e}", p.pid),
            }
        }
        done
    }

    /// Send `sig` to `p` only if the pid still names the same process (same start time)
    /// and it is still a sendmail child serving a client. Race-free against pid reuse
    /// via a pidfd. `Ok(false)` when the process is gone or changed.
    pub fn signal_if_same(&self, p: &SendmailProcess, sig: nix::sys::signal::Signal) -> std::io::Result<bool> {
        if !is_signalable(p.pid) {
            return Ok(false);
        }
        let pidfd = match pidfd_open(p.pid) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
            Err(e) => return Err(e),
        };
        // With the pidfd held, the pid cannot be reused: check it is still the same
        // process and still a client child.
        match self.read(p.pid) {
            Some(now) if now.start_ticks == p.start_ticks && now.title.role == Role::Client => {}
            _ => return Ok(false),
        }
        let r = match &pidfd {
            Some(fd) => {
                use std::os::fd::AsRawFd;
                // SAFETY: plain syscall on an owned fd, null siginfo.
                unsafe {
                    libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig as libc::c_int, std::ptr::null::<u8>(), 0)
                }
            }
            None => {
                // SAFETY: kill(2) with a positive pid.
                unsafe { libc::kill(p.pid as libc::pid_t, sig as libc::c_int) as libc::c_long }
            }
        };
        if r == 0 {
            Ok(true)
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) { Ok(false) } else { Err(e) }
        }
    }

    /// The attribution rule behind [`LiveAttribution::client_of`], with `now` explicit.
    ///
    /// The client of `pid` is returned only when `pid` is a sendmail child serving a
    /// client and either
    /// - its title carries a queue id, and that id equals `queue_id` (a different id
    ///   means a new transaction after RSET, or another process on a recycled pid); or
    /// - its title carries no queue id (`server [ip] cmd read`, between commands), and
    ///   `queue_id` was made by this very process: the pid embedded in the queue id
    ///   equals `pid`, and the process started no later than the queue id's creation
    ///   time (second resolution, 2 s slack). A process that reused the pid after the
    ///   session's own process ended started after the queue id was made and is
    ///   refused. A sendmail child serves one connection for its whole life, so its
    ///   client is the client of every queue id it made.
    pub fn client_at(&self, pid: u32, queue_id: &str, now: SystemTime) -> Option<IpAddr> {
        let p = self.read(pid)?;
        if p.title.role != Role::Client {
            return None;
        }
        match &p.title.queue_id {
            Some(q) => (q == queue_id).then_some(p.title.client?),
            None => {
                let (qpid, made) = decode_queue_id(queue_id, now)?;
                if qpid != pid || made > now + QID_TIME_SLACK {
                    return None;
                }
                (p.started_at(now) <= made + QID_TIME_SLACK).then_some(p.title.client?)
            }
        }
    }
}

impl LiveAttribution for ProcTitles {
    fn client_of(&self, pid: u32, queue_id: &str) -> Option<IpAddr> {
        self.client_at(pid, queue_id, SystemTime::now())
    }
}

/// Never pid 0/1, never ourselves.
fn is_signalable(pid: u32) -> bool {
    pid > 1 && pid != std::process::id()
}

fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(raw: &[u8]) -> Title {
        parse_title(&title_from_cmdline(raw).unwrap()).unwrap()
    }

    #[test]
    fn real_titles_with_nul_padding() {
        let d = t(b"sendmail: MTA: accepting connections\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00");
        assert_eq!(d.role, Role::Daemon);
        assert_eq!(d.client, None);
        assert_eq!(d.state, "accepting connections");

        let c = t(b"sendmail: MTA: server [192.0.2.66] cmd read\x00\x00\x00\x00");
        assert_eq!(c.role, Role::Client);
        assert_eq!(c.client, Some("192.0.2.66".parse().unwrap()));
        assert_eq!(c.queue_id, None);
        assert!(c.is_cmd_read());

        let s = t(b"sendmail: MTA: server [192.0.2.66] startup\x00\x00\x00\x00\x00");
        assert_eq!((s.role, s.state.as_str()), (Role::Client, "startup"));
        assert!(!s.is_cmd_read());

        let r = t(b"sendmail: MTA: 6ARCaTcj018992 [IPv6:2001:db8:0:0:0:0:0:66]: RCPT TO:<rywqzh43@example.com>\x00");
        assert_eq!(r.role, Role::Client);
        assert_eq!(r.client, Some("2001:db8::66".parse().unwrap()));
        assert_eq!(r.queue_id.as_deref(), Some("6ARCaTcj018992"));
        assert_eq!(r.state, "RCPT TO:<rywqzh43@example.com>");
    }

    #[test]
    fn other_real_forms() {
        let f = parse_title("sendmail: MTA: server forged.example.org [192.0.2.68] (may be forged) cmd read").unwrap();
        assert_eq!((f.role, f.client, f.state.as_str()), (Role::Client, Some("192.0.2.68".parse().unwrap()), "cmd read"));
        let n = parse_title("sendmail: MTA: server harvester.example.net [192.0.2.67] startup").unwrap();
        assert_eq!(n.client, Some("192.0.2.67".parse().unwrap()));
        let q = parse_title("sendmail: MTA: 6ARCaoci019044 forged.example.org [192.0.2.68] (may be forged): QUIT").unwrap();
        assert_eq!((q.queue_id.as_deref(), q.state.as_str()), (Some("6ARCaoci019044"), "QUIT"));
        assert_eq!(q.client, Some("192.0.2.68".parse().unwrap()));
        let e = parse_title("sendmail: MTA: 6ARCaM6m018977 [192.0.2.66]: EXPN postmaster").unwrap();
        assert_eq!((e.role, e.state.as_str()), (Role::Client, "EXPN postmaster"));
        for s in ["sendmail: MTA: startup with [192.0.2.98]", "sendmail: MTA: startup with 192.0.2.69"] {
            let p = parse_title(s).unwrap();
            assert_eq!(p.role, Role::Client, "{s}");
            assert!(p.client.is_some(), "{s}");
        }
        let v6 = parse_title("sendmail: MTA: server [IPv6:2001:db8:0:0:0:0:0:66] cmd read").unwrap();
        assert_eq!(v6.client, Some("2001:db8::66".parse().unwrap()));
        assert!(v6.is_cmd_read());
        let fromq = parse_title("sendmail: MTA: ./6ARCa4t9018871 from queue").unwrap();
        assert_eq!(fromq.role, Role::QueueRunner);
        assert_eq!(parse_title("sendmail: MTA: running queue: /var/spool/mqueue").unwrap().role, Role::QueueRunner);
        assert_eq!(parse_title("sendmail: Queue runner@00:10:00 for /var/spool/clientmqueue").unwrap().role, Role::QueueRunner);
        assert_eq!(parse_title("sendmail: rejecting connections on daemon MTA-v4: load average: 40").unwrap().role, Role::Daemon);
        // No prefix (old sendmail without a title prefix).
        let old = parse_title("sendmail: server [192.0.2.66] cmd read").unwrap();
        assert!(old.is_cmd_read());
        assert_eq!(parse_title("sendmail: accepting connections").unwrap().role, Role::Daemon);
        assert!(parse_title("/usr/sbin/rsyslogd -n").is_none());
        assert!(parse_title("/etc/mail/smrsh/procmail -t -f alice@example.net -a  -d root").is_none());
    }

    #[test]
    fn exec_a_cmdline_keeps_only_argv0() {
        let raw = b"sendmail: MTA: server [192.0.2.66] cmd read\x0060\x00";
        let p = t(raw);
        assert!(p.is_cmd_read());
        assert_eq!(p.raw, "sendmail: MTA: server [192.0.2.66] cmd read");
    }

    #[test]
    fn attacker_controlled_name_and_command_do_not_move_the_address() {
        let p = parse_title("sendmail: MTA: server [203.0.113.5] [192.0.2.66] cmd read").unwrap();
        assert_eq!(p.client, Some("192.0.2.66".parse().unwrap()));
        let p = parse_title("sendmail: MTA: 6ARCaTcj018992 [192.0.2.66]: RCPT TO:<[203.0.113.5]>: x").unwrap();
        assert_eq!(p.client, Some("192.0.2.66".parse().unwrap()));
        // A title that merely mentions "accepting connections" in a command is a client.
        let p = parse_title("sendmail: MTA: 6ARCaTcj018992 [192.0.2.66]: VRFY accepting connections").unwrap();
        assert_eq!(p.role, Role::Client);
    }

    #[test]
    fn ipv4_mapped_is_ipv4() {
        assert_eq!(parse_sendmail_ip("IPv6:0:0:0:0:0:ffff:c000:242"), Some("192.0.2.66".parse().unwrap()));
        assert_eq!(parse_sendmail_ip("[192.0.2.66]"), Some("192.0.2.66".parse().unwrap()));
        assert_eq!(parse_sendmail_ip("forged.example.org"), None);
    }

    #[test]
    fn queue_id_decodes_pid_and_time() {
        let now = UNIX_EPOCH + Duration::from_secs(days_from_civil(2026, 11, 27) as u64 * 86400 + 12 * 3600 + 40 * 60);
        let (pid, at) = decode_queue_id("6ARCaTcj018992", now).unwrap();
        assert_eq!(pid, 18992);
        let want = days_from_civil(2026, 11, 27) * 86400 + 12 * 3600 + 36 * 60 + 29;
        assert_eq!(at, UNIX_EPOCH + Duration::from_secs(want as u64));
        assert_eq!(decode_queue_id("6ARCaTcj1234567", now).unwrap().0, 1234567);
        assert!(decode_queue_id("NOQUEUE", now).is_none());
        assert!(decode_queue_id("6ZRCaTcj018992", now).is_none(), "month Z is out of range");
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    /// A fake /proc with one process per entry.
    struct FakeProc(tempfile::TempDir);

    impl FakeProc {
        fn new(uptime_s: f64) -> Self {
            let d = tempfile::tempdir().unwrap();
            fs::write(d.path().join("uptime"), format!("{uptime_s:.2} 0.00\n")).unwrap();
            Self(d)
        }
        fn add(&self, pid: u32, comm: &str, cmdline: &[u8], start_s: u64) {
            let dir = self.0.path().join(pid.to_string());
            fs::create_dir_all(&dir).unwrap();
            let ticks = start_s * procfs::ticks_per_second();
            let stat = format!(
                "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {ticks} 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
            );
            fs::write(dir.join("stat"), stat).unwrap();
            fs::write(dir.join("cmdline"), cmdline).unwrap();
        }
    }

    #[test]
    fn scan_lookup_and_attribution_on_a_fake_proc() {
        let fp = FakeProc::new(1000.0);
        fp.add(100, "sendmail-mta", b"sendmail: MTA: accepting connections\0\0\0", 10);
        fp.add(200, "sendmail-mta", b"sendmail: MTA: server [192.0.2.66] cmd read\0\0", 900);
        fp.add(300, "sendmail-mta", b"sendmail: MTA: 6ARCaTcj000300 [IPv6:2001:db8:0:0:0:0:0:66]: RCPT TO:<a@example.com>\0", 950);
        fp.add(400, "bash", b"sendmail: MTA: server [192.0.2.66] cmd read\0", 900);
        fp.add(500, "sendmail-mta", b"sendmail: MTA: ./6ARCa4t9000499 from queue\0", 990);
        let pt = ProcTitles::with_root(fp.0.path());
        let all = pt.scan();
        assert_eq!(all.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![100, 200, 300, 500]);
        assert_eq!(all[1].age, Duration::from_secs(100));

        assert_eq!(pt.sessions_of(&"192.0.2.66".parse().unwrap()), vec![200]);
        assert_eq!(pt.sessions_of(&"2001:db8::/64".parse().unwrap()), vec![300]);
        assert!(pt.sessions_of(&"192.0.2.67".parse().unwrap()).is_empty());

        // Title with a queue id: only that queue id matches.
        let now = SystemTime::now();
        assert_eq!(pt.client_at(300, "6ARCaTcj000300", now), Some("2001:db8::66".parse().unwrap()));
        assert_eq!(pt.client_at(300, "6ARCaTck000300", now), None);
        // Not a client child.
        assert_eq!(pt.client_at(100, "6ARCaTcj000100", now), None);
        assert_eq!(pt.client_at(500, "6ARCa4t9000499", now), None);
        assert_eq!(pt.client_at(400, "6ARCaTcj000400", now), None);
        assert_eq!(pt.client_at(999, "6ARCaTcj000999", now), None);

        // `cmd read` without a queue id: pid 200 started 100 s ago.
        let qid_at = |pid: u32, ago: u64| encode_queue_id(now - Duration::from_secs(ago), "aa", pid);
        // Queue id made 50 s ago by pid 200, which has run for 100 s: same process.
        assert_eq!(pt.client_at(200, &qid_at(200, 50), now), Some("192.0.2.66".parse().unwrap()));
        // Queue id made 500 s ago: pid 200 did not exist then — a recycled pid.
        assert_eq!(pt.client_at(200, &qid_at(200, 500), now), None);
        // Queue id of another pid.
        assert_eq!(pt.client_at(200, &qid_at(201, 50), now), None);
    }
}
