//! `blocksmtp replay` over whole sendmail logs: the real 8.17 captures and generated
//! scenarios.
mod common;

use common::*;

#[test]
fn real_sendmail_8_17_capture() {
    // fixtures/sendmail-8.17-rfc3339.log: Debian 12 sendmail 8.17.1.9 under a harvest
    // (20 unknown recipients from 192.0.2.66), VRFY/EXPN probes, an IPv6 harvest, RSET
    // cycling from 192.0.2.67 and a forged-name client 192.0.2.68.
    let r = replay_json(&[fixture("sendmail-8.17-rfc3339.log").to_str().unwrap()], None);
    assert_eq!(r["lines"], 101);
    assert_eq!(r["skipped"], 0);
    assert_eq!(sources(&r), ["192.0.2.66", "2001:db8::/64", "192.0.2.67", "192.0.2.68"]);
    let b = ban(&r, "192.0.2.66");
    assert_eq!(b["first_seen"], "2026-11-27T12:35:47Z");
    assert_eq!(b["guesses_at_ban"], 5);
    assert_eq!(b["samples"][0], "<tpwjzbwb15@example.com>");
    assert_eq!(b["reason"], "5 unknown recipients in 2s (sendmail)");
    assert_eq!(b["ban_time"], 3600);
    // The access-denied client (192.0.2.99), the rate-limited one (.69) and the
    // tcpwrappers-refused one (.98) made no guesses.
    for innocent in ["192.0.2.69", "192.0.2.98", "192.0.2.99"] {
        assert!(!sources(&r).contains(&innocent.to_string()));
    }
    assert_eq!(r["kinds"]["foreign"], 1, "the harness line");
    assert_eq!(r["kinds"]["flood"], 5);
    assert_eq!(r["kinds"]["probe"], 5);
    assert_eq!(r["kinds"]["probe_attack"], 1);
}

#[test]
fn real_capture_with_bsd_timestamps_and_shutdown() {
    // BadRcptShutdown capture: "User unknown" lines are at LogLevel 9 only, the flood
    // lines carry the evidence (each proves 3 bad recipients).
    let r = replay_json(
        &["--max-unknown", "3", fixture("sendmail-8.17-badrcptshutdown-bsd.log").to_str().unwrap()],
        None,
    );
    assert_eq!(r["skipped"], 0);
    let s = sources(&r);
    for want in ["192.0.2.66", "2001:db8::/64", "192.0.2.67", "192.0.2.68"] {
        assert!(s.contains(&want.to_string()), "{want} missing in {s:?}");
    }
    assert!(ban(&r, "192.0.2.66")["first_seen"].as_str().unwrap().contains("-11-27T12:34:"));
}

#[test]
fn harvester_banned_typo_sender_not() {
    let mut g = LogGen::new(Style::Rfc3339, 1, start());
    g.sendmail_legit(ip("192.0.2.10"), 3, 1);
    g.sendmail_harvest(ip("192.0.2.66"), 30, 0.5, true);
    g.advance(60.0);
    g.sendmail_legit(ip("192.0.2.10"), 1, 1);
    g.sendmail_legit(ip("192.0.2.11"), 2, 2);
    let r = replay_log(&g.finish(), &[]);
    assert_eq!(sources(&r), ["192.0.2.66"]);
    assert_eq!(ban(&r, "192.0.2.66")["guesses"], 30);
}

#[test]
fn rset_cycling_adds_up_across_queue_ids() {
    // Two guesses per transaction (below sendmail's throttle), new queue id after each
    // RSET, same pid: only the from= lines name the client.
    let mut g = LogGen::new(Style::Rfc3339, 2, start());
    g.sendmail_rset_cycle(ip("192.0.2.67"), 4, 2, 1.0);
    let r = replay_log(&g.finish(), &[]);
    assert_eq!(sources(&r), ["192.0.2.67"]);
    assert_eq!(ban(&r, "192.0.2.67")["guesses"], 8);
    assert_eq!(r["correlation"]["held"], 8);
}

#[test]
fn many_short_connections_from_one_source() {
    let mut g = LogGen::new(Style::Bsd, 3, start());
    for _ in 0..6 {
        g.sendmail_harvest(ip("192.0.2.80"), 1, 0.1, false);
        g.sendmail_legit(ip("192.0.2.10"), 1, 0);
        g.advance(20.0);
    }
    let r = replay_log(&g.finish(), &[]);
    assert_eq!(sources(&r), ["192.0.2.80"]);
}

