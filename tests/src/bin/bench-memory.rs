//! Daemon resident memory: `blocksmtp run` (xdp mode, in a network namespace) holding
//! 0, 100,000 and 1,000,000 active bans, vs fail2ban-server holding as many bans as it
//! reaches within a time cap. Large N are restored from pinned maps (a first run with
//! `--keep-bans` creates them, the benchmark writes N entries into `BANS_V4`, the
//! measured run restores them); two more rows make 100,000 and 1,000,000 (quick: 10,000) bans from a
//! log (per source, sendmail's `Possible SMTP RCPT flood` line and the session's closing
//! `from=` line, `--max-unknown 1`), so
//! the per-source detection state and offence history are counted too. fail2ban's bans
//! come from `fail2ban-client set bench banip …` in batches of 500, each ban running its
//! iptables-multiport action. Sources are 10.0.0.0/8 map keys and rule matches only;
//! nothing is sent. VmRSS and VmHWM are read from /proc/PID/status. `--ours-only` skips
//! fail2ban (for repeated runs). blocksmtp runs as the shipped unit runs it, the kernel's
//! BTF hidden (`InaccessiblePaths=`; aya would parse it at start); the first detected
//! size runs by hand too, the BTF parsed.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use blocksmtp_common::{BanKeyV4, BanValue};
use blocksmtp_tests::{
    bench::{
        self, Table,
        daemon::BenchDaemon,
        fail2ban::{self, Fail2ban, Fail2banConfig},
        proc_status_kb, thousands, verdict,
    },
    netns::Topology,
};

fn key(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000u32 + 1 + i)
}

