//! The mail lab against a real sendmail 8.17: what it logs for a harvest (IPv4, IPv6),
//! a legitimate delivery, an idle client's process title, VRFY probes, the options the
//! daemon's tests rely on, and that stopping leaves nothing behind. Each test prints the
//! transcripts it used; the harvest test prints the RCPT-reply → log-line latency.
//!
//! Needs root and the `sendmail` package (`cargo xtask setup --test-deps`): skipped
//! with a reason otherwise, except under CI (CI set), where a missing package fails.
use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use blocksmtp_tests::{
    lab::{
        HARVESTER_V4, HARVESTER_V6, HarvestOptions, LEGIT_V4, LogFollower, LogFormat, LogLine, MailLab,
        SendmailConfig, SessionEnd,
        smtp::{HarvestReport, Timeouts},
    },
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn lab() -> MailLab {
    let t = Instant::now();
    let lab = MailLab::start(SendmailConfig::default()).expect("starting the mail lab");
    eprintln!(
        "lab up in {:?}: sendmail pid {}, log {}",
        t.elapsed(),
        lab.sendmail.pid(),
        lab.sendmail.log_path().display()
    );
    lab
}

fn dump(lab: &MailLab, mark: usize) -> String {
    lab.sendmail.syslog().lines_since(mark).iter().map(|l| format!("  {}\n", l.line)).collect()
}

/// For each answered guess, the time from reading its reply to its "User unknown"
/// line in `lines` (negative: the line was there first).
fn latencies(lines: &[LogLine], report: &HarvestReport) -> Vec<f64> {
    report
        .guesses
        .iter()
        .filter_map(|g| {
            let replied = g.replied_at?;
            let needle = format!("<{}>... User unknown", g.address);
            let line = lines.iter().find(|l| l.line.contains(&needle))?;
            Some(if line.written >= replied {
                line.written.duration_since(replied).as_secs_f64() * 1e3
            } else {
                -(replied.duration_since(line.written).as_secs_f64() * 1e3)
            })
        })
        .collect()
}

#[test]
fn ipv4_harvest_logs_each_unknown_user_and_the_flood() {
    if !blocksmtp_tests::sendmail_lab_ready() {
        return;
    }
    let lab = lab();
    let mark = lab.sendmail.syslog().mark();
    let follower = LogFollower::start(&lab.sendmail.log_path()).unwrap();
    let report = lab.harvest(ip(HARVESTER_V4), 8, Duration::ZERO).unwrap();
    eprintln!("{}", report.transcript);
    assert!(report.completed(), "harvest did not complete: {:?}", report.end);
    assert_eq!(report.unknown(), 8, "every guess should be 550 User unknown");

    let unknown = lab.sendmail.wait_log(mark, "... User unknown", 8, Duration::from_secs(1));
    assert_eq!(unknown.len(), 8, "log:\n{}", dump(&lab, mark));
    let flood =
        lab.sendmail.wait_log(mark, "[192.0.2.66]: Possible SMTP RCPT flood, throttling.", 1, Duration::from_secs(1));
    assert_eq!(flood.len(), 1, "log:\n{}", dump(&lab, mark));
    // The flood line follows the third (BadRcptThrottle) unknown user, and comes from
    // the same sendmail process.
    let all = lab.sendmail.syslog().lines_since(mark);
    let pos = |needle: &str| all.iter().position(|l| l.line.contains(needle)).unwrap();
    assert!(pos("RCPT flood") > pos(&format!("<{}>", report.guesses[2].address)));
    let pid_of = |l: &str| l.split_once("sm-mta[").unwrap().1.split_once(']').unwrap().0.to_string();
    assert_eq!(pid_of(&flood[0].line), pid_of(&unknown[0].line));
    // Classic format: "Nov 27 12:35:47 mx sm-mta[18868]: …".
    let l = &unknown[0].line;
    assert_eq!(&l[15..25], " mx sm-mta", "{l}");
    let relay = lab.sendmail.wait_log(mark, "nrcpts=0", 1, Duration::from_secs(1));
    assert!(relay.first().is_some_and(|l| l.line.contains("relay=[192.0.2.66]")), "log:\n{}", dump(&lab, mark));

    let stats = |what: &str, mut lat: Vec<f64>| {
        assert_eq!(lat.len(), 8, "{what}: {lat:?}");
        lat.sort_by(f64::total_cmp);
        eprintln!(
            "RCPT reply -> {what} (ms): min {:.3}, median {:.3}, max {:.3} (all: {lat:.3?})",
            lat[0],
            lat[lat.len() / 2],
            lat[lat.len() - 1]
        );
        assert!(lat.iter().all(|ms| ms.abs() < 1000.0), "{what}: {lat:?}");
    };
    stats("line written by the receiver", latencies(&lab.sendmail.syslog().lines_since(mark), &report));
    // An inotify follower of the file, like the daemon, sees the same lines.
    let followed = follower.wait_for(8, Duration::from_secs(1), |l| l.contains("... User unknown"));
    stats("line read by an inotify follower", latencies(&followed, &report));
    eprintln!("log:\n{}", dump(&lab, mark));
}

#[test]
fn ipv6_harvest_names_the_fully_expanded_address() {
    if !blocksmtp_tests::sendmail_lab_ready() {
        return;
    }
    let lab = lab();
    let mark = lab.sendmail.syslog().mark();
    let report = lab.harvest(ip(HARVESTER_V6), 8, Duration::ZERO).unwrap();
    assert!(report.completed(), "{:?}\n{}", report.end, report.transcript);
    assert_eq!(lab.sendmail.wait_log(mark, "... User unknown", 8, Duration::from_secs(1)).len(), 8);
    let flood = lab.sendmail.wait_log(
        mark,
        "[IPv6:2001:db8:0:0:0:0:0:66]: Possible SMTP RCPT flood, throttling.",
        1,
        Duration::from_secs(1),
    );
    assert_eq!(flood.len(), 1, "log:\n{}", dump(&lab, mark));
    let end = lab.sendmail.wait_log(mark, "relay=[IPv6:2001:db8:0:0:0:0:0:66]", 1, Duration::from_secs(1));
    assert!(end.first().is_some_and(|l| l.line.contains("daemon=MTA-v6")), "log:\n{}", dump(&lab, mark));
}

#[test]
fn legitimate_delivery_is_accepted_logged_and_delivered() {
    if !blocksmtp_tests::sendmail_lab_ready() {
        return;
    }
    let lab = lab();
    let mark = lab.sendmail.syslog().mark();
    let d = lab
        .deliver(ip(LEGIT_V4), "carol@example.net", "alice@example.com", "Hello Alice,\n.leading dot\nbye\n")
        .expect("delivery");
    eprintln!("{}", d.transcript);
    assert_eq!(d.reply.code, 250);
    assert!(!d.queue_id.is_empty() && d.reply.text().contains(&d.queue_id));
    let from =
        lab.sendmail.wait_log(mark, &format!("{}: from=<carol@example.net>", d.queue_id), 1, Duration::from_secs(2));
    // 192.0.2.67 has a forward-confirmed reverse name in the lab's DNS.
    assert!(
        from.first().is_some_and(|l| l.line.contains("relay=legit.example.net [192.0.2.67]")),
        "log:\n{}",
        dump(&lab, mark)
    );
    // Aliases deliver to a mailbox file: "to=/var/mail/alice, ctladdr=<alice@example.com> …".
    let sent = lab.sendmail.wait_log(mark, "ctladdr=<alice@example.com>", 1, Duration::from_secs(5));
    assert!(sent.first().is_some_and(|l| l.line.contains("stat=Sent")), "log:\n{}", dump(&lab, mark));
    let mbox = std::fs::read_to_string(lab.sendmail.mailbox("alice")).expect("alice's mailbox");
    assert!(mbox.contains(&d.message_id) && mbox.contains("\n.leading dot\n"), "{mbox}");
    eprintln!("log:\n{}", dump(&lab, mark));
}

#[test]
fn idle_client_and_vrfy_prober() {
    if !blocksmtp_tests::sendmail_lab_ready() {
        return;
    }
    let lab = lab();
    let daemon = blocksmtp_tests::lab::proc_info(lab.sendmail.pid()).unwrap();
    assert_eq!(daemon.title, "sendmail: MTA: accepting connections");
    assert_eq!(daemon.comm, "sendmail-mta");

    let mark = lab.sendmail.syslog().mark();
    let idle = lab.idle(ip(HARVESTER_V4)).unwrap_or_else(|e| panic!("{e:#}\nlog:\n{}", dump(&lab, 0)));
    eprintln!("banner: {}", idle.banner);
    let child = lab
        .sendmail
        .wait_for_child(Duration::from_secs(2), |t| t.contains("cmd read"))
        .unwrap_or_else(|| panic!("no 'cmd read' child: {:?}", lab.sendmail.children()));
    eprintln!("idle child: {child:?}");
    assert_eq!(child.title, "sendmail: MTA: server [192.0.2.66] cmd read");
    drop(idle);
    let gone = lab.sendmail.wait_log(
        mark,
        "[192.0.2.66] did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA-v4",
        1,
        Duration::from_secs(3),
    );
    assert_eq!(gone.len(), 1, "log:\n{}", dump(&lab, mark));

    let v = lab.vrfy_probe(ip(HARVESTER_V4), &["alice", "nosuchuser"]).unwrap();
    eprintln!("{}", v.transcript);
    assert_eq!(v.end, SessionEnd::Quit);
    let codes: Vec<u16> = v.replies.iter().map(|(_, r)| r.as_ref().unwrap().code).collect();
    assert_eq!(codes[0], 250, "{codes:?}");
    assert_eq!(codes[1], 550, "{codes:?}");
    assert_eq!(
        lab.sendmail.wait_log(mark, "[192.0.2.66]: VRFY ", 2, Duration::from_secs(1)).len(),
        2,
        "log:\n{}",
        dump(&lab, mark)
    );
}

#[test]
fn options_shutdown_command_timeout_and_rfc3339_log() {
    if !blocksmtp_tests::sendmail_lab_ready() {
        return;
    }
    let config = SendmailConfig {
        bad_rcpt_shutdown: Some(4),
        timeout_command: Some(Duration::from_secs(2)),
        greet_pause: None,
        log_format: LogFormat::Rfc3339,
        ..Default::default()
    };
    let lab = MailLab::start(config).expect("starting the mail lab");
    assert_eq!(lab.sendmail.cf_option("BadRcptShutdown").unwrap(), ["4"]);
    let mark = lab.sendmail.syslog().mark();

    // No greet pause: the banner is immediate.
    let t = Instant::now();
    let mut idle = lab.idle(ip(LEGIT_V4)).unwrap();
    assert!(t.elapsed() < Duration::from_millis(500), "banner took {:?}", t.elapsed());

    let report = lab.harvest(ip(HARVESTER_V4), 8, Duration::ZERO).unwrap();
    eprintln!("{}", report.transcript);
    assert!(!report.completed());
    assert!(report.replied() <= 5, "{} replies", report.replied());
    assert_eq!(
        lab.sendmail
            .wait_log(
                mark,
                "[192.0.2.66]: Possible SMTP RCPT flood, shutting down connection.",
                1,
                Duration::from_secs(2)
            )
            .len(),
        1,
        "log:\n{}",
        dump(&lab, mark)
    );

    // Timeout.command=2s: sendmail drops the idle client.
    let deadline = Instant::now() + Duration::from_secs(6);
    while !idle.server_closed() {
        assert!(Instant::now() < deadline, "idle client still connected after Timeout.command");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = lab.sendmail.syslog().lines_since(mark);
    // "2026-11-27T12:29:10.929159+00:00 mx sm-mta[…]: …"
    let l = &lines[0].line;
    assert!(l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T' && &l[32..43] == " mx sm-mta[", "{l}");
    eprintln!("log:\n{}", dump(&lab, mark));
}

/// What the daemon's ban does to a harvester, played by taking the server's link down
/// once the log shows three unknown users: the harvester reports how many guesses got
/// a reply before the cut and returns after its read timeout instead of hanging.
#[test]
fn harvest_cut_off_mid_way_reports_the_replies_it_got() {
    if !blocksmtp_tests::sendmail_lab_ready() {
        return;
    }
    let lab = lab();
    assert!(lab.can_connect(ip(HARVESTER_V4), Duration::from_secs(1)).unwrap());
    let mark = lab.sendmail.syslog().mark();
    let read = Duration::from_secs(2);
    let options = HarvestOptions {
        guesses: 8,
        delay: Duration::from_millis(300),
        timeouts: Timeouts { read, ..Default::default() },
        ..Default::default()
    };
    let harvest = lab.spawn_harvest(ip(HARVESTER_V4), options);
    let seen = lab.sendmail.wait_log(mark, "... User unknown", 3, Duration::from_secs(10));
    assert_eq!(seen.len(), 3, "log:\n{}", dump(&lab, mark));
    let cut = Instant::now();
    lab.topo.server.ip(&["link", "set", "vs0", "down"]).unwrap();
    let report = harvest.join().unwrap().unwrap();
    let after_cut = cut.elapsed();
    eprintln!("{}", report.transcript);
    eprintln!("cut: {:?}, {} replies, returned {after_cut:?} after the cut", report.end, report.replied());
    assert_eq!(report.end, SessionEnd::TimedOut { during: "RCPT".into() });
    assert!((3..8).contains(&report.replied()), "{} replies", report.replied());
    assert!(report.guesses.last().unwrap().reply.is_none(), "the last guess is the unanswered one");
    assert!(after_cut < read + Duration::from_secs(2), "{after_cut:?}");
    assert!(!lab.can_connect(ip(HARVESTER_V4), Duration::from_millis(500)).unwrap());
}

fn mounts_mentioning(p: &Path) -> Vec<String> {
    let p = p.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&p))
        .map(String::from)
        .collect()
}

#[test]
fn stop_leaves_no_process_namespace_mount_or_directory() {
    if !blocksmtp_tests::sendmail_lab_ready() {
        return;
    }
    let lab = lab();
    let dir = lab.sendmail.dir().to_path_buf();
    let namespaces = [lab.topo.server.name.clone(), lab.topo.client.name.clone()];
    let idle = lab.idle(ip(HARVESTER_V4)).unwrap();
    lab.sendmail.wait_for_child(Duration::from_secs(2), |t| t.contains("cmd read")).expect("a serving child");
    let procs = lab.sendmail.processes();
    assert!(procs.len() >= 2, "{procs:?}");
    let t = Instant::now();
    drop(lab);
    eprintln!("stopped in {:?}", t.elapsed());
    drop(idle);

    for p in &procs {
        assert!(blocksmtp_tests::lab::proc_info(p.pid).is_none(), "{p:?} survived");
        assert!(
            !blocksmtp_tests::lab::is_zombie(p.pid),
            "{p:?} left a zombie: {:?} (we are {})",
            std::fs::read_to_string(format!("/proc/{}/stat", p.pid)),
            std::process::id()
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(mounts_mentioning(&dir).is_empty(), "{:?}", mounts_mentioning(&dir));
    let list =
        String::from_utf8(std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    for ns in namespaces {
        assert!(!list.contains(&ns), "{ns} left behind");
    }
}

/// A test that panics with the lab running still leaves nothing behind (the guards'
/// Drop runs while unwinding).
#[test]
fn a_panicking_test_still_cleans_up() {
    if !blocksmtp_tests::sendmail_lab_ready() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let lab = lab();
        let idle = lab.idle(ip(HARVESTER_V4)).unwrap();
        lab.sendmail.wait_for_child(Duration::from_secs(2), |t| t.contains("cmd read")).expect("a serving child");
        let names = [lab.topo.server.name.clone(), lab.topo.client.name.clone()];
        tx.send((lab.sendmail.dir().to_path_buf(), names, lab.sendmail.processes())).unwrap();
        let _keep = (lab, idle);
        panic!("deliberate panic with the mail lab running (expected by this test)");
    })
    .join();
    assert!(r.is_err());
    let (dir, names, procs) = rx.recv().unwrap();
    assert!(procs.len() >= 2);
    for p in &procs {
        assert!(blocksmtp_tests::lab::proc_info(p.pid).is_none(), "{p:?} survived");
        assert!(
            !blocksmtp_tests::lab::is_zombie(p.pid),
            "{p:?} left a zombie: {:?} (we are {})",
            std::fs::read_to_string(format!("/proc/{}/stat", p.pid)),
            std::process::id()
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    let list =
        String::from_utf8(std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    for ns in names {
        assert!(!list.contains(&ns), "{ns} left behind");
    }
}
