//! A real sendmail 8.17 (Debian's package) in the lab's server namespace.
//!
//! Isolation: the daemon runs in the server network namespace and in a private mount and
//! UTS namespace (`unshare --mount --uts --propagation private`, hostname `mx`) where
//! files of a private temp dir are bind-mounted over /etc/mail, /etc/hosts,
//! /etc/resolv.conf, /etc/nsswitch.conf, /etc/hosts.allow, /etc/hosts.deny,
//! /var/spool/mqueue, /var/run/sendmail, /var/lib/sendmail, /var/mail and /dev (a
//! private /dev with null, zero, full, random, urandom and `log`, the socket of the
//! harness's syslog receiver). The config is generated from the installed package's
//! /etc/mail (sendmail.mc through m4, access through makemap, aliases through
//! newaliases) inside that namespace, so sendmail reads its usual paths and the host's
//! files are never written. Mounts vanish with the namespace when the last sendmail
//! process exits; `stop` (and `Drop`) kills every process of that mount namespace.
use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    ProcInfo, TempDir,
    dns::{DnsStub, DnsTable},
    processes_in_mnt_ns,
    smtp::{Session, Timeouts},
    syslog::{LogFormat, LogLine, SyslogReceiver},
};
use crate::netns::Netns;

/// The server's addresses (those of `netns::Topology`).
pub const SERVER_V4: &str = "192.0.2.25";
pub const SERVER_V6: &str = "2001:db8::25";

/// How the lab's sendmail is configured. `Default` is Debian's configuration except
/// where a test lab needs otherwise (listening addresses, 192.0.2/24 not rejected, no
/// per-client rate/connection limits, no ident queries).
#[derive(Clone, Debug)]
pub struct SendmailConfig {
    /// Local users at example.com besides postmaster (aliased to mailbox files
    /// /var/mail/NAME, i.e. `Sendmail::mailbox(NAME)`).
    pub users: Vec<String>,
    /// `O LogLevel` (Debian: 9).
    pub log_level: u32,
    /// `O BadRcptThrottle` (Debian: 3): after this many bad RCPTs sendmail logs
    /// "Possible SMTP RCPT flood, throttling." and answers each further RCPT after 1 s.
    pub bad_rcpt_throttle: u32,
    /// `O BadRcptShutdown` (unset in Debian): drop the session after this many bad RCPTs.
    pub bad_rcpt_shutdown: Option<u32>,
    /// `O Timeout.command`; `None` keeps Debian's.
    pub timeout_command: Option<Duration>,
    /// `O Timeout.ident`; zero (the default here; Debian: 5s) sends no ident query.
    pub timeout_ident: Duration,
    /// `FEATURE(greet_pause)` (Debian: 1 s, the banner comes that late; clients talking
    /// before it are rejected); `None` removes the feature.
    pub greet_pause: Option<Duration>,
    /// Access-db `ClientRate:` default, connections per client per 10 minutes; 0 =
    /// unlimited (the default here; Debian: 10).
    pub client_rate: u32,
    /// Access-db `ClientConn:` default, simultaneous connections per client; 0 =
    /// unlimited (the default here; Debian: 10).
    pub client_conn: u32,
    /// `O ConnectionRateThrottle`, connections accepted per second (Debian: 15).
    pub connection_rate_throttle: Option<u32>,
    /// How the syslog receiver writes the log.
    pub log_format: LogFormat,
    /// Extra access-db lines, e.g. `Connect:192.0.2.99 REJECT`.
    pub access: Vec<String>,
    /// Extra sendmail.mc lines (m4), inserted before MAILER_DEFINITIONS.
    pub extra_mc: Vec<String>,
    /// Extra raw sendmail.cf lines (LOCAL_CONFIG), e.g. `O MaxDaemonChildren=50`.
    pub extra_cf: Vec<String>,
    /// What the namespace's DNS stub answers.
    pub dns: DnsTable,
    /// Give up starting after this long.
    pub start_timeout: Duration,
}

impl Default for SendmailConfig {
    fn default() -> Self {
        Self {
            users: vec!["alice".into(), "bob".into()],
            log_level: 9,
            bad_rcpt_throttle: 3,
            bad_rcpt_shutdown: None,
            timeout_command: None,
            timeout_ident: Duration::ZERO,
            greet_pause: Some(Duration::from_secs(1)),
            client_rate: 0,
            client_conn: 0,
            connection_rate_throttle: Some(15),
            log_format: LogFormat::Traditional,
            access: Vec::new(),
            extra_mc: Vec::new(),
            extra_cf: Vec::new(),
            dns: DnsTable::lab_default(),
            start_timeout: Duration::from_secs(20),
        }
    }
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}s", d.as_secs().max(1)) }
}

