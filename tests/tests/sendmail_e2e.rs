//! blocksmtp against a real sendmail 8.17 (Debian's package) in a network namespace:
//! a harvester is cut off after --max-unknown guesses, a legitimate client still
//! delivers, the ban shows in `list` and lifts on time; the same in iptables mode; the
//! reaper ends idle "cmd read" sessions past the timeout and no others.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use blocksmtp_tests::{
    daemon::Daemon,
    lab::{HARVESTER_V4, HARVESTER_V6, HarvestOptions, LEGIT_V4, MailLab, SendmailConfig, smtp::Timeouts},
};

const MAX_UNKNOWN: usize = 5;

fn lab() -> Option<MailLab> {
    if !blocksmtp_tests::sendmail_lab_ready() {
        return None;
    }
    Some(MailLab::start(SendmailConfig::default()).expect("start sendmail"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `User unknown` lines sendmail logged since `mark` for sessions of `pid`s serving `client`.
fn unknown_lines(lab: &MailLab, mark: usize) -> usize {
    lab.sendmail.syslog().lines_since(mark).iter().filter(|l| l.line.contains("User unknown")).count()
}

fn harvest_30(lab: &MailLab, src: &str) -> blocksmtp_tests::lab::HarvestReport {
    let t = Timeouts { read: Duration::from_secs(3), ..Timeouts::default() };
    lab.harvest_with(ip(src), HarvestOptions { guesses: 30, timeouts: t, ..Default::default() }).expect("harvest")
}

fn cut_off_scenario(mode: &str) {
    let Some(lab) = lab() else { return };
    let d = Daemon::start_following(
        Some(&lab.topo.server),
        Some(&lab.sendmail.log_path()),
        &["--mode", mode, "--interface", "vs0", "--max-unknown", "5", "--ban-time", "6s", "--cmd-read-timeout", "0"],
    )
    .unwrap();

    let before = lab.deliver(ip(LEGIT_V4), "carol@example.net", "alice@example.com", "before the harvest").expect("legit mail before");
    assert!(before.queue_id.len() > 5, "{before:?}");

    let mark = lab.sendmail.syslog().mark();
    let started = Instant::now();
    let report = harvest_30(&lab, HARVESTER_V4);
    let row = d.row("192.0.2.66").unwrap_or_else(|| panic!("not banned:\n{}", d.stderr_text()));
    let logged = unknown_lines(&lab, mark);
    eprintln!(
        "{mode}: harvest of 30 cut after {} replies / {logged} `User unknown` lines, in {:?}, end {:?}",
        report.replied(),
        started.elapsed(),
        report.end
    );
    assert!(!report.completed(), "the harvest must not complete: {:?}", report.end);
    assert!(logged <= MAX_UNKNOWN + 1, "sendmail logged {logged} guesses before the cut (max {})", MAX_UNKNOWN + 1);
    assert!(report.unknown() <= MAX_UNKNOWN + 1, "harvester got {} answers", report.unknown());
    assert!(row["reason"].as_str().unwrap().contains("sendmail"), "{row}");
    assert!(!lab.can_connect(ip(HARVESTER_V4), Duration::from_millis(700)).unwrap(), "no new connection while banned");

    let after = lab.deliver(ip(LEGIT_V4), "carol@example.net", "bob@example.com", "after the harvest").expect("legit mail after");
    assert!(after.queue_id.len() > 5);

    // The ban lifts on time (6 s).
    let lifted = d.wait_for(Duration::from_secs(12), |_| lab.can_connect(ip(HARVESTER_V4), Duration::from_millis(300)).unwrap_or(false));
    let banned_for = started.elapsed();
    assert!(lifted.is_some(), "the ban did not lift");
    assert!(banned_for >= Duration::from_secs(5), "lifted too early: {banned_for:?}");
    d.wait_for(Duration::from_secs(3), |d| d.list().map(|l| l.is_empty()).unwrap_or(false)).expect("listed no more");
}

#[test]
fn xdp_mode_cuts_a_real_harvest_short() {
    cut_off_scenario("xdp");
}

#[test]
fn iptables_mode_cuts_a_real_harvest_short() {
    cut_off_scenario("iptables");
}

#[test]
fn ipv6_harvest_is_cut_per_64() {
    let Some(lab) = lab() else { return };
    let d = Daemon::start_following(
        Some(&lab.topo.server),
        Some(&lab.sendmail.log_path()),
        &["--interface", "vs0", "--max-unknown", "5", "--cmd-read-timeout", "0"],
    )
    .unwrap();
    let mark = lab.sendmail.syslog().mark();
    let report = harvest_30(&lab, HARVESTER_V6);
    assert!(d.row("2001:db8::/64").is_some(), "{}", d.stderr_text());
    assert!(!report.completed());
    assert!(unknown_lines(&lab, mark) <= MAX_UNKNOWN + 1);
    assert!(!lab.can_connect(ip("2001:db8::67"), Duration::from_millis(700)).unwrap(), "the /64 is banned");
    assert!(lab.can_connect(ip("2001:db8:0:1::67"), Duration::from_secs(2)).unwrap(), "another /64 is not");
}

/// The reaper (the old $MAX_RUNTIME_SENDMAIL_CMD_READ) ends sessions idle in
/// "cmd read" past --cmd-read-timeout, leaves younger ones and the daemon alone.
#[test]
fn reaper_ends_idle_sessions_past_the_timeout() {
    let Some(lab) = lab() else { return };
    let d = Daemon::start_following(
        Some(&lab.topo.server),
        Some(&lab.sendmail.log_path()),
        &["--mode", "dry-run", "--cmd-read-timeout", "3s"],
    )
    .unwrap();
    let mut old = lab.idle(ip(HARVESTER_V4)).unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    let mut young = lab.idle(ip(LEGIT_V4)).unwrap();
    let t1 = Instant::now();
    let closed = d.wait_for(Duration::from_secs(10), |_| old.server_closed());
    let old_age = t0.elapsed();
    assert!(closed.is_some(), "the old idle session was not reaped:\n{}", d.stderr_text());
    assert!(old_age >= Duration::from_secs(3), "reaped too early: {old_age:?}");
    assert!(!young.server_closed(), "the younger session ({:?} old) must be left alone", t1.elapsed());
    assert!(lab.can_connect(ip(LEGIT_V4), Duration::from_secs(2)).unwrap(), "the listening daemon is untouched");
    // And the younger one goes once it is old enough.
    assert!(d.wait_for(Duration::from_secs(10), |_| young.server_closed()).is_some());
    assert!(t1.elapsed() >= Duration::from_secs(3));
    let st = d.status().unwrap();
    assert!(st["reaped_total"].as_u64().unwrap() >= 2, "{st}");
    assert!(d.stderr_text().contains("192.0.2.66"), "the reap is logged with the client");
}
