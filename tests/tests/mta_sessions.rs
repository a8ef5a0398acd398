//! A banned harvester's open session is reset on every MTA, not only sendmail: real
//! Postfix 3.7 and Exim 4.96 (Debian's packages, run privately beside the host's
//! sendmail), IPv4 and IPv6. The daemon follows the MTA's own log and bans in XDP; the
//! harvester keeps its session open after its guesses. Judged by the MTA's log (the
//! serving process saw the connection end), the kernel's socket table (no session of
//! the harvester left) and real deliveries by a legitimate sender before and after.
use std::{net::IpAddr, time::Duration};

use blocksmtp::{addr::SourceAddr, enforce::sockdiag::SessionKiller};
use blocksmtp_tests::{
    daemon::Daemon,
    lab::{
        mta::{Kind, PrivateMta, VALID_USER},
        server_for,
        smtp::{self, Session, Timeouts},
    },
    netns::Topology,
};

fn deliver(topo: &Topology, mta: &PrivateMta, src: IpAddr, body: &str) {
    let server = server_for(src);
    let to = format!("{VALID_USER}@example.com");
    let b = body.to_string();
    let d = topo.client.run_in(move || smtp::deliver(src, server, "sender@example.net", &to, &b)).unwrap();
    if let Err(e) = d {
        panic!("{:?}: delivery from {src} failed: {e:#}\n{}", mta.kind, mta.log());
    }
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(mta.mailbox()).unwrap_or_default().contains(body) {
        assert!(start.elapsed() < Duration::from_secs(20), "{:?}: {body:?} never reached the mailbox\n{}", mta.kind, mta.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(kind: Kind, harvester: &str, legit: &str, banned: &str) {
    if !blocksmtp_tests::is_root() {
        panic!("needs root (namespaces, BPF)");
    }
    let topo = Topology::new().unwrap();
    let mta = PrivateMta::start(&topo.server, kind).unwrap();
    let d = Daemon::start_following(
        Some(&topo.server),
        Some(&mta.log_path()),
        &["--interface", "vs0", "--max-unknown", "3", "--cmd-read-timeout", "0"],
    )
    .unwrap();
    let (h, l): (IpAddr, IpAddr) = (harvester.parse().unwrap(), legit.parse().unwrap());
    deliver(&topo, &mta, l, "before the harvest");

    // The harvester guesses three names and keeps its session open.
    let server = server_for(h);
    let mut s = topo
        .client
        .run_in(move || -> std::io::Result<Session> {
            let mut s = Session::open(h, server, Timeouts::default())?;
            s.read_reply()?;
            s.command("EHLO harvester.example.net")?;
            s.command("MAIL FROM:<x@example.net>")?;
            for i in 0..2 {
                let r = s.command(&format!("RCPT TO:<nosuchuser{i}@example.com>"))?;
                assert!(!r.is_positive(), "unknown user accepted: {r}");
            }
            // The third guess's log line triggers the ban: its reply may already meet
            // the reset.
            if let Ok(r) = s.command("RCPT TO:<nosuchuser2@example.com>") {
                assert!(!r.is_positive(), "unknown user accepted: {r}");
            }
            Ok(s)
        })
        .unwrap()
        .unwrap();
    d.wait_for(Duration::from_secs(10), |d| d.listed(banned))
        .unwrap_or_else(|| panic!("{kind:?}: no ban of {banned}:\n{}\n{}", d.stderr_text(), mta.log()));

    // The session is reset at the ban: the MTA's process sees the connection end ...
    let lost = match kind {
        Kind::Postfix => format!("lost connection after RCPT from unknown[{harvester}]"),
        Kind::Exim => format!("unexpected disconnection while reading SMTP command from (harvester.example.net) [{harvester}] (error: Software caused connection abort)"),
    };
    assert!(
        mta.wait_log(&lost, 1, Duration::from_secs(3)),
        "{kind:?}: the serving process did not see the session end:\n{}\n{}",
        mta.log(),
        d.stderr_text()
    );
    // ... the kernel holds no session of the harvester any more ...
    let src: SourceAddr = banned.parse().unwrap();
    let left = topo.server.run_in(move || SessionKiller::new(&[25]).sessions_of(&[src])).unwrap().unwrap();
    assert!(left.is_empty(), "{kind:?}: sessions left: {left:?}");
    // ... the harvester's side is dead ...
    assert!(s.command("RCPT TO:<another@example.com>").is_err(), "{kind:?}: the harvester's session still answers");
    assert!(d.stderr_text().contains(&format!("reset session of {harvester}")), "{}", d.stderr_text());
    // ... and legitimate mail still goes through.
    deliver(&topo, &mta, l, "after the ban");
}

#[test]
fn postfix_v4() {
    run(Kind::Postfix, "192.0.2.66", "192.0.2.67", "192.0.2.66");
}

#[test]
fn postfix_v6() {
    run(Kind::Postfix, "2001:db8::66", "2001:db8:0:1::67", "2001:db8::/64");
}

#[test]
fn exim_v4() {
    run(Kind::Exim, "192.0.2.66", "192.0.2.67", "192.0.2.66");
}

#[test]
fn exim_v6() {
    run(Kind::Exim, "2001:db8::66", "2001:db8:0:1::67", "2001:db8::/64");
}