/// Debian's sendmail.mc, edited: listening addresses, greet pause, throttles, options.
pub fn sendmail_mc(base: &str, c: &SendmailConfig) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut inserted = false;
    for line in base.lines() {
        let t = line.trim_start();
        let t = t.strip_prefix("dnl ").map(str::trim_start).unwrap_or(t);
        if t.starts_with("DAEMON_OPTIONS(")
            || t.starts_with("FEATURE(`greet_pause'")
            || t.starts_with("define(`confBAD_RCPT_THROTTLE'")
            || t.starts_with("define(`confCONNECTION_RATE_THROTTLE'")
            || t.starts_with("define(`confLOG_LEVEL'")
            || t.starts_with("define(`confTO_COMMAND'")
            || t.starts_with("define(`confTO_IDENT'")
        {
            continue;
        }
        if t.starts_with("MAILER_DEFINITIONS") && !inserted {
            inserted = true;
            out.push_str("dnl # --- blocksmtp mail lab ---\n");
            out.push_str("DAEMON_OPTIONS(`Family=inet6, Name=MTA-v6, Port=smtp, Addr=2001:db8::25')dnl\n");
            out.push_str("DAEMON_OPTIONS(`Family=inet,  Name=MTA-v4, Port=smtp, Addr=192.0.2.25')dnl\n");
            out.push_str("DAEMON_OPTIONS(`Family=inet,  Name=MSP-v4, Port=submission, M=Ea, Addr=127.0.0.1')dnl\n");
            out.push_str("define(`confDOMAIN_NAME', `mx.example.com')dnl\n");
            writeln!(out, "define(`confLOG_LEVEL', `{}')dnl", c.log_level)?;
            writeln!(out, "define(`confBAD_RCPT_THROTTLE', `{}')dnl", c.bad_rcpt_throttle)?;
            writeln!(out, "define(`confTO_IDENT', `{}')dnl", secs(c.timeout_ident))?;
            if let Some(t) = c.timeout_command {
                writeln!(out, "define(`confTO_COMMAND', `{}')dnl", secs(t))?;
            }
            if let Some(n) = c.connection_rate_throttle {
                writeln!(out, "define(`confCONNECTION_RATE_THROTTLE', `{n}')dnl")?;
            }
            if let Some(p) = c.greet_pause {
                writeln!(out, "FEATURE(`greet_pause', `{}')dnl", p.as_millis())?;
            }
            for l in &c.extra_mc {
                writeln!(out, "{l}")?;
            }
            let mut cf: Vec<String> = c.extra_cf.clone();
            if let Some(n) = c.bad_rcpt_shutdown {
                cf.insert(0, format!("O BadRcptShutdown={n}"));
            }
            if !cf.is_empty() {
                out.push_str("LOCAL_CONFIG\n");
                for l in cf {
                    writeln!(out, "{l}")?;
                }
            }
            out.push_str("dnl # --- end of blocksmtp mail lab ---\n");
        }
        out.push_str(line);
        out.push('\n');
    }
    if !inserted {
        bail!("the installed sendmail.mc has no MAILER_DEFINITIONS line");
    }
    Ok(out)
}

