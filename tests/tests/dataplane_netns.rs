//! The dataplane against real TCP traffic: two network namespaces joined by a veth pair
//! (documentation addresses only), servers on 25 and 2525 in the server namespace.
//! Namespaces and pins are removed by guards, so cleanup runs even when a test fails.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use blocksmtp::dataplane::{AttachMode, Attached, Dataplane, DataplaneConfig, PinDir};
use blocksmtp_tests::netns::Topology;

const T: Duration = Duration::from_millis(700);

/// A pin directory under /sys/fs/bpf unique to this test, removed on drop.
struct Pins(PinDir);

impl Pins {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = PathBuf::from(format!(
            "/sys/fs/bpf/blocksmtp-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        Self(PinDir::new(root))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.0.remove_all();
        let _ = std::fs::remove_dir_all(self.0.root());
    }
}

fn ready() -> bool {
    if !blocksmtp_tests::root_or_skip("namespaces, BPF") {
        return false;
    }
    assert!(
        blocksmtp::dataplane::pin::is_bpffs(std::path::Path::new("/sys/fs/bpf")).unwrap(),
        "/sys/fs/bpf is not a bpffs: run `cargo xtask setup`"
    );
    true
}

/// Load and attach inside the server namespace (interface names are per namespace).
fn attach(topo: &Topology, mode: AttachMode, pins: Option<PinDir>) -> (Dataplane, Attached) {
    let iface = topo.server_if.clone();
    topo.server
        .run_in(move || -> anyhow::Result<(Dataplane, Attached)> {
            let cfg = DataplaneConfig::default();
            let mut dp = match pins {
                Some(p) => Dataplane::load_pinned(&cfg, p)?,
                None => Dataplane::load_unpinned(&cfg)?,
            };
            let how = dp.attach(&[iface], mode)?[0].1;
            Ok((dp, how))
        })
        .unwrap()
        .unwrap()
}

fn harvest_cycle(topo: &Topology, dp: &mut Dataplane, family6: bool) {
    let (bad, good, server25, server2525, bad_src) = if family6 {
        ("2001:db8::66", "2001:db8:0:1::67", "[2001:db8::25]:25", "[2001:db8::25]:2525", "2001:db8::66")
    } else {
        ("192.0.2.66", "192.0.2.67", "192.0.2.25:25", "192.0.2.25:2525", "192.0.2.66")
    };
    let good_dst = if family6 { "[2001:db8:0:1::25]:25" } else { server25 };
    assert!(topo.connect(bad, server25, T).unwrap(), "before the ban the harvester connects");
    let src = blocksmtp::addr::SourceAddr::from_ip(bad_src.parse().unwrap(), 64);
    dp.ban(&src, Duration::from_secs(2), false).unwrap();
    let banned_at = Instant::now();
    assert!(!topo.connect(bad, server25, T).unwrap(), "banned: connect to 25 must fail");
    assert!(topo.connect(bad, server2525, T).unwrap(), "banned: other ports stay open");
    assert!(topo.connect(good, good_dst, T).unwrap(), "another client still connects to 25");
    if family6 {
        // The whole /64 is banned: a neighbour of the harvester too.
        assert!(!topo.connect("2001:db8::67", server25, T).unwrap(), "a second host of the banned /64");
    }
    assert!(dp.lookup(&src).unwrap().unwrap().dropped >= 1, "the ban counted its drops");
    // No userspace action: the kernel stops enforcing when the ban ends.
    let left = Duration::from_millis(2150).saturating_sub(banned_at.elapsed());
    std::thread::sleep(left);
    assert!(topo.connect(bad, server25, T).unwrap(), "after the 2 s ban expired, the client is back");
    assert_eq!(dp.list().unwrap().len(), 0, "expired bans are not listed");
    assert_eq!(dp.sweep_expired().unwrap(), vec![src]);
}

#[test]
fn xdp_native_v4_and_v6() {
    if !ready() {
        return;
    }
    let topo = Topology::new().unwrap();
    let _servers = topo.serve(&[25, 2525]).unwrap();
    let (mut dp, how) = attach(&topo, AttachMode::XdpNative, None);
    assert_eq!(how, Attached::XdpNative);
    harvest_cycle(&topo, &mut dp, false);
    harvest_cycle(&topo, &mut dp, true);
    let stats = dp.stats().unwrap();
    assert!(stats.dropped >= 4, "{stats:?}");
}

#[test]
fn xdp_generic_v4() {
    if !ready() {
        return;
    }
    let topo = Topology::new().unwrap();
    let _servers = topo.serve(&[25, 2525]).unwrap();
    let (mut dp, how) = attach(&topo, AttachMode::XdpGeneric, None);
    assert_eq!(how, Attached::XdpGeneric);
    harvest_cycle(&topo, &mut dp, false);
}

#[test]
fn tc_v4_and_v6() {
    if !ready() {
        return;
    }
    let topo = Topology::new().unwrap();
    let _servers = topo.serve(&[25, 2525]).unwrap();
    let (mut dp, how) = attach(&topo, AttachMode::Tc, None);
    assert_eq!(how, Attached::Tc);
    harvest_cycle(&topo, &mut dp, false);
    harvest_cycle(&topo, &mut dp, true);
}

#[test]
fn missing_interface_is_a_clear_error() {
    if !ready() {
        return;
    }
    let mut dp = Dataplane::load_unpinned(&DataplaneConfig::default()).unwrap();
    let err = dp.attach(&["bsm-nosuch0".to_string()], AttachMode::Auto).unwrap_err();
    assert!(format!("{err:#}").contains("\"bsm-nosuch0\" does not exist"), "{err:#}");
}

/// Bans survive a restart: pinned maps and links keep enforcing while no daemon runs,
/// the next start reuses them, and a clean shutdown removes every pin and detaches.
#[test]
fn bans_survive_restart_with_pinned_maps() {
    if !ready() {
        return;
    }
    let topo = Topology::new().unwrap();
    let _servers = topo.serve(&[25]).unwrap();
    let pins = Pins::new("restart");
    let (mut dp, how) = attach(&topo, AttachMode::Auto, Some(pins.0.clone()));
    assert_eq!(how, Attached::XdpNative, "veth supports native XDP: auto picks it");
    assert!(!dp.restored);
    dp.ban(&"192.0.2.66".parse().unwrap(), Duration::from_secs(3600), false).unwrap();
    dp.ban(&"2001:db8::/64".parse().unwrap(), Duration::from_secs(2), true).unwrap();
    // A prefix ban (its hint bit pinned too), covering the client's other /64 as well.
    dp.ban(&"2001:db8::/63".parse().unwrap(), Duration::from_secs(3600), false).unwrap();
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap());

