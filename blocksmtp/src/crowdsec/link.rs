//! The link to LAPI: one thread that pulls decisions every interval and pushes queued
//! alerts, with backoff while LAPI is away, so the daemon's loop never waits on HTTP.
//!
//! After any failed pull the next successful one asks for the full set again
//! (`startup=true`): the daemon then lifts the CrowdSec bans that are no longer in it.
//! Alerts wait in a bounded queue, saved to a file on every change, so neither an
//! outage nor a restart loses them.
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tokio::sync::mpsc;

use super::{
    MachineCredentials, RawDecision,
    lapi::{Alert, Lapi, LapiError, Token},
};

/// Alerts kept while LAPI is away; the oldest go first beyond this.
pub const QUEUE_CAP: usize = 10_000;
/// Alerts per POST.
const BATCH: usize = 100;

/// What the link is to do.
#[derive(Debug)]
pub struct LinkConfig {
    /// Pull decisions: the LAPI and the bouncer key.
    pub pull: Option<(Lapi, String)>,
    /// Push alerts: the LAPI and the machine's credentials.
    pub push: Option<(Lapi, MachineCredentials)>,
    pub interval: Duration,
    /// Where queued alerts are kept across restarts.
    pub queue_file: Option<PathBuf>,
}

/// Decisions from one pull.
#[derive(Debug, PartialEq, Eq)]
pub enum Pulled {
    /// Every active decision (the first pull, and the first after an outage): what is
    /// not in it is no longer decided.
    Sync(Vec<RawDecision>),
    /// What changed since the last pull.
    Changes { new: Vec<RawDecision>, deleted: Vec<RawDecision> },
}

/// The link as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LinkStatus {
    pub url: String,
    pub pull: bool,
    pub push: bool,
    /// The last call to LAPI succeeded.
    pub up: bool,
    /// Unix seconds since `up` has been what it is.
    pub since: u64,
    /// Unix seconds of the last successful pull.
    pub last_pull: Option<u64>,
    /// The next pull asks for the full set (after a failed one).
    pub resync: bool,
    pub queued: usize,
    pub pulled_total: u64,
    pub pushed_total: u64,
    pub failed_total: u64,
    /// Alerts dropped because the queue was full.
    pub dropped_total: u64,
    pub last_error: Option<String>,
}

