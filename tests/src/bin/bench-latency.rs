//! Detection-to-drop latency, blocksmtp vs fail2ban, same log lines, same network.
//!
//! A harvest of sendmail `ruleset=check_rcpt` rejects (the lines fail2ban's
//! `sendmail-reject` filter reads) is appended to a followed log file; both tools ban
//! at the 5th guess. The clock starts at the write of that 5th line. A prober in the
//! client namespace connects from the harvester's address to port 25 every 100 µs
//! (20 ms timeout) and stops at two failures in a row; the first failure's send time
//! is the drop. For blocksmtp the pinned `BANS_V4` map is also polled (entry present).
//! For fail2ban (pyinotify backend, iptables-multiport with DROP, run in the server
//! namespace) the rule is checked in `iptables -S f2b-bench` afterwards.
//! Every harvest uses a distinct source address; the first of each tool is a warm-up.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use blocksmtp_common::BanKeyV4;
use blocksmtp_tests::bench::{
    self, Table,
    daemon::{BenchDaemon, append},
    fail2ban::{self, Fail2ban, Fail2banConfig},
    net::{Prober, client_sources, lab, server_for},
    summarize, verdict,
};

const THRESHOLD: usize = 5;

struct Sample {
    drop: Duration,
    map: Option<Duration>,
}

/// One harvest from `src` into `log`; `map_poll` (blocksmtp) checks the kernel map.
fn harvest(
    client: &blocksmtp_tests::netns::Netns,
    log: &std::path::Path,
    src: Ipv4Addr,
    pid: u32,
    deadline: Duration,
    mut map_poll: Option<&mut dyn FnMut() -> bool>,
) -> anyhow::Result<Sample> {
    let ip = src.to_string();
    let first: Vec<String> = (0..THRESHOLD - 1).map(|i| bench::check_rcpt_line(&ip, pid, i)).collect();
    append(log, &first)?;
    // Let the tool read the first guesses, and the prober see that the source connects.
    std::thread::sleep(Duration::from_millis(30));
    let dst = SocketAddr::new(IpAddr::V4(server_for(src)), 25);
    let prober = Prober::start(client, IpAddr::V4(src), dst, Duration::from_millis(20), Duration::from_micros(100), deadline);
    std::thread::sleep(Duration::from_millis(10));
    let last = vec![bench::check_rcpt_line(&ip, pid, THRESHOLD - 1)];
    let t0 = Instant::now();
    append(log, &last)?;
    let mut map = None;
    if let Some(poll) = &mut map_poll {
        while t0.elapsed() < deadline {
            if poll() {
                map = Some(t0.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    let drop = prober.join()?.drop_after(t0, &format!("{src} (deadline {deadline:?})"))?;
    Ok(Sample { drop, map })
}

fn main() -> anyhow::Result<()> {
    bench::require_root("bench-latency")?;
    let quick = bench::quick();
    let (n_ours, n_f2b) = if quick { (30usize, 5usize) } else { (150, 25) };
    println!("== detection-to-drop latency: blocksmtp (xdp) vs fail2ban (iptables) ==");
    println!("{}", bench::machine());
    let bin = bench::blocksmtp_bin()?;
    let sources = client_sources(n_ours + 1 + n_f2b + 1);
    let topo = lab(&sources)?;
    let _srv = topo.serve(&[25])?;

    // blocksmtp
    let mut d = BenchDaemon::new(
        &bin,
        Some(&topo.server.name),
        // Per address only: one harvester after another from one /24 is a surge (and a
        // network's evidence) that would ban before the threshold line this measures from.
        &["--interface", "vs0", "--max-unknown", "5", "--per-address-only", "--ban-time", "1h", "--cmd-read-timeout", "0"],
    )?;
    d.start()?;
    let st = d.status()?;
    println!("blocksmtp: mode {}, interfaces {}", st["mode"], st["interfaces"]);
    let map = d.bans_v4()?;
    let mut ours = Vec::new();
    let mut ours_map = Vec::new();
    for (k, src) in sources[..n_ours + 1].iter().enumerate() {
        let key = BanKeyV4 { addr: src.octets() };
        let mut poll = || map.get(&key, 0).is_ok();
        let s = harvest(&topo.client, &d.log, *src, 20_000 + k as u32, Duration::from_secs(5), Some(&mut poll))
            .with_context(|| format!("blocksmtp harvest {k}:\n{}", d.stderr_tail()))?;
        if k > 0 {
            ours.push(s.drop);
            if let Some(m) = s.map {
                ours_map.push(m);
            }
        }
    }
    let st = d.status()?;
    d.stop()?;
    drop(d);

    // fail2ban
    let mut theirs = Vec::new();
    let mut f2b_note = String::new();
    if fail2ban::available() {
        let f = Fail2ban::start(&topo.server.name, &Fail2banConfig::default())?;
        for (k, src) in sources[n_ours + 1..].iter().enumerate() {
            let s = harvest(&topo.client, &f.log, *src, 30_000 + k as u32, Duration::from_secs(30), None)
                .with_context(|| format!("fail2ban harvest {k}"))?;
            let rules = topo.server.exec(&["iptables", "-w", "-S", &format!("f2b-{}", fail2ban::JAIL)])?;
            let rules = String::from_utf8_lossy(&rules.stdout);
            if !rules.contains(&format!("-s {src}/32")) {
                bail!("fail2ban dropped {src} but its rule is missing:\n{rules}");
            }
            if k > 0 {
                theirs.push(s.drop);
            }
        }
        f2b_note = format!("fail2ban 1.0 (backend pyinotify, action iptables-multiport DROP), ready {:.0} ms after launch", f.ready_after.as_secs_f64() * 1e3);
    } else {
        println!("fail2ban-server not installed (apt-get install -y fail2ban): peer skipped");
    }

    println!();
    println!("blocksmtp: {} harvests measured (+1 warm-up), {} bans made; {f2b_note}", ours.len(), st["bans_total"]);
    let mut t = Table::new(&["tool: write of 5th guess → …", "n", "p50 ms", "p99 ms", "min ms", "max ms"]);
    let row = |t: &mut Table, name: &str, v: &[Duration]| {
        let s = summarize(v);
        t.row(vec![name.into(), s.n.to_string(), format!("{:.3}", s.p50), format!("{:.3}", s.p99), format!("{:.3}", s.min), format!("{:.3}", s.max)]);
    };
    row(&mut t, "blocksmtp: ban in the XDP map", &ours_map);
    row(&mut t, "blocksmtp: SYN dropped", &ours);
    if !theirs.is_empty() {
        row(&mut t, "fail2ban: SYN dropped (rule checked)", &theirs);
    }
    t.print();
    let o = summarize(&ours);
    println!("target: blocksmtp p99 ≤ 5 ms: {:.3} ms — {}", o.p99, verdict(o.p99 <= 5.0));
    if !theirs.is_empty() {
        let f = summarize(&theirs);
        let r50 = f.p50 / o.p50;
        let r99 = f.p99 / o.p99;
        println!("ratio fail2ban / blocksmtp: p50 {r50:.0}×, p99 {r99:.0}×");
        println!("target: ≥ 100× faster than fail2ban (p50): {}", verdict(r50 >= 100.0));
    }
    println!("(prober resolution: one try every ~100 µs + connect time; drops are SYNs timing out after 20 ms)");
    Ok(())
}
