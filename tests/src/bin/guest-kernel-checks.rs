//! Runs inside the qemu guest booted on Debian's stock 6.1 kernel (tests/tests/guest_debian_6_1.rs):
//! every attach mode on a fresh veth (a harvest banned and dropped, IPv4 and an IPv6 /64,
//! while another client connects; SIGTERM; a start in another mode on the same interface,
//! after a clean stop and after kill -9), TC's filter kept and taken over across a
//! --keep-bans restart, and iptables mode. One console line per check:
//! `BLOCKSMTP-CHECK <name> PASS|FAIL <detail>`, then `BLOCKSMTP-CHECKS-DONE`.
use std::time::Duration;

use anyhow::{bail, ensure};
use blocksmtp_tests::{
    daemon::{Daemon, Launch, sendmail_harvest},
    netns::{Topology, sh},
};

/// TCG is slow: generous connect timeouts (a dropped SYN waits the whole timeout).
const T: Duration = Duration::from_millis(1500);
const WAIT: Duration = Duration::from_secs(30);

fn report(name: &str, r: anyhow::Result<String>) -> bool {
    let flat = |s: String| s.replace('\n', " | ");
    match r {
        Ok(d) => {
            println!("BLOCKSMTP-CHECK {name} PASS {}", flat(d));
            true
        }
        Err(e) => {
            println!("BLOCKSMTP-CHECK {name} FAIL {}", flat(format!("{e:#}")));
            false
        }
    }
}

fn iface_state(d: &Daemon) -> String {
    d.status().ok().and_then(|s| s["interfaces"]["vs0"].as_str().map(str::to_string)).unwrap_or_default()
}

fn args<'a>(attach: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--interface", "vs0", "--attach", attach, "--max-unknown", "3", "--ban-time", "1h", "--cmd-read-timeout", "0"];
    v.extend_from_slice(extra);
    v
}

/// What of ours is left on vs0: XDP programs (ip link) and ingress tc filters.
fn leftovers(topo: &Topology) -> anyhow::Result<String> {
    let link = String::from_utf8_lossy(&topo.server.ip(&["link", "show", "dev", "vs0"])?.stdout).into_owned();
    let mut left = Vec::new();
    if link.contains(" xdp") || link.contains("prog/xdp") {
        left.push(format!("XDP still attached: {}", link.trim()));
    }
    let filters = std::process::Command::new("tc").args(["-n", &topo.server.name, "filter", "show", "dev", "vs0", "ingress"]).output()?;
    let f = String::from_utf8_lossy(&filters.stdout);
    if f.contains("blocksmtp") {
        left.push(format!("tc filter still attached: {}", f.trim()));
    }
    if clsact(topo)? {
        left.push("the clsact qdisc blocksmtp added is still there".into());
    }
    Ok(left.join("; "))
}

fn clsact(topo: &Topology) -> anyhow::Result<bool> {
    let q = std::process::Command::new("tc").args(["-n", &topo.server.name, "qdisc", "show", "dev", "vs0"]).output()?;
    Ok(String::from_utf8_lossy(&q.stdout).contains("clsact"))
}

fn expect_state(d: &Daemon, attach: &str) -> anyhow::Result<String> {
    let want = format!("{attach} since");
    if d.wait_for(WAIT, |d| iface_state(d).starts_with(&want)).is_none() {
        bail!("status says {:?}, expected {want}…", iface_state(d));
    }
    Ok(iface_state(d))
}

fn harvest_v4(topo: &Topology, d: &Daemon, pid: u32) -> anyhow::Result<String> {
    d.write_log(&sendmail_harvest("192.0.2.66", pid, 3))?;
    ensure!(d.wait_for(WAIT, |d| d.listed("192.0.2.66")).is_some(), "192.0.2.66 not banned:\n{}", d.stderr_text());
    ensure!(!topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "banned 192.0.2.66 still connects");
    ensure!(topo.connect("192.0.2.67", "192.0.2.25:25", T)?, "innocent 192.0.2.67 cannot connect");
    Ok("192.0.2.66 dropped, 192.0.2.67 connects".into())
}

