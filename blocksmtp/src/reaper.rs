//! The reaper: end sendmail children that sit idle in `cmd read` too long (the old
//! daemon's `$MAX_RUNTIME_SENDMAIL_CMD_READ`).
//!
//! A harvester (or a broken client) can hold a sendmail child in
//! `sendmail: MTA: server [ip] cmd read` until sendmail's own command timeout, an hour
//! by default. Every `interval` the reaper reads the sendmail titles from /proc.
//!
//! **How long a process has been in `cmd read`.** /proc has no "time in state", so the
//! reaper measures it: a process, identified by (pid, start time) so that a recycled
//! pid starts afresh, is timed from the first tick that saw it in `cmd read`. The clock
//! restarts when a tick sees it in another state, or sees that it has read more bytes
//! (`rchar` of `/proc/PID/io`: the client sent a command, even one handled between two
//! ticks). The time so measured is also bounded by the process age. A process is
//! reaped when that time reaches `cmd_read_timeout` (so after a restart of blocksmtp a
//! stuck process gets a full timeout again: the reaper never guesses from history it
//! did not see). A state change that happens and reverts between two ticks without
//! any read is invisible, which is why ticks should be a few seconds apart.
//!
//! **Ending it.** SIGTERM first; if the same process is still there `grace` later,
//! SIGKILL. Signals go through a pidfd after re-checking the start time and the
//! title, so a recycled pid is never hit. Only children serving a client
//! ([`Role::Client`]) are candidates: the listening daemon, queue runners and
//! deliveries are never touched.
use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::proctitle::{ProcTitles, Role, SendmailProcess};

/// Reaper settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaperConfig {
    /// Time in `cmd read` after which a child is ended; zero disables the reaper.
    pub cmd_read_timeout: Duration,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Between two scans of /proc.
    pub interval: Duration,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self {
            cmd_read_timeout: Duration::from_secs(300),
            grace: Duration::from_secs(10),
            interval: Duration::from_secs(5),
        }
    }
}

/// What the reaper decided for one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReapAction {
    /// Send SIGTERM: `in_state` is how long it has been seen in `cmd read`.
    Term { pid: u32, start_ticks: u64, client: Option<IpAddr>, in_state: Duration, age: Duration },
    /// Still there `grace` after SIGTERM: send SIGKILL.
    Kill { pid: u32, start_ticks: u64, client: Option<IpAddr>, since_term: Duration },
}

impl ReapAction {
    pub fn pid(&self) -> u32 {
        match self {
            Self::Term { pid, .. } | Self::Kill { pid, .. } => *pid,
        }
    }
    pub fn signal(&self) -> Signal {
        match self {
            Self::Term { .. } => Signal::SIGTERM,
            Self::Kill { .. } => Signal::SIGKILL,
        }
    }
}

#[derive(Debug)]
struct Tracked {
    /// First tick of the current uninterrupted `cmd read` stretch.
    since: Option<Instant>,
    read_bytes: Option<u64>,
    term_sent: Option<Instant>,
    killed: bool,
}

/// The reaper's state: which processes have been in `cmd read` since when.
#[derive(Debug)]
pub struct Reaper {
    cfg: ReaperConfig,
    tracked: HashMap<(u32, u64), Tracked>,
    warned_io: bool,
}

impl Reaper {
    pub fn new(cfg: ReaperConfig) -> Self {
        Self { cfg, tracked: HashMap::new(), warned_io: false }
    }

    pub fn config(&self) -> &ReaperConfig {
        &self.cfg
    }

