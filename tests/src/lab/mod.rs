//! The mail lab: a real sendmail 8.17 (Debian's package) in a private network namespace,
//! with its own syslog receiver and DNS stub, and SMTP client actors (harvester,
//! legitimate sender, idle client, VRFY prober) in a second namespace.
//!
//! ```no_run
//! use blocksmtp_tests::lab::{MailLab, SendmailConfig, HARVESTER_V4};
//! let lab = MailLab::start(SendmailConfig::default())?;
//! let mark = lab.sendmail.syslog().mark();
//! let report = lab.harvest(HARVESTER_V4.parse()?, 8, std::time::Duration::ZERO)?;
//! lab.sendmail.wait_log(mark, "User unknown", 8, std::time::Duration::from_secs(2));
//! # anyhow::Ok(())
//! ```
//!
//! Needs root and the `sendmail` package (with m4 and makemap, which it pulls in).
//! Nothing on the host is written: see `sendmail` for how it is isolated.
pub mod dns;
pub mod mta;
pub mod sendmail;
pub mod smtp;
pub mod syslog;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

pub use self::{
    dns::{DnsStub, DnsTable},
    sendmail::{Sendmail, SendmailConfig},
    smtp::{Delivered, HarvestOptions, HarvestReport, IdleClient, Reply, SessionEnd, VrfyReport},
    syslog::{LogFollower, LogFormat, LogLine, SyslogReceiver},
};
use crate::netns::Topology;

/// The client namespace's addresses (see `netns::Topology`).
pub const HARVESTER_V4: &str = "192.0.2.66";
pub const LEGIT_V4: &str = "192.0.2.67";
pub const HARVESTER_V6: &str = "2001:db8::66";
pub const LEGIT_V6: &str = "2001:db8::67";
/// Same server /64 as the harvester, another /64 from it.
pub const OTHER_NET_V6: &str = "2001:db8:0:1::67";
/// Sendmail's listeners.
pub const SMTP_V4: &str = "192.0.2.25:25";
pub const SMTP_V6: &str = "[2001:db8::25]:25";

/// The SMTP listener of the family of `src`.
pub fn server_for(src: IpAddr) -> SocketAddr {
    if src.is_ipv4() { SMTP_V4.parse().unwrap() } else { SMTP_V6.parse().unwrap() }
}

/// Topology + sendmail; actors run in the client namespace. Sendmail stops (and its
/// private tree goes) before the namespaces are deleted.
pub struct MailLab {
    pub sendmail: Sendmail,
    pub topo: Topology,
}

impl MailLab {
    pub fn start(config: SendmailConfig) -> anyhow::Result<Self> {
        let topo = Topology::new()?;
        let sendmail = Sendmail::start(&topo.server, config)?;
        Ok(Self { sendmail, topo })
    }

    /// `smtp::harvest` from `src` (a client address) to the listener of its family.
    pub fn harvest(&self, src: IpAddr, n_guesses: usize, delay: Duration) -> anyhow::Result<HarvestReport> {
        let server = server_for(src);
        self.topo.client.run_in(move || smtp::harvest(src, server, n_guesses, delay))
    }

    /// `smtp::harvest_with`.
    pub fn harvest_with(&self, src: IpAddr, options: HarvestOptions) -> anyhow::Result<HarvestReport> {
        let server = server_for(src);
        self.topo.client.run_in(move || smtp::harvest_with(src, server, &options))
    }

    /// `smtp::harvest_with` on a thread in the client namespace, for tests that act
    /// (ban, cut the link) while the harvest runs.
    pub fn spawn_harvest(
        &self,
        src: IpAddr,
        options: HarvestOptions,
    ) -> std::thread::JoinHandle<anyhow::Result<HarvestReport>> {
        let server = server_for(src);
        self.topo.client.spawn_in(move || smtp::harvest_with(src, server, &options))
    }

    /// `smtp::deliver`.
    pub fn deliver(&self, src: IpAddr, from: &str, to: &str, body: &str) -> anyhow::Result<Delivered> {
        let server = server_for(src);
        let (from, to, body) = (from.to_string(), to.to_string(), body.to_string());
        self.topo.client.run_in(move || smtp::deliver(src, server, &from, &to, &body))?
    }

