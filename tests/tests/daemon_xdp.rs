//! `blocksmtp run` end to end: the real binary follows a log file in the server
//! namespace of a veth pair and bans through the XDP dataplane. Documentation
//! addresses only; namespaces, pins and processes are removed by guards.
use std::time::{Duration, Instant};

use blocksmtp_tests::{
    daemon::{Daemon, remove_pins, sendmail_harvest},
    root_or_skip,
    netns::Topology,
};

const T: Duration = Duration::from_millis(500);

#[test]
fn harvest_is_cut_off_and_the_ban_expires_v4_and_v6() {
    if !root_or_skip("namespaces, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25, 2525]).unwrap();
    let d = Daemon::start(
        Some(&topo.server),
        &["--interface", "vs0", "--max-unknown", "3", "--ban-time", "2s", "--cmd-read-timeout", "0"],
    )
    .unwrap();
    assert!(topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap());

    // The harvest's lines reach the log; the ban must follow within milliseconds.
    let written = Instant::now();
    d.write_log(&sendmail_harvest("192.0.2.66", 18868, 3)).unwrap();
    let took = d
        .wait_for(Duration::from_secs(5), |d| d.row("192.0.2.66").is_some())
        .unwrap_or_else(|| panic!("no ban within 5 s:\n{}", d.stderr_text()));
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "banned: SMTP blocked");
    eprintln!("log line → ban listed in {took:?}; → connection refused by {:?}", written.elapsed());
    assert!(topo.connect("192.0.2.66", "192.0.2.25:2525", T).unwrap(), "other ports stay open");
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap(), "an innocent neighbour connects");
    let row = d.row("192.0.2.66").unwrap();
    assert!(row["reason"].as_str().unwrap().contains("sendmail"), "{row}");
    assert_eq!(row["guesses"], 3);
    assert!(row["dropped"].as_u64().unwrap() >= 1, "{row}");

    // IPv6: banned per /64.
    d.write_log(&sendmail_harvest("2001:db8::66", 18869, 3)).unwrap();
    d.wait_for(Duration::from_secs(5), |d| d.row("2001:db8::/64").is_some()).expect("IPv6 ban");
    assert!(!topo.connect("2001:db8::66", "[2001:db8::25]:25", T).unwrap());
    assert!(!topo.connect("2001:db8::67", "[2001:db8::25]:25", T).unwrap(), "same /64");
    assert!(topo.connect("2001:db8:0:1::67", "[2001:db8:0:1::25]:25", T).unwrap(), "another /64");

    // 2 s later both bans have lifted, with no help.
    std::thread::sleep(Duration::from_millis(2200));
    assert!(topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "v4 ban expired");
    assert!(topo.connect("2001:db8::66", "[2001:db8::25]:25", T).unwrap(), "v6 ban expired");
    d.wait_for(Duration::from_secs(3), |d| d.list().map(|l| l.is_empty()).unwrap_or(false)).expect("swept");
    let st = d.status().unwrap();
    assert_eq!(st["mode"], "xdp");
    assert!(st["interfaces"]["vs0"].is_string(), "{st}");
    assert_eq!(st["bans_total"], 2);
    assert_eq!(st["unbans_total"], 2);
}

