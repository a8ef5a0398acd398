//! Dataplane benchmark (`cargo xtask bench`): per-packet cost of the XDP and TC programs
//! through BPF_PROG_TEST_RUN with 1; 10,000; 1,000,000 bans present; the same with
//! prefix bans (the BANNET tries, IPv4 /24s and IPv6 /48s) from none to the trie's
//! capacity; and the ban insert rate. Prints figures and ratios; asserts nothing about speed.
use std::time::{Duration, Instant};

use blocksmtp::{
    addr::SourceAddr,
    dataplane::{Dataplane, DataplaneConfig, Program},
};
use blocksmtp_tests::packet::{Packet, SMTP, v4, v6};

fn source(i: u32) -> SourceAddr {
    // 10.0.0.0/8 as map keys only: nothing is ever sent to these addresses.
    let ip = std::net::Ipv4Addr::from(0x0a00_0000u32 + i);
    SourceAddr::from_ip(ip.into(), 64)
}

fn per_packet(dp: &Dataplane, prog: Program, pkt: &[u8], repeat: u32) -> f64 {
    // Best of 3: the kernel's own timer, averaged over `repeat` runs.
    (0..3)
        .map(|_| dp.test_run(prog, pkt, repeat).expect("test run").1.as_nanos() as f64)
        .fold(f64::MAX, f64::min)
}

/// The minimal peer, measured in the same run: (hit ns/pkt, miss ns/pkt).
fn baseline(pkt: &[u8], repeat: u32) -> anyhow::Result<(f64, f64)> {
    use aya::{
        maps::HashMap,
        programs::{TestRun, TestRunOptions, Xdp},
    };
    let mut ebpf = aya::Ebpf::load(blocksmtp::dataplane::BASELINE_OBJECT)?;
    let mut bans: HashMap<_, u32, u64> = HashMap::try_from(ebpf.map_mut("BASELINE_BANS").unwrap())?;
    bans.insert(u32::from_ne_bytes([192, 0, 2, 66]), 1, 0)?;
    let prog: &mut Xdp = ebpf.program_mut("baseline_xdp").unwrap().try_into()?;
    prog.load()?;
    let mut other = pkt.to_vec();
    other[29] = 67; // 192.0.2.67: a miss
    let run = |p: &[u8]| -> anyhow::Result<f64> {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let r = prog.test_run(TestRunOptions { data_in: Some(p), repeat, ..Default::default() })?;
            best = best.min(r.duration.as_nanos() as f64);
        }
        Ok(best)
    };
    Ok((run(pkt)?, run(&other)?))
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeat: u32 = if quick { 200_000 } else { 2_000_000 };
    let sizes: &[u32] = if quick { &[1, 10_000, 100_000] } else { &[1, 10_000, 1_000_000] };

    println!("== dataplane: per-packet cost (BPF_PROG_TEST_RUN, repeat {repeat}, best of 3) ==");
    let mut dp = Dataplane::load_unpinned(&DataplaneConfig::default())?;
    for prog in [Program::Xdp, Program::Tc] {
        let id = dp.program_id(prog)?;
        let insns = std::process::Command::new("bpftool")
            .args(["prog", "dump", "xlated", "id", &id.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).count())
            .unwrap_or(0);
        println!("{prog:?} program: {insns} instructions after verification (bpftool prog dump xlated id {id})");
        if std::env::var_os("BENCH_DUMP").is_some() {
            let _ = std::process::Command::new("bpftool").args(["prog", "dump", "xlated", "id", &id.to_string()]).status();
        }
    }
    let banned = Packet::tcp4(v4("192.0.2.66"), v4("192.0.2.25"), SMTP).build();
    let clean = Packet::tcp4(v4("192.0.2.67"), v4("192.0.2.25"), SMTP).build();
    let other = Packet::tcp4(v4("192.0.2.66"), v4("192.0.2.25"), 443).build();
    dp.ban(&"192.0.2.66".parse()?, Duration::from_secs(3600), false)?;
    let mut present = 1u32;
    let mut rows = Vec::new();
    println!("{:>10} {:>8} {:>14} {:>14} {:>14}", "bans", "program", "banned ns/pkt", "clean ns/pkt", "port443 ns/pkt");
    for &n in sizes {
        while present < n {
            dp.ban(&source(present), Duration::from_secs(3600), false)?;
            present += 1;
        }
        for prog in [Program::Xdp, Program::Tc] {
            let b = per_packet(&dp, prog, &banned, repeat);
            let c = per_packet(&dp, prog, &clean, repeat);
            let o = per_packet(&dp, prog, &other, repeat);
            println!("{n:>10} {:>8} {b:>14.1} {c:>14.1} {o:>14.1}", format!("{prog:?}"));
            rows.push((n, prog, b, c));
        }
    }
    let base = baseline(&banned, repeat)?;
    println!(
        "baseline (one XDP hash lookup, no parsing): {:.1} ns/pkt hit, {:.1} ns/pkt miss; blocksmtp XDP clean path at 1 ban: {:.2}x the baseline miss",
        base.0,
        base.1,
        rows[0].3 / base.1
    );
    for prog in [Program::Xdp, Program::Tc] {
        let first = rows.iter().find(|r| r.1 == prog).unwrap();
        let last = rows.iter().rev().find(|r| r.1 == prog).unwrap();
        println!(
            "{prog:?}: cost at {} bans / at 1 ban: banned {:.2}x, clean {:.2}x (target ≤ 1.3x)",
            last.0,
            last.2 / first.2,
            last.3 / first.3
        );
    }
    drop(dp);
    prefix_bans(repeat, quick)?;

    println!("\n== dataplane: ban insert rate ==");
    let n = 100_000u32;
    let mut dp = Dataplane::load_unpinned(&DataplaneConfig::default())?;
    let t = Instant::now();
    for i in 0..n {
        dp.ban(&source(i), Duration::from_secs(3600), false)?;
    }
    let el = t.elapsed();
    println!("{n} distinct IPv4 bans in {:.3} s: {:.0} bans/s (target ≥ 200,000/s)", el.as_secs_f64(), n as f64 / el.as_secs_f64());
    let t = Instant::now();
    for i in 0..n {
        dp.unban(&source(i))?;
    }
    let el = t.elapsed();
    println!("{n} unbans in {:.3} s: {:.0} unbans/s", el.as_secs_f64(), n as f64 / el.as_secs_f64());
    Ok(())
}

