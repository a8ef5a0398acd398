//! `blocksmtp run` in iptables and dry-run modes, log rotation under load, the config
//! file, SIGHUP and the metrics endpoint.
use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use blocksmtp_tests::{
    daemon::{Daemon, sendmail_harvest},
    root_or_skip,
    netns::Topology,
};

const T: Duration = Duration::from_millis(500);

fn iptables_s(topo: &Topology, bin: &str) -> String {
    String::from_utf8_lossy(&topo.server.exec(&[bin, "-S"]).unwrap().stdout).into_owned()
}

/// The old daemon's behaviour, in a private namespace's netfilter: the chain, the jump
/// from INPUT, one DROP rule per offender, gone when the ban ends and on exit.
#[test]
fn iptables_mode_chain_jump_and_rules() {
    if !root_or_skip("network namespaces, iptables") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25, 2525]).unwrap();
    let mut d = Daemon::start(
        Some(&topo.server),
        &["--mode", "iptables", "--mailer-ip", "192.0.2.25", "--max-unknown", "3", "--ban-time", "2s"],
    )
    .unwrap();
    let rules = iptables_s(&topo, "iptables");
    assert!(rules.contains("-N SPAM_UNAME_GUESSERS"), "{rules}");
    assert!(rules.contains("-A INPUT -d 192.0.2.25/32 -p tcp -m tcp --dport 25 -j SPAM_UNAME_GUESSERS"), "{rules}");

    d.write_log(&sendmail_harvest("192.0.2.66", 18868, 3)).unwrap();
    d.wait_for(Duration::from_secs(5), |d| d.listed("192.0.2.66")).expect("ban");
    let rules = iptables_s(&topo, "iptables");
    assert!(
        rules.lines().any(|l| l.starts_with("-A SPAM_UNAME_GUESSERS -s 192.0.2.66/32 -p tcp") && l.contains("--dport 25") && l.ends_with("-j DROP")),
        "{rules}"
    );
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap());
    assert!(topo.connect("192.0.2.66", "192.0.2.25:2525", T).unwrap());
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap());

    d.write_log(&sendmail_harvest("2001:db8::66", 18869, 3)).unwrap();
    d.wait_for(Duration::from_secs(5), |d| d.listed("2001:db8::/64")).expect("v6 ban");
    assert!(iptables_s(&topo, "ip6tables").contains("-A SPAM_UNAME_GUESSERS -s 2001:db8::/64"));

    // Expiry removes the rules.
    d.wait_for(Duration::from_secs(5), |_| {
        !iptables_s(&topo, "iptables").contains("-s 192.0.2.66") && !iptables_s(&topo, "ip6tables").contains("-s 2001:db8::")
    })
    .expect("the expired bans' rules are swept");
    assert!(d.list().unwrap().is_empty());
    assert!(topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap());

    // Exit removes the jump and the chain.
    d.stop().unwrap();
    let rules = iptables_s(&topo, "iptables");
    assert!(!rules.contains("SPAM_UNAME_GUESSERS"), "{rules}");
    assert!(!iptables_s(&topo, "ip6tables").contains("SPAM_UNAME_GUESSERS"));
}

/// Lines written in a burst across rename+create and copytruncate rotations all reach
/// the detector: count them through `status`.
#[test]
fn rotation_during_a_burst_loses_no_line() {
    if !root_or_skip("network namespaces, iptables") {
        return;
    }
    let d = Daemon::start(None, &["--mode", "dry-run", "--max-unknown", "1000000"]).unwrap();
    let per_round = 500;
    let mut written = 0u64;
    let status = |d: &Daemon| d.status().map(|s| (s["lines"].as_u64().unwrap_or(0), s["guesses"].as_u64().unwrap_or(0)));
    for round in 0..6 {
        let lines: Vec<String> = (0..per_round)
            .map(|i| format!("Nov 27 12:35:47 mx sm-mta[{}]: 6ARCZkEp0{:05}: <g{round}x{i}@example.com>... User unknown", 30000 + round, 30000 + round))
            .collect();
        d.write_log(&lines).unwrap();
        written += per_round as u64;
        match round % 2 {
            // rename + create: the writer moves on at once, with no pause.
            0 => {
                let rotated = d.dir.path().join(format!("mail.log.{round}"));
                std::fs::rename(&d.log, &rotated).unwrap();
                // A few late lines into the renamed file, as syslogd does before reopening.
                let mut f = std::fs::OpenOptions::new().append(true).open(&rotated).unwrap();
                for i in 0..5 {
                    writeln!(f, "Nov 27 12:35:48 mx sm-mta[{}]: 6ARCZkEp0{:05}: <late{i}@example.com>... User unknown", 30000 + round, 30000 + round).unwrap();
                }
                written += 5;
                std::fs::write(&d.log, b"").unwrap();
            }
            // copytruncate: logrotate copies, then truncates in place once the reader
            // has caught up (the window every follower shares is documented).
            _ => {
                d.wait_for(Duration::from_secs(5), |d| status(d).map(|s| s.0 == written).unwrap_or(false))
                    .unwrap_or_else(|| panic!("not caught up before the truncate: wrote {written}, status {:?}\n{}", status(&d), d.stderr_text()));
                std::fs::copy(&d.log, d.dir.path().join(format!("mail.log.{round}"))).unwrap();
                std::fs::OpenOptions::new().write(true).truncate(true).open(&d.log).unwrap();
                // What a follower can guarantee: it sees the shrink before the file
                // grows past its old length again (inotify wakes it at once).
                d.wait_for(Duration::from_secs(5), |d| {
                    d.status().map(|s| s["sources"][0]["position"].as_u64() == Some(0)).unwrap_or(false)
                })
                .expect("the truncation is noticed");
            }
        }
    }
    let last: Vec<String> = (0..100).map(|i| format!("Nov 27 12:35:49 mx sm-mta[39999]: 6ARCZkEp039999: <tail{i}@example.com>... User unknown")).collect();
    d.write_log(&last).unwrap();
    written += 100;
    let got = d.wait_for(Duration::from_secs(20), |d| status(d).map(|s| s.0 == written).unwrap_or(false));
    let (lines, guesses) = status(&d).unwrap();
    assert!(got.is_some(), "wrote {written} lines, the daemon read {lines}:\n{}", d.stderr_text());
    assert_eq!(guesses, written, "every line is a guess");
}

