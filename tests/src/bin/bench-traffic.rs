//! Dataplane cost under real traffic: a sender in the client namespace writes prebuilt
//! Ethernet frames (TCP SYNs to port 25 from banned sources, valid IPv4 checksums, the
//! server veth's MAC) through an AF_PACKET socket on the client veth end, as fast as it
//! can, for a fixed number of frames (or a time cap). The receiving side drops them:
//! XDP native on veth, XDP generic, the TC program, or the iptables compatibility chain
//! (`IptablesEnforcer`) with N bans. Filler bans use 10.0.0.0/8 keys (never sent to);
//! the senders' rules sort after them, so in the iptables chain each packet walks all
//! N rules — the walk every innocent SMTP client pays.
//!
//! Receiver cost per packet, two ways: the softirq column of /proc/stat (tick-sampled
//! on kernels without CONFIG_IRQ_TIME_ACCOUNTING: coarse) and the precise CPU time of
//! the sending thread plus all ksoftirqd threads (veth runs the receive softirq inline
//! in the sender's context; this includes the constant cost of sending, see the
//! "no filter" row). Packets that reached the program and were dropped come from the
//! dataplane's per-verdict counters (`Dataplane::stats`) or the chain's jump counter.
use std::{
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{Context as _, bail};
use blocksmtp::{
    addr::SourceAddr,
    dataplane::{AttachMode, Dataplane, DataplaneConfig},
    enforce::{
        Enforcer as _,
        iptables::{IptablesConfig, IptablesEnforcer},
    },
};
use blocksmtp_tests::bench::{
    self, NsGuard, Table,
    net::{SendResult, blast, client_sources, mac_of, server_for, syn_frame},
    thousands,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    None,
    XdpNative,
    XdpGeneric,
    Tc,
    Iptables,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::None => "no filter (stack answers RST)",
            Setup::XdpNative => "XDP native (veth)",
            Setup::XdpGeneric => "XDP generic",
            Setup::Tc => "TC ingress",
            Setup::Iptables => "iptables chain",
        }
    }
}

struct Row {
    setup: Setup,
    bans: usize,
    send: SendResult,
    reached: u64,
    dropped: u64,
    softirq_ns: u64,
    total_ns: u64,
    note: String,
}

fn sv4(a: Ipv4Addr) -> SourceAddr {
    SourceAddr::from_ip(a.into(), 64)
}

