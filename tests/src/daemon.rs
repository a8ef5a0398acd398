//! Running the real `blocksmtp` binary in tests: a daemon with its own log file,
//! control socket, state file and pin directory, stopped and cleaned up on drop.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// The `blocksmtp` binary built alongside these tests (`cargo test --workspace` and
/// `cargo xtask test` build it).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> or target/<profile>/<bin> → target/<profile>/blocksmtp
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let bin = dir.join("blocksmtp");
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p blocksmtp` (`cargo xtask test` does)", bin.display());
    bin
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub pins: PathBuf,
    pub stderr: PathBuf,
    /// Remove the pin directory on drop (off for tests that check what survives).
    pub cleanup_pins: bool,
    ns: Option<String>,
    args: Vec<String>,
    /// Extra environment for the daemon process (e.g. an LD_PRELOAD shim).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// Start `blocksmtp run` (in `ns` if given) following a fresh log file, with
    /// `args` added. Waits until the control socket answers.
    pub fn start(ns: Option<&Netns>, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_following(ns, None, args)
    }

    /// Like `start`, following `log` (e.g. a real sendmail's) instead of a fresh file.
    pub fn start_following(ns: Option<&Netns>, log: Option<&Path>, args: &[&str]) -> anyhow::Result<Self> {
        let mut d = Self::prepare(ns, log, args)?;
        d.spawn()?;
        Ok(d)
    }

    /// The files and arguments of a daemon, not started yet.
    fn prepare(ns: Option<&Netns>, log: Option<&Path>, args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("blocksmtp-test-").tempdir()?;
        // World-traversable, so that only the socket's own mode keeps others out.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let log = match log {
            Some(l) => l.to_path_buf(),
            None => {
                let l = dir.path().join("mail.log");
                std::fs::write(&l, b"")?;
                l
            }
        };
        let pins = PathBuf::from(format!(
            "/sys/fs/bpf/blocksmtp-test-d{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        Ok(Self {
            child: None,
            socket: dir.path().join("control.sock"),
            state: dir.path().join("state.json"),
            stderr: dir.path().join("daemon.err"),
            log,
            pins,
            dir,
            cleanup_pins: true,
            ns: ns.map(|n| n.name.clone()),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        })
    }

    /// Like `start`, with extra environment variables for the daemon.
    pub fn start_with_env(ns: Option<&Netns>, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Self> {
        let mut d = Self::prepare(ns, None, args)?;
        d.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        d.spawn()?;
        Ok(d)
    }

    /// (Re)start the process with the same files and arguments.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = match &self.ns {
            // nsenter --net, not `ip netns exec`: the latter gives the process its
            // own mount namespace, without the host's bpffs (and so no pins that
            // outlive it).
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("run");
        // `--no-log` (an enforce-only fleet member) reads no log at all.
        if !self.args.iter().any(|a| a == "--no-log") {
            cmd.arg("--log").arg(&self.log);
        }
        cmd.arg("--control-socket")
            .arg(&self.socket)
            .arg("--state-file")
            .arg(&self.state)
            .arg("--pin-dir")
            .arg(&self.pins)
            .args(&self.args)
            .env("RUST_LOG", "blocksmtp=debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // Its own process group: a terminal's Ctrl-C reaches the test, not the daemon.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr)?);
        self.child = Some(cmd.spawn().context("starting blocksmtp")?);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.as_mut().expect("child").try_wait()? {
                bail!("blocksmtp exited at start ({status}):\n{}", self.stderr_text());
            }
            if self.ctl(&["status"]).map(|o| o.status.success()).unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("blocksmtp did not answer on its control socket within 20 s:\n{}", self.stderr_text())
    }

    /// Arguments for the next `spawn` (same files and pin dir: e.g. a restart in another mode).
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|s| s.to_string()).collect();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `blocksmtp ARGS --control-socket S`
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(binary()).args(args).arg("--control-socket").arg(&self.socket).output()?)
    }

    /// `blocksmtp list --json`'s rows.
    pub fn list(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.ctl(&["list", "--json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("list --json: {out:?}"))?;
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    /// `blocksmtp status --json`'s data.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.ctl(&["status", "--json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("status --json: {out:?}"))?;
        Ok(v["data"].clone())
    }

    /// Append lines to the followed log, flushed at once.
    pub fn write_log(&self, lines: &[String]) -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        let mut buf = String::new();
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        f.write_all(buf.as_bytes())?;
        Ok(())
    }

    /// Poll `cond` every 5 ms until it holds or `timeout` passes; returns the time it took.
    pub fn wait_for(&self, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if cond(self) {
                return Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// SIGKILL: no cleanup at all, as after a crash.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(libc::SIGKILL)
    }

    fn signal_and_wait(&mut self, sig: i32) -> anyhow::Result<()> {
        let Some(child) = self.child.take() else { return Ok(()) };
        signal_and_wait(child, sig, Duration::from_secs(15)).map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.stderr_text()))
    }
}

/// Send `sig` to `child` and wait for it to exit (SIGKILL after `timeout`). After
/// SIGTERM, an unsuccessful exit is an error: the daemon must stop cleanly.
pub fn signal_and_wait(mut child: Child, sig: i32, timeout: Duration) -> anyhow::Result<()> {
    unsafe { libc::kill(child.id() as i32, sig) };
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if sig == libc::SIGTERM && !status.success() {
                bail!("blocksmtp exited with {status} after SIGTERM");
            }
            return Ok(());
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("blocksmtp did not stop within {timeout:?} of signal {sig}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.cleanup_pins {
            remove_pins(&self.pins);
        }
    }
}

/// Remove a pin tree (maps and links): the programs detach when the last link pin goes.
pub fn remove_pins(dir: &Path) {
    fn walk(p: &Path) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path);
                    let _ = std::fs::remove_dir(&path);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    walk(dir);
    let _ = std::fs::remove_dir(dir);
}

/// sendmail 8.17's lines for a harvest of `n` guesses from `ip` by child `pid`,
/// ending with the session's `from=… relay=[ip]` line that names the client.
pub fn sendmail_harvest(ip: &str, pid: u32, n: usize) -> Vec<String> {
    let qid = format!("6ARCZkEp{pid:06}");
    let relay = if ip.contains(':') { format!("[IPv6:{}]", expand_v6(ip)) } else { format!("[{ip}]") };
    let mut v: Vec<String> = (0..n)
        .map(|i| format!("Nov 27 12:35:47 mx sm-mta[{pid}]: {qid}: <guess{i}x{pid}@example.com>... User unknown"))
        .collect();
    v.push(format!(
        "Nov 27 12:36:04 mx sm-mta[{pid}]: {qid}: from=<sgbpebo11@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay={relay}"
    ));
    v
}

/// sendmail writes IPv6 fully expanded: 2001:db8:0:0:0:0:0:66.
pub fn expand_v6(ip: &str) -> String {
    let a: std::net::Ipv6Addr = ip.parse().expect("IPv6");
    a.segments().iter().map(|s| format!("{s:x}")).collect::<Vec<_>>().join(":")
}