fn harvest_v6(topo: &Topology, d: &Daemon, pid: u32) -> anyhow::Result<String> {
    d.write_log(&sendmail_harvest("2001:db8::66", pid, 3))?;
    ensure!(d.wait_for(WAIT, |d| d.listed("2001:db8::/64")).is_some(), "2001:db8::/64 not banned:\n{}", d.stderr_text());
    ensure!(!topo.connect("2001:db8::66", "[2001:db8::25]:25", T)?, "banned 2001:db8::66 still connects");
    ensure!(!topo.connect("2001:db8::67", "[2001:db8::25]:25", T)?, "2001:db8::67 (same /64) still connects");
    ensure!(topo.connect("2001:db8:0:1::67", "[2001:db8:0:1::25]:25", T)?, "2001:db8:0:1::67 (another /64) cannot connect");
    Ok("2001:db8::/64 dropped, 2001:db8:0:1::/64 connects".into())
}

fn stop_clean(topo: &Topology, d: &mut Daemon) -> anyhow::Result<String> {
    d.stop()?;
    let err = d.stderr_text();
    ensure!(err.contains("SIGTERM: stopping") && err.contains("stopped"), "no clean shutdown in the log:\n{err}");
    ensure!(topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "192.0.2.66 still dropped after the stop");
    let left = leftovers(topo)?;
    ensure!(left.is_empty(), "{left}");
    Ok("exit 0, detached, nothing left on vs0".into())
}

/// Start in `attach`, harvest (v4, v6), SIGTERM, start in `next` on the same interface
/// and pin dir; then start in `attach`, kill -9, start in `next` again.
fn mode(attach: &str, next: &str, pid: u32) -> bool {
    let mut ok = true;
    let topo = match Topology::new().and_then(|t| t.serve(&[25]).map(|s| (t, s))) {
        Ok(t) => t,
        Err(e) => return report(&format!("{attach}/setup"), Err(e)),
    };
    let (topo, _srv) = (&topo.0, &topo.1);
    let mut d = match Daemon::start(Some(&topo.server), &args(attach, &[])) {
        Ok(d) => d,
        Err(e) => return report(&format!("{attach}/start"), Err(e)),
    };
    ok &= report(&format!("{attach}/start"), expect_state(&d, attach));
    ok &= report(&format!("{attach}/harvest-v4"), harvest_v4(topo, &d, pid));
    ok &= report(&format!("{attach}/harvest-v6"), harvest_v6(topo, &d, pid + 1));
    ok &= report(&format!("{attach}/sigterm"), stop_clean(topo, &mut d));

    let r = (|| {
        d.set_args(&args(next, &[]));
        d.spawn()?;
        let st = expect_state(&d, next)?;
        ensure!(d.ctl(&["ban", "192.0.2.66"])?.status.success(), "manual ban refused");
        ensure!(!topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "banned 192.0.2.66 connects under {next}");
        ensure!(topo.connect("192.0.2.67", "192.0.2.25:25", T)?, "192.0.2.67 cannot connect under {next}");
        stop_clean(topo, &mut d)?;
        Ok(st)
    })();
    ok &= report(&format!("{attach}/restart-as-{next}"), r);

    let r = (|| {
        d.set_args(&args(attach, &[]));
        d.spawn()?;
        expect_state(&d, attach)?;
        ensure!(d.ctl(&["ban", "192.0.2.66"])?.status.success(), "manual ban refused");
        d.kill9()?;
        ensure!(!topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "not enforced after kill -9");
        d.set_args(&args(next, &[]));
        d.spawn()?;
        let st = expect_state(&d, next)?;
        ensure!(!topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "the pinned ban is not enforced under {next}");
        ensure!(topo.connect("192.0.2.67", "192.0.2.25:25", T)?, "192.0.2.67 cannot connect under {next}");
        stop_clean(topo, &mut d)?;
        Ok(st)
    })();
    ok &= report(&format!("{attach}/kill9-then-{next}"), r);
    ok
}

