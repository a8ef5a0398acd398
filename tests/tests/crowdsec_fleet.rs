//! Two MX hosts share bans through a real CrowdSec LAPI (Debian's crowdsec, private to
//! the test). One L2 segment (a bridge in a hub namespace) joins the LAPI host, MX1,
//! MX2 and a client host; each MX runs blocksmtp with its own bouncer key and machine
//! file, in XDP on its own interface. Every verdict is a real TCP connect from the
//! client host.
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use blocksmtp_tests::{
    crowdsec::Lapi,
    daemon::{Daemon, sendmail_harvest},
    fleet::{Fleet, FleetAddrs},
    netns::{Netns, connect_from, serve},
};

const LAPI: &str = "192.0.2.10:8080";
const MX1: &str = "192.0.2.25";
const MX2: &str = "192.0.2.26";
const MX1_RANGE: &str = "198.51.100.25";
const MX2_RANGE: &str = "198.51.100.26";
/// Client host addresses.
const HARVESTER: &str = "192.0.2.66";
const INNOCENT: &str = "192.0.2.67";
const CSCLI_IP: &str = "192.0.2.68";
const LOCAL_DURING_OUTAGE: &str = "192.0.2.69";
const IN_RANGE: &str = "198.51.100.66";
const T: Duration = Duration::from_millis(400);

/// hub: bridge br0; lapi, mx1, mx2, client each joined by a veth.
fn fleet() -> Fleet {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    Fleet::new(
        "",
        &FleetAddrs {
            lapi: s(&["192.0.2.10/24"]),
            mx1: s(&["192.0.2.25/24", "198.51.100.25/24"]),
            mx2: s(&["192.0.2.26/24", "198.51.100.26/24"]),
            client: s(&["192.0.2.66/24", "192.0.2.67/24", "192.0.2.68/24", "192.0.2.69/24", "198.51.100.66/24"]),
        },
    )
    .unwrap()
}

fn can_connect(f: &Fleet, src: &str, dst: &str) -> bool {
    let src: IpAddr = src.parse().unwrap();
    let dst = SocketAddr::new(dst.parse().unwrap(), 25);
    f.client.run_in(move || connect_from(src, dst, T)).unwrap()
}

/// Wait until a connect from `src` to `dst` gives `want`.
fn until_connect(f: &Fleet, src: &str, dst: &str, want: bool, timeout: Duration, what: &str, logs: &[&Daemon]) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if can_connect(f, src, dst) == want {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs: Vec<String> = logs.iter().map(|d| d.stderr_text()).collect();
    panic!("{what}: connect {src} -> {dst} never became {want} within {timeout:?}\n{}", logs.join("\n----\n"));
}

