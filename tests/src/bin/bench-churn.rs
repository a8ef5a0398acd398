//! Ban churn: bans and unbans per second for N distinct IPv4 sources into
//! - the XDP ban map (`Dataplane::ban` / `unban`, one map update each),
//! - the iptables chain (`IptablesEnforcer::ban_many`: one batched iptables-restore;
//!   removal through `sweep_expired` after the bans expire, also one batch),
//! - an ipset (`ipset restore` of N `add` lines into a hash:ip set, then N `del` lines).
//!
//! The addresses (10.0.0.0/8) are map keys and rule matches only; nothing is sent. The
//! iptables and ipset work happens in a private network namespace.
use std::{
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use blocksmtp::{
    addr::SourceAddr,
    dataplane::{Dataplane, DataplaneConfig},
    enforce::{
        Enforcer as _,
        iptables::{IptablesConfig, IptablesEnforcer},
    },
};
use blocksmtp_tests::{
    bench::{self, NsGuard, Table, thousands, verdict},
    netns::Netns,
};

fn source(i: u32) -> SourceAddr {
    SourceAddr::from_ip(Ipv4Addr::from(0x0a00_0000u32 + 1 + i).into(), 64)
}

fn rate(n: u32, d: Duration) -> f64 {
    f64::from(n) / d.as_secs_f64().max(1e-9)
}

fn ipset_restore(script: &str) -> anyhow::Result<()> {
    let mut c = Command::new("ipset").args(["restore"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().context("ipset")?;
    c.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!("ipset restore: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    bench::require_root("bench-churn")?;
    let quick = bench::quick();
    let n: u32 = if quick { 10_000 } else { 100_000 };
    println!("== ban churn: {} distinct IPv4 sources ==", thousands(n.into()));
    println!("{}", bench::machine());
    let mut t = Table::new(&["enforcer", "ban: s", "bans/s", "unban: s", "unbans/s"]);

    // XDP map.
    let mut dp = Dataplane::load_unpinned(&DataplaneConfig::default())?;
    let srcs: Vec<SourceAddr> = (0..n).map(source).collect();
    let t0 = Instant::now();
    for s in &srcs {
        dp.ban(s, Duration::from_secs(3600), false)?;
    }
    let xb = t0.elapsed();
    let (v4, _) = dp.counts();
    if v4 != n as usize {
        bail!("XDP map holds {v4} bans, expected {n}");
    }
    let t0 = Instant::now();
    for s in &srcs {
        dp.unban(s)?;
    }
    let xu = t0.elapsed();
    drop(dp);
    t.row(vec!["XDP map (Dataplane::ban/unban)".into(), format!("{:.3}", xb.as_secs_f64()), format!("{:.0}", rate(n, xb)), format!("{:.3}", xu.as_secs_f64()), format!("{:.0}", rate(n, xu))]);

    let ns = Netns::new("churn")?;
    // iptables chain, batched.
    let ipt = {
        let _in = NsGuard::enter(&ns.name)?;
        let mut e = IptablesEnforcer::new(IptablesConfig { ip6tables: None, ..Default::default() })?;
        let backend = e.backends().join(", ");
        let batch: Vec<(SourceAddr, Duration, bool)> = srcs.iter().map(|s| (*s, Duration::from_secs(2), false)).collect();
        let t0 = Instant::now();
        e.ban_many(&batch)?;
        let b = t0.elapsed();
        // Expire them, then one batched removal.
        std::thread::sleep(Duration::from_secs(3));
        let t0 = Instant::now();
        let gone = e.sweep_expired()?;
        let u = t0.elapsed();
        if gone.len() != n as usize {
            bail!("iptables sweep removed {} rules, expected {n}", gone.len());
        }
        e.shutdown(false)?;
        (b, u, backend)
    };
    t.row(vec![
        format!("iptables chain, batched ({})", ipt.2),
        format!("{:.3}", ipt.0.as_secs_f64()),
        format!("{:.0}", rate(n, ipt.0)),
        format!("{:.3}", ipt.1.as_secs_f64()),
        format!("{:.0}", rate(n, ipt.1)),
    ]);

    // ipset.
    let ips = {
        let _in = NsGuard::enter(&ns.name)?;
        let set = "bsm_bench";
        let mut add = format!("create {set} hash:ip family inet maxelem {}\n", n * 2);
        let mut del = String::new();
        for i in 0..n {
            let a = Ipv4Addr::from(0x0a00_0000u32 + 1 + i);
            add.push_str(&format!("add {set} {a}\n"));
            del.push_str(&format!("del {set} {a}\n"));
        }
        let t0 = Instant::now();
        ipset_restore(&add)?;
        let b = t0.elapsed();
        let t0 = Instant::now();
        ipset_restore(&del)?;
        let u = t0.elapsed();
        let _ = Command::new("ipset").args(["destroy", set]).status();
        (b, u)
    };
    drop(ns);
    t.row(vec!["ipset hash:ip (ipset restore)".into(), format!("{:.3}", ips.0.as_secs_f64()), format!("{:.0}", rate(n, ips.0)), format!("{:.3}", ips.1.as_secs_f64()), format!("{:.0}", rate(n, ips.1))]);
    t.print();
    println!(
        "ratios (bans/s): XDP map / iptables {:.1}×, XDP map / ipset {:.1}×",
        ipt.0.as_secs_f64() / xb.as_secs_f64(),
        ips.0.as_secs_f64() / xb.as_secs_f64()
    );
    println!("target: ≥ 200,000 bans/s into the maps: {:.0}/s — {}", rate(n, xb), verdict(rate(n, xb) >= 200_000.0));
    println!("(ipset and iptables are one process each for all N; the map is one syscall pair per ban, as the daemon does it)");
    Ok(())
}
