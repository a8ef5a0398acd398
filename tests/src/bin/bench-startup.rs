//! Start-up with pinned bans: time from launching `blocksmtp run` until it answers on
//! its control socket and until a banned source's SYN is dropped, with N bans restored
//! from pinned maps. Two cases: a restart that finds its pinned links (the programs never
//! stopped enforcing) and a cold start that finds only the maps (links removed, so the
//! program must be loaded and attached again). Each as the shipped unit runs it (the
//! kernel's BTF hidden) and by hand. Prints figures; asserts nothing.
use std::time::Duration;

use blocksmtp::dataplane::clock;
use blocksmtp_common::{BanKeyV4, BanValue};
use blocksmtp_tests::{
    bench::{self, Table, blocksmtp_bin, daemon::BenchDaemon, net::Prober},
    netns::Topology,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    bench::require_root("bench-startup")?;
    let n: u32 = if bench::quick() { 10_000 } else { 100_000 };
    let reps = if bench::quick() { 3 } else { 7 };
    println!("== start-up with {} pinned bans ({reps} runs each, median) ==", bench::thousands(n.into()));
    println!("{}", bench::machine());
    let bin = blocksmtp_bin()?;
    let topo = Topology::new()?;
    let _srv = topo.serve(&[25])?;
    let mut d = BenchDaemon::new(&bin, Some(&topo.server.name), &["--interface", "vs0", "--keep-bans", "--cmd-read-timeout", "0"])?;
    d.start()?;
    // Fill the pinned map directly: N bans, one of them the prober's source.
    {
        let mut m = d.bans_v4()?;
        let until = clock::boottime_ns() + 3_600_000_000_000;
        m.insert(BanKeyV4 { addr: [192, 0, 2, 66] }, BanValue::new(until, 0), 0)?;
        for i in 1..n {
            // 10.0.0.0/8 as map keys only: nothing is sent to them.
            m.insert(BanKeyV4 { addr: (0x0a00_0000u32 + i).to_be_bytes() }, BanValue::new(until, 0), 0)?;
        }
    }
    d.stop()?;
    let src = "192.0.2.66".parse()?;
    let dst = "192.0.2.25:25".parse()?;

    let mut table = Table::new(&["case", "launch → control socket", "launch → first SYN dropped", "bans restored"]);
    // As the shipped unit runs it (the kernel's BTF hidden, which aya would parse at
    // start; the wrapper's unshare, sh and mount count in its times, where systemd sets
    // the namespace up before the exec), and by hand.
    for (as_unit, cold) in [(true, false), (true, true), (false, false), (false, true)] {
        d.settings.hide_kernel_btf = as_unit;
        let (mut ready, mut dropped) = (Vec::new(), Vec::new());
        let mut restored = 0;
        for _ in 0..reps {
            if cold {
                d.unpin_links()?;
                anyhow::ensure!(topo.connect("192.0.2.66", "192.0.2.25:25", Duration::from_millis(500))?, "links removed: not enforced");
            }
            let prober = Prober::start(&topo.client, src, dst, Duration::from_millis(20), Duration::from_millis(1), Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(30));
            let t = d.launch()?;
            ready.push(d.wait_ready(t, Duration::from_millis(1), Duration::from_secs(60))?);
            let p = prober.join()?;
            // A restart onto pinned links never stops dropping: the first probe fails.
            dropped.push(p.first_drop.map_or(Duration::ZERO, |f| f.saturating_duration_since(t)));
            restored = d.status()?["active_bans"].as_u64().unwrap_or(0);
            d.stop()?;
        }
        table.row(vec![
            format!(
                "{}, {}",
                if cold { "cold start (pinned maps, no links)" } else { "restart (pinned maps and links)" },
                if as_unit { "as the unit runs it (kernel BTF hidden)" } else { "by hand (kernel BTF parsed)" }
            ),
            format!("{:.1} ms", median(ready).as_secs_f64() * 1e3),
            if cold { format!("{:.1} ms", median(dropped).as_secs_f64() * 1e3) } else { "0 (never stopped)".into() },
            bench::thousands(restored),
        ]);
    }
    table.print();
    println!("target: launch to enforcing ≤ 100 ms with 100,000 pinned bans");
    Ok(())
}
