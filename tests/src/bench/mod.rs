//! Support for the side-by-side benchmarks (`tests/src/bin/bench-*.rs`): the daemon
//! and fail2ban under test, the network lab they run in, probes that prove a drop, CPU
//! and memory readings, and the tables the benchmarks print. Nothing here asserts on
//! timings: benchmarks print figures and ratios.
pub mod bouncer;
pub mod daemon;
pub mod fail2ban;
pub mod net;

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

/// `--quick` was given.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// Fail early, saying why, when not root (everything here needs root).
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("{what} needs root (network namespaces, eBPF, iptables)");
    }
    Ok(())
}

/// The workspace's root (tests/ sits in it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// The release `blocksmtp` binary next to this benchmark binary, built if missing
/// (`cargo run --release -p blocksmtp-tests --bin bench-…` does not build it).
pub fn blocksmtp_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("benchmark binary has no directory")?;
    let bin = dir.join("blocksmtp");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Always ask cargo: a stale daemon binary would measure old code. A no-op build is fast.
    let profile = if dir.file_name().is_some_and(|n| n == "release") { Some("--release") } else { None };
    let mut c = Command::new(&cargo);
    c.current_dir(workspace_root()).args(["build", "--quiet", "-p", "blocksmtp", "--bin", "blocksmtp"]);
    if let Some(p) = profile {
        c.arg(p);
    }
    let st = c.status().context("running cargo build -p blocksmtp")?;
    if !st.success() {
        bail!("cargo build -p blocksmtp failed");
    }
    if !bin.is_file() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok(bin)
}

/// A syslog (BSD) timestamp for now, local time: `Nov 27 14:06:32`.
pub fn syslog_now() -> String {
    let t = unsafe { libc::time(std::ptr::null_mut()) };
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&t, &mut tm) };
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!("{} {:>2} {:02}:{:02}:{:02}", MON[tm.tm_mon as usize], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// sendmail's `ruleset=check_rcpt` reject of guess `i` from `ip` (the client on the
/// line): what fail2ban's `sendmail-reject` filter and blocksmtp both read.
pub fn check_rcpt_line(ip: &str, pid: u32, i: usize) -> String {
    let relay = if ip.contains(':') { format!("[IPv6:{}]", crate::daemon::expand_v6(ip)) } else { format!("[{ip}]") };
    format!(
        "{} mx sm-mta[{pid}]: 6ARCZkEp{pid:06}: ruleset=check_rcpt, arg1=<guess{i}x{pid}@example.com>, relay={relay}, reject=550 5.1.1 <guess{i}x{pid}@example.com>... User unknown",
        syslog_now()
    )
}

/// sendmail's `Possible SMTP RCPT flood` warning for `ip` (one line bans with `--max-unknown ≤ 3`).
pub fn flood_line(ts: &str, ip: &str, pid: u32) -> String {
    format!("{ts} mx sm-mta[{pid}]: 6ARCZkEp{pid:06}: [{ip}]: Possible SMTP RCPT flood, throttling.")
}

/// Percentile `p` (0..=100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Summary of samples in milliseconds: (n, p50, p99, min, max).
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(samples: &[Duration]) -> Summary {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    Summary {
        n: v.len(),
        p50: percentile(&v, 50.0),
        p99: percentile(&v, 99.0),
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// A plain-text table, columns right-aligned except the first.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let cols = self.header.len();
        let mut w = vec![0; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |r: &Vec<String>| {
            let mut s = String::from("| ");
            for (i, wi) in w.iter().enumerate().take(cols) {
                let c = r.get(i).map(String::as_str).unwrap_or("");
                let pad = wi - c.chars().count();
                if i == 0 {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
                s.push_str(" | ");
            }
            s.trim_end().to_string()
        };
        println!("{}", line(&self.header));
        let mut sep = String::from("|");
        for (i, wi) in w.iter().enumerate() {
            sep.push(' ');
            sep.push_str(&"-".repeat(*wi));
            sep.push_str(if i == 0 { " |" } else { ":|" });
        }
        println!("{sep}");
        for r in &self.rows {
            println!("{}", line(r));
        }
    }
}

/// `target met` / `target MISSED`, for the closing lines of each benchmark.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// A number with thousands separators.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Total softirq time of all CPUs from `/proc/stat`, in nanoseconds (tick-sampled
/// unless the kernel has CONFIG_IRQ_TIME_ACCOUNTING).
pub fn softirq_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    s.lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |ticks| ticks * 1_000_000_000 / hz)
}

/// CPU time of every `ksoftirqd/N` thread (precise: `/proc/PID/schedstat`), in ns.
pub fn ksoftirqd_ns() -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let p = e.path();
            let is_ksoftirqd = std::fs::read_to_string(p.join("comm")).map(|c| c.starts_with("ksoftirqd/")).unwrap_or(false);
            if is_ksoftirqd {
                total += std::fs::read_to_string(p.join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// The calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The calling thread stays in network namespace `ns` until the guard drops.
pub struct NsGuard {
    home: File,
}

impl NsGuard {
    pub fn enter(ns: &str) -> anyhow::Result<Self> {
        let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
        let target = File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({ns}): {}", std::io::Error::last_os_error());
        }
        Ok(Self { home })
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// One line describing the machine, and a warning when it is busy.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown CPU".into());
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1 = load.split_whitespace().next().unwrap_or("?").to_string();
    let busy = load1.parse::<f64>().map(|l| l > 0.5 * ncpu as f64).unwrap_or(false);
    format!(
        "machine: {ncpu} CPU(s), {model}, Linux {kernel}, load average {load1}{}",
        if busy { " — BUSY: figures are noisy, rerun on a quiet machine" } else { "" }
    )
}

/// Like `std::process::Command::output`, but killed after `timeout`.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> anyhow::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let t = std::time::Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