    /// `smtp::idle` (the socket stays open until the handle drops).
    pub fn idle(&self, src: IpAddr) -> anyhow::Result<IdleClient> {
        let server = server_for(src);
        self.topo.client.run_in(move || smtp::idle(src, server))?
    }

    /// `smtp::vrfy_probe`.
    pub fn vrfy_probe(&self, src: IpAddr, names: &[&str]) -> anyhow::Result<VrfyReport> {
        let server = server_for(src);
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        self.topo.client.run_in(move || {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            smtp::vrfy_probe(src, server, &refs)
        })
    }

    /// `smtp::can_connect` to port 25 of `src`'s family.
    pub fn can_connect(&self, src: IpAddr, timeout: Duration) -> anyhow::Result<bool> {
        let server = server_for(src);
        self.topo.client.run_in(move || smtp::can_connect(src, server, timeout))
    }
}

/// A process seen in /proc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    /// /proc/PID/comm (`sendmail-mta`).
    pub comm: String,
    /// /proc/PID/cmdline with NULs as spaces and the NUL padding trimmed:
    /// `sendmail: MTA: server [192.0.2.66] cmd read`.
    pub title: String,
}

/// Read one process's info (None if it is gone or a zombie).
pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut f = tail.split_whitespace();
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let ppid = f.next()?.parse().ok()?;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let title = String::from_utf8_lossy(&raw).replace('\0', " ").trim_end().to_string();
    Some(ProcInfo { pid, ppid, comm, title })
}

/// Live processes whose mount namespace is `ns` (`mnt:[4026532…]`).
pub fn processes_in_mnt_ns(ns: &str) -> Vec<ProcInfo> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut v: Vec<ProcInfo> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|l| l.as_os_str() == ns))
        .filter_map(proc_info)
        .collect();
    v.sort_by_key(|p| p.pid);
    v
}

/// Make this process the reaper of orphaned descendants (the detached sendmail daemon),
/// so stopping it leaves no zombie behind (we reap it; PID 1 may not be a real init).
pub(crate) fn become_subreaper() {
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Reap `pid` if it is our (adopted) child and has exited. True when it is done with:
/// reaped now, or not our child and no longer in /proc (reaped by its own parent).
pub(crate) fn reap(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    let mut st = 0;
    match unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } {
        r if r == pid => true,
        0 => false,
        _ => !Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// Reap zombies that are our (adopted) children in process group `pgrp`.
pub(crate) fn reap_adopted_zombies(pgrp: i32) {
    let me = std::process::id().to_string();
    let pg = pgrp.to_string();
    let Ok(rd) = std::fs::read_dir("/proc") else { return };
    for pid in rd.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, tail)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = tail.split_whitespace().take(3).collect();
        if f.len() == 3 && f[0] == "Z" && f[1] == me && f[2] == pg {
            let _ = reap(pid);
        }
    }
}

/// Whether `pid` is a zombie (dead, not yet reaped).
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, t)| t.trim_start().starts_with('Z')))
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A private directory (mode 0755: sendmail's mailers run as other users), removed
/// with everything in it on drop.
pub struct TempDir {
    path: Option<PathBuf>,
}

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&path); // a leftover of a crashed run with our pid
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { path: Some(path) })
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("live")
    }

    /// Keep the directory (for debugging); returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.path.take().expect("live")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// A lab thread that runs until its stop flag is set: set and joined when dropped
/// (the syslog receiver, the log follower and the DNS stub each own one).
pub struct Worker<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<T>>,
}

impl<T> Worker<T> {
    /// A flag for the thread to poll; hand the same flag to [`Worker::new`].
    pub fn flag() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    pub fn new(stop: Arc<AtomicBool>, thread: JoinHandle<T>) -> Self {
        Self { stop, thread: Some(thread) }
    }

    /// Stop the thread and wait for it (again: nothing).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        self.stop();
    }
}
