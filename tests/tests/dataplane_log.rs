//! The dataplane's own log events (aya-log): at `--debug 3` the XDP program reports a
//! ban's first dropped packet and the daemon writes it to its log; below 3 the program's
//! switch is off and nothing is reported, though the packets are dropped the same.
//! The harness runs the daemon with RUST_LOG=blocksmtp=debug, so the daemon would show
//! such a record at any level: its absence below 3 is the kernel side staying silent.
use std::time::Duration;

use blocksmtp_tests::{daemon::Daemon, is_root, netns::Topology};

const T: Duration = Duration::from_millis(500);
const EVENT: &str = "dataplane: first packet dropped for the ban of";

fn dropped(d: &Daemon, source: &str) -> u64 {
    d.list().ok().and_then(|l| l.into_iter().find(|r| r["source"] == source)).and_then(|r| r["dropped"].as_u64()).unwrap_or(0)
}

/// Ban by hand, connect twice from the banned source (two dropped SYNs at least), and
/// return the daemon's log once the kernel has counted the drops.
fn ban_and_connect(debug: &str) -> (Daemon, Topology) {
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let d = Daemon::start(Some(&topo.server), &["--interface", "vs0", "--debug", debug, "--cmd-read-timeout", "0"]).unwrap();
    for src in ["192.0.2.66", "2001:db8::66"] {
        let out = d.ctl(&["ban", src, "--for", "1h"]).unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    for _ in 0..2 {
        assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "banned: SMTP blocked");
        assert!(!topo.connect("2001:db8::66", "[2001:db8::25]:25", T).unwrap(), "banned /64: SMTP blocked");
    }
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap(), "an innocent neighbour connects");
    d.wait_for(Duration::from_secs(5), |d| dropped(d, "192.0.2.66") >= 2 && dropped(d, "2001:db8::/64") >= 2)
        .unwrap_or_else(|| panic!("the kernel counted no drops:\n{}", d.stderr_text()));
    (d, topo)
}

#[test]
fn first_drop_of_a_ban_is_logged_at_debug_3() {
    if !is_root() {
        eprintln!("SKIP: needs root (namespaces, BPF)");
        return;
    }
    let (d, _topo) = ban_and_connect("3");
    let v4 = format!("{EVENT} 192.0.2.66/32: to port 25");
    let v6 = format!("{EVENT} 2001:db8::66/64: to port 25");
    d.wait_for(Duration::from_secs(5), |d| d.stderr_text().contains(&v4) && d.stderr_text().contains(&v6))
        .unwrap_or_else(|| panic!("no dataplane event in the daemon's log:\n{}", d.stderr_text()));
    // The first drop only: the second connect's SYNs were dropped silently.
    let log = d.stderr_text();
    assert_eq!(log.matches(&v4).count(), 1, "{log}");
    assert_eq!(log.matches(&v6).count(), 1, "{log}");
}

#[test]
fn no_dataplane_events_below_debug_3() {
    if !is_root() {
        eprintln!("SKIP: needs root (namespaces, BPF)");
        return;
    }
    let (d, _topo) = ban_and_connect("2");
    // Give an event, had there been one, the time the debug-3 test needs.
    std::thread::sleep(Duration::from_secs(1));
    let log = d.stderr_text();
    assert!(!log.contains(EVENT), "the program logged with its switch off:\n{log}");
}
