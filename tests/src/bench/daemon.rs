//! `blocksmtp run` under measurement: like `crate::daemon::Daemon`, but with the
//! release binary, no debug logging, launch timing, and direct access to its pinned maps.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, Map, MapData};
use blocksmtp::{
    control::{Request, request},
    dataplane::PinDir,
};
use blocksmtp_common::{BanKeyV4, BanValue, map_names};

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub struct BenchDaemon {
    child: Option<Child>,
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub pins: PathBuf,
    pub stderr: PathBuf,
    ns: Option<String>,
    args: Vec<String>,
}

impl BenchDaemon {
    /// Files and arguments for a daemon in `ns`; nothing runs until `launch`.
    pub fn new(bin: &Path, ns: Option<&str>, args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("blocksmtp-bench-").tempdir()?;
        let log = dir.path().join("mail.log");
        std::fs::write(&log, b"")?;
        let pins = PathBuf::from(format!("/sys/fs/bpf/blocksmtp-bench-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        Ok(Self {
            child: None,
            bin: bin.to_path_buf(),
            socket: dir.path().join("control.sock"),
            state: dir.path().join("state.json"),
            stderr: dir.path().join("daemon.err"),
            log,
            pins,
            dir,
            ns: ns.map(str::to_string),
            args: args.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Start the process; returns the instant just before the spawn.
    pub fn launch(&mut self) -> anyhow::Result<Instant> {
        if self.child.is_some() {
            bail!("already running");
        }
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = match &self.ns {
            // nsenter --net keeps the host's mount namespace (bpffs pins stay visible).
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("run")
            .arg("--log")
            .arg(&self.log)
            .arg("--control-socket")
            .arg(&self.socket)
            .arg("--state-file")
            .arg(&self.state)
            .arg("--pin-dir")
            .arg(&self.pins)
            .args(&self.args)
            .env("RUST_LOG", "blocksmtp=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr)?);
        let t = Instant::now();
        self.child = Some(cmd.spawn().context("starting blocksmtp")?);
        Ok(t)
    }

    /// Poll the control socket every `every` until it answers `status`; the time since `from`.
    pub fn wait_ready(&mut self, from: Instant, every: Duration, timeout: Duration) -> anyhow::Result<Duration> {
        while from.elapsed() < timeout {
            if let Some(st) = self.child.as_mut().context("not running")?.try_wait()? {
                bail!("blocksmtp exited at start ({st}):\n{}", self.stderr_tail());
            }
            if request(&self.socket, &Request::Status).map(|r| r.ok).unwrap_or(false) {
                return Ok(from.elapsed());
            }
            std::thread::sleep(every);
        }
        bail!("blocksmtp did not answer on its control socket within {timeout:?}:\n{}", self.stderr_tail())
    }

    /// Launch and wait until the control socket answers.
    pub fn start(&mut self) -> anyhow::Result<Duration> {
        let t = self.launch()?;
        self.wait_ready(t, Duration::from_millis(20), Duration::from_secs(60))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `status`'s data.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let r = request(&self.socket, &Request::Status)?;
        if !r.ok {
            bail!("status: {:?}", r.error);
        }
        Ok(r.data)
    }

    pub fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Append lines to the followed log in one write.
    pub fn append(&self, lines: &[String]) -> anyhow::Result<()> {
        append(&self.log, lines)
    }

    /// The pinned IPv4 ban map (valid once the daemon has started once).
    pub fn bans_v4(&self) -> anyhow::Result<HashMap<MapData, BanKeyV4, BanValue>> {
        let path = PinDir::new(&self.pins).map(map_names::BANS_V4);
        let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(HashMap::try_from(Map::HashMap(data))?)
    }

    /// Remove the pinned links (the programs detach), keeping the pinned maps.
    pub fn unpin_links(&self) -> anyhow::Result<()> {
        let links = PinDir::new(&self.pins).links();
        for e in std::fs::read_dir(&links).with_context(|| format!("reading {}", links.display()))?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        Ok(())
    }

    /// SIGTERM, and wait (bounded) for the exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.take() else { return Ok(()) };
        crate::daemon::signal_and_wait(child, libc::SIGTERM, Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.stderr_tail()))
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        crate::daemon::remove_pins(&self.pins);
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