fn jump_packets(server: &blocksmtp_tests::netns::Netns) -> anyhow::Result<u64> {
    let out = server.exec(&["iptables", "-w", "-nvxL", "INPUT"])?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .filter(|l| l.contains("SPAM_UNAME_GUESSERS"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .with_context(|| format!("no jump into the chain in INPUT:\n{s}"))
}

fn main() -> anyhow::Result<()> {
    bench::require_root("bench-traffic")?;
    let quick = bench::quick();
    let sizes: &[usize] = if quick { &[10, 1_000, 10_000] } else { &[10, 1_000, 10_000, 100_000] };
    let (count, cap) = if quick { (300_000u64, Duration::from_secs(5)) } else { (2_000_000, Duration::from_secs(20)) };
    println!("== dataplane cost under offered load: {} SYN frames per run (cap {cap:?}) ==", thousands(count));
    println!("{}", bench::machine());
    let topo = bench::net::lab(&[])?;
    let (cmac, smac) = (mac_of(&topo.client, "vc0")?, mac_of(&topo.server, "vs0")?);
    let mut rows: Vec<Row> = Vec::new();

    let run = |setup: Setup, n: usize| -> anyhow::Result<Row> {
        let senders = client_sources(n.min(256));
        let frames: Vec<Vec<u8>> =
            senders.iter().enumerate().map(|(i, s)| syn_frame(cmac, smac, *s, server_for(*s), 40_000 + i as u16)).collect();
        let mut bans: Vec<SourceAddr> = (0..n - senders.len()).map(|i| sv4(Ipv4Addr::from(0x0a00_0000u32 + 1 + i as u32))).collect();
        bans.extend(senders.iter().map(|s| sv4(*s)));
        let _in = NsGuard::enter(&topo.server.name)?;
        let measure = |frames: Vec<Vec<u8>>| -> anyhow::Result<(SendResult, u64, u64)> {
            let (s0, k0) = (bench::softirq_ns(), bench::ksoftirqd_ns());
            let r = blast(&topo.client, "vc0", frames, count, cap)?;
            let (s1, k1) = (bench::softirq_ns(), bench::ksoftirqd_ns());
            Ok((r, s1 - s0, r.cpu.as_nanos() as u64 + (k1 - k0)))
        };
        match setup {
            Setup::None => {
                let (send, sirq, total) = measure(frames)?;
                Ok(Row { setup, bans: 0, send, reached: send.sent, dropped: 0, softirq_ns: sirq, total_ns: total, note: String::new() })
            }
            Setup::XdpNative | Setup::XdpGeneric | Setup::Tc => {
                let mut dp = Dataplane::load_unpinned(&DataplaneConfig::default())?;
                for b in &bans {
                    dp.ban(b, Duration::from_secs(3600), false)?;
                }
                let mode = match setup {
                    Setup::XdpNative => AttachMode::XdpNative,
                    Setup::XdpGeneric => AttachMode::XdpGeneric,
                    _ => AttachMode::Tc,
                };
                let how = dp.attach(&["vs0".to_string()], mode)?;
                let st0 = dp.stats()?;
                let (send, sirq, total) = measure(frames)?;
                let st1 = dp.stats()?;
                drop(dp);
                Ok(Row {
                    setup,
                    bans: n,
                    send,
                    reached: st1.inspected - st0.inspected,
                    dropped: st1.dropped - st0.dropped,
                    softirq_ns: sirq,
                    total_ns: total,
                    note: format!("{:?}", how[0].1),
                })
            }
            Setup::Iptables => {
                let mut e = IptablesEnforcer::new(IptablesConfig { ip6tables: None, ..Default::default() })?;
                let batch: Vec<(SourceAddr, Duration, bool)> = bans.iter().map(|b| (*b, Duration::from_secs(3600), false)).collect();
                let t = std::time::Instant::now();
                e.ban_many(&batch)?;
                let load = t.elapsed();
                topo.server.exec(&["iptables", "-w", "-Z"])?;
                let (send, sirq, total) = measure(frames)?;
                let reached = jump_packets(&topo.server)?;
                e.shutdown(false)?;
                Ok(Row {
                    setup,
                    bans: n,
                    send,
                    reached,
                    dropped: reached,
                    softirq_ns: sirq,
                    total_ns: total,
                    note: format!("{} rules loaded in {:.2} s", thousands(n as u64), load.as_secs_f64()),
                })
            }
        }
    };

    rows.push(run(Setup::None, 10)?);
    for &n in sizes {
        for setup in [Setup::XdpNative, Setup::XdpGeneric, Setup::Tc, Setup::Iptables] {
            let r = run(setup, n).with_context(|| format!("{} with {n} bans", setup.name()))?;
            if setup != Setup::None && r.reached > 0 && r.dropped == 0 {
                bail!("{}: packets reached it but none were dropped", setup.name());
            }
            eprintln!("  done: {} N={n}", setup.name());
            rows.push(r);
        }
    }

    let mut t = Table::new(&[
        "setup",
        "bans",
        "offered",
        "reached hook",
        "dropped there",
        "offered Mpps",
        "softirq ns/pkt",
        "CPU ns/pkt",
        "CPU s per Mpkt",
        "note",
    ]);
    for r in &rows {
        let per = |ns: u64| if r.reached == 0 { f64::NAN } else { ns as f64 / r.reached as f64 };
        t.row(vec![
            r.setup.name().into(),
            thousands(r.bans as u64),
            thousands(r.send.sent),
            thousands(r.reached),
            thousands(r.dropped),
            format!("{:.2}", r.send.sent as f64 / r.send.wall.as_secs_f64() / 1e6),
            format!("{:.0}", per(r.softirq_ns)),
            format!("{:.0}", per(r.total_ns)),
            format!("{:.3}", per(r.total_ns) * 1e6 / 1e9),
            r.note.clone(),
        ]);
    }
    t.print();
    println!("ns/pkt are per packet that reached the hook. CPU = sending thread + ksoftirqd (precise), includes the send path (see 'no filter').");
    for setup in [Setup::XdpNative, Setup::XdpGeneric, Setup::Tc, Setup::Iptables] {
        let of: Vec<&Row> = rows.iter().filter(|r| r.setup == setup).collect();
        if let (Some(a), Some(b)) = (of.first(), of.last()) {
            let c = |r: &Row| r.total_ns as f64 / r.reached.max(1) as f64;
            println!(
                "{}: CPU/pkt at {} bans ÷ at {} bans = {:.2}×{}",
                setup.name(),
                thousands(b.bans as u64),
                thousands(a.bans as u64),
                c(b) / c(a),
                if setup == Setup::Iptables { " (linear walk)" } else { " (target: flat, ≈ 1×)" }
            );
        }
    }
    if let (Some(x), Some(i)) = (
        rows.iter().rev().find(|r| r.setup == Setup::XdpNative),
        rows.iter().rev().find(|r| r.setup == Setup::Iptables),
    ) {
        let c = |r: &Row| r.total_ns as f64 / r.reached.max(1) as f64;
        println!("at {} bans: iptables chain / XDP native CPU per packet = {:.0}×", thousands(x.bans as u64), c(i) / c(x));
    }
    Ok(())
}
