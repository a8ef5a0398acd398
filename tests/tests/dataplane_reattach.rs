//! Issue 9 item 4: the guarded interface is deleted and re-created (a NIC reset, a bond or
//! VLAN rebuilt): the daemon re-attaches on its own, drops resume, and `status` shows the
//! interface as DETACHED meanwhile, never as its old mode. Judged by real TCP connects.
use std::time::Duration;

use blocksmtp_tests::{daemon::Daemon, is_root, netns::Topology};

const T: Duration = Duration::from_millis(500);

fn iface_state(d: &Daemon) -> String {
    d.status().ok().and_then(|s| s["interfaces"]["vs0"].as_str().map(str::to_string)).unwrap_or_default()
}

/// `GET /metrics` from the daemon in the server namespace.
fn metrics(topo: &Topology) -> String {
    topo.server
        .run_in(|| {
            use std::io::{Read as _, Write as _};
            let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:9325") else { return String::new() };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        })
        .unwrap_or_default()
}

fn reattach_case(attach: &str) {
    if !is_root() {
        eprintln!("SKIP: needs root (namespaces, BPF)");
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let d = Daemon::start(
        Some(&topo.server),
        &["--interface", "vs0", "--attach", attach, "--cmd-read-timeout", "0", "--metrics-listen", "127.0.0.1:9325"],
    )
    .unwrap();
    assert!(iface_state(&d).starts_with(&format!("{attach} since")), "{}", iface_state(&d));
    assert!(d.ctl(&["ban", "192.0.2.66", "--for", "1h"]).unwrap().status.success());
    assert!(d.ctl(&["ban", "2001:db8::66", "--for", "1h"]).unwrap().status.success());
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "banned before");
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap());

    topo.delete_link().unwrap();
    let detached = d.wait_for(Duration::from_secs(10), |d| iface_state(d).starts_with("DETACHED"));
    assert!(detached.is_some(), "status while the interface is gone: {:?}\n{}", iface_state(&d), d.stderr_text());
    let m = metrics(&topo);
    assert!(m.contains("blocksmtp_interface_attached{interface=\"vs0\",attach=\"none\"} 0"), "metric while detached:\n{m}");

    topo.create_link().unwrap();
    let back = d.wait_for(Duration::from_secs(10), |d| iface_state(d).starts_with(&format!("{attach} since")));
    assert!(back.is_some(), "status after re-creation: {:?}\n{}", iface_state(&d), d.stderr_text());
    // The kernel is the judge: the banned address is dropped again (v4 and its /64), others connect.
    let mut dropped = false;
    for _ in 0..20 {
        if !topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap() {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "drops did not resume after re-creation:\n{}", d.stderr_text());
    assert!(!topo.connect("2001:db8::66", "[2001:db8::25]:25", T).unwrap(), "IPv6 /64 dropped again");
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap(), "an innocent connects");
    assert!(topo.connect("2001:db8:0:1::67", "[2001:db8:0:1::25]:25", T).unwrap(), "another /64 connects");
    assert!(d.stderr_text().contains("vs0: re-attached as"), "the repair is logged:\n{}", d.stderr_text());
    let m = metrics(&topo);
    assert!(m.contains(&format!("blocksmtp_interface_attached{{interface=\"vs0\",attach=\"{attach}\"}} 1")), "metric after:\n{m}");

    // Renamed away: the name has nothing attached (an error in status); renamed back: enforced again.
    for (from, to) in [("vs0", "vs0x"), ("vs0x", "vs0")] {
        topo.server.ip(&["link", "set", from, "down"]).unwrap();
        topo.server.ip(&["link", "set", from, "name", to]).unwrap();
        topo.server.ip(&["link", "set", to, "up"]).unwrap();
        let want = if to == "vs0" { format!("{attach} since") } else { "DETACHED".to_string() };
        let seen = d.wait_for(Duration::from_secs(10), |d| iface_state(d).starts_with(&want));
        assert!(seen.is_some(), "after renaming {from} to {to}: {:?}\n{}", iface_state(&d), d.stderr_text());
    }
    let mut dropped = false;
    for _ in 0..20 {
        if !topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap() {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "drops did not resume after the rename back:\n{}", d.stderr_text());
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap(), "an innocent connects");
}

#[test]
fn reattach_xdp_native() {
    reattach_case("xdp-native");
}

#[test]
fn reattach_xdp_generic() {
    reattach_case("xdp-generic");
}

#[test]
fn reattach_tc() {
    reattach_case("tc");
}