/// The running link; the thread stops when this drops.
pub struct Link {
    status: Arc<Mutex<LinkStatus>>,
    alerts: std_mpsc::Sender<Alert>,
    /// Pulled decisions, for the daemon's loop.
    pub pulled: mpsc::Receiver<Pulled>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("status", &self.status()).finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Link {
    pub fn start(cfg: LinkConfig) -> anyhow::Result<Self> {
        let url = cfg.pull.as_ref().map(|(l, _)| l.base()).or(cfg.push.as_ref().map(|(l, _)| l.base())).unwrap_or("").to_string();
        let queue = match &cfg.queue_file {
            Some(p) => load_queue(p),
            None => VecDeque::new(),
        };
        let status = Arc::new(Mutex::new(LinkStatus {
            url,
            pull: cfg.pull.is_some(),
            push: cfg.push.is_some(),
            since: unix_now(),
            queued: queue.len(),
            ..LinkStatus::default()
        }));
        if !queue.is_empty() {
            log::info!("crowdsec: {} alerts queued from before the restart", queue.len());
        }
        let (atx, arx) = std_mpsc::channel();
        let (ptx, prx) = mpsc::channel(16);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker { cfg, status: status.clone(), alerts: arx, pulled: ptx, stop: stop.clone(), queue, token: None };
        let thread = std::thread::Builder::new().name("crowdsec".into()).spawn(move || worker.run())?;
        Ok(Self { status, alerts: atx, pulled: prx, stop, thread: Some(thread) })
    }

    /// Queue an alert for LAPI (returns at once).
    pub fn push(&self, alert: Alert) {
        let _ = self.alerts.send(alert);
    }

    pub fn status(&self) -> LinkStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the thread: a closed channel ends its wait.
        let (dead, _) = std_mpsc::channel();
        self.alerts = dead;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    cfg: LinkConfig,
    status: Arc<Mutex<LinkStatus>>,
    alerts: std_mpsc::Receiver<Alert>,
    pulled: mpsc::Sender<Pulled>,
    stop: Arc<AtomicBool>,
    queue: VecDeque<Alert>,
    token: Option<Token>,
}

/// Waits after `failures` failures in a row: 1 s, 2 s, 4 s, … up to the larger of 5 s
/// and the pull interval — never a tight loop, never long out of touch once LAPI is back.
fn backoff(failures: u32, interval: Duration) -> Duration {
    let cap = interval.max(Duration::from_secs(5));
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(cap)
}

impl Worker {
    fn run(mut self) {
        let interval = self.cfg.interval;
        let mut need_sync = true;
        let mut pull_failures = 0u32;
        let mut push_failures = 0u32;
        let mut next_pull = Instant::now();
        let mut next_push = Instant::now();
        let mut last_error: Option<String> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let mut changed = self.drain_alerts();
            let now = Instant::now();
            if let Some((lapi, key)) = &self.cfg.pull
                && now >= next_pull
            {
                match lapi.stream(key, need_sync) {
                    Ok(s) => {
                        let n = (s.new.len() + s.deleted.len()) as u64;
                        let msg =
                            if need_sync { Pulled::Sync(s.new) } else { Pulled::Changes { new: s.new, deleted: s.deleted } };
                        if self.pulled.blocking_send(msg).is_err() {
                            return;
                        }
                        need_sync = false;
                        pull_failures = 0;
                        self.update(|st| st.resync = false);
                        next_pull = Instant::now() + interval;
                        self.update(|st| {
                            st.pulled_total += n;
                            st.last_pull = Some(unix_now());
                        });
                        self.mark(true, None, &mut last_error);
                    }
                    Err(e) => {
                        need_sync = true;
                        self.update(|st| st.resync = true);
                        pull_failures += 1;
                        next_pull = Instant::now() + backoff(pull_failures, interval);
                        self.mark(false, Some(format!("pull: {e}")), &mut last_error);
                    }
                }
            }
            if self.cfg.push.is_some() && !self.queue.is_empty() && Instant::now() >= next_push {
                match self.push_some() {
                    Ok(n) => {
                        push_failures = 0;
                        changed |= n > 0;
                        self.update(|st| st.pushed_total += n as u64);
                        self.mark(true, None, &mut last_error);
                    }
                    Err(e) => {
                        push_failures += 1;
                        next_push = Instant::now() + backoff(push_failures, interval);
                        self.mark(false, Some(format!("push: {e}")), &mut last_error);
                    }
                }
            }
            if changed {
                self.save_queue();
            }
            // Sleep until the next pull (or push retry), waking at once for a new alert.
            let mut until = if self.cfg.pull.is_some() { next_pull } else { Instant::now() + interval };
            if self.cfg.push.is_some() && !self.queue.is_empty() {
                until = until.min(next_push);
            }
            let wait = until.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                match self.alerts.recv_timeout(wait) {
                    Ok(a) => {
                        self.enqueue(a);
                        self.save_queue();
                    }
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        self.drain_alerts();
        self.save_queue();
    }

    fn update(&self, f: impl FnOnce(&mut LinkStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Record the outcome of a call; log only changes (up ↔ down, a new error), so an
    /// outage makes two lines, not one per retry.
    fn mark(&self, ok: bool, err: Option<String>, last_error: &mut Option<String>) {
        let mut went = None;
        self.update(|st| {
            if st.up != ok {
                st.up = ok;
                st.since = unix_now();
                went = Some(ok);
            }
            if !ok {
                st.failed_total += 1;
                st.last_error = err.clone();
            }
            st.queued = self.queue.len();
        });
        match (went, &err) {
            (Some(true), _) => log::warn!("crowdsec: LAPI link up ({})", self.status.lock().map(|s| s.url.clone()).unwrap_or_default()),
            (_, Some(e)) if last_error.as_deref() != Some(e.as_str()) => {
                log::warn!("crowdsec: {e}; detection and enforcement go on locally, retrying with backoff");
            }
            _ => {}
        }
        if ok {
            *last_error = None;
        } else {
            *last_error = err;
        }
    }

    fn drain_alerts(&mut self) -> bool {
        let mut any = false;
        while let Ok(a) = self.alerts.try_recv() {
            self.enqueue(a);
            any = true;
        }
        any
    }

    fn enqueue(&mut self, a: Alert) {
        if self.queue.len() >= QUEUE_CAP {
            self.queue.pop_front();
            self.update(|st| st.dropped_total += 1);
        }
        self.queue.push_back(a);
        let n = self.queue.len();
        self.update(|st| st.queued = n);
    }

    /// Push up to `BATCH` queued alerts; log in first when the token is missing or
    /// about to expire, and again at once after a 401.
    fn push_some(&mut self) -> Result<usize, LapiError> {
        let Some((lapi, creds)) = &self.cfg.push else { return Ok(0) };
        let n = self.queue.len().min(BATCH);
        let batch: Vec<Alert> = self.queue.iter().take(n).cloned().collect();
        for attempt in 0..2 {
            let token = match &self.token {
                Some(t) if t.fresh() => t.clone(),
                _ => {
                    let t = lapi.login(&creds.login, &creds.password)?;
                    self.token = Some(t.clone());
                    t
                }
            };
            match lapi.push(&token, &batch) {
                Ok(()) => {
                    self.queue.drain(..n);
                    let left = self.queue.len();
                    self.update(|st| st.queued = left);
                    return Ok(n);
                }
                Err(LapiError::Unauthorized) if attempt == 0 => self.token = None,
                Err(e) => return Err(e),
            }
        }
        Err(LapiError::Unauthorized)
    }

    fn save_queue(&self) {
        let Some(p) = &self.cfg.queue_file else { return };
        if let Err(e) = save_queue(p, &self.queue) {
            log::error!("crowdsec: saving the alert queue to {}: {e:#}", p.display());
        }
    }
}

fn load_queue(p: &Path) -> VecDeque<Alert> {
    match std::fs::read_to_string(p) {
        Ok(s) => match serde_json::from_str::<VecDeque<Alert>>(&s) {
            Ok(q) => q,
            Err(e) => {
                let aside = p.with_extension(format!("corrupt-{}", unix_now()));
                let _ = std::fs::rename(p, &aside);
                log::error!("crowdsec: alert queue {} is not readable ({e}); moved aside to {}", p.display(), aside.display());
                VecDeque::new()
            }
        },
        Err(_) => VecDeque::new(),
    }
}

/// Atomically, root-only (the queue names offenders).
fn save_queue(p: &Path, q: &VecDeque<Alert>) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if q.is_empty() {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => return Ok(()),
        }
    }
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = p.with_extension("tmp");
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    let mut w = std::io::BufWriter::new(f);
    serde_json::to_writer(&mut w, q)?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, p)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let i = Duration::from_secs(2);
        let got: Vec<u64> = (1..=10).map(|n| backoff(n, i).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 5, 5, 5, 5, 5, 5, 5]);
        assert_eq!(backoff(10, Duration::from_secs(30)).as_secs(), 30);
    }
}
