//! Fleet latency: a harvest detected on MX1 → the harvester's SYNs dropped on MX2, through
//! a real CrowdSec LAPI (Debian's crowdsec, private), blocksmtp vs crowdsec-firewall-bouncer.
//!
//! One L2 segment (tests/src/fleet.rs): LAPI host, MX1, MX2, client host. blocksmtp on MX1
//! follows a log and pushes each ban to LAPI as an alert (machine file); it detects in every
//! row. On MX2 exactly one enforcer pulls from LAPI with its own bouncer key: blocksmtp (XDP
//! on eth0) at its default 2 s pull interval and at 1 s, then Debian's
//! crowdsec-firewall-bouncer (nftables, its own table/set) at its default 10 s and at 1 s.
//! The clock starts at the write of the 5th `ruleset=check_rcpt … User unknown` line into
//! MX1's log (`--max-unknown 5`); a prober in the client namespace connects from the
//! harvester's address to MX2:25 every ~1 ms (20 ms timeout); the drop is the send time of
//! the first of two consecutive failed connects. Afterwards the source is checked in the
//! enforcer's own state (blocksmtp's pinned map, the bouncer's nftables set). MX1's share
//! of the time — threshold line to its alert accepted by LAPI — is sampled on the side
//! through its control socket (`crowdsec.pushed_total`, every ~2 ms). Every harvest
//! uses a new source and starts after a random pause of up to one pull interval, so the
//! harvests fall at all phases of the pull timer; each row's first harvest is a warm-up.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use blocksmtp_common::BanKeyV4;
use blocksmtp_tests::{
    bench::{
        self, Table,
        bouncer::{self, FirewallBouncer},
        daemon::{BenchDaemon, append},
        net::Prober,
        summarize,
    },
    crowdsec::{self, Lapi},
    fleet::{Fleet, FleetAddrs},
    netns::{Netns, serve},
};

const LAPI: &str = "192.0.2.10:8080";
const THRESHOLD: usize = 5;
/// The harvesters' /24s (MX2 has .26 on each, so every source is on-link).
const NETS: [[u8; 3]; 2] = [[198, 51, 100], [203, 0, 113]];

#[derive(Clone, Copy)]
enum Enforcer {
    Blocksmtp { interval: Duration, default: bool },
    Bouncer { interval: Duration, default: bool },
}

impl Enforcer {
    fn interval(self) -> Duration {
        match self {
            Self::Blocksmtp { interval, .. } | Self::Bouncer { interval, .. } => interval,
        }
    }

    fn name(self) -> String {
        let (tool, i, d) = match self {
            Self::Blocksmtp { interval, default } => ("blocksmtp (xdp)", interval, default),
            Self::Bouncer { interval, default } => ("crowdsec-firewall-bouncer (nftables)", interval, default),
        };
        format!("{tool}, pull every {} s{}", i.as_secs_f64(), if d { " (default)" } else { "" })
    }
}

fn sources(n: usize) -> Vec<Ipv4Addr> {
    NETS.iter()
        .flat_map(|n| (2u8..=254).filter(|h| ![25, 26].contains(h)).map(move |h| Ipv4Addr::new(n[0], n[1], n[2], h)))
        .take(n)
        .collect()
}

fn mx2_addr(src: Ipv4Addr) -> Ipv4Addr {
    let o = src.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 26)
}

fn pushed(mx1: &BenchDaemon) -> anyhow::Result<u64> {
    mx1.status()?["crowdsec"]["pushed_total"].as_u64().context("MX1's status has no crowdsec.pushed_total")
}

