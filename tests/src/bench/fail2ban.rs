//! fail2ban-server as the peer: a private configuration (copied from /etc/fail2ban, with
//! the distribution's jails removed) with one jail on a log file, run in the foreground
//! inside a network namespace so its iptables rules land there only. Stopped on drop.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::output_within;

pub const JAIL: &str = "bench";

/// How the jail is set up.
#[derive(Clone, Debug)]
pub struct Fail2banConfig {
    /// `pyinotify` (lowest latency) or `polling`.
    pub backend: String,
    pub maxretry: u32,
    pub findtime_secs: u64,
    pub bantime_secs: u64,
    /// The log the jail reads; a fresh file of its own when `None`.
    pub logpath: Option<PathBuf>,
}

impl Default for Fail2banConfig {
    fn default() -> Self {
        Self { backend: "pyinotify".into(), maxretry: 5, findtime_secs: 600, bantime_secs: 3600, logpath: None }
    }
}

pub struct Fail2ban {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub server_log: PathBuf,
    ns: String,
    /// From launch until `fail2ban-client ping` answered and the jail existed.
    pub ready_after: Duration,
}

/// Whether fail2ban-server and its sendmail-reject filter are installed.
pub fn available() -> bool {
    Path::new("/usr/bin/fail2ban-server").is_file() && Path::new("/etc/fail2ban/filter.d/sendmail-reject.conf").is_file()
}

impl Fail2ban {
    pub fn start(ns: &str, cfg: &Fail2banConfig) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("bench-fail2ban-").tempdir()?;
        let conf = dir.path().join("etc");
        let st = Command::new("cp").arg("-a").arg("/etc/fail2ban").arg(&conf).status()?;
        if !st.success() {
            bail!("copying /etc/fail2ban");
        }
        // The distribution's jails (sshd on systemd) would fail here; ours is the only one.
        for sub in ["jail.d"] {
            let d = conf.join(sub);
            if d.is_dir() {
                for e in std::fs::read_dir(&d)?.flatten() {
                    std::fs::remove_file(e.path())?;
                }
            }
        }
        let _ = std::fs::remove_file(conf.join("jail.local"));
        let _ = std::fs::remove_file(conf.join("fail2ban.local"));
        let socket = dir.path().join("f2b.sock");
        let log = dir.path().join("mail.log");
        let server_log = dir.path().join("fail2ban.log");
        std::fs::write(&log, b"")?;
        std::fs::write(
            conf.join("fail2ban.local"),
            format!(
                "[Definition]\nloglevel = NOTICE\nlogtarget = {}\nsocket = {}\npidfile = {}\ndbfile = :memory:\n",
                server_log.display(),
                socket.display(),
                dir.path().join("f2b.pid").display()
            ),
        )?;
        // Same port and the same verdict as blocksmtp: DROP the source's SYNs to 25.
        std::fs::write(
            conf.join("jail.local"),
            format!(
                "[DEFAULT]\nbackend = {backend}\nusedns = no\nignoreip = 127.0.0.1/8 ::1\n\n\
                 [{JAIL}]\nenabled = true\nfilter = sendmail-reject\nlogpath = {log}\n\
                 maxretry = {maxretry}\nfindtime = {findtime}\nbantime = {bantime}\n\
                 banaction = iptables-multiport\n\
                 action = iptables-multiport[name={JAIL}, port=\"25\", protocol=tcp, blocktype=DROP]\n",
                backend = cfg.backend,
                log = log.display(),
                maxretry = cfg.maxretry,
                findtime = cfg.findtime_secs,
                bantime = cfg.bantime_secs,
            ),
        )?;
        let t = Instant::now();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .args(["/usr/bin/fail2ban-server", "-f", "-x", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-p")
            .arg(dir.path().join("f2b.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.err"))?)
            .spawn()
            .context("starting fail2ban-server")?;
        let mut me = Self { child: Some(child), dir, conf, socket, log, server_log, ns: ns.to_string(), ready_after: Duration::ZERO };
        loop {
            if let Some(st) = me.child.as_mut().expect("child").try_wait()? {
                bail!("fail2ban-server exited at start ({st}): {}", me.diagnostics());
            }
            if me.client(&["status", JAIL]).map(|o| o.status.success()).unwrap_or(false) {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("fail2ban-server not ready within 60 s: {}", me.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        me.ready_after = t.elapsed();
        Ok(me)
    }

    fn diagnostics(&self) -> String {
        let err = std::fs::read_to_string(self.dir.path().join("server.err")).unwrap_or_default();
        let log = std::fs::read_to_string(&self.server_log).unwrap_or_default();
        let tail = |s: &str| s.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        format!("stderr:\n{}\nlog:\n{}", tail(&err), tail(&log))
    }

    /// `fail2ban-client -c CONF -s SOCK ARGS` (in the namespace, bounded to 60 s).
    pub fn client(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg("/usr/bin/fail2ban-client")
            .arg("-c")
            .arg(&self.conf)
            .arg("-s")
            .arg(&self.socket)
            .args(args);
        output_within(&mut c, Duration::from_secs(60))
    }

    /// The server's pid (fail2ban-server -f runs in the spawned process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Currently banned` of the jail.
    pub fn banned(&self) -> anyhow::Result<u64> {
        let out = self.client(&["status", JAIL])?;
        let s = String::from_utf8_lossy(&out.stdout);
        s.lines()
            .find_map(|l| l.split("Currently banned:").nth(1))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("fail2ban-client status {JAIL}: {s}"))
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        // A clean stop runs actionstop (removes its chain); the namespace's deletion
        // would take the rules anyway.
        let _ = self.client(&["stop"]);
        if let Some(mut c) = self.child.take() {
            crate::wait_or_kill(&mut c, Duration::from_secs(10));
        }
    }
}