/// Debian's access file, edited: 192.0.2/24 no longer rejected, the lab's per-client
/// limits, no greet pause for the server's own readiness probes.
pub fn access_file(base: &str, c: &SendmailConfig) -> String {
    let mut out = String::new();
    for line in base.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        let rejects_lab = key.starts_with("Connect:192.0.2") || key.starts_with("Connect:IPv6:2001:db8");
        let is_default = matches!(key, "ClientRate:" | "ClientConn:" | "GreetPause:");
        if rejects_lab || is_default {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("# --- blocksmtp mail lab ---\n");
    writeln!(out, "ClientRate:\t\t\t\t{}", c.client_rate).unwrap();
    writeln!(out, "ClientConn:\t\t\t\t{}", c.client_conn).unwrap();
    if let Some(p) = c.greet_pause {
        writeln!(out, "GreetPause:\t\t\t\t{}", p.as_millis()).unwrap();
    }
    // Sendmail writes IPv6 client addresses fully expanded.
    out.push_str("GreetPause:192.0.2.25\t\t0\nGreetPause:IPv6:2001:db8:0:0:0:0:0:25\t0\n");
    for l in &c.access {
        writeln!(out, "{l}").unwrap();
    }
    out
}

fn aliases(c: &SendmailConfig) -> String {
    let mut s = String::from(
        "# blocksmtp mail lab: every local user is a mailbox file under /var/mail\n\
         MAILER-DAEMON: postmaster\nabuse: postmaster\nroot: postmaster\npostmaster: /var/mail/postmaster\n",
    );
    for u in &c.users {
        writeln!(s, "{u}: /var/mail/{u}").unwrap();
    }
    s
}

fn start_script(d: &Path) -> String {
    let d = d.display();
    format!(
        r#"#!/bin/sh
# blocksmtp mail lab: run inside `ip netns exec NS unshare --mount --uts --propagation private`.
set -eu
D='{d}'
hostname mx
for f in null zero full random urandom; do
    mount --bind /dev/$f "$D/dev/$f"
done
mount --rbind "$D/dev" /dev
mount --bind "$D/etc-mail" /etc/mail
for f in hosts resolv.conf nsswitch.conf hosts.allow hosts.deny; do
    mount --bind "$D/etc/$f" /etc/$f
done
mount --bind "$D/mqueue" /var/spool/mqueue
mount --bind "$D/run" /var/run/sendmail
mount --bind "$D/lib" /var/lib/sendmail
mount --bind "$D/mail" /var/mail
cd /etc/mail
m4 sendmail.mc > sendmail.cf
makemap hash access < access
/usr/sbin/sendmail-mta -bi
# Debian's init script: sendmail-mta -Am -L sm-mta -bd -q10m (it detaches; its pid
# goes to /var/run/sendmail/mta/sendmail.pid).
exec /usr/sbin/sendmail-mta -Am -L sm-mta -bd -q10m
"#
    )
}

/// A running sendmail and its syslog receiver and DNS stub.
pub struct Sendmail {
    dir: Option<TempDir>,
    pid: i32,
    mnt_ns: String,
    syslog: Option<SyslogReceiver>,
    dns: Option<DnsStub>,
    config: SendmailConfig,
    /// Syslog mark right after startup (after the readiness probes' lines).
    pub started_mark: usize,
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status()?;
    if !st.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

impl Sendmail {
    /// Whether the sendmail package is installed (the lab needs it, m4 and makemap).
    pub fn available() -> Result<(), String> {
        for p in
            ["/usr/sbin/sendmail-mta", "/usr/sbin/makemap", "/usr/bin/m4", "/usr/bin/unshare", "/etc/mail/sendmail.mc"]
        {
            if !Path::new(p).exists() {
                return Err(format!("{p} is missing (apt-get install sendmail m4 util-linux)"));
            }
        }
        Ok(())
    }

    /// Start sendmail in `server` (which must carry 192.0.2.25 and 2001:db8::25, as
    /// `Topology`'s server does); returns once both listeners answered with a banner.
    pub fn start(server: &Netns, config: SendmailConfig) -> anyhow::Result<Self> {
        Self::available().map_err(anyhow::Error::msg)?;
        let dir = TempDir::new("blocksmtp-lab")?;
        let d = dir.path().to_path_buf();
        for sub in ["etc-mail", "etc", "dev", "mqueue", "run/mta", "run/stampdir", "lib", "mail"] {
            fs::create_dir_all(d.join(sub))?;
        }
        fs::set_permissions(d.join("mail"), fs::Permissions::from_mode(0o1777))?;
        fs::set_permissions(d.join("mqueue"), fs::Permissions::from_mode(0o750))?;
        for f in ["null", "zero", "full", "random", "urandom"] {
            fs::write(d.join("dev").join(f), b"")?;
        }
        std::os::unix::fs::symlink("/proc/self/fd", d.join("dev/fd"))?;

        // /etc/mail from the installed package, then the lab's edits.
        let em = d.join("etc-mail");
        copy_tree(Path::new("/etc/mail"), &em)?;
        let base_mc = fs::read_to_string("/etc/mail/sendmail.mc")?;
        fs::write(em.join("sendmail.mc"), sendmail_mc(&base_mc, &config)?)?;
        let base_access = fs::read_to_string("/etc/mail/access")
            .or_else(|_| fs::read_to_string("/usr/share/sendmail/examples/db/access"))
            .context("reading Debian's access file")?;
        fs::write(em.join("access"), access_file(&base_access, &config))?;
        let _ = fs::remove_file(em.join("aliases")); // Debian: a symlink to /etc/aliases
        let _ = fs::remove_file(em.join("aliases.db"));
        fs::write(em.join("aliases"), aliases(&config))?;
        fs::write(em.join("local-host-names"), "localhost\nmx.example.com\nexample.com\n")?;
        fs::write(em.join("service.switch"), "passwd\t\tfiles\nhosts\t\tfiles dns\naliases\t\tfiles\n")?;

        // The server's view of /etc.
        let etc = d.join("etc");
        fs::write(
            etc.join("hosts"),
            "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\
             192.0.2.25\tmx.example.com mx\n2001:db8::25\tmx.example.com mx\n",
        )?;
        fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")?;
        fs::write(
            etc.join("nsswitch.conf"),
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n\
             protocols: files\nservices: files\nethers: files\nrpc: files\n",
        )?;
        fs::write(etc.join("hosts.allow"), "sendmail: ALL\n")?;
        fs::write(etc.join("hosts.deny"), "")?;
        let script = d.join("start.sh");
        fs::write(&script, start_script(&d))?;

        let syslog = SyslogReceiver::start(&d.join("dev/log"), &d.join("mail.log"), "mx", config.log_format)?;
        let dns = DnsStub::start(server, "127.0.0.1:53".parse().unwrap(), config.dns.clone())?;
        super::become_subreaper();

        let log = fs::File::create(d.join("start.log"))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &server.name, "unshare", "--mount", "--uts", "--propagation", "private", "sh"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning ip netns exec … unshare … sh start.sh")?;
        let mut me = Self {
            dir: Some(dir),
            pid: 0,
            mnt_ns: String::new(),
            syslog: Some(syslog),
            dns: Some(dns),
            config,
            started_mark: 0,
        };
        let deadline = Instant::now() + me.config.start_timeout;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("sendmail's start script did not finish: {}", me.start_log());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The daemon writes its pid file after detaching; read it even on failure to
        // clean up whatever did start.
        let pidfile = d.join("run/mta/sendmail.pid");
        while me.pid == 0 && Instant::now() < deadline {
            if let Some(pid) = fs::read_to_string(&pidfile).ok().and_then(|s| s.lines().next()?.trim().parse().ok()) {
                me.pid = pid;
            } else if !status.success() {
                break;
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if !status.success() || me.pid == 0 {
            bail!("sendmail did not start ({status}): {}", me.start_log());
        }
        me.mnt_ns = fs::read_link(format!("/proc/{}/ns/mnt", me.pid))
            .with_context(|| format!("sendmail (pid {}) exited at once: {}", me.pid, me.start_log()))?
            .display()
            .to_string();
        me.check_cf()?;

        // Ready when each listener gives a banner (these two probes log a "did not
        // issue MAIL/EXPN/VRFY/ETRN" line for the server's own addresses).
        for (src, dst) in [(SERVER_V4, "192.0.2.25:25"), (SERVER_V6, "[2001:db8::25]:25")] {
            let (src, dst): (IpAddr, SocketAddr) = (src.parse()?, dst.parse()?);
            let left = deadline.saturating_duration_since(Instant::now());
            server
                .run_in(move || probe(src, dst, left))?
                .with_context(|| format!("sendmail not answering on {dst}"))?;
        }
        let sl = me.syslog();
        if sl
            .wait_for(0, 1, deadline.saturating_duration_since(Instant::now()), |l| l.contains("starting daemon ("))
            .is_empty()
        {
            bail!("sendmail's 'starting daemon' line never reached the syslog receiver");
        }
        // The probes' session-end lines, so tests start from a quiet log.
        sl.wait_for(0, 2, Duration::from_secs(2), |l| l.contains("did not issue MAIL/EXPN/VRFY/ETRN"));
        me.started_mark = sl.mark();
        Ok(me)
    }

    fn start_log(&self) -> String {
        self.dir.as_ref().and_then(|d| fs::read_to_string(d.path().join("start.log")).ok()).unwrap_or_default()
    }

    fn check_cf(&self) -> anyhow::Result<()> {
        let c = &self.config;
        let mut want = vec![
            ("LogLevel", c.log_level.to_string()),
            ("BadRcptThrottle", c.bad_rcpt_throttle.to_string()),
            ("Timeout.ident", secs(c.timeout_ident)),
        ];
        if let Some(n) = c.bad_rcpt_shutdown {
            want.push(("BadRcptShutdown", n.to_string()));
        }
        if let Some(t) = c.timeout_command {
            want.push(("Timeout.command", secs(t)));
        }
        for (k, v) in want {
            let got = self.cf_option(k)?;
            if got.last() != Some(&v) {
                bail!("generated sendmail.cf has {k}={got:?}, wanted {v}");
            }
        }
        let ports = self.cf_option("DaemonPortOptions")?;
        for a in ["Addr=192.0.2.25", "Addr=2001:db8::25"] {
            if !ports.iter().any(|p| p.contains(a)) {
                bail!("generated sendmail.cf listens on {ports:?}, not {a}");
            }
        }
        Ok(())
    }

    /// Values of `O NAME=value` lines in the generated sendmail.cf, in order.
    pub fn cf_option(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let cf = fs::read_to_string(self.dir().join("etc-mail/sendmail.cf"))?;
        Ok(cf
            .lines()
            .filter_map(|l| l.strip_prefix("O "))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
            .collect())
    }

    /// The daemon's pid (the `sendmail: MTA: accepting connections` process).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The private directory (config tree, queue, mailboxes, log).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("running").path()
    }

    /// The log file sendmail's syslog lines are written to.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("mail.log")
    }

    /// The syslog receiver (lines with write instants, waiting helpers).
    pub fn syslog(&self) -> &SyslogReceiver {
        self.syslog.as_ref().expect("running")
    }

    /// Wait for `n` log lines after `mark` containing `needle`.
    pub fn wait_log(&self, mark: usize, needle: &str, n: usize, timeout: Duration) -> Vec<LogLine> {
        self.syslog().wait_for(mark, n, timeout, |l| l.contains(needle))
    }

    /// The mailbox file of a local user (aliases deliver to /var/mail/USER).
    pub fn mailbox(&self, user: &str) -> PathBuf {
        self.dir().join("mail").join(user)
    }

    /// The queue directory (/var/spool/mqueue as sendmail sees it).
    pub fn queue_dir(&self) -> PathBuf {
        self.dir().join("mqueue")
    }

    /// DNS queries the stub answered.
    pub fn dns_queries(&self) -> Vec<String> {
        self.dns.as_ref().map(|d| d.queries()).unwrap_or_default()
    }

    pub fn config(&self) -> &SendmailConfig {
        &self.config
    }

    /// Every process of this sendmail (its mount namespace): daemon, per-connection
    /// children, queue runners, mailers.
    pub fn processes(&self) -> Vec<ProcInfo> {
        if self.mnt_ns.is_empty() { Vec::new() } else { processes_in_mnt_ns(&self.mnt_ns) }
    }

    /// The daemon's children, e.g. titled `sendmail: MTA: server [192.0.2.66] cmd read`.
    pub fn children(&self) -> Vec<ProcInfo> {
        self.processes().into_iter().filter(|p| p.ppid == self.pid).collect()
    }

    /// Wait for a child whose title satisfies `pred`.
    pub fn wait_for_child(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<ProcInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.children().into_iter().find(|p| pred(&p.title)) {
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM the daemon's process group and every process of its mount namespace,
    /// wait up to 5 s, SIGKILL what is left; then stop the DNS stub and the syslog
    /// receiver and remove the private directory (unless BLOCKSMTP_LAB_KEEP is set).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let mut left = Vec::new();
        if self.pid > 0 {
            // Every pid seen, so that those that were orphaned to us (we are the
            // subreaper) get reaped once dead: a zombie has no /proc/PID/ns to match.
            // Listed before any signal: a child killed by the first one is a zombie
            // (invisible to the namespace scan) a moment later.
            let mut seen: Vec<i32> = self.processes().iter().map(|p| p.pid).collect();
            if !seen.contains(&self.pid) {
                seen.push(self.pid);
            }
            unsafe { libc::kill(-self.pid, libc::SIGTERM) };
            for &pid in &seen {
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            if !self.wait_gone(Duration::from_secs(5), &mut seen) {
                for p in self.processes() {
                    unsafe { libc::kill(p.pid, libc::SIGKILL) };
                }
                self.wait_gone(Duration::from_secs(5), &mut seen);
            }
            left = self.processes();
            self.pid = 0;
        }
        self.dns.take();
        self.syslog.take();
        if let Some(d) = self.dir.take()
            && std::env::var_os("BLOCKSMTP_LAB_KEEP").is_some()
        {
            eprintln!("mail lab: keeping {}", d.keep().display());
        }
        if !left.is_empty() {
            bail!("sendmail processes survived SIGKILL: {left:?}");
        }
        Ok(())
    }

    fn wait_gone(&self, timeout: Duration, seen: &mut Vec<i32>) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            for p in self.processes() {
                if !seen.contains(&p.pid) {
                    seen.push(p.pid);
                }
            }
            for &pid in seen.iter() {
                let _ = super::reap(pid);
            }
            if self.processes().is_empty() {
                // A process that is exiting has already left its namespaces but may not
                // be a zombie yet, and a child of an exiting daemon is reparented to us
                // only once the daemon is gone: wait until each pid seen is reaped or
                // gone from /proc.
                let settle = Instant::now() + Duration::from_secs(3);
                let mut pending: Vec<i32> = seen.clone();
                while !pending.is_empty() && Instant::now() < settle {
                    pending.retain(|&pid| !super::reap(pid));
                    std::thread::sleep(Duration::from_millis(5));
                }
                // A child forked after the first scan and killed at once was never seen:
                // any zombie adopted by us in the daemon's process group is one of those.
                super::reap_adopted_zombies(self.pid);
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sendmail {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("mail lab: {e:#}");
        }
    }
}

fn probe(src: IpAddr, dst: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let t = Timeouts { connect: Duration::from_secs(1), read: Duration::from_secs(5), write: Duration::from_secs(5) };
    loop {
        match Session::open(src, dst, t) {
            Ok(mut s) => {
                let banner = s.read_reply()?;
                let _ = s.command("QUIT");
                s.close();
                if banner.code != 220 {
                    bail!("banner {banner}");
                }
                return Ok(());
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => bail!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MC: &str = "divert(0)dnl\nFEATURE(`no_default_msa')dnl\n\
        dnl DAEMON_OPTIONS(`Family=inet6, Name=MTA-v6, Port=smtp, Addr=::1')dnl\n\
        DAEMON_OPTIONS(`Family=inet,  Name=MTA-v4, Port=smtp, Addr=127.0.0.1')dnl\n\
        FEATURE(`greet_pause', `1000')dnl 1 seconds\n\
        define(`confBAD_RCPT_THROTTLE',`3')dnl\nMAILER_DEFINITIONS\nMAILER(`local')dnl\n";

    #[test]
    fn mc_is_edited() {
        let c = SendmailConfig {
            bad_rcpt_throttle: 5,
            bad_rcpt_shutdown: Some(10),
            greet_pause: None,
            timeout_command: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        let mc = sendmail_mc(MC, &c).unwrap();
        assert!(!mc.contains("Addr=127.0.0.1')dnl\nFEATURE"), "{mc}");
        assert!(!mc.contains("Addr=::1"), "{mc}");
        assert!(!mc.contains("greet_pause"), "{mc}");
        assert!(mc.contains("Addr=192.0.2.25") && mc.contains("Addr=2001:db8::25"), "{mc}");
        assert!(mc.contains("define(`confBAD_RCPT_THROTTLE', `5')"), "{mc}");
        assert!(!mc.contains("`3'"), "{mc}");
        assert!(mc.contains("LOCAL_CONFIG\nO BadRcptShutdown=10\n"), "{mc}");
        assert!(mc.contains("confTO_COMMAND', `30s'"), "{mc}");
        assert!(mc.find("blocksmtp mail lab").unwrap() < mc.find("MAILER_DEFINITIONS").unwrap());
        assert!(sendmail_mc("no mailers\n", &c).is_err());
    }

    #[test]
    fn access_no_longer_rejects_the_lab() {
        let a = "Connect:127\t\tRELAY\nGreetPause:\t\t5000\nClientRate:\t\t10\nConnect:192.0.2 REJECT\nConnect:224\tREJECT\n";
        let c = SendmailConfig { access: vec!["Connect:192.0.2.99 REJECT".into()], ..Default::default() };
        let out = access_file(a, &c);
        assert!(!out.contains("Connect:192.0.2 REJECT"), "{out}");
        assert!(!out.contains("ClientRate:\t\t10"), "{out}");
        assert!(out.contains("ClientRate:\t\t\t\t0\n"), "{out}");
        assert!(out.contains("Connect:224\tREJECT") && out.contains("Connect:192.0.2.99 REJECT"), "{out}");
    }
}