fn mib(kb: Option<u64>) -> String {
    kb.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// Start `d` and check it holds at least `n` bans at once (restored, not made): how many,
/// and how long the start took (to the control socket answering).
fn start_holding(d: &mut BenchDaemon, n: u32, what: &str) -> anyhow::Result<(u64, Duration)> {
    let t0 = Instant::now();
    d.start()?;
    let active = d.status()?["active_bans"].as_u64().unwrap_or(0);
    if active < u64::from(n) {
        bail!("{what} {active} of {n} bans:\n{}", d.stderr_tail());
    }
    Ok((active, t0.elapsed()))
}

/// The daemon's memory 3 s after it settled, as a row; with `target`, its larger figure
/// counts toward the target's worst case.
fn memory_row(
    d: &BenchDaemon,
    label: &str,
    (active, took): (u64, Duration),
    note: String,
    target: Option<&mut Option<u64>>,
) -> anyhow::Result<Vec<String>> {
    std::thread::sleep(Duration::from_secs(3));
    let pid = d.pid().context("pid")?;
    let (rss, hwm) = (proc_status_kb(pid, "VmRSS"), proc_status_kb(pid, "VmHWM"));
    if let Some(worst) = target {
        *worst = (*worst).max(rss.max(hwm));
    }
    Ok(vec![label.into(), thousands(active), mib(rss), mib(hwm), format!("{:.2}", took.as_secs_f64()), note])
}

fn main() -> anyhow::Result<()> {
    bench::require_root("bench-memory")?;
    let quick = bench::quick();
    let sizes: &[u32] = if quick { &[0, 10_000, 100_000] } else { &[0, 100_000, 1_000_000] };
    let f2b_target: u32 = if quick { 10_000 } else { 100_000 };
    let f2b_cap = if quick { Duration::from_secs(30) } else { Duration::from_secs(300) };
    println!("== resident memory with N active bans: blocksmtp vs fail2ban ==");
    println!("{}", bench::machine());
    let bin = bench::blocksmtp_bin()?;
    let topo = Topology::new()?;
    let mut t = Table::new(&["daemon", "active bans", "VmRSS MiB", "VmHWM MiB", "time to ban all s", "note"]);
    let mut ours_at_100k = None;
    // Restored bans: a first run with --keep-bans creates the pins, N entries are
    // written into BANS_V4 directly, and the measured run restores them.
    for &n in sizes {
        let mut d = BenchDaemon::new(
            &bin,
            Some(&topo.server.name),
            &["--interface", "vs0", "--keep-bans", "--cmd-read-timeout", "0", "--ban-time", "1d"],
        )?;
        d.settings.hide_kernel_btf = true;
        d.start()?;
        {
            let mut map = d.bans_v4()?;
            let until = blocksmtp::dataplane::clock::boottime_ns() + 86_400 * 1_000_000_000;
            for i in 0..n {
                map.insert(BanKeyV4 { addr: key(i).octets() }, BanValue::new(until, 0), 0)?;
            }
        }
        d.stop()?;
        let started = start_holding(&mut d, n, "restored")?;
        t.row(memory_row(
            &d,
            "blocksmtp run (xdp), bans restored from pinned maps",
            started,
            "time = start to control socket answering".into(),
            (n == sizes[1]).then_some(&mut ours_at_100k),
        )?);
        d.stop()?;
    }
    // Bans made from the log: detection state and offence history included.
    // The first size also run as by hand, the kernel's BTF parsed (the unit hides it).
    let detected: &[(u32, bool)] = if quick { &[(10_000, false), (10_000, true)] } else { &[(100_000, false), (100_000, true), (1_000_000, true)] };
    for &(n, as_unit) in detected {
        let mut d = BenchDaemon::new(
            &bin,
            Some(&topo.server.name),
            // --keep-bans: the restart below finds the bans still in the kernel.
            &["--interface", "vs0", "--keep-bans", "--max-unknown", "1", "--from-start", "--cmd-read-timeout", "0", "--ban-time", "1d"],
        )?;
        d.settings.hide_kernel_btf = as_unit;
        let ts = bench::syslog_now();
        // Each harvest session as sendmail logs it: the flood warning, then the
        // session's closing `from=… relay=[ip]` line.
        let lines: Vec<String> = (0..n)
            .flat_map(|i| {
                let (ip, pid) = (key(i).to_string(), 10_000 + i);
                [
                    bench::flood_line(&ts, &ip, pid),
                    format!(
                        "{ts} mx sm-mta[{pid}]: 6ARCZkEp{pid:06}: from=<x{i}@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=[{ip}]"
                    ),
                ]
            })
            .collect();
        d.append(&lines)?;
        drop(lines);
        d.start()?;
        let t0 = Instant::now();
        let mut last_report = Instant::now();
        let active = loop {
            let a = d.status()?["active_bans"].as_u64().unwrap_or(0);
            if a >= u64::from(n) {
                break a;
            }
            if t0.elapsed() > Duration::from_secs(300) {
                bail!("only {a} of {n} bans after 300 s:\n{}", d.stderr_tail());
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!("  blocksmtp: {a} of {n} bans after {:.0} s", t0.elapsed().as_secs_f64());
                last_report = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let took = t0.elapsed();
        // The target is judged on bans made by detection (with their history), too.
        t.row(memory_row(
            &d,
            if as_unit {
                "blocksmtp run (xdp), bans made from a log (harvest sessions)"
            } else {
                "the same, run by hand: the kernel's BTF parsed at start"
            },
            (active, took),
            format!("{:.0} bans/s from the log", f64::from(n) / took.as_secs_f64()),
            (n == sizes[1] && as_unit).then_some(&mut ours_at_100k),
        )?);
        d.stop()?;
        // The restart follows the first size's run as the unit runs it.
        if !(as_unit && n == detected[0].0) {
            continue;
        }
        // A restart (an upgrade): the offence history of those bans comes back from the
        // state file, the bans from the pinned maps; the log is read again, its guesses
        // all from banned sources.
        let started = start_holding(&mut d, n, "restarted with")?;
        // The daemon says how many offenders it restored.
        let log = d.stderr_tail();
        let restored = log.lines().rev().find_map(|l| l.split("state: ").nth(1)).and_then(|r| r.split(' ').next()).unwrap_or("?");
        t.row(memory_row(
            &d,
            "blocksmtp run (xdp), restarted: the history from the state file, the bans pinned",
            started,
            format!("time = start to control socket answering; {restored} offenders restored"),
            (n == sizes[1]).then_some(&mut ours_at_100k),
        )?);
        d.stop()?;
    }

    // Our rows first: a peer that stalls must not cost them.
    t.print();
    t = Table::new(&["daemon", "active bans", "VmRSS MiB", "VmHWM MiB", "time to ban all s", "note"]);
    // `--ours-only`: blocksmtp's rows alone (repeated runs for best/median figures).
    if std::env::args().any(|a| a == "--ours-only") {
        println!("fail2ban-server skipped (--ours-only)");
    } else if fail2ban::available() {
        let f = Fail2ban::start(&topo.server.name, &Fail2banConfig { bantime_secs: 86_400, ..Default::default() })?;
        let pid = f.pid().context("fail2ban pid")?;
        let idle = proc_status_kb(pid, "VmRSS");
        let t0 = Instant::now();
        let mut submitted = 0u32;
        while submitted < f2b_target && t0.elapsed() < f2b_cap {
            let batch: Vec<String> = (submitted..(submitted + 500).min(f2b_target)).map(|i| key(i).to_string()).collect();
            let mut args = vec!["set", fail2ban::JAIL, "banip"];
            args.extend(batch.iter().map(String::as_str));
            let out = f.client(&args)?;
            if !out.status.success() {
                bail!("fail2ban-client banip: {}", String::from_utf8_lossy(&out.stderr));
            }
            submitted += batch.len() as u32;
        }
        let took = t0.elapsed();
        // With tens of thousands of bans fail2ban-client may not answer in time.
        let banned = match f.banned() {
            Ok(b) => thousands(b),
            Err(e) => {
                eprintln!("fail2ban-client status: {e:#}");
                format!("≤ {} (status unanswered)", thousands(submitted.into()))
            }
        };
        let (rss, hwm) = (proc_status_kb(pid, "VmRSS"), proc_status_kb(pid, "VmHWM"));
        t.row(vec![
            "fail2ban-server".into(),
            "0".into(),
            mib(idle),
            "".into(),
            "".into(),
            "idle, one jail".into(),
        ]);
        t.row(vec![
            "fail2ban-server".into(),
            banned,
            mib(rss),
            mib(hwm),
            format!("{:.2}", took.as_secs_f64()),
            if submitted < f2b_target {
                format!("stopped at the {}-s cap ({} of {} submitted)", f2b_cap.as_secs(), thousands(submitted.into()), thousands(f2b_target.into()))
            } else {
                "iptables-multiport, one rule per ban".into()
            },
        ]);
        drop(f);
    } else {
        println!("fail2ban-server not installed: peer skipped");
    }
    t.print();
    if let Some(kb) = ours_at_100k {
        println!("target: blocksmtp ≤ 20 MB at {} bans, VmRSS and VmHWM (the largest of the restored and the detected rows, run as the unit runs it):", thousands(sizes[1].into()));
        println!("  measured: {:.1} MiB — {}", kb as f64 / 1024.0, verdict(kb as f64 / 1024.0 <= 20.0 * 1e6 / 1048576.0));
    }
    println!("(the ban maps' kernel memory is not in VmRSS: BPF maps are kernel allocations; see bpftool map show's memlock)");
    Ok(())
}
