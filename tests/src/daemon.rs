//! Running the real `blocksmtp` binary in tests and benchmarks: a daemon with its own log
//! file, control socket, state file and pin directory, stopped and cleaned up on drop.
//! The one launcher: `crate::bench::daemon::BenchDaemon` is this with other [`Launch`] settings.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, bail};
use blocksmtp::control::{Request, request};

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

/// The kernel's BTF, which aya parses on every load unless it cannot be read.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// How a daemon is run: tests take the debug build at debug level; benchmarks the
/// release build at info level (debug logging would be measured too), with more time to
/// start and stop (a million restored bans).
#[derive(Clone, Debug)]
pub struct Launch {
    pub bin: PathBuf,
    pub rust_log: String,
    /// Names the temporary directory (`blocksmtp-<tag>-…`) and the pin directory.
    pub tag: String,
    /// How long `spawn` waits for the control socket to answer.
    pub ready_timeout: Duration,
    /// How long `stop` waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// Run the daemon in a process group of its own: a terminal's Ctrl-C then reaches the
    /// test (which cleans up on unwinding), not the daemon. Benchmarks share theirs, so
    /// that a Ctrl-C stops their daemons too.
    pub own_process_group: bool,
    /// Hide the kernel's BTF from the daemon as the shipped unit does
    /// (`InaccessiblePaths=-/sys/kernel/btf/vmlinux`): a private mount namespace, slave
    /// to the host's (bpffs and its pins stay shared), with /dev/null bound over it.
    pub hide_kernel_btf: bool,
}

impl Launch {
    /// The tests' settings: `binary()`, `RUST_LOG=blocksmtp=debug`.
    pub fn test() -> Self {
        Self {
            bin: binary(),
            rust_log: "blocksmtp=debug".into(),
            tag: "test".into(),
            ready_timeout: Duration::from_secs(20),
            stop_timeout: Duration::from_secs(15),
            own_process_group: true,
            hide_kernel_btf: false,
        }
    }

    /// The benchmarks' settings: `bin` (the release build), `RUST_LOG=blocksmtp=info`.
    pub fn bench(bin: &Path) -> Self {
        Self {
            bin: bin.to_path_buf(),
            rust_log: "blocksmtp=info".into(),
            tag: "bench".into(),
            ready_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            own_process_group: false,
            hide_kernel_btf: false,
        }
    }
}

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
    pub settings: Launch,
}

impl Daemon {
    /// Start `blocksmtp run` (in `ns` if given) following a fresh log file, with
    /// `args` added. Waits until the control socket answers.
    pub fn start(ns: Option<&Netns>, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_following(ns, None, args)
    }

    /// Like `start`, following `log` (e.g. a real sendmail's) instead of a fresh file.
    pub fn start_following(ns: Option<&Netns>, log: Option<&Path>, args: &[&str]) -> anyhow::Result<Self> {
        let mut d = Self::prepare(ns.map(|n| n.name.as_str()), log, args, Launch::test())?;
        d.spawn()?;
        Ok(d)
    }