#[test]
fn ipv6_neighbours_of_one_prefix_add_up() {
    let mut g = LogGen::new(Style::Rfc3339, 4, start());
    for host in ["2001:db8::66", "2001:db8::1:67", "2001:db8::ff:68"] {
        g.sendmail_harvest(ip(host), 2, 1.0, false);
    }
    // A different /64: 2 guesses only.
    g.sendmail_harvest(ip("2001:db8:0:1::66"), 2, 1.0, false);
    let r = replay_log(&g.finish(), &[]);
    assert_eq!(sources(&r), ["2001:db8::/64"]);
    assert_eq!(ban(&r, "2001:db8::/64")["guesses"], 6);
    // Per /128 they are three separate small guessers.
    let mut g = LogGen::new(Style::Rfc3339, 4, start());
    for host in ["2001:db8::66", "2001:db8::1:67", "2001:db8::ff:68"] {
        g.sendmail_harvest(ip(host), 2, 1.0, false);
    }
    let log = g.finish();
    let r = replay_log(&log, &["--v6-prefix", "128", "--per-address-only"]);
    assert!(sources(&r).is_empty());
    // Together they are three sources of one /48 (the network evidence).
    let r = replay_log(&log, &["--v6-prefix", "128"]);
    assert_eq!(sources(&r), ["2001:db8::/48"]);
    assert_eq!(ban(&r, "2001:db8::/48")["rule"], "prefix");
}

#[test]
fn whitelisted_hosts_are_spared() {
    let dir = Dir::new();
    let wl = dir.write(
        "white-list",
        b"# our backup MX and office\n192.0.2.66\n\n198.51.100.0/255.255.255.0\n2001:db8::25\n",
    );
    let mut g = LogGen::new(Style::Rfc3339, 5, start());
    g.sendmail_harvest(ip("192.0.2.66"), 10, 0.5, true);
    g.sendmail_harvest(ip("198.51.100.7"), 10, 0.5, true);
    // A /64 holding a whitelisted host is not banned either.
    g.sendmail_harvest(ip("2001:db8::66"), 10, 0.5, true);
    g.sendmail_harvest(ip("192.0.2.67"), 10, 0.5, true);
    // Loopback is always whitelisted.
    g.sendmail_harvest(ip("127.0.0.1"), 10, 0.5, true);
    let wls = wl.to_str().unwrap().to_string();
    let r = replay_log(&g.finish(), &["--white-list", &wls]);
    assert_eq!(sources(&r), ["192.0.2.67"]);
    // Per address: 192.0.2.66, 198.51.100.7 and loopback; the /64 is spared as a whole.
    assert_eq!(r["kinds"]["whitelisted"], 30, "{r:#}");
    // The /64 reached the threshold twice (10 guesses, --max-unknown 5); spared both times.
    assert_eq!(r["policy"]["bans_whitelisted"], 2);
}

#[test]
fn central_log_server_host_filter() {
    let mut g = LogGen::new(Style::Bsd, 6, start());
    g.set_host("mx1");
    g.sendmail_harvest(ip("192.0.2.66"), 10, 0.5, true);
    g.set_host("mx2");
    g.sendmail_harvest(ip("192.0.2.77"), 10, 0.5, true);
    g.set_host("logsrv");
    g.noise(5);
    let log = g.finish();
    let all = replay_log(&log, &[]);
    assert_eq!(sources(&all), ["192.0.2.66", "192.0.2.77"]);
    let mx2 = replay_log(&log, &["--mailer-syslog-host", "mx2"]);
    assert_eq!(sources(&mx2), ["192.0.2.77"]);
    assert_eq!(mx2["kinds"]["foreign"], 5 + 11 + 1);
}

#[test]
fn same_pid_and_queue_id_on_two_hosts_stay_apart() {
    // Host mx1 logs unknown users; host mx2 has a session with the same pid and queue
    // id from an innocent client. Its from= line must not attribute mx1's guesses.
    let mut log = Vec::new();
    for i in 0..6 {
        log.extend_from_slice(format!("2026-11-27T12:35:4{i}.000000+00:00 mx1 sm-mta[18868]: 6ARCZkEp018868: <u{i}@example.com>... User unknown\n").as_bytes());
    }
    log.extend_from_slice(b"2026-11-27T12:35:47.000000+00:00 mx2 sm-mta[18868]: 6ARCZkEp018868: from=<a@example.net>, size=10, class=0, nrcpts=1, proto=ESMTP, daemon=MTA-v4, relay=[192.0.2.10]\n");
    log.extend_from_slice(b"2026-11-27T12:35:48.000000+00:00 mx1 sm-mta[18868]: 6ARCZkEp018868: from=<b@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=[192.0.2.66]\n");
    let r = replay_log(&log, &[]);
    assert_eq!(sources(&r), ["192.0.2.66"]);
}

