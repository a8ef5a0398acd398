//! `blocksmtp replay` over journald JSON, Postfix and exim logs.
mod common;

use common::*;

#[test]
fn journald_json_export() {
    let mut g = LogGen::new(Style::Journald, 20, start());
    g.sendmail_legit(ip("192.0.2.10"), 2, 1);
    g.sendmail_harvest(ip("2001:db8::66"), 9, 0.5, true);
    let mut log = g.finish();
    // A non-UTF-8 MESSAGE comes as an array of bytes; an entry without MESSAGE, and
    // a line that is not JSON at all, are skipped.
    let msg = b"6ARCZkEp099999: <\xffbad@example.com>... User unknown";
    let arr: Vec<String> = msg.iter().map(|b| b.to_string()).collect();
    log.extend_from_slice(format!("{{\"SYSLOG_IDENTIFIER\":\"sm-mta\",\"_PID\":\"99999\",\"_HOSTNAME\":\"mx\",\"MESSAGE\":[{}]}}\n", arr.join(",")).as_bytes());
    log.extend_from_slice(b"{\"SYSLOG_IDENTIFIER\":\"sm-mta\",\"_PID\":\"1\"}\n{\"MESSAGE\":\n");
    let r = replay_log(&log, &[]);
    assert_eq!(sources(&r), ["2001:db8::/64"]);
    assert_eq!(r["kinds"]["unknown_recipient"], 1 + 9 + 1);
    assert_eq!(r["skipped"], 2);
}

#[test]
fn postfix_harvest_and_other_rejects() {
    let mut g = LogGen::new(Style::Bsd, 21, start());
    for _ in 0..5 {
        g.postfix_legit(ip("192.0.2.10"));
    }
    g.postfix_harvest(ip("192.0.2.66"), None, 7, 1.0);
    g.postfix_harvest(ip("2001:db8::66"), None, 3, 1.0);
    g.postfix_harvest(ip("2001:db8::67"), Some("198.51.100.201"), 3, 1.0);
    g.postfix_harvest(ip("192.0.2.12"), Some("mail.example.org"), 1, 1.0);
    let r = replay_log(&g.finish(), &[]);
    assert_eq!(sources(&r), ["192.0.2.66", "2001:db8::/64"]);
    assert!(ban(&r, "192.0.2.66")["reason"].as_str().unwrap().ends_with("(postfix)"));
    // Greylisting and relay-denied lines are mail lines, not guesses.
    assert_eq!(r["kinds"]["unknown_recipient"], 7 + 3 + 3 + 1);
}

#[test]
fn exim_mainlog() {
    let mut g = LogGen::new(Style::Rfc3339, 22, start());
    for _ in 0..5 {
        g.exim_legit(ip("192.0.2.10"));
    }
    g.exim_harvest(ip("192.0.2.66"), "[198.51.100.210]", 6, 1.0);
    g.exim_harvest(ip("2001:db8::66"), "harvester.invalid", 6, 1.0);
    g.exim_harvest(ip("192.0.2.13"), "typo.example.net", 2, 1.0);
    let r = replay_log(&g.finish(), &[]);
    assert_eq!(sources(&r), ["192.0.2.66", "2001:db8::/64"]);
    assert_eq!(ban(&r, "192.0.2.66")["mta"], "exim");
    assert_eq!(r["skipped"], 0);
}

#[test]
fn mixed_formats_in_one_run() {
    let dir = Dir::new();
    let mut a = LogGen::new(Style::Journald, 23, start());
    a.sendmail_harvest(ip("192.0.2.66"), 3, 1.0, false);
    let mut b = LogGen::new(Style::Bsd, 24, start() + 10);
    b.postfix_harvest(ip("192.0.2.66"), None, 3, 1.0);
    let pa = dir.write("journal.json", &a.finish());
    let pb = dir.write("mail.log", &b.finish());
    let r = replay_json(&[pa.to_str().unwrap(), pb.to_str().unwrap()], None);
    assert_eq!(sources(&r), ["192.0.2.66"]);
}

#[test]
fn mailer_syslog_name_narrows() {
    let mut g = LogGen::new(Style::Rfc3339, 25, start());
    g.postfix_harvest(ip("192.0.2.66"), None, 6, 1.0);
    g.sendmail_harvest(ip("192.0.2.67"), 6, 1.0, true);
    let log = g.finish();
    assert_eq!(sources(&replay_log(&log, &[])), ["192.0.2.66", "192.0.2.67"]);
    assert_eq!(sources(&replay_log(&log, &["--mailer-syslog-name", "sm-mta"])), ["192.0.2.67"]);
    assert_eq!(sources(&replay_log(&log, &["--mailer-syslog-name", "postfix"])), ["192.0.2.66"]);
    assert_eq!(
        sources(&replay_log(&log, &["--mailer-syslog-name", "postfix/smtpd", "--mailer-syslog-name", "sm-mta"])),
        ["192.0.2.66", "192.0.2.67"]
    );
}