    /// Like `start`, with extra environment variables for the daemon.
    pub fn start_with_env(ns: Option<&Netns>, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Self> {
        let mut d = Self::prepare(ns.map(|n| n.name.as_str()), None, args, Launch::test())?;
        d.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        d.spawn()?;
        Ok(d)
    }

    /// The files and arguments of a daemon in network namespace `ns` (by name), not
    /// started yet: `spawn` (or `launch` and `wait_ready`) starts it. `log`: follow this
    /// file instead of a fresh one.
    pub fn prepare(ns: Option<&str>, log: Option<&Path>, args: &[&str], launch: Launch) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix(&format!("blocksmtp-{}-", launch.tag)).tempdir()?;
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
            "/sys/fs/bpf/blocksmtp-{}-d{}-{}",
            launch.tag,
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
            ns: ns.map(str::to_string),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            settings: launch,
        })
    }

    /// (Re)start the process with the same files and arguments; waits until the control
    /// socket answers.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let t = self.launch()?;
        self.wait_ready(t, Duration::from_millis(20), self.settings.ready_timeout).map(|_| ())
    }

    /// Start the process without waiting for it; returns the instant just before the spawn.
    pub fn launch(&mut self) -> anyhow::Result<Instant> {
        if let Some(child) = self.child.as_mut()
            && child.try_wait()?.is_none()
        {
            bail!("blocksmtp (pid {}) is still running: stop it before starting it again", child.id());
        }
        // A killed daemon's socket file stays: readiness must be the new one's.
        let _ = std::fs::remove_file(&self.socket);
        // Each wrapper execs the next: the child's pid is the daemon's.
        let mut wrap: Vec<std::ffi::OsString> = Vec::new();
        // nsenter --net, not `ip netns exec`: the latter gives the process its own mount
        // namespace, without the host's bpffs (and so no pins that outlive it).
        if let Some(ns) = &self.ns {
            wrap.extend(["nsenter".into(), format!("--net=/var/run/netns/{ns}").into()]);
        }
        if self.settings.hide_kernel_btf && Path::new(KERNEL_BTF).exists() {
            wrap.extend(["unshare", "--mount", "--propagation", "slave", "sh", "-c"].map(Into::into));
            wrap.push(format!("mount --bind /dev/null {KERNEL_BTF} && exec \"$0\" \"$@\"").into());
        }
        wrap.push(self.settings.bin.clone().into());
        let mut cmd = Command::new(&wrap[0]);
        cmd.args(&wrap[1..]);
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
            .env("RUST_LOG", &self.settings.rust_log)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr)?);
        if self.settings.own_process_group {
            cmd.process_group(0);
        }
        let t = Instant::now();
        self.child = Some(cmd.spawn().context("starting blocksmtp")?);
        Ok(t)
    }

    /// Poll the control socket every `every` until it answers `status`; the time since `from`.
    pub fn wait_ready(&mut self, from: Instant, every: Duration, timeout: Duration) -> anyhow::Result<Duration> {
        while from.elapsed() < timeout {
            if let Some(status) = self.child.as_mut().context("blocksmtp is not running")?.try_wait()? {
                bail!("blocksmtp exited at start ({status}):\n{}", self.stderr_text());
            }
            if request(&self.socket, &Request::Status).is_ok_and(|r| r.ok) {
                return Ok(from.elapsed());
            }
            std::thread::sleep(every);
        }
        bail!("blocksmtp did not answer on its control socket within {timeout:?}:\n{}", self.stderr_text())
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

    /// The last 20 lines of the daemon's log (for error messages of long runs).
    pub fn stderr_tail(&self) -> String {
        let s = self.stderr_text();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `blocksmtp ARGS --control-socket S`
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(&self.settings.bin).args(args).arg("--control-socket").arg(&self.socket).output()?)
    }

    /// One control request made in this process (no CLI in between: cheap enough to poll
    /// in a benchmark); the response's data, or its error.
    pub fn request(&self, req: &Request) -> anyhow::Result<serde_json::Value> {
        let r = request(&self.socket, req)?;
        if !r.ok {
            bail!("{req:?}: {}", r.error.unwrap_or_default());
        }
        Ok(r.data)
    }

    /// `blocksmtp list --json`'s rows.
    pub fn list(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.ctl(&["list", "--json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("list --json: {out:?}"))?;
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    /// `list`'s row for `source` (an address, or a prefix as `list` writes it: `2001:db8::/64`).
    pub fn row(&self, source: &str) -> Option<serde_json::Value> {
        self.list().ok()?.into_iter().find(|r| r["source"] == source)
    }

    /// Whether `list` shows `source`, in force or pending.
    pub fn listed(&self, source: &str) -> bool {
        self.row(source).is_some()
    }

    /// Whether `list` shows `source` in force (not pending a retry).
    pub fn in_force(&self, source: &str) -> bool {
        self.row(source).is_some_and(|r| r["pending"] != true)
    }

    /// `blocksmtp status --json`'s data.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.ctl(&["status", "--json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("status --json: {out:?}"))?;
        Ok(v["data"].clone())
    }

    /// Append lines to the followed log, flushed at once.
    pub fn write_log(&self, lines: &[String]) -> anyhow::Result<()> {
        append(&self.log, lines)
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
        signal_and_wait(child, sig, self.settings.stop_timeout).map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.stderr_text()))
    }
}

/// Append lines to a file in one write.
pub fn append(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    let mut buf = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        buf.push_str(l);
        buf.push('\n');
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    f.write_all(buf.as_bytes())?;
    Ok(())
}

/// Send `sig` to `child` and wait for it to exit (SIGKILL after `timeout`). After
/// SIGTERM, an unsuccessful exit is an error: the daemon must stop cleanly.
pub fn signal_and_wait(mut child: Child, sig: i32, timeout: Duration) -> anyhow::Result<()> {
    unsafe { libc::kill(child.id() as i32, sig) };
    match crate::wait_or_kill(&mut child, timeout) {
        None => bail!("blocksmtp did not stop within {timeout:?} of signal {sig}"),
        Some(status) if sig == libc::SIGTERM && !status.success() => bail!("blocksmtp exited with {status} after SIGTERM"),
        Some(_) => Ok(()),
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