    // Stop with --keep-bans: the pinned link keeps the program attached.
    dp.shutdown(true).unwrap();
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "enforced with no daemon running");
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap());

    // Start again: same pins, bans restored, link taken over.
    let (mut dp, how) = attach(&topo, AttachMode::Auto, Some(pins.0.clone()));
    assert!(dp.restored, "pinned maps were reused");
    assert_eq!(how, Attached::XdpNative);
    let mut listed: Vec<String> = dp.list().unwrap().iter().map(|b| b.source.to_string()).collect();
    listed.sort();
    assert_eq!(listed, vec!["192.0.2.66", "2001:db8::/63", "2001:db8::/64"]);
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap());
    assert!(!topo.connect("2001:db8:0:1::67", "[2001:db8:0:1::25]:25", T).unwrap(), "the prefix ban, after the restart");
    assert!(dp.hint_set_for("2001:db8:0:1::67".parse().unwrap()).unwrap());
    // The restored expiry index still sweeps on time.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(dp.sweep_expired().unwrap(), vec!["2001:db8::/64".parse().unwrap()]);

    // A clean stop without --keep-bans: detached, pins gone.
    dp.shutdown(false).unwrap();
    assert!(topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "detached after a clean stop");
    assert!(!pins.0.versioned().exists(), "no pin left behind");
}

/// A pinned map of another layout is refused, never silently reused.
#[test]
fn mismatched_pinned_map_is_refused() {
    if !ready() {
        return;
    }
    let pins = Pins::new("mismatch");
    pins.0.create().unwrap();
    // Pin a hash map with an 8-byte key where BANS_V4 (4-byte key) belongs.
    let status = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(pins.0.map("BANS_V4"))
        .args(["type", "hash", "key", "8", "value", "24", "entries", "16", "name", "BANS_V4"])
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("bpftool map create failed ({other:?}): install bpftool (`cargo xtask setup`)"),
    }
    let err = Dataplane::load_pinned(&DataplaneConfig::default(), pins.0.clone()).err().expect("must refuse");
    let msg = format!("{err:#}");
    assert!(msg.contains("key size 8, expected 4") && msg.contains("refusing to reuse"), "{msg}");
}

/// Prefix bans against real connections: every address of a banned /24 (/48) is cut
/// off from port 25, an allow-listed host inside it is not, and lifting the network
/// lets them all back.
#[test]
fn prefix_bans_with_an_allowed_host_inside() {
    if !ready() {
        return;
    }
    let topo = Topology::new().unwrap();
    let _servers = topo.serve(&[25, 2525]).unwrap();
    let (mut dp, _) = attach(&topo, AttachMode::XdpNative, None);
    let n4: blocksmtp::addr::SourceAddr = "192.0.2.0/24".parse().unwrap();
    let n6: blocksmtp::addr::SourceAddr = "2001:db8::/48".parse().unwrap();
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap());
    dp.ban(&n4, Duration::from_secs(3600), true).unwrap();
    dp.ban(&n6, Duration::from_secs(3600), true).unwrap();
    for (src, dst) in [
        ("192.0.2.66", "192.0.2.25:25"),
        ("192.0.2.67", "192.0.2.25:25"),
        ("2001:db8::66", "[2001:db8::25]:25"),
        ("2001:db8:0:1::67", "[2001:db8:0:1::25]:25"),
    ] {
        assert!(!topo.connect(src, dst, T).unwrap(), "{src} is inside a banned network");
    }
    assert!(topo.connect("192.0.2.66", "192.0.2.25:2525", T).unwrap(), "other ports stay open");
    dp.set_allow_list(&["192.0.2.67/32".parse().unwrap(), "2001:db8:0:1::67/128".parse().unwrap()]).unwrap();
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap(), "the allow-list wins inside a banned /24");
    assert!(topo.connect("2001:db8:0:1::67", "[2001:db8:0:1::25]:25", T).unwrap(), "and inside a banned /48");
    assert!(!topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "its neighbour stays banned");
    assert!(dp.lookup(&n4).unwrap().unwrap().dropped >= 1);
    assert!(dp.unban(&n4).unwrap() && dp.unban(&n6).unwrap());
    assert!(topo.connect("192.0.2.66", "192.0.2.25:25", T).unwrap(), "lifted");
    assert!(topo.connect("2001:db8::66", "[2001:db8::25]:25", T).unwrap(), "lifted (v6)");
}
