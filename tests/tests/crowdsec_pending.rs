//! A CrowdSec decision the enforcer refuses is pending — listed with its CrowdSec
//! origin, retried with backoff — and in force as soon as the enforcer works again,
//! without waiting for the next full pull; a decision deleted in CrowdSec while still
//! pending is dropped, never enforced. Real LAPI (Debian's crowdsec, private to the
//! test, on the server namespace's loopback), iptables mode with an `iptables-restore`
//! that fails on demand; every verdict a real TCP connect.
use std::time::Duration;

use blocksmtp_tests::{crowdsec::Lapi, daemon::Daemon, faults::FailingIptables, is_root, netns::Topology, poll};

const T: Duration = Duration::from_millis(400);
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_refused_crowdsec_ban_is_retried_until_it_holds() {
    assert!(is_root(), "needs root (network namespaces, iptables)");
    assert!(blocksmtp_tests::crowdsec::available(), "needs Debian's crowdsec (cargo xtask setup --test-deps installs it)");
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let lapi = Lapi::start(Some(&topo.server), "127.0.0.1:8080").unwrap();
    let key = lapi.dir.path().join("mx.key");
    lapi.add_bouncer("mx", &key).unwrap();
    let ipt = FailingIptables::new().unwrap();
    let ipt_path = ipt.iptables();
    let args = [
        "--mode",
        "iptables",
        "--ip6tables",
        "none",
        "--iptables",
        ipt_path.to_str().unwrap(),
        "--cmd-read-timeout",
        "0",
        "--crowdsec-url",
        "http://127.0.0.1:8080",
        "--crowdsec-bouncer-key-file",
        key.to_str().unwrap(),
        "--crowdsec-pull-interval",
        "1s",
    ];
    let d = Daemon::start(Some(&topo.server), &args).unwrap();
    let log = |d: &Daemon| format!("{}\n---- LAPI ----\n{}", d.stderr_text(), lapi.log());
    // Wait for the daemon's first (full) pull, so the decisions below arrive as changes.
    assert!(poll(WAIT, || d.status().is_ok_and(|s| s["crowdsec"]["last_pull"].is_u64())), "{}", log(&d));

    ipt.fail(true).unwrap();
    lapi.cscli(&["decisions", "add", "--ip", "192.0.2.66", "--duration", "1h"]).unwrap();
    lapi.cscli(&["decisions", "add", "--ip", "192.0.2.67", "--duration", "1h"]).unwrap();
    assert!(
        poll(WAIT, || ["192.0.2.66", "192.0.2.67"].iter().all(|s| d.row(s).is_some_and(|r| r["pending"] == true))),
        "both pending:\n{}",
        log(&d)
    );
    let r = d.row("192.0.2.66").unwrap();
    assert_eq!(r["origin"], "crowdsec/cscli", "{r}");
    assert_eq!(d.status().unwrap()["pending_bans"], 2);
    assert!(topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "not in force while iptables-restore fails");

    // Deleted in CrowdSec while pending: dropped, never enforced.
    lapi.cscli(&["decisions", "delete", "--ip", "192.0.2.67"]).unwrap();
    assert!(poll(WAIT, || d.list().is_ok_and(|l| !l.iter().any(|r| r["source"] == "192.0.2.67"))), "{}", log(&d));

    // The enforcer works again: the retry (not a full pull) brings the ban.
    ipt.fail(false).unwrap();
    assert!(poll(WAIT, || !topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap()), "in force once iptables works:\n{}", log(&d));
    let r = d.row("192.0.2.66").unwrap();
    assert_eq!((r["pending"].clone(), r["origin"].clone()), (serde_json::json!(false), serde_json::json!("crowdsec/cscli")), "{r}");
    assert_eq!(d.status().unwrap()["pending_bans"], 0);
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap(), "the deleted decision is not enforced:\n{}", log(&d));
    assert!(topo.connect("2001:db8::67", "[2001:db8::25]:25", T).unwrap(), "an innocent connects");
    let text = d.stderr_text();
    assert!(text.contains("from CrowdSec) failed") && text.contains("pending, retrying"), "{text}");
    assert!(poll(WAIT, || d.stderr_text().contains("now in force (after")), "{}", log(&d));
    let text = d.stderr_text();
    assert!(text.contains("pending ban of 192.0.2.67 dropped"), "{text}");
}
