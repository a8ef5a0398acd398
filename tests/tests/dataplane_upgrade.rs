//! Upgrade from the release before: its eBPF programs (fixtures/blocksmtp-0.1.0-ebpf.o,
//! whose prefix-ban hint is the 16-bit `BANNET_HINT`) attached through a pinned link, with
//! an address ban and a prefix ban in its pinned maps; then this build's daemon starts on
//! the same pin directory. Judged by real connections in a veth pair: the bans hold
//! throughout, the old hint's pin goes, and the link runs the new program (a prefix ban
//! the old hint cannot see is enforced). Namespaces, pins and the daemon are removed by
//! guards.
//!
//! The fixture is the eBPF object of commit 8f45694 (main before the 24-bit hint), built
//! as blocksmtp/build.rs builds it and stripped of DWARF (`llvm-objcopy --strip-debug`;
//! BTF kept).
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::Xdp,
};
use blocksmtp::dataplane::{AttachMode, PinDir, attach};
use blocksmtp_common::{BAN_FLAG_LEN_SHIFT, BanKeyV4, BanKeyV6, BanValue, CONFIG_BANNET_V4, Config, map_names};
use blocksmtp_tests::{
    daemon::{Daemon, Launch},
    netns::{Topology, connect_from},
    root_or_skip,
};

static OLD_OBJECT: &[u8] = aya::include_bytes_aligned!("../fixtures/blocksmtp-0.1.0-ebpf.o");
/// The maps of the release before, by pin name.
const OLD_MAPS: [&str; 9] =
    ["CONFIG", "BANS_V4", "BANS_V6", "ALLOW_V4", "ALLOW_V6", "STATS", "BANNET_V4", "BANNET_V6", "BANNET_HINT"];

const T: Duration = Duration::from_millis(700);
/// Probes while the new daemon starts: short, so that several SYNs fall in its start-up.
/// Only a dropped SYN waits this long; a slow success judged a drop could hide a leak but
/// never fail the test falsely.
const PROBE: Duration = Duration::from_millis(50);

/// What the release before left behind: programs attached to `iface` through a pinned
/// link, 192.0.2.66 and 2001:db8::66/128 banned, 192.0.2.128/25 banned as a network (its
/// bit set in the 16-bit hint, as that release set it). Returns the old XDP program's id.
fn old_release_state(pins: &PinDir, iface: &str) -> anyhow::Result<u32> {
    pins.create()?;
    let mut loader = EbpfLoader::new();
    let paths: Vec<_> = OLD_MAPS.iter().map(|n| (*n, pins.map(n))).collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OLD_OBJECT)?;
    let until = blocksmtp::dataplane::clock::boottime_ns() + 3_600_000_000_000;
    let mut cfg = Config::new(&[25], 128);
    cfg.flags |= CONFIG_BANNET_V4;
    Array::<_, Config>::try_from(ebpf.map_mut("CONFIG").unwrap())?.set(0, cfg, 0)?;
    HashMap::<_, BanKeyV4, BanValue>::try_from(ebpf.map_mut("BANS_V4").unwrap())?.insert(
        BanKeyV4 { addr: [192, 0, 2, 66] },
        BanValue::new(until, 0),
        0,
    )?;
    let v6: std::net::Ipv6Addr = "2001:db8::66".parse()?;
    HashMap::<_, BanKeyV6, BanValue>::try_from(ebpf.map_mut("BANS_V6").unwrap())?.insert(
        BanKeyV6 { prefix: v6.octets() },
        BanValue::new(until, 0),
        0,
    )?;
    // The old hint bit first (as that release did), then the trie entry: bit 0xc000
    // (192.0/16) is word 768, bit 0.
    Array::<_, u64>::try_from(ebpf.map_mut("BANNET_HINT").unwrap())?.set(0xc000 / 64, 1, 0)?;
    LpmTrie::<_, [u8; 4], BanValue>::try_from(ebpf.map_mut("BANNET_V4").unwrap())?.insert(
        &Key::new(25, [192, 0, 2, 128]),
        BanValue::new(until, 25 << BAN_FLAG_LEN_SHIFT),
        0,
    )?;
    attach::load(&mut ebpf)?;
    let id = <&Xdp>::try_from(ebpf.program("blocksmtp_xdp").unwrap())?.info()?.id();
    attach::attach(&mut ebpf, iface, AttachMode::XdpNative, Some(&pins.links()))?;
    // Dropping the object and the handle leaves the pinned link attached, as the old
    // daemon's exit with --keep-bans did.
    Ok(id)
}