/// The interface deleted and re-created: re-attached on the link event, drops resume,
/// status says DETACHED meanwhile.
fn reattach(attach: &str) -> bool {
    let r = (|| {
        let topo = Topology::new()?;
        let _srv = topo.serve(&[25])?;
        let mut d = Daemon::start(Some(&topo.server), &args(attach, &[]))?;
        expect_state(&d, attach)?;
        ensure!(d.ctl(&["ban", "192.0.2.66"])?.status.success(), "manual ban refused");
        topo.delete_link()?;
        ensure!(d.wait_for(WAIT, |d| iface_state(d).starts_with("DETACHED")).is_some(), "status while vs0 is gone: {:?}", iface_state(&d));
        topo.create_link()?;
        let st = expect_state(&d, attach)?;
        let mut dropped = false;
        for _ in 0..10 {
            if !topo.connect("192.0.2.66", "192.0.2.25:25", T)? {
                dropped = true;
                break;
            }
        }
        ensure!(dropped, "drops did not resume on the re-created vs0:\n{}", d.stderr_text());
        ensure!(topo.connect("192.0.2.67", "192.0.2.25:25", T)?, "192.0.2.67 cannot connect");
        stop_clean(&topo, &mut d)?;
        Ok(st)
    })();
    report(&format!("{attach}/reattach"), r)
}

/// SIGTERM while the daemon is still loading (the eBPF load takes seconds under TCG):
/// it must finish starting, then stop cleanly (exit 0), leaving nothing attached.
fn sigterm_during_load(attach: &str) -> bool {
    let r = (|| {
        let topo = Topology::new()?;
        let mut d = Daemon::prepare(Some(&topo.server.name), None, &args(attach, &[]), Launch::test())?;
        let v1 = d.pins.join("v1");
        d.launch()?;
        // The pin directory is made just before the eBPF object is loaded.
        let t = std::time::Instant::now();
        while !v1.exists() && t.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(2));
        }
        let at = t.elapsed();
        // SIGTERM and wait: an exit other than 0 is an error.
        d.stop().map_err(|e| anyhow::anyhow!("after an early SIGTERM: {e:#}"))?;
        let text = d.stderr_text();
        ensure!(text.contains("SIGTERM: stopping"), "no clean stop:\n{text}");
        let left = leftovers(&topo)?;
        ensure!(left.is_empty(), "{left}");
        ensure!(!v1.exists(), "pins left in {}", d.pins.display());
        Ok(format!("exit 0 after a SIGTERM sent {at:?} after the start, as the pin dir appeared"))
    })();
    report(&format!("{attach}/sigterm-during-load"), r)
}

/// A clsact qdisc that was there before blocksmtp (another tool's) stays after its stop.
fn tc_foreign_clsact() -> bool {
    let r = (|| {
        let topo = Topology::new()?;
        let _srv = topo.serve(&[25])?;
        sh(&["tc", "-n", &topo.server.name, "qdisc", "add", "dev", "vs0", "clsact"])?;
        let mut d = Daemon::start(Some(&topo.server), &args("tc", &[]))?;
        expect_state(&d, "tc")?;
        ensure!(d.ctl(&["ban", "192.0.2.66"])?.status.success(), "manual ban refused");
        ensure!(!topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "banned 192.0.2.66 connects");
        d.stop()?;
        ensure!(topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "192.0.2.66 still dropped after the stop");
        ensure!(clsact(&topo)?, "the clsact qdisc blocksmtp did not add was removed");
        let f = std::process::Command::new("tc").args(["-n", &topo.server.name, "filter", "show", "dev", "vs0", "ingress"]).output()?;
        ensure!(!String::from_utf8_lossy(&f.stdout).contains("blocksmtp"), "our filter is left");
        Ok("our filter removed, the existing clsact kept".into())
    })();
    report("tc/foreign-clsact-kept", r)
}

