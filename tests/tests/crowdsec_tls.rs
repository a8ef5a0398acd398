//! `--crowdsec-ca-file` against a real https LAPI (Debian's crowdsec with `api.server.tls`
//! and a certificate of a private CA made for the test): with the CA the daemon pulls a
//! cscli decision and the kernel drops the banned address; without the CA file, or with
//! another CA, the link stays down with an error naming the URL and the TLS trust, and
//! nothing is enforced. LAPI listens on the loopback of the server namespace.
use std::time::Duration;

use blocksmtp_tests::{
    crowdsec::{Lapi, TestPki},
    daemon::Daemon,
    netns::Topology,
};

const LISTEN: &str = "127.0.0.1:8443";
const BANNED: &str = "192.0.2.66";
const INNOCENT: &str = "192.0.2.67";
const T: Duration = Duration::from_millis(500);

/// A daemon in the server namespace that only pulls and enforces LAPI's decisions.
fn daemon(topo: &Topology, lapi: &Lapi, key: &str, ca: Option<&std::path::Path>) -> Daemon {
    let mut args = vec!["--interface", "vs0", "--no-log", "--cmd-read-timeout", "0", "--crowdsec-url", &lapi.url];
    args.extend(["--crowdsec-bouncer-key-file", key, "--crowdsec-pull-interval", "1s"]);
    let ca = ca.map(|c| c.display().to_string());
    if let Some(ca) = &ca {
        args.extend(["--crowdsec-ca-file", ca]);
    }
    Daemon::start(Some(&topo.server), &args).unwrap()
}

/// The link's last error once it has one (the first pull fails at once on a TLS error).
fn link_error(d: &Daemon) -> String {
    let mut err = String::new();
    d.wait_for(Duration::from_secs(10), |d| {
        let st = d.status().unwrap_or_default();
        err = st["crowdsec"]["last_error"].as_str().unwrap_or("").to_string();
        !err.is_empty() && st["crowdsec"]["up"] == false
    })
    .unwrap_or_else(|| panic!("the link reported no error: {}\n{}", d.status().unwrap_or_default(), d.stderr_text()));
    err
}

#[test]
fn https_lapi_with_a_private_ca() {
    if !blocksmtp_tests::is_root() {
        panic!("needs root (namespaces, BPF)");
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path()).unwrap();
    let lapi = Lapi::start_tls(Some(&topo.server), LISTEN, &pki).unwrap();
    assert!(lapi.url.starts_with("https://"), "{}", lapi.url);
    let key_file = lapi.dir.path().join("bouncer.key");
    lapi.add_bouncer("mx-tls", &key_file).unwrap();
    let key = key_file.display().to_string();
    lapi.cscli(&["decisions", "add", "--ip", BANNED, "--duration", "1h"]).unwrap();
    assert!(topo.connect(BANNED, "192.0.2.25:25", T).unwrap(), "nothing enforced yet");

    // With LAPI's CA: pulled over https and dropped by the kernel.
    let mut d = daemon(&topo, &lapi, &key, Some(&pki.ca));
    let pulled = d.wait_for(Duration::from_secs(10), |d| !d.status().is_ok_and(|s| s["crowdsec"]["last_pull"].is_null()));
    assert!(pulled.is_some(), "no pull over https: {}\n{}", d.status().unwrap_or_default(), d.stderr_text());
    let dropped = blocksmtp_tests::poll(Duration::from_secs(5), || !topo.connect(BANNED, "192.0.2.25:25", T).unwrap());
    assert!(dropped, "the pulled decision is not enforced: {:?}\n{}", d.row(BANNED), d.stderr_text());
    assert_eq!(d.row(BANNED).expect("listed")["origin"], "crowdsec/cscli");
    assert!(topo.connect(INNOCENT, "192.0.2.25:25", T).unwrap(), "an innocent connects");
    let st = d.status().unwrap();
    assert!(st["crowdsec"]["up"] == true && st["crowdsec"]["last_error"].is_null(), "{st}");
    d.stop().unwrap();
    assert!(topo.connect(BANNED, "192.0.2.25:25", T).unwrap(), "the stop removed the ban");

    // Without the CA file (system roots) and with another CA: refused, said, not enforced.
    for (ca, trust) in [(None, "--crowdsec-ca-file)"), (Some(&pki.other_ca), "only the CA in --crowdsec-ca-file")] {
        let d = daemon(&topo, &lapi, &key, ca.map(|p| p.as_path()));
        let err = link_error(&d);
        assert!(err.contains(&lapi.url) && err.contains("certificate") && err.contains(trust), "{ca:?}: {err}");
        assert!(d.stderr_text().contains(&err), "{ca:?}: the daemon's log says it:\n{}", d.stderr_text());
        assert!(d.row(BANNED).is_none(), "{ca:?}: nothing pulled");
        assert!(topo.connect(BANNED, "192.0.2.25:25", T).unwrap(), "{ca:?}: nothing enforced");
        eprintln!("{}: {err}", ca.map_or("no CA file".into(), |p| p.display().to_string()));
    }
}
