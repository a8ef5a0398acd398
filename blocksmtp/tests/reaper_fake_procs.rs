//! The reaper and the /proc title lookups against real processes that carry sendmail
//! titles (`argv[0]` set like `exec -a`), under a process name unique to this test run
//! so that a real sendmail on the machine is never looked at or touched.
use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant, SystemTime},
};

use blocksmtp::{
    correlate::LiveAttribution,
    proctitle::{ProcTitles, Role, encode_queue_id},
    reaper::{ReapAction, Reaper, ReaperConfig},
};

/// A directory of symlinks whose names become the fake processes' comm.
struct Bins {
    dir: tempfile::TempDir,
    comm: String,
}

impl Bins {
    fn new(tag: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // comm holds 15 bytes at most.
        let comm = format!("smt{tag}{}", std::process::id() % 1_000_000);
        assert!(comm.len() <= 15);
        Self { dir, comm }
    }

    fn link(&self, target: &str, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        if !p.exists() {
            std::os::unix::fs::symlink(target, &p).unwrap();
        }
        p
    }

    /// `sleep 60` whose cmdline is `TITLE\0 60\0` and whose comm is ours.
    fn spawn(&self, title: &str) -> Fake {
        let bin = self.link("/bin/sleep", &self.comm);
        let child = Command::new(bin).arg0(title).arg("60").stdin(Stdio::null()).spawn().unwrap();
        Fake(child)
    }

    /// Like `spawn`, but SIGTERM is ignored (the disposition survives exec).
    fn spawn_stubborn(&self, title: &str) -> Fake {
        let bin = self.link("/bin/sleep", &self.comm);
        let mut cmd = Command::new(bin);
        cmd.arg0(title).arg("60").stdin(Stdio::null());
        // SAFETY: only async-signal-safe signal(2) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
                Ok(())
            });
        }
        Fake(cmd.spawn().unwrap())
    }

    fn titles(&self) -> ProcTitles {
        ProcTitles::new().with_comms([self.comm.clone()])
    }
}

/// Killed and reaped on drop, even when an assertion fails.
struct Fake(Child);