#[test]
fn manual_ban_unban_and_whitelist_refusal() {
    if !root_or_skip("namespaces, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let wl = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wl.path(), "# partners\n192.0.2.67\n2001:db8:0:1::/64\n").unwrap();
    let d = Daemon::start(Some(&topo.server), &["--interface", "vs0", "--white-list", wl.path().to_str().unwrap()]).unwrap();

    let out = d.ctl(&["ban", "192.0.2.67"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("whitelisted"), "{out:?}");
    let out = d.ctl(&["ban", "2001:db8:0:1::5"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "a /64 holding whitelisted hosts is refused");

    let out = d.ctl(&["ban", "192.0.2.66", "--for", "1h"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap());
    let row = d.row("192.0.2.66").unwrap();
    assert_eq!(row["manual"], true);
    assert!(row["expires_in_secs"].as_u64().unwrap() > 3500);
    let out = d.ctl(&["unban", "192.0.2.66"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap());
    let out = d.ctl(&["unban", "192.0.2.66"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "not banned any more");
    let out = d.ctl(&["ban", "not-an-address"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"), "{out:?}");
}

/// Bans and offence history survive SIGTERM + start (--keep-bans); a second offence
/// gets double the ban time; a stop without --keep-bans removes every trace.
#[test]
fn restart_keeps_bans_and_history() {
    if !root_or_skip("namespaces, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let mut d = Daemon::start(
        Some(&topo.server),
        &["--interface", "vs0", "--max-unknown", "3", "--ban-time", "1h", "--keep-bans"],
    )
    .unwrap();
    d.write_log(&sendmail_harvest("192.0.2.66", 20001, 3)).unwrap();
    d.wait_for(Duration::from_secs(5), |d| d.row("192.0.2.66").is_some()).expect("ban");
    d.stop().unwrap();
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "enforced while stopped");
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap());

    d.spawn().unwrap();
    let row = d.row("192.0.2.66").expect("ban restored");
    assert!(row["reason"].as_str().unwrap().contains("3 unknown recipients"), "reason restored: {row}");
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap());

    // Lift it by hand, offend again: the second ban is twice as long.
    assert!(d.ctl(&["unban", "192.0.2.66"]).unwrap().status.success());
    d.write_log(&sendmail_harvest("192.0.2.66", 20002, 3)).unwrap();
    d.wait_for(Duration::from_secs(5), |d| d.row("192.0.2.66").is_some()).expect("second ban");
    let secs = d.row("192.0.2.66").unwrap()["expires_in_secs"].as_u64().unwrap();
    assert!((7100..=7200).contains(&secs), "second offence: 2h, got {secs}s");

    // Restart without --keep-bans: on stop everything goes.
    d.stop().unwrap();
    let _ = std::fs::remove_file(&d.socket);
    let pins = d.pins.clone();
    drop(d);
    remove_pins(&pins);
    assert!(topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap());
}

#[test]
fn clean_stop_without_keep_bans_removes_everything() {
    if !root_or_skip("namespaces, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let mut d = Daemon::start(Some(&topo.server), &["--interface", "vs0"]).unwrap();
    assert!(d.ctl(&["ban", "192.0.2.66"]).unwrap().status.success());
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap());
    d.stop().unwrap();
    assert!(topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "detached on stop");
    assert!(!d.pins.join("v1").exists(), "pins removed: {:?}", std::fs::read_dir(&d.pins).map(|r| r.count()));
    assert!(!d.socket.exists(), "socket removed");
}

/// After `kill -9` the pinned program keeps enforcing, and the ban still ends on time.
#[test]
fn kill9_bans_still_enforced_and_expire() {
    if !root_or_skip("namespaces, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let mut d = Daemon::start(Some(&topo.server), &["--interface", "vs0", "--max-unknown", "3", "--ban-time", "3s"]).unwrap();
    d.write_log(&sendmail_harvest("192.0.2.66", 20003, 3)).unwrap();
    d.wait_for(Duration::from_secs(5), |d| d.row("192.0.2.66").is_some()).expect("ban");
    let banned = Instant::now();
    d.kill9().unwrap();
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "enforced after kill -9");
    std::thread::sleep(Duration::from_millis(3200).saturating_sub(banned.elapsed()));
    assert!(topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "expired on time with no daemon");
}

/// The control socket is root's: `nobody` is refused.
#[test]
fn control_socket_refuses_non_root() {
    if !root_or_skip("namespaces, BPF") {
        return;
    }
    let d = Daemon::start(None, &["--mode", "dry-run"]).unwrap();
    let out = std::process::Command::new(blocksmtp_tests::daemon::binary())
        .args(["status", "--control-socket"])
        .arg(&d.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");
    let mode = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    assert!(d.ctl(&["status"]).unwrap().status.success(), "root is served");
}

use std::os::unix::process::CommandExt as _;