    /// Number of processes currently being timed or awaiting SIGKILL.
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// Core decision, given the process table seen at `now`. Pure: sends nothing.
    /// The caller sends the signals (see [`Reaper::run_once`]).
    pub fn tick(&mut self, now: Instant, procs: &[SendmailProcess]) -> Vec<ReapAction> {
        if self.cfg.cmd_read_timeout.is_zero() {
            self.tracked.clear();
            return Vec::new();
        }
        let mut actions = Vec::new();
        let mut present = std::collections::HashSet::new();
        for p in procs {
            if p.title.role != Role::Client {
                continue;
            }
            let key = (p.pid, p.start_ticks);
            present.insert(key);
            let t = self.tracked.entry(key).or_insert(Tracked { since: None, read_bytes: p.read_bytes, term_sent: None, killed: false });
            if let Some(sent) = t.term_sent {
                // Already told to go: no matter its title now, escalate after grace.
                let since_term = now.saturating_duration_since(sent);
                if since_term >= self.cfg.grace && !t.killed {
                    actions.push(ReapAction::Kill { pid: p.pid, start_ticks: p.start_ticks, client: p.title.client, since_term });
                    // One SIGKILL only.
                    t.killed = true;
                }
                continue;
            }
            let read_more = matches!((t.read_bytes, p.read_bytes), (Some(a), Some(b)) if a != b);
            t.read_bytes = p.read_bytes;
            if !p.title.is_cmd_read() || read_more {
                t.since = if p.title.is_cmd_read() { Some(now) } else { None };
                continue;
            }
            let since = *t.since.get_or_insert(now);
            let in_state = now.saturating_duration_since(since).min(p.age);
            if in_state >= self.cfg.cmd_read_timeout && p.age >= self.cfg.cmd_read_timeout {
                t.term_sent = Some(now);
                actions.push(ReapAction::Term {
                    pid: p.pid,
                    start_ticks: p.start_ticks,
                    client: p.title.client,
                    in_state,
                    age: p.age,
                });
            }
        }
        self.tracked.retain(|k, _| present.contains(k));
        actions
    }

    /// Scan `titles` once, decide, and send the signals. Returns the actions that were
    /// carried out (a process that vanished or changed before its signal is left out).
    pub fn run_once(&mut self, titles: &ProcTitles, now: Instant) -> Vec<ReapAction> {
        let procs = titles.scan();
        if !self.warned_io && procs.iter().any(|p| p.title.role == Role::Client && p.read_bytes.is_none()) {
            // Without /proc/PID/io (CAP_SYS_PTRACE) a client trickling data between
            // scans cannot be told from an idle one: only the title counts then.
            log::warn!("reaper: cannot read /proc/PID/io of sendmail children; judging idleness by their titles alone");
            self.warned_io = true;
        }
        let actions = self.tick(now, &procs);
        let mut done = Vec::new();
        for a in actions {
            let Some(p) = procs.iter().find(|p| p.pid == a.pid()) else { continue };
            match titles.signal_if_same(p, a.signal()) {
                Ok(true) => {
                    match &a {
                        ReapAction::Term { pid, client, in_state, age, .. } => log::info!(
                            "reaper: SIGTERM sendmail pid {pid} (client {}) idle in cmd read for {}s, running for {}s",
                            client.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                            in_state.as_secs(),
                            age.as_secs()
                        ),
                        ReapAction::Kill { pid, client, since_term, .. } => log::warn!(
                            "reaper: SIGKILL sendmail pid {pid} (client {}) still alive {}s after SIGTERM",
                            client.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                            since_term.as_secs()
                        ),
                    }
                    done.push(a);
                }
                Ok(false) => log::debug!("reaper: pid {} gone or changed before signal", a.pid()),
                Err(e) => log::warn!("reaper: cannot signal pid {}: {e}", a.pid()),
            }
        }
        done
    }