impl Fake {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until /proc shows the title (exec has happened).
fn wait_visible(t: &ProcTitles, pid: u32) {
    let end = Instant::now() + Duration::from_secs(5);
    while t.read(pid).is_none() {
        assert!(Instant::now() < end, "pid {pid} never showed its title");
        sleep(Duration::from_millis(10));
    }
}

#[test]
fn reaper_kills_old_cmd_read_only() {
    let bins = Bins::new("r");
    let titles = bins.titles();
    let mut daemon = bins.spawn("sendmail: MTA: accepting connections");
    let mut runner = bins.spawn("sendmail: MTA: running queue: /var/spool/mqueue");
    let mut old = bins.spawn("sendmail: MTA: server [192.0.2.66] cmd read");
    let mut stubborn = bins.spawn_stubborn("sendmail: MTA: server [192.0.2.67] cmd read");
    // Right title, wrong process name: not sendmail, never looked at.
    let mut decoy = {
        let c = Command::new("/bin/sleep").arg0("sendmail: MTA: server [192.0.2.68] cmd read").arg("60").spawn().unwrap();
        Fake(c)
    };
    for p in [&daemon, &runner, &old, &stubborn] {
        wait_visible(&titles, p.pid());
    }
    assert_eq!(titles.read(daemon.pid()).unwrap().title.role, Role::Daemon);

    let cfg = ReaperConfig {
        cmd_read_timeout: Duration::from_secs(2),
        grace: Duration::from_secs(1),
        interval: Duration::from_millis(100),
    };
    let mut reaper = Reaper::new(cfg);
    let start = Instant::now();
    let mut young: Option<Fake> = None;
    let mut old_gone_at = None;
    let mut stubborn_term_at = None;
    let mut stubborn_kill_at = None;
    let mut young_alive_when_old_died = None;
    while start.elapsed() < Duration::from_secs(8) {
        let now = Instant::now();
        for a in reaper.run_once(&titles, now) {
            assert!(
                [old.pid(), stubborn.pid(), young.as_ref().map_or(0, Fake::pid)].contains(&a.pid()),
                "unexpected action {a:?}"
            );
            if a.pid() == stubborn.pid() {
                match a {
                    ReapAction::Term { .. } => stubborn_term_at = Some(now - start),
                    ReapAction::Kill { .. } => stubborn_kill_at = Some(now - start),
                }
            }
        }
        if young.is_none() && start.elapsed() >= Duration::from_millis(1500) {
            let y = bins.spawn("sendmail: MTA: server [192.0.2.69] cmd read");
            wait_visible(&titles, y.pid());
            young = Some(y);
        }
        if old_gone_at.is_none() && !old.alive() {
            old_gone_at = Some(start.elapsed());
            young_alive_when_old_died = Some(young.as_mut().is_none_or(Fake::alive));
        }
        if old_gone_at.is_some() && !stubborn.alive() {
            break;
        }
        sleep(cfg.interval);
    }
    let old_gone_at = old_gone_at.expect("the old cmd read process was not reaped");
    assert!(old_gone_at >= Duration::from_secs(2), "reaped too early: {old_gone_at:?}");
    assert_eq!(young_alive_when_old_died, Some(true));
    assert!(!stubborn.alive(), "SIGTERM-proof child not SIGKILLed");
    let (term, kill) = (stubborn_term_at.unwrap(), stubborn_kill_at.unwrap());
    assert!(kill - term >= Duration::from_secs(1), "SIGKILL before grace: {term:?} → {kill:?}");
    let young = young.as_mut().unwrap();
    assert!(young.alive(), "young process reaped before its time");
    assert!(daemon.alive() && runner.alive() && decoy.alive(), "daemon, queue runner or decoy touched");
    eprintln!("old reaped after {old_gone_at:?}; stubborn TERM at {term:?}, KILL at {kill:?}");

    // The young one is reaped too once its own 2 s have passed: the test could fail.
    let end = Instant::now() + Duration::from_secs(5);
    while young.alive() && Instant::now() < end {
        reaper.run_once(&titles, Instant::now());
        sleep(cfg.interval);
    }
    assert!(!young.alive(), "young process never reaped");
    assert!(daemon.alive() && runner.alive() && decoy.alive());
}

#[test]
fn sessions_lookup_kill_and_attribution() {
    let bins = Bins::new("s");
    let titles = bins.titles();
    let mut daemon = bins.spawn("sendmail: MTA: accepting connections");
    let mut v4 = bins.spawn("sendmail: MTA: server [192.0.2.66] cmd read");
    let mut v4b = bins.spawn("sendmail: MTA: 6ARCaTcj018992 [192.0.2.66]: RCPT TO:<x@example.com>");
    let mut other = bins.spawn("sendmail: MTA: server [192.0.2.67] cmd read");
    let mut v6 = bins.spawn("sendmail: MTA: server [IPv6:2001:db8:0:0:0:0:0:66] cmd read");
    for p in [&daemon, &v4, &v4b, &other, &v6] {
        wait_visible(&titles, p.pid());
    }
    let s66: blocksmtp::addr::SourceAddr = "192.0.2.66".parse().unwrap();
    let s6: blocksmtp::addr::SourceAddr = "2001:db8::/64".parse().unwrap();
    let mut want = vec![v4.pid(), v4b.pid()];
    want.sort();
    assert_eq!(titles.sessions_of(&s66), want);
    assert_eq!(titles.sessions_of(&s6), vec![v6.pid()]);

    // Attribution: a queue id made now by this pid → the client; made an hour before
    // the process existed → a recycled pid, refused.
    let qid = |pid: u32, ago: u64| encode_queue_id(SystemTime::now() - Duration::from_secs(ago), "AB", pid);
    assert_eq!(titles.client_of(v4.pid(), &qid(v4.pid(), 0)), Some("192.0.2.66".parse().unwrap()));
    assert_eq!(titles.client_of(v6.pid(), &qid(v6.pid(), 0)), Some("2001:db8::66".parse().unwrap()));
    assert_eq!(titles.client_of(v4.pid(), &qid(v4.pid(), 3600)), None);
    assert_eq!(titles.client_of(v4.pid(), &qid(v4.pid() + 1, 0)), None);
    assert_eq!(titles.client_of(v4b.pid(), "6ARCaTcj018992"), Some("192.0.2.66".parse().unwrap()));
    assert_eq!(titles.client_of(v4b.pid(), "6ARCaTck018992"), None);
    assert_eq!(titles.client_of(daemon.pid(), &qid(daemon.pid(), 0)), None);

    let mut killed = titles.kill_sessions(&s66);
    killed.sort();
    assert_eq!(killed, want);
    let end = Instant::now() + Duration::from_secs(5);
    while (v4.alive() || v4b.alive()) && Instant::now() < end {
        sleep(Duration::from_millis(20));
    }
    assert!(!v4.alive() && !v4b.alive(), "sessions of 192.0.2.66 not ended");
    assert!(other.alive() && v6.alive() && daemon.alive(), "other sessions or the daemon touched");
    assert!(titles.sessions_of(&s66).is_empty());
}
