//! The evidence beyond one address survives a restart (issue 11): a surge of unknown
//! recipients seen before the daemon restarts still judges the next source after it.
//! The verdict is a real TCP connect from the banned address.
use std::time::{Duration, Instant};

use blocksmtp_tests::{daemon::Daemon, is_root, netns::Topology};

/// A syslog (BSD) timestamp for now, local time: the surge's windows run on log time,
/// and evidence older than `--memory` is forgotten at a restart.
fn syslog_now() -> String {
    let t = unsafe { libc::time(std::ptr::null_mut()) };
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&t, &mut tm) };
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!("{} {:>2} {:02}:{:02}:{:02}", MON[tm.tm_mon as usize], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// One sendmail session from `ip`: two `User unknown` guesses, then the closing line
/// naming the client (no mail accepted: `nrcpts=0`).
fn two_guesses(ip: &str, pid: u32) -> Vec<String> {
    let (ts, qid) = (syslog_now(), format!("6ARCZkEp{pid:06}"));
    let mut v: Vec<String> =
        (0..2).map(|i| format!("{ts} mx sm-mta[{pid}]: {qid}: <s{i}x{pid}@example.com>... User unknown")).collect();
    v.push(format!(
        "{ts} mx sm-mta[{pid}]: {qid}: from=<a{pid}@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=[{ip}]"
    ));
    v
}

fn surge_ban(d: &Daemon, source: &str) -> bool {
    d.list()
        .map(|l| l.iter().any(|r| r["source"] == source && r["pending"] != true && r["reason"].as_str().is_some_and(|s| s.contains("during a surge"))))
        .unwrap_or(false)
}

#[test]
fn a_surge_seen_before_a_restart_still_judges_after_it() {
    if !is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    // --max-unknown 10: two guesses never ban a source on its own window; only the surge
    // rule (at least 8 unknown recipients in the window, two distinct from a source
    // without valid mail) can.
    let args = ["--interface", "vs0", "--max-unknown", "10", "--ban-time", "1h", "--cmd-read-timeout", "0"];
    let mut d = Daemon::start(Some(&topo.server), &args).unwrap();
    // Ten sources of ten networks (log text only): the surge begins at the fourth.
    let campaign: Vec<String> = (0..10u32).flat_map(|i| two_guesses(&format!("198.18.{}.7", 10 + i), 43000 + i)).collect();
    d.write_log(&campaign).unwrap();
    assert!(
        d.wait_for(Duration::from_secs(10), |d| surge_ban(d, "198.18.19.7")).is_some(),
        "the campaign's last source is banned on the surge:\n{}",
        d.stderr_text()
    );
    d.stop().unwrap();
    d.spawn().unwrap();
    assert!(d.stderr_text().contains("offenders' history restored"), "{}", d.stderr_text());
    // Right after the restart, a new source's two guesses: still during the surge. With
    // the surge forgotten, the rate would start from these two and nothing would ban it.
    let probe = "192.0.2.66";
    assert!(topo.connect(probe, "192.0.2.25:25", Duration::from_millis(400)).unwrap(), "{probe} connects before its guesses");
    d.write_log(&two_guesses(probe, 43100)).unwrap();
    assert!(
        d.wait_for(Duration::from_secs(10), |d| surge_ban(d, probe)).is_some(),
        "banned on the surge after the restart:\n{}",
        d.stderr_text()
    );
    let t = Instant::now();
    let mut dropped = false;
    while !dropped && t.elapsed() < Duration::from_secs(5) {
        dropped = !topo.connect(probe, "192.0.2.25:25", Duration::from_millis(400)).unwrap();
    }
    assert!(dropped, "the kernel drops {probe}'s connects");
    d.stop().unwrap();
}