    /// Run forever, one scan every `interval`. Returns at once when disabled.
    pub async fn run(mut self, titles: ProcTitles) {
        if self.cfg.cmd_read_timeout.is_zero() {
            log::info!("reaper disabled (--cmd-read-timeout 0)");
            return;
        }
        let mut iv = tokio::time::interval(self.cfg.interval.max(Duration::from_millis(100)));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            let t = titles.clone();
            // /proc reads are blocking but quick; keep them off the async workers.
            let (r, _) = tokio::task::spawn_blocking(move || {
                let acts = self.run_once(&t, Instant::now());
                (self, acts)
            })
            .await
            .expect("reaper scan panicked");
            self = r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proctitle::parse_title;

    fn proc(pid: u32, title: &str, age_s: u64, rchar: Option<u64>) -> SendmailProcess {
        SendmailProcess {
            pid,
            ppid: 1,
            comm: "sendmail-mta".into(),
            start_ticks: pid as u64 * 7,
            age: Duration::from_secs(age_s),
            read_bytes: rchar,
            title: parse_title(title).unwrap(),
        }
    }

    const IDLE: &str = "sendmail: MTA: server [192.0.2.66] cmd read";
    const DAEMON: &str = "sendmail: MTA: accepting connections";
    const RCPT: &str = "sendmail: MTA: 6ARCaTcj000010 [192.0.2.66]: RCPT TO:<a@example.com>";

    fn cfg(timeout: u64) -> ReaperConfig {
        ReaperConfig { cmd_read_timeout: Duration::from_secs(timeout), grace: Duration::from_secs(10), interval: Duration::from_secs(5) }
    }

    #[test]
    fn reaps_after_timeout_then_kills_after_grace() {
        let mut r = Reaper::new(cfg(300));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // A process already 1000 s old: it still gets a full timeout from first sight.
        assert!(r.tick(at(0), &[proc(10, IDLE, 1000, Some(5))]).is_empty());
        assert!(r.tick(at(299), &[proc(10, IDLE, 1299, Some(5))]).is_empty());
        let a = r.tick(at(300), &[proc(10, IDLE, 1300, Some(5))]);
        assert_eq!(a.len(), 1);
        assert!(matches!(a[0], ReapAction::Term { pid: 10, in_state, .. } if in_state == Duration::from_secs(300)));
        assert_eq!(a[0].signal(), Signal::SIGTERM);
        // Not again while waiting for grace.
        assert!(r.tick(at(305), &[proc(10, IDLE, 1305, Some(5))]).is_empty());
        let k = r.tick(at(310), &[proc(10, IDLE, 1310, Some(5))]);
        assert!(matches!(k[..], [ReapAction::Kill { pid: 10, .. }]));
        assert!(r.tick(at(320), &[proc(10, IDLE, 1320, Some(5))]).is_empty(), "one SIGKILL only");
        // Gone: forgotten.
        assert!(r.tick(at(330), &[]).is_empty());
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn leaving_the_state_or_reading_resets_the_clock() {
        let mut r = Reaper::new(cfg(300));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        r.tick(at(0), &[proc(10, IDLE, 400, Some(5))]);
        r.tick(at(200), &[proc(10, RCPT, 600, Some(5))]);
        r.tick(at(210), &[proc(10, IDLE, 610, Some(9))]);
        assert!(r.tick(at(500), &[proc(10, IDLE, 900, Some(9))]).is_empty(), "290 s since back in cmd read");
        // The client typed something between ticks: rchar moved.
        assert!(r.tick(at(505), &[proc(10, IDLE, 905, Some(12))]).is_empty());
        assert!(r.tick(at(804), &[proc(10, IDLE, 1204, Some(12))]).is_empty());
        assert_eq!(r.tick(at(805), &[proc(10, IDLE, 1205, Some(12))]).len(), 1);
    }

    #[test]
    fn bounded_by_process_age_and_recycled_pid_starts_afresh() {
        let mut r = Reaper::new(cfg(300));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        r.tick(at(0), &[proc(10, IDLE, 10, None)]);
        // Same pid, different start time (recycled): a new process, a new clock.
        let mut young = proc(10, IDLE, 5, None);
        young.start_ticks += 1;
        assert!(r.tick(at(300), &[young.clone()]).is_empty());
        // The clock says 300 s but the process is only 100 s old: bounded by age.
        young.age = Duration::from_secs(100);
        assert!(r.tick(at(600), &[young]).is_empty());
    }

    #[test]
    fn never_touches_daemon_or_queue_runners_and_zero_disables() {
        let mut r = Reaper::new(cfg(1));
        let t0 = Instant::now();
        let procs = [
            proc(2, DAEMON, 100_000, None),
            proc(3, "sendmail: MTA: running queue: /var/spool/mqueue", 100_000, None),
            proc(4, "sendmail: MTA: ./6ARCa4t9018871 from queue", 100_000, None),
            proc(5, IDLE, 100_000, None),
        ];
        r.tick(t0, &procs);
        let a = r.tick(t0 + Duration::from_secs(5), &procs);
        assert_eq!(a.iter().map(ReapAction::pid).collect::<Vec<_>>(), vec![5]);

        let mut off = Reaper::new(cfg(0));
        off.tick(t0, &procs);
        assert!(off.tick(t0 + Duration::from_secs(100_000), &procs).is_empty());
    }
}