fn mx(f: &Fleet, ns: &Netns, lapi: &Lapi, name: &str) -> Daemon {
    let dir = lapi.dir.path();
    let key = dir.join(format!("{name}.key"));
    let machine = dir.join(format!("{name}.yaml"));
    lapi.add_bouncer(name, &key).unwrap();
    lapi.add_machine(name, &format!("{name}-password-0123456789"), &machine).unwrap();
    let _ = f;
    Daemon::start(
        Some(ns),
        &[
            "--interface",
            "eth0",
            "--max-unknown",
            "3",
            "--cmd-read-timeout",
            "0",
            "--crowdsec-url",
            &format!("http://{LAPI}"),
            "--crowdsec-bouncer-key-file",
            path(&key),
            "--crowdsec-machine-file",
            path(&machine),
            "--crowdsec-pull-interval",
            "1s",
        ],
    )
    .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn two_mx_hosts_share_bans_through_lapi() {
    if !blocksmtp_tests::is_root() {
        panic!("needs root (namespaces, BPF)");
    }
    let f = fleet();
    let mut lapi = Lapi::start(Some(&f.lapi), LAPI).unwrap();
    let _s1 = serve(&f.mx1, &[25]).unwrap();
    let _s2 = serve(&f.mx2, &[25]).unwrap();
    let mx1 = mx(&f, &f.mx1, &lapi, "mx1");
    let mx2 = mx(&f, &f.mx2, &lapi, "mx2");
    let both = [&mx1, &mx2];
    for dst in [MX1, MX2] {
        assert!(can_connect(&f, HARVESTER, dst), "nothing banned yet");
    }

    // A harvest logged on MX1: MX1 bans it, and MX2 drops it within the pull interval
    // (1 s) + 3 s, while an innocent neighbour still connects.
    mx1.write_log(&sendmail_harvest(HARVESTER, 18868, 3)).unwrap();
    until_connect(&f, HARVESTER, MX1, false, Duration::from_secs(5), "MX1 bans what it saw", &both);
    let took = until_connect(&f, HARVESTER, MX2, false, Duration::from_secs(4), "MX2 drops MX1's ban", &both);
    eprintln!("MX1's ban enforced on MX2 after {took:?}");
    assert!(can_connect(&f, INNOCENT, MX2) && can_connect(&f, INNOCENT, MX1), "the innocent neighbour connects");
    let r2 = mx2.row(HARVESTER).expect("listed on MX2");
    assert_eq!(r2["origin"], "crowdsec/blocksmtp", "{r2}");
    let r1 = mx1.row(HARVESTER).expect("listed on MX1");
    assert_eq!(r1["origin"], "detected", "MX1's own ban stays its own: {r1}");
    assert_eq!(r1["guesses"], 3, "{r1}");

    // cscli decisions of another origin, Ip and Range: both hosts drop them.
    lapi.cscli(&["decisions", "add", "--ip", CSCLI_IP, "--duration", "1h"]).unwrap();
    lapi.cscli(&["decisions", "add", "--range", "198.51.100.0/24", "--duration", "1h"]).unwrap();
    for dst in [MX1, MX2] {
        until_connect(&f, CSCLI_IP, dst, false, Duration::from_secs(4), "cscli --ip", &both);
    }
    for dst in [MX1_RANGE, MX2_RANGE] {
        until_connect(&f, IN_RANGE, dst, false, Duration::from_secs(4), "cscli --range", &both);
    }
    assert_eq!(mx1.row(CSCLI_IP).expect("listed")["origin"], "crowdsec/cscli");
    assert!(mx2.row("198.51.100.0/24").is_some(), "{:?}", mx2.list());
    // ... and their deletion lifts them on both.
    lapi.cscli(&["decisions", "delete", "--ip", CSCLI_IP]).unwrap();
    lapi.cscli(&["decisions", "delete", "--range", "198.51.100.0/24"]).unwrap();
    for dst in [MX1, MX2] {
        until_connect(&f, CSCLI_IP, dst, true, Duration::from_secs(4), "cscli delete --ip", &both);
    }
    for dst in [MX1_RANGE, MX2_RANGE] {
        until_connect(&f, IN_RANGE, dst, true, Duration::from_secs(4), "cscli delete --range", &both);
    }

    // LAPI down: MX2 goes on banning locally; when LAPI is back the alert is sent
    // (within 10 s) and MX1 drops that source too.
    lapi.stop();
    mx2.wait_for(Duration::from_secs(10), |d| d.status().is_ok_and(|s| s["crowdsec"]["up"] == false))
        .unwrap_or_else(|| panic!("MX2 never saw LAPI down: {:?}", mx2.status()));
    mx2.write_log(&sendmail_harvest(LOCAL_DURING_OUTAGE, 18870, 3)).unwrap();
    until_connect(&f, LOCAL_DURING_OUTAGE, MX2, false, Duration::from_secs(5), "MX2 bans locally while LAPI is down", &both);
    assert!(mx2.status().unwrap()["crowdsec"]["queued"].as_u64().unwrap() >= 1, "{:?}", mx2.status());
    lapi.spawn().unwrap();
    let start = Instant::now();
    while !lapi.decisions().unwrap_or_default().iter().any(|d| d["value"] == LOCAL_DURING_OUTAGE) {
        assert!(start.elapsed() < Duration::from_secs(10), "queued alert not in LAPI within 10 s: {:?}", mx2.status());
        std::thread::sleep(Duration::from_millis(200));
    }
    until_connect(&f, LOCAL_DURING_OUTAGE, MX1, false, Duration::from_secs(5), "MX1 drops MX2's outage ban", &both);

    // No echo loop: each harvest was pushed once, by the host that saw it.
    std::thread::sleep(Duration::from_secs(3));
    let alerts = lapi.alerts("blocksmtp/smtp-harvest").unwrap();
    let values: Vec<String> = alerts.iter().map(|a| a["source"]["value"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(values.iter().filter(|v| *v == HARVESTER).count(), 1, "{values:?}");
    assert_eq!(values.iter().filter(|v| *v == LOCAL_DURING_OUTAGE).count(), 1, "{values:?}");
    assert_eq!(alerts.len(), 2, "{values:?}");
    for d in both {
        let st = d.status().unwrap();
        assert_eq!(st["crowdsec"]["up"], true, "{st}");
    }
}

/// The fleet with a central log host: one blocksmtp reads the syslog of every MX host
/// and only detects and pushes (dry-run: nothing enforced where it runs); the MX host
/// reads no log and only pulls and enforces.
#[test]
fn central_detector_pushes_and_a_log_less_mx_enforces() {
    if !blocksmtp_tests::is_root() {
        panic!("needs root (namespaces, BPF)");
    }
    let f = fleet();
    let lapi = Lapi::start(Some(&f.lapi), LAPI).unwrap();
    let _srv = serve(&f.mx2, &[25]).unwrap();
    let dir = lapi.dir.path();
    let (machine, key) = (dir.join("central.yaml"), dir.join("mx2.key"));
    lapi.add_machine("central", "central-password-0123456789", &machine).unwrap();
    lapi.add_bouncer("mx2", &key).unwrap();
    // The central log host sits beside LAPI; it hears mx1's and mx2's lines and counts
    // only mx1's (--mailer-syslog-host), as a per-host detector would.
    let central = Daemon::start(
        Some(&f.lapi),
        &[
            "--mode",
            "dry-run",
            "--max-unknown",
            "3",
            "--cmd-read-timeout",
            "0",
            "--mailer-syslog-host",
            "mx1",
            "--crowdsec-url",
            &format!("http://{LAPI}"),
            "--crowdsec-machine-file",
            path(&machine),
        ],
    )
    .unwrap();
    let mx2 = Daemon::start(
        Some(&f.mx2),
        &[
            "--no-log",
            "--interface",
            "eth0",
            "--crowdsec-url",
            &format!("http://{LAPI}"),
            "--crowdsec-bouncer-key-file",
            path(&key),
            "--crowdsec-pull-interval",
            "1s",
        ],
    )
    .unwrap();
    let both = [&central, &mx2];
    assert!(mx2.status().unwrap()["sources"].as_array().is_some_and(|s| s.is_empty()), "MX2 reads no log: {:?}", mx2.status());
    assert!(can_connect(&f, HARVESTER, MX2) && can_connect(&f, CSCLI_IP, MX2));

    // Another host's harvest (host mx9) is not counted; mx1's is, and MX2 drops it.
    let other: Vec<String> = sendmail_harvest(CSCLI_IP, 18900, 3).into_iter().map(|l| l.replace(" mx ", " mx9 ")).collect();
    central.write_log(&other).unwrap();
    let ours: Vec<String> = sendmail_harvest(HARVESTER, 18901, 3).into_iter().map(|l| l.replace(" mx ", " mx1 ")).collect();
    assert!(ours.iter().all(|l| l.contains(" mx1 ")), "the harness's lines name host mx: {ours:?}");
    central.write_log(&ours).unwrap();
    until_connect(&f, HARVESTER, MX2, false, Duration::from_secs(5), "MX2 drops what the central host saw", &both);
    assert!(can_connect(&f, INNOCENT, MX2), "the innocent neighbour connects");
    assert!(can_connect(&f, CSCLI_IP, MX2), "mx9's lines were not counted");
    assert_eq!(mx2.row(HARVESTER).expect("listed on MX2")["origin"], "crowdsec/blocksmtp");
    // The central host enforces nothing where it runs: no program on its interface, its
    // "ban" is the dry run's, and exactly one alert reached LAPI.
    assert_eq!(central.status().unwrap()["mode"], "dry-run");
    let link = String::from_utf8(f.lapi.ip(&["link", "show", "eth0"]).unwrap().stdout).unwrap();
    assert!(!link.contains("xdp"), "{link}");
    let alerts = lapi.alerts("blocksmtp/smtp-harvest").unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["source"]["value"], HARVESTER);
}