/// A config file supplies options; the command line wins; a bad key is an error naming
/// file, line and key; SIGHUP re-reads the whitelist.
#[test]
fn config_file_and_sighup_reload() {
    if !root_or_skip("network namespaces, iptables") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wl = dir.path().join("whitelist");
    std::fs::write(&wl, "192.0.2.1\n").unwrap();
    let cfg = dir.path().join("blocksmtp.toml");
    std::fs::write(&cfg, format!("mode = \"dry-run\"\nmax-unknown = 2\nwhite-list = \"{}\"\nban_time = \"5m\"\n", wl.display())).unwrap();
    let d = Daemon::start(None, &["--config", cfg.to_str().unwrap(), "--ban-time", "7m"]).unwrap();
    assert_eq!(d.status().unwrap()["mode"], "dry-run", "mode from the file");
    d.write_log(&sendmail_harvest("192.0.2.66", 1111, 2)).unwrap();
    d.wait_for(Duration::from_secs(5), |d| d.listed("192.0.2.66")).expect("max-unknown 2 from the file");
    let row = d.row("192.0.2.66").unwrap();
    let secs = row["expires_in_secs"].as_u64().unwrap();
    assert!((400..=420).contains(&secs), "--ban-time 7m on the command line wins over the file's 5m: {secs}");

    // SIGHUP: 192.0.2.99 joins the whitelist; a manual ban of it is then refused.
    assert!(d.ctl(&["ban", "192.0.2.99", "--for", "1m"]).unwrap().status.success());
    assert!(d.ctl(&["unban", "192.0.2.99"]).unwrap().status.success());
    std::fs::write(&wl, "192.0.2.1\n192.0.2.99\n").unwrap();
    unsafe { libc::kill(d.pid().unwrap() as i32, libc::SIGHUP) };
    let refused = d.wait_for(Duration::from_secs(5), |d| {
        let out = d.ctl(&["ban", "192.0.2.99"]).unwrap();
        out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("whitelisted")
    });
    assert!(refused.is_some(), "whitelist reloaded on SIGHUP:\n{}", d.stderr_text());

    // A bad value: the error names the file, the line and the key; exit code 2.
    std::fs::write(&cfg, "mode = \"dry-run\"\n\nwindow = \"ten minutes\"\n").unwrap();
    let out = std::process::Command::new(blocksmtp_tests::daemon::binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3: key `window`", cfg.display())), "{err}");
    std::fs::write(&cfg, "mode = \"dry-run\"\nmax-unknwon = 3\n").unwrap();
    let out = std::process::Command::new(blocksmtp_tests::daemon::binary()).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(":2: key `max-unknwon`: unknown option"), "{out:?}");
}

/// The Prometheus endpoint (on loopback) reports bans, lines and latency.
#[test]
fn metrics_endpoint() {
    if !root_or_skip("network namespaces, iptables") {
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start(None, &["--mode", "dry-run", "--max-unknown", "3", "--metrics-listen", &addr]).unwrap();
    d.write_log(&sendmail_harvest("192.0.2.66", 2222, 3)).unwrap();
    d.wait_for(Duration::from_secs(5), |d| d.listed("192.0.2.66")).expect("ban");
    std::thread::sleep(Duration::from_millis(600)); // one sweep tick refreshes the detector counters
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    for needle in [
        "blocksmtp_bans_active 1",
        "blocksmtp_bans_total{reason=\"sendmail\"} 1",
        "blocksmtp_guess_lines_total{kind=\"unknown_recipient\"} 3",
        "blocksmtp_guesses_total{mta=\"sendmail\"} 3",
        "blocksmtp_guesses_total{mta=\"postfix\"} 0",
        "blocksmtp_detection_to_ban_seconds_count 1",
        "blocksmtp_reaper_kills_total 0",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in:\n{body}");
    }
    let lines = format!("blocksmtp_lines_total{{source=\"{}\"}} 4", d.log.display());
    assert!(body.contains(&lines), "missing {lines:?} in:\n{body}");
}