/// --attach auto on a veth (its driver has XDP): xdp-native, and status says why.
fn auto() -> bool {
    let r = (|| {
        let topo = Topology::new()?;
        let _srv = topo.serve(&[25])?;
        let mut d = Daemon::start(Some(&topo.server), &args("auto", &[]))?;
        let st = expect_state(&d, "xdp-native")?;
        ensure!(st.contains("auto: XDP in the driver"), "status does not say why: {st}");
        ensure!(d.ctl(&["ban", "192.0.2.66"])?.status.success(), "manual ban refused");
        ensure!(!topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "banned 192.0.2.66 connects");
        stop_clean(&topo, &mut d)?;
        Ok(st)
    })();
    report("auto/start", r)
}

/// IPv6 prefix bans of both length classes on this kernel's verifier and maps (with bans
/// per /128 a /64 is longer than /48: the trie of its own): each drops its sources, the
/// clean host of the same /48 connects, and lifting one leaves the other in force.
fn prefix_v6_split() -> bool {
    let r = (|| {
        let topo = Topology::new()?;
        let _srv = topo.serve(&[25])?;
        let mut d = Daemon::start(Some(&topo.server), &args("xdp-native", &["--v6-prefix", "128"]))?;
        expect_state(&d, "xdp-native")?;
        let (inside, clean) = (("2001:db8:0:1::67", "[2001:db8:0:1::25]:25"), ("2001:db8::67", "[2001:db8::25]:25"));
        ensure!(d.ctl(&["ban", "2001:db8:0:1::/64"])?.status.success(), "ban of 2001:db8:0:1::/64 refused");
        ensure!(!topo.connect(inside.0, inside.1, T)?, "{} (in the banned /64) connects", inside.0);
        ensure!(topo.connect(clean.0, clean.1, T)?, "{} (its /48, not its /64) cannot connect", clean.0);
        ensure!(d.ctl(&["ban", "2001:db8::/48"])?.status.success(), "ban of 2001:db8::/48 refused");
        ensure!(!topo.connect(clean.0, clean.1, T)?, "{} connects inside the banned /48", clean.0);
        ensure!(d.ctl(&["unban", "2001:db8:0:1::/64"])?.status.success(), "unban of the /64 refused");
        ensure!(!topo.connect(inside.0, inside.1, T)?, "{} connects with its /48 still banned", inside.0);
        ensure!(d.ctl(&["unban", "2001:db8::/48"])?.status.success(), "unban of the /48 refused");
        ensure!(topo.connect(inside.0, inside.1, T)? && topo.connect(clean.0, clean.1, T)?, "dropped after both bans were lifted");
        stop_clean(&topo, &mut d)?;
        Ok("a /64 (longer than /48) and its /48 each enforced and lifted".into())
    })();
    report("xdp-native/prefix-v6-split", r)
}

/// IPv4 prefix bans of both hint classes (a /28: `BANNET_HINT4L`; its /24:
/// `BANNET_HINT24`) on this kernel: the /28 drops its host and not another /28's host of
/// the same /24; the /24 drops both; lifting the /28 leaves the /24 in force.
fn prefix_v4_split() -> bool {
    let r = (|| {
        let topo = Topology::new()?;
        let _srv = topo.serve(&[25])?;
        topo.client.ip(&["addr", "add", "192.0.2.130/24", "dev", "vc0"])?;
        let mut d = Daemon::start(Some(&topo.server), &args("xdp-native", &[]))?;
        expect_state(&d, "xdp-native")?;
        let (inside, clean, server) = ("192.0.2.66", "192.0.2.130", "192.0.2.25:25");
        ensure!(d.ctl(&["ban", "192.0.2.64/28"])?.status.success(), "ban of 192.0.2.64/28 refused");
        ensure!(!topo.connect(inside, server, T)?, "{inside} (in the banned /28) connects");
        ensure!(topo.connect(clean, server, T)?, "{clean} (its /24, not its /28) cannot connect");
        ensure!(d.ctl(&["ban", "192.0.2.0/24"])?.status.success(), "ban of 192.0.2.0/24 refused");
        ensure!(!topo.connect(clean, server, T)?, "{clean} connects inside the banned /24");
        ensure!(d.ctl(&["unban", "192.0.2.64/28"])?.status.success(), "unban of the /28 refused");
        ensure!(!topo.connect(inside, server, T)?, "{inside} connects with its /24 still banned");
        ensure!(d.ctl(&["unban", "192.0.2.0/24"])?.status.success(), "unban of the /24 refused");
        ensure!(topo.connect(inside, server, T)? && topo.connect(clean, server, T)?, "dropped after both bans were lifted");
        stop_clean(&topo, &mut d)?;
        Ok("a /28 and its /24 each enforced and lifted".into())
    })();
    report("xdp-native/prefix-v4-split", r)
}