/// The id of the program a pinned link runs (bpftool: the kernel's word).
fn link_prog_id(path: &std::path::Path) -> u32 {
    let out = std::process::Command::new("bpftool").args(["-j", "link", "show", "pinned"]).arg(path).output().expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool link show: {e}: {out:?}"));
    v["prog_id"].as_u64().expect("prog_id") as u32
}

#[test]
fn upgrade_from_the_16_bit_hint_keeps_bans_and_enforcement() {
    if !root_or_skip("namespaces, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    // A host of the banned /25, beside the harvester and the innocent of the topology.
    topo.client.ip(&["addr", "add", "192.0.2.130/24", "dev", "vc0"]).unwrap();
    let iface = topo.server_if.clone();
    let mut d = Daemon::prepare(Some(&topo.server.name), None, &["--interface", &iface, "--v6-prefix", "128"], Launch::test()).unwrap();
    let pins = PinDir::new(&d.pins);
    let old_id = {
        let (pins, iface) = (pins.clone(), iface.clone());
        topo.server.run_in(move || old_release_state(&pins, &iface)).unwrap().unwrap()
    };
    let link = attach::link_pin(&pins.links(), blocksmtp::dataplane::Attached::XdpNative, &iface);
    assert_eq!(link_prog_id(&link), old_id, "the old program is attached");
    let (harvester, innocent, in_net, server) = ("192.0.2.66", "192.0.2.67", "192.0.2.130", "192.0.2.25:25");
    for (src, dst) in [(harvester, server), (in_net, server), ("2001:db8::66", "[2001:db8::25]:25")] {
        assert!(!topo.connect(src, dst, T).unwrap(), "{src}: the old release enforces its ban");
    }
    assert!(topo.connect(innocent, server, T).unwrap());

    // The new daemon starts on those pins; the bans hold while it does: SYNs from both
    // banned sources, one after the other, from before the launch until it answers.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let server: std::net::SocketAddr = server.parse().unwrap();
        let srcs: [std::net::IpAddr; 2] = [harvester.parse().unwrap(), in_net.parse().unwrap()];
        topo.client.spawn_in(move || {
            let (mut probes, mut through) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for src in srcs {
                    probes += 1;
                    if connect_from(src, server, PROBE) {
                        through.push(src);
                    }
                }
            }
            (probes, through)
        })
    };
    std::thread::sleep(PROBE * 2);
    let started = d.launch().unwrap();
    let ready = d.wait_ready(started, Duration::from_millis(10), Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    let (probes, through) = prober.join().unwrap().unwrap();
    ready.unwrap();
    eprintln!("ready after {:?}; {probes} SYNs from banned sources meanwhile", started.elapsed());
    assert!(through.is_empty(), "banned sources connected during the upgrade: {through:?}");
    assert!(probes >= 2, "only {probes} probes");

    // Every ban kept, the old hint's pin gone, the new one there, the link on the new program.
    for src in ["192.0.2.66", "192.0.2.128/25", "2001:db8::66/128"] {
        assert!(d.row(src).is_some(), "{src} kept: {:?}\n{}", d.list(), d.stderr_text());
    }
    assert!(!pins.map("BANNET_HINT").exists(), "the old hint's pin is removed");
    assert!(pins.map(map_names::BANNET_HINT).exists(), "the new hint is pinned");
    assert_ne!(link_prog_id(&link), old_id, "the pinned link runs the new program");
    for (src, dst) in [(harvester, server), (in_net, server), ("2001:db8::66", "[2001:db8::25]:25")] {
        assert!(!topo.connect(src, dst, T).unwrap(), "{src}: banned after the upgrade");
    }
    assert!(topo.connect(innocent, server, T).unwrap(), "the innocent connects");
    assert!(topo.connect("2001:db8::67", "[2001:db8::25]:25", T).unwrap(), "so does a clean IPv6 host");

    // A prefix ban the old hint would hide (no IPv6 bit was ever set there): only the new
    // program, reading the new hint, drops it.
    assert!(d.ctl(&["ban", "2001:db8:0:1::/64"]).unwrap().status.success(), "{}", d.stderr_text());
    assert!(!topo.connect("2001:db8:0:1::67", "[2001:db8:0:1::25]:25", T).unwrap(), "the new prefix ban is enforced");
    assert!(topo.connect("2001:db8::67", "[2001:db8::25]:25", T).unwrap(), "outside it, still clean");
    assert!(d.ctl(&["unban", "192.0.2.128/25"]).unwrap().status.success());
    assert!(topo.connect(in_net, server, T).unwrap(), "the old release's prefix ban lifts");
    assert!(!topo.connect(harvester, server, T).unwrap(), "the address ban stays");
    d.stop().unwrap();
}
