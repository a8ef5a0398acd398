//! `cargo xtask bench` (replay part; `--quick` for a smaller log): throughput of `blocksmtp replay` against
//! `fail2ban-regex` with fail2ban's `sendmail-reject` filter on the same log.
//!
//! Generates a mixed sendmail log (BSD timestamps; mostly ordinary deliveries, some
//! mistyped recipients, other programs' lines, and `ruleset=check_rcpt` harvests the
//! fail2ban filter recognises) with `blocksmtp_tests::loggen`: 1,000,000 lines, or
//! 100,000 with `quick`. Builds blocksmtp in release mode, runs both tools once under
//! `/usr/bin/time -v`, and prints lines/s, the ratio and peak RSS. It never asserts on
//! timings. fail2ban-regex comes from Debian's `fail2ban` package
//! (`apt-get install -y fail2ban`); without it only blocksmtp is measured.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use blocksmtp_tests::loggen::{LogGen, Style};

const FAIL2BAN_FILTER: &str = "/etc/fail2ban/filter.d/sendmail-reject.conf";

struct Measured {
    wall: Duration,
    max_rss_kb: Option<u64>,
    stdout: Vec<u8>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Run `program args` once, timing it; peak RSS from `/usr/bin/time -v` when present.
fn measure(program: &Path, args: &[&str]) -> anyhow::Result<Measured> {
    let time = Path::new("/usr/bin/time");
    let mut cmd = if time.is_file() {
        let mut c = Command::new(time);
        c.arg("-v").arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {}", program.display()))?;
    let wall = start.elapsed();
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).lines().rev().take(5).collect::<Vec<_>>().join(" / ")
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let max_rss_kb = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok());
    Ok(Measured { wall, max_rss_kb, stdout: out.stdout })
}

fn rate(lines: u64, wall: Duration) -> f64 {
    lines as f64 / wall.as_secs_f64().max(1e-9)
}

fn rss(kb: Option<u64>) -> String {
    kb.map_or_else(|| "n/a (no /usr/bin/time)".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let root = workspace_root();
    let (lines, harvesters) = if quick { (100_000u64, 10u32) } else { (1_000_000, 50) };

    // 1. The log.
    let dir = root.join("target").join("bench-replay");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join(format!("mail-{lines}.log"));
    // Start two days ago so BSD timestamps read as this year's past.
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64 - 2 * 86_400;
    let mut g = LogGen::new(Style::Bsd, 42, start);
    g.bench_mix(lines, harvesters);
    let lines = g.lines();
    let data = g.finish();
    std::fs::write(&log, &data).with_context(|| format!("writing {}", log.display()))?;
    println!("log: {} ({lines} lines, {:.1} MiB, {harvesters} harvesters)", log.display(), data.len() as f64 / 1048576.0);
    let log_s = log.to_str().context("log path is not UTF-8")?;

    // 2. blocksmtp, release build.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--release", "-p", "blocksmtp", "--bin", "blocksmtp"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p blocksmtp failed");
    }
    let bin = root.join("target/release/blocksmtp");
    // Warm the page cache, then measure.
    let _ = measure(&bin, &["replay", "--json", log_s])?;
    let ours = measure(&bin, &["replay", "--json", log_s])?;
    let report: serde_json::Value = serde_json::from_slice(&ours.stdout).context("reading blocksmtp's JSON report")?;
    let bans = report["bans"].as_array().map_or(0, Vec::len);
    let our_rate = rate(lines, ours.wall);
    println!(
        "blocksmtp replay: {:>8.3} s  {:>12.0} lines/s  peak RSS {}  ({bans} would-be bans, {} guesses)",
        ours.wall.as_secs_f64(),
        our_rate,
        rss(ours.max_rss_kb),
        report["guesses"]
    );

    // 3. fail2ban-regex.
    let Some(f2b) = find_in_path("fail2ban-regex") else {
        println!("fail2ban-regex: not installed (Debian: apt-get update && apt-get install -y fail2ban); skipped");
        return Ok(());
    };
    if !Path::new(FAIL2BAN_FILTER).is_file() {
        println!("fail2ban-regex: {FAIL2BAN_FILTER} missing; skipped");
        return Ok(());
    }
    let theirs = measure(&f2b, &[log_s, FAIL2BAN_FILTER])?;
    let text = String::from_utf8_lossy(&theirs.stdout);
    let summary = text.lines().find(|l| l.starts_with("Lines:")).unwrap_or("").trim().to_string();
    let their_rate = rate(lines, theirs.wall);
    println!(
        "fail2ban-regex:   {:>8.3} s  {:>12.0} lines/s  peak RSS {}  ({summary})",
        theirs.wall.as_secs_f64(),
        their_rate,
        rss(theirs.max_rss_kb)
    );
    println!("ratio: blocksmtp is {:.0}× fail2ban-regex", our_rate / their_rate.max(1e-9));
    Ok(())
}