#[test]
fn slow_guesser_outside_the_window() {
    let mut g = LogGen::new(Style::Rfc3339, 7, start());
    for _ in 0..12 {
        g.sendmail_harvest(ip("192.0.2.90"), 1, 0.1, false);
        g.advance(180.0);
    }
    let r = replay_log(&g.finish(), &[]);
    assert!(sources(&r).is_empty(), "{r:#}");
    assert_eq!(r["guesses"], 12);
    // A wider window catches it.
    let mut g = LogGen::new(Style::Rfc3339, 7, start());
    for _ in 0..12 {
        g.sendmail_harvest(ip("192.0.2.90"), 1, 0.1, false);
        g.advance(180.0);
    }
    let r = replay_log(&g.finish(), &["--window", "1h"]);
    assert_eq!(sources(&r), ["192.0.2.90"]);
}

#[test]
fn escalation_doubles_the_second_ban() {
    let mut g = LogGen::new(Style::Rfc3339, 8, start());
    g.sendmail_harvest(ip("192.0.2.66"), 6, 1.0, true);
    g.advance(2.0 * 3600.0);
    g.sendmail_harvest(ip("192.0.2.66"), 6, 1.0, true);
    // The second ban ends at about 4h; an offence within --ban-time-max (3h) of that
    // is a repeat.
    g.advance(3.0 * 3600.0);
    g.sendmail_harvest(ip("192.0.2.66"), 6, 1.0, true);
    // Long after the history is forgotten: a first offence again.
    g.advance(10.0 * 3600.0);
    g.sendmail_harvest(ip("192.0.2.66"), 6, 1.0, true);
    let r = replay_log(&g.finish(), &["--ban-time", "1h", "--ban-time-max", "3h"]);
    let bans = r["bans"].as_array().unwrap();
    let got: Vec<(u64, u64)> = bans.iter().map(|b| (b["ban_time"].as_u64().unwrap(), b["offence"].as_u64().unwrap())).collect();
    assert_eq!(got, [(3600, 1), (7200, 2), (10800, 3), (3600, 1)]);
}

#[test]
fn vrfy_expn_probes() {
    let mut g = LogGen::new(Style::Rfc3339, 9, start());
    g.sendmail_vrfy(ip("192.0.2.55"), 8, 0.5);
    let r = replay_log(&g.finish(), &[]);
    assert_eq!(sources(&r), ["192.0.2.55"]);
    assert!(ban(&r, "192.0.2.55")["reason"].as_str().unwrap().contains("VRFY probes"));
}

#[test]
fn gzip_input_and_several_files() {
    use std::io::Write;
    let mut g = LogGen::new(Style::Rfc3339, 10, start());
    g.sendmail_harvest(ip("192.0.2.66"), 3, 1.0, false);
    let older = g.take();
    g.sendmail_harvest(ip("192.0.2.66"), 3, 1.0, false);
    let newer = g.finish();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&older).unwrap();
    let dir = Dir::new();
    let gz = dir.write("mail.log.1.gz", &e.finish().unwrap());
    let plain = dir.write("mail.log", &newer);
    let r = replay_json(&[gz.to_str().unwrap(), plain.to_str().unwrap()], None);
    assert_eq!(sources(&r), ["192.0.2.66"]);
    assert_eq!(r["lines"], 8);
    // Alone, neither file has enough.
    assert!(sources(&replay_json(&[gz.to_str().unwrap()], None)).is_empty());
}

#[test]
fn stdin_input() {
    let mut g = LogGen::new(Style::Bsd, 11, start());
    g.sendmail_harvest(ip("192.0.2.66"), 8, 1.0, true);
    let r = replay_json(&["-"], Some(&g.finish()));
    assert_eq!(sources(&r), ["192.0.2.66"]);
}

#[test]
fn junk_lines_are_counted_as_skipped() {
    let mut g = LogGen::new(Style::Rfc3339, 12, start());
    g.junk();
    g.sendmail_harvest(ip("192.0.2.66"), 6, 1.0, true);
    g.junk();
    let r = replay_log(&g.finish(), &[]);
    assert_eq!(sources(&r), ["192.0.2.66"]);
    // Of each junk batch, the 200 kB line has a valid header and counts as mail.
    assert_eq!(r["skipped"], 12);
    assert_eq!(r["lines"], 14 + 8);
}

#[test]
fn human_table() {
    let mut g = LogGen::new(Style::Rfc3339, 13, start());
    g.sendmail_harvest(ip("192.0.2.66"), 7, 1.0, true);
    let dir = Dir::new();
    let p = dir.write("mail.log", &g.finish());
    let out = replay_raw(&[p.to_str().unwrap()], None);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().next().unwrap().starts_with("SOURCE"), "{text}");
    let row = text.lines().nth(1).unwrap();
    assert!(row.starts_with("192.0.2.66 ") && row.contains(" 7 ") && row.contains("unknown recipients"), "{text}");
    assert!(text.contains("Lines read:             9"), "{text}");
    assert!(text.contains("Would-be bans:          1"), "{text}");
}