/// TC before TCX: with --keep-bans the filter stays after SIGTERM and the next start
/// replaces its program in place.
fn tc_keep_bans() -> bool {
    let r = (|| {
        let topo = Topology::new()?;
        let _srv = topo.serve(&[25])?;
        let mut d = Daemon::start(Some(&topo.server), &args("tc", &["--keep-bans"]))?;
        expect_state(&d, "tc")?;
        ensure!(d.ctl(&["ban", "192.0.2.66"])?.status.success(), "manual ban refused");
        d.stop()?;
        ensure!(!topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "ban not kept in force while stopped");
        d.spawn()?;
        let st = expect_state(&d, "tc")?;
        ensure!(d.stderr_text().contains("replaced the program in our tc filter"), "filter not taken over:\n{}", d.stderr_text());
        ensure!(!topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "ban lost across the restart");
        ensure!(topo.connect("192.0.2.67", "192.0.2.25:25", T)?, "192.0.2.67 cannot connect");
        d.set_args(&args("tc", &[]));
        d.stop()?;
        d.spawn()?;
        stop_clean(&topo, &mut d)?;
        Ok(st)
    })();
    report("tc/keep-bans-restart", r)
}

fn iptables() -> bool {
    let mut ok = true;
    let r = (|| {
        let topo = Topology::new()?;
        let srv = topo.serve(&[25])?;
        let d = Daemon::start(Some(&topo.server), &["--mode", "iptables", "--max-unknown", "3", "--ban-time", "1h", "--cmd-read-timeout", "0"])?;
        Ok((topo, srv, d))
    })();
    let (topo, _srv, mut d) = match r {
        Ok(x) => x,
        Err(e) => return report("iptables/start", Err(e)),
    };
    ok &= report("iptables/harvest-v4", harvest_v4(&topo, &d, 31001));
    ok &= report("iptables/harvest-v6", harvest_v6(&topo, &d, 31002));
    let r = (|| {
        d.stop()?;
        ensure!(topo.connect("192.0.2.66", "192.0.2.25:25", T)?, "192.0.2.66 still dropped after the stop");
        let rules = topo.server.exec(&["iptables", "-S"])?;
        ensure!(!String::from_utf8_lossy(&rules.stdout).contains("SPAM_UNAME_GUESSERS"), "chain left behind");
        Ok("exit 0, chain removed".to_string())
    })();
    ok &= report("iptables/sigterm", r);
    ok
}

fn main() {
    let kernel = sh(&["uname", "-r"]).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    println!("BLOCKSMTP-GUEST kernel {kernel}");
    let mut ok = true;
    ok &= mode("xdp-native", "xdp-generic", 30001);
    ok &= mode("xdp-generic", "tc", 30011);
    ok &= mode("tc", "xdp-native", 30021);
    for m in ["xdp-native", "xdp-generic", "tc"] {
        ok &= reattach(m);
    }
    ok &= auto();
    ok &= prefix_v6_split();
    ok &= prefix_v4_split();
    ok &= sigterm_during_load("xdp-native");
    ok &= sigterm_during_load("tc");
    ok &= tc_keep_bans();
    ok &= tc_foreign_clsact();
    ok &= iptables();
    println!("BLOCKSMTP-CHECKS-DONE {}", if ok { "all passed" } else { "some failed" });
}