/// One harvest from `src` logged on MX1: the time from the threshold line to the first
/// dropped SYN on MX2, and to MX1's alert being accepted by LAPI (its `pushed_total`).
fn harvest(client: &Netns, mx1: &BenchDaemon, src: Ipv4Addr, pid: u32, deadline: Duration) -> anyhow::Result<(Duration, Duration)> {
    let ip = src.to_string();
    let mx1_log = &mx1.log;
    let first: Vec<String> = (0..THRESHOLD - 1).map(|i| bench::check_rcpt_line(&ip, pid, i)).collect();
    append(mx1_log, &first)?;
    let before = pushed(mx1)?;
    let dst = SocketAddr::new(IpAddr::V4(mx2_addr(src)), 25);
    let prober = Prober::start(client, IpAddr::V4(src), dst, Duration::from_millis(20), Duration::from_millis(1), deadline);
    // Let the prober see that the source connects before the ban exists anywhere.
    std::thread::sleep(Duration::from_millis(20));
    let t0 = Instant::now();
    append(mx1_log, &[bench::check_rcpt_line(&ip, pid, THRESHOLD - 1)])?;
    // MX1's push, sampled through its control socket every ~2 ms while the prober runs.
    let push = loop {
        if pushed(mx1)? > before {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("{src}: MX1 pushed no alert within 10 s: {}\n{}", mx1.status()?, mx1.stderr_tail());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let drop = prober.join()?.drop_after(t0, &format!("{src} on MX2 (deadline {deadline:?}; the line written on MX1)"))?;
    Ok((drop, push))
}

struct Row {
    enforcer: Enforcer,
    samples: Vec<Duration>,
    pushes: Vec<Duration>,
    note: String,
}

/// What runs on MX2 for one row; dropped (stopped, cleaned up) before the next row starts.
enum Mx2 {
    Ours(Box<BenchDaemon>),
    Peer(FirewallBouncer),
}

impl Mx2 {
    /// Whether MX2's enforcer itself holds a ban for `src` (the drop was its doing).
    fn holds(&self, src: Ipv4Addr) -> anyhow::Result<bool> {
        match self {
            Self::Ours(d) => Ok(d.bans_v4()?.get(&BanKeyV4 { addr: src.octets() }, 0).is_ok()),
            Self::Peer(b) => Ok(b.set_members()?.contains(&src.to_string())),
        }
    }

    fn diagnostics(&self) -> String {
        match self {
            Self::Ours(d) => d.stderr_tail(),
            Self::Peer(b) => b.diagnostics(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    bin: &Path,
    f: &Fleet,
    lapi: &Lapi,
    mx1: &BenchDaemon,
    enforcer: Enforcer,
    srcs: &[Ipv4Addr],
    tag: usize,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<Row> {
    let interval = enforcer.interval();
    let name = format!("bench-fleet-{}-{tag}", std::process::id());
    let key_file = lapi.dir.path().join(format!("{name}.key"));
    let key = lapi.add_bouncer(&name, &key_file)?;
    let url = format!("http://{LAPI}");
    let t = Instant::now();
    let mx2 = match enforcer {
        Enforcer::Blocksmtp { interval, default } => {
            let iv = format!("{}s", interval.as_secs());
            let mut args = vec!["--interface", "eth0", "--crowdsec-url", &url, "--crowdsec-bouncer-key-file"];
            let kf = key_file.display().to_string();
            args.push(&kf);
            if !default {
                args.extend(["--crowdsec-pull-interval", &iv]);
            }
            let mut d = BenchDaemon::new(bin, Some(&f.mx2.name), &args)?;
            d.start()?;
            // Measure from a running link: the first pull (startup=true) has been made.
            while d.status()?["crowdsec"]["last_pull"].is_null() {
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("blocksmtp on MX2 made no pull within 30 s: {}\n{}", d.status()?, d.stderr_tail());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Mx2::Ours(Box::new(d))
        }
        Enforcer::Bouncer { interval, .. } => Mx2::Peer(FirewallBouncer::start(&f.mx2.name, &url, &key, interval, &format!("bsmbench{tag}"))?),
    };
    let ready = t.elapsed();
    let (mut samples, mut pushes) = (Vec::new(), Vec::new());
    for (k, src) in srcs.iter().enumerate() {
        // A random phase against the enforcer's pull timer.
        std::thread::sleep(Duration::from_secs_f64(rng.f64() * interval.as_secs_f64()));
        let pid = 40_000 + (tag * 1000 + k) as u32;
        let (d, push) = harvest(&f.client, mx1, *src, pid, interval + Duration::from_secs(15))
            .with_context(|| format!("{} harvest {k}:\nMX1:\n{}\nMX2:\n{}", enforcer.name(), mx1.stderr_tail(), mx2.diagnostics()))?;
        if !mx2.holds(*src)? {
            bail!("{}: {src} was dropped on MX2 but its enforcer holds no ban for it:\n{}", enforcer.name(), mx2.diagnostics());
        }
        if k > 0 {
            samples.push(d);
            pushes.push(push);
        }
    }
    let note = match &mx2 {
        Mx2::Ours(d) => {
            let st = d.status()?;
            format!("ready (first pull made) {:.0} ms after launch; pulled {}", ready.as_secs_f64() * 1e3, st["crowdsec"]["pulled_total"])
        }
        Mx2::Peer(_) => format!("ready (nftables set made) {:.0} ms after launch", ready.as_secs_f64() * 1e3),
    };
    drop(mx2);
    lapi.cscli(&["bouncers", "delete", &name])?;
    Ok(Row { enforcer, samples, pushes, note })
}

fn main() -> anyhow::Result<()> {
    bench::require_root("bench-fleet")?;
    let quick = bench::quick();
    let n = if quick { 10 } else { 50 };
    println!("== fleet latency: threshold line on MX1 → SYN dropped on MX2, through CrowdSec LAPI ==");
    println!("{}", bench::machine());
    if !crowdsec::available() {
        bail!("Debian's crowdsec is not installed (cargo xtask bench installs it)");
    }
    let peer = bouncer::available();
    let bin = bench::blocksmtp_bin()?;
    let mut rows = vec![
        Enforcer::Blocksmtp { interval: Duration::from_secs(2), default: true },
        Enforcer::Blocksmtp { interval: Duration::from_secs(1), default: false },
    ];
    if peer {
        rows.push(Enforcer::Bouncer { interval: Duration::from_secs(10), default: true });
        rows.push(Enforcer::Bouncer { interval: Duration::from_secs(1), default: false });
    } else {
        println!("crowdsec-firewall-bouncer not installed (apt-get install -y crowdsec-firewall-bouncer): peer skipped");
    }
    let srcs = sources(rows.len() * (n + 1));
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let mut client: Vec<String> = srcs.iter().map(|a| format!("{a}/24")).collect();
    client.push("192.0.2.66/24".into());
    let f = Fleet::new(
        "bf",
        &FleetAddrs {
            lapi: s(&["192.0.2.10/24"]),
            mx1: s(&["192.0.2.25/24"]),
            mx2: s(&["192.0.2.26/24", "198.51.100.26/24", "203.0.113.26/24"]),
            client,
        },
    )?;
    let lapi = Lapi::start(Some(&f.lapi), LAPI)?;
    let _smtp = serve(&f.mx2, &[25])?;
    let machine = lapi.dir.path().join("mx1.yaml");
    lapi.add_machine("bench-mx1", "bench-mx1-password-0123456789", &machine)?;
    let mut mx1 = BenchDaemon::new(
        &bin,
        Some(&f.mx1.name),
        &[
            "--interface",
            "eth0",
            "--max-unknown",
            "5",
            // Many harvesters in a row are a surge: without this MX1 would ban before the
            // threshold line the measurement starts at.
            "--per-address-only",
            "--ban-time",
            "1h",
            "--cmd-read-timeout",
            "0",
            "--crowdsec-url",
            &format!("http://{LAPI}"),
            "--crowdsec-machine-file",
            &machine.display().to_string(),
        ],
    )?;
    mx1.start()?;
    let mut rng = fastrand::Rng::new();
    let mut results = Vec::new();
    for (i, e) in rows.iter().enumerate() {
        let chunk = &srcs[i * (n + 1)..(i + 1) * (n + 1)];
        println!("measuring {} ({} harvests + 1 warm-up)…", e.name(), n);
        results.push(measure(&bin, &f, &lapi, &mx1, *e, chunk, i, &mut rng)?);
    }
    let st = mx1.status()?;
    mx1.stop()?;
    let alerts = lapi.alerts("blocksmtp/smtp-harvest")?.len();

    println!();
    println!(
        "MX1: {} bans made, {} pushed to LAPI ({} alerts of blocksmtp/smtp-harvest in LAPI)",
        st["bans_total"], st["crowdsec"]["pushed_total"], alerts
    );
    for r in &results {
        println!("{}: {}", r.enforcer.name(), r.note);
    }
    let mut t = Table::new(&["MX2 enforcer: threshold line on MX1 → SYN dropped on MX2", "n", "p50 ms", "p99 ms", "max ms", "p50 ÷ peer", "p99 ÷ peer"]);
    let peer_at = |interval: Duration| {
        results.iter().find(|r| matches!(r.enforcer, Enforcer::Bouncer { .. }) && r.enforcer.interval() == interval).map(|r| summarize(&r.samples))
    };
    for r in &results {
        let s = summarize(&r.samples);
        let (r50, r99) = match (r.enforcer, peer_at(r.enforcer.interval())) {
            (Enforcer::Blocksmtp { .. }, Some(p)) => (format!("{:.2}", s.p50 / p.p50), format!("{:.2}", s.p99 / p.p99)),
            _ => (String::new(), String::new()),
        };
        t.row(vec![r.enforcer.name(), s.n.to_string(), format!("{:.1}", s.p50), format!("{:.1}", s.p99), format!("{:.1}", s.max), r50, r99]);
    }
    let all_pushes: Vec<Duration> = results.iter().flat_map(|r| r.pushes.iter().copied()).collect();
    let p = summarize(&all_pushes);
    t.row(vec![
        "(MX1 alone: threshold line → alert accepted by LAPI, all rows)".into(),
        p.n.to_string(),
        format!("{:.1}", p.p50),
        format!("{:.1}", p.p99),
        format!("{:.1}", p.max),
        String::new(),
        String::new(),
    ]);
    t.print();
    // Each at its default: blocksmtp's 2 s against the bouncer's 10 s.
    let ours_default = results.iter().find(|r| matches!(r.enforcer, Enforcer::Blocksmtp { default: true, .. }));
    let peer_default = results.iter().find(|r| matches!(r.enforcer, Enforcer::Bouncer { default: true, .. }));
    if let (Some(o), Some(p)) = (ours_default, peer_default) {
        let (o, p) = (summarize(&o.samples), summarize(&p.samples));
        println!("each at its default (blocksmtp 2 s, bouncer 10 s): bouncer ÷ blocksmtp p50 {:.1}×, p99 {:.1}×", p.p50 / o.p50, p.p99 / o.p99);
    }
    println!("(ratios in the table: blocksmtp ÷ the bouncer at the same pull interval; prober: one try every ~1 ms, 20 ms timeout)");
    Ok(())
}