/// Per-packet cost with prefix bans: a source inside a banned /24 (/48), and a clean
/// source that now costs the one extra trie lookup, against the same clean packet
/// with no prefix ban at all (the trie skipped by its config bit).
fn prefix_bans(repeat: u32, quick: bool) -> anyhow::Result<()> {
    println!("\n== dataplane: prefix bans (LPM tries; 1,000 address bans present) ==");
    let mut dp = Dataplane::load_unpinned(&DataplaneConfig::default())?;
    for i in 1..1000 {
        dp.ban(&source(i), Duration::from_secs(3600), false)?;
    }
    let net4 = |i: u32| SourceAddr::from_net(ipnet::IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0b00_0000u32 + (i << 8)), 24).unwrap()));
    let net6 = |i: u32| {
        let a = std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(i & 0xffff) << 80));
        SourceAddr::from_net(ipnet::IpNet::V6(ipnet::Ipv6Net::new(a, 48).unwrap()))
    };
    let in4 = Packet::tcp4(v4("203.0.113.9"), v4("192.0.2.25"), SMTP).build();
    let clean4 = Packet::tcp4(v4("192.0.2.67"), v4("192.0.2.25"), SMTP).build();
    let in6 = Packet::tcp6(v6("2001:db8:bad:1::9"), v6("2001:db8::25"), SMTP).build();
    let clean6 = Packet::tcp6(v6("2001:db9::67"), v6("2001:db8::25"), SMTP).build();
    // Clean, but in a /16 (IPv6: /32) some prefix ban shares: the hint bit is set, the
    // trie is searched.
    let near4 = Packet::tcp4(v4("203.0.114.9"), v4("192.0.2.25"), SMTP).build();
    let near6 = Packet::tcp6(v6("2001:db8:bae::9"), v6("2001:db8::25"), SMTP).build();
    println!(
        "{:>12} {:>8} {:>14} {:>9} {:>14} {:>14} {:>9} {:>14}",
        "prefix bans", "program", "in /24 ns/pkt", "clean v4", "clean v4 /16", "in /48 ns/pkt", "clean v6", "clean v6 /32"
    );
    let sizes: &[u32] = if quick { &[0, 1, 1000] } else { &[0, 1, 1000, 65_000] };
    let mut present = 0u32;
    let mut rows = Vec::new();
    for &n in sizes {
        if n > 0 && present == 0 {
            dp.ban(&"203.0.113.0/24".parse()?, Duration::from_secs(3600), false)?;
            dp.ban(&"2001:db8:bad::/48".parse()?, Duration::from_secs(3600), false)?;
            present = 1;
        }
        while present < n {
            dp.ban(&net4(present), Duration::from_secs(3600), false)?;
            // 2001:db8:bad::/48 is i = 0x0bad: skip it (banned already).
            if present != 0x0bad {
                dp.ban(&net6(present), Duration::from_secs(3600), false)?;
            }
            present += 1;
        }
        for prog in [Program::Xdp, Program::Tc] {
            let r = [&in4, &clean4, &near4, &in6, &clean6, &near6].map(|p| per_packet(&dp, prog, p, repeat));
            println!(
                "{n:>12} {:>8} {:>14.1} {:>9.1} {:>14.1} {:>14.1} {:>9.1} {:>14.1}",
                format!("{prog:?}"),
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5]
            );
            rows.push((n, prog, r));
        }
    }
    for prog in [Program::Xdp, Program::Tc] {
        let none = rows.iter().find(|r| r.1 == prog && r.0 == 0).unwrap();
        let last = rows.iter().rev().find(|r| r.1 == prog).unwrap();
        println!(
            "{prog:?}: clean packet with {} prefix bans / with none: v4 {:.2}x ({:.2}x in a /16 with a ban), v6 {:.2}x ({:.2}x in a /32 with a ban) (target ≤ 1.3x)",
            last.0,
            last.2[1] / none.2[1],
            last.2[2] / none.2[2],
            last.2[4] / none.2[4],
            last.2[5] / none.2[5]
        );
    }
    Ok(())
}
