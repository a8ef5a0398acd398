//! Upgrade from earlier builds: their eBPF programs attached through a pinned link, with
//! address bans and prefix bans in their pinned maps — an IPv6 /56 among them, in the one
//! IPv6 trie those builds had; then this build's daemon starts on the same pin directory.
//! Judged by real connections in a veth pair: the bans hold throughout, the /56 ends in
//! the trie of bans longer than /48 (and only there), retired pins go, and the link runs
//! the new program (a prefix ban the old hint cannot see is enforced). IPv4 bans longer
//! than /24 (a /25, a /28) keep the /24 bit the old programs read until the new ones are
//! attached — a /24 ban beside them shares its hint word, which the load rewrites — and
//! only then lose it. Namespaces, pins and the daemon are removed by guards.
//!
//! The fixtures are eBPF objects built as blocksmtp/build.rs builds them and stripped of
//! DWARF (`llvm-objcopy --strip-debug`; BTF kept): blocksmtp-0.1.0-ebpf.o is commit
//! 8f45694 (the release, its prefix-ban hint the 16-bit `BANNET_HINT`), and
//! blocksmtp-eb6f4f2-ebpf.o commit eb6f4f2 (main before the IPv6 split: the 24-bit
//! `BANNET_HINT24`, which this build reuses as it is).
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
use blocksmtp::dataplane::{AttachMode, Dataplane, DataplaneConfig, PinDir, attach};
use blocksmtp_common::{BAN_FLAG_LEN_SHIFT, BanKeyV4, BanKeyV6, BanValue, CONFIG_BANNET_V4, CONFIG_BANNET_V6, Config, map_names};
use blocksmtp_tests::{
    daemon::{Daemon, Launch},
    netns::{Topology, connect_from},
    root_or_skip,
};

/// An earlier build: its eBPF object, its maps by pin name, and where its prefix-ban hint
/// has the bits of a ban.
#[derive(Clone, Copy)]
struct Old {
    object: &'static [u8],
    maps: [&'static str; 9],
    hint: &'static str,
    /// Its hint bits of the IPv4 /25 192.0.2.128/25 and /28 192.0.2.16/28, of the /24
    /// 192.0.3.0/24, and of the IPv6 /56 in 2001:db8:0::/48.
    bits: [u32; 4],
}

/// 0.1.0: the 16-bit hint, one bit per IPv4 /16, per IPv6 /32 folded to 16 bits.
static RELEASE_0_1_0: Old = Old {
    object: aya::include_bytes_aligned!("../fixtures/blocksmtp-0.1.0-ebpf.o"),
    maps: ["CONFIG", "BANS_V4", "BANS_V6", "ALLOW_V4", "ALLOW_V6", "STATS", "BANNET_V4", "BANNET_V6", "BANNET_HINT"],
    hint: "BANNET_HINT",
    bits: [0xc000, 0xc000, 0xc000, 65_536 + (0x2001 ^ 0x0db8)],
};

/// main before the IPv6 split: the 24-bit hint this build shares.
static MAIN_EB6F4F2: Old = Old {
    object: aya::include_bytes_aligned!("../fixtures/blocksmtp-eb6f4f2-ebpf.o"),
    maps: ["CONFIG", "BANS_V4", "BANS_V6", "ALLOW_V4", "ALLOW_V6", "STATS", "BANNET_V4", "BANNET_V6", "BANNET_HINT24"],
    hint: "BANNET_HINT24",
    bits: [
        blocksmtp_common::hint_bit_v4(0xc0_00_02),
        blocksmtp_common::hint_bit_v4(0xc0_00_02),
        blocksmtp_common::hint_bit_v4(0xc0_00_03),
        blocksmtp_common::hint_bit_v6(0x2001_0db8_0000),
    ],
};

/// The IPv6 ban longer than /48 the old builds keep in `BANNET_V6`, and a host inside it.
const NET56: &str = "2001:db8:0:100::/56";
const IN56: &str = "2001:db8:0:100::66";
const SERVER56: &str = "[2001:db8:0:100::25]:25";
/// The IPv4 /28 the old builds ban (the /24 bit their programs read), and a host inside it.
const NET28: &str = "192.0.2.16/28";
const IN28: &str = "192.0.2.20";
/// A /24 whose bit shares its `BANNET_HINT24` word with 192.0.2.0/24's (no traffic).
const NET24: &str = "192.0.3.0/24";

const T: Duration = Duration::from_millis(700);
/// Probes while the new daemon starts: short, so that several SYNs fall in its start-up.
/// Only a dropped SYN waits this long; a slow success judged a drop could hide a leak but
/// never fail the test falsely.
const PROBE: Duration = Duration::from_millis(50);

/// What an earlier build left behind: programs attached to `iface` through a pinned link,
/// 192.0.2.66 and 2001:db8::66/128 banned, 192.0.2.128/25, 192.0.2.16/28, 192.0.3.0/24 and
/// 2001:db8:0:100::/56 banned as networks (their bits set in its hint first, as it did).
/// Returns the old XDP program's id.
fn old_release_state(old: &Old, pins: &PinDir, iface: &str) -> anyhow::Result<u32> {
    pins.create()?;
    let mut loader = EbpfLoader::new();
    let paths: Vec<_> = old.maps.iter().map(|n| (*n, pins.map(n))).collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(old.object)?;
    let until = blocksmtp::dataplane::clock::boottime_ns() + 3_600_000_000_000;
    let mut cfg = Config::new(&[25], 128);
    cfg.flags |= CONFIG_BANNET_V4 | CONFIG_BANNET_V6;
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
    // The old hint bits first (as that build did), then the trie entries.
    let mut hint = Array::<_, u64>::try_from(ebpf.map_mut(old.hint).unwrap())?;
    for bit in old.bits {
        let w = hint.get(&(bit / 64), 0)?;
        hint.set(bit / 64, w | 1 << (bit % 64), 0)?;
    }
    let mut nets4 = LpmTrie::<_, [u8; 4], BanValue>::try_from(ebpf.map_mut("BANNET_V4").unwrap())?;
    for (len, net) in [(25, [192, 0, 2, 128]), (28, [192, 0, 2, 16]), (24, [192, 0, 3, 0])] {
        nets4.insert(&Key::new(len, net), BanValue::new(until, len << BAN_FLAG_LEN_SHIFT), 0)?;
    }
    let n56: std::net::Ipv6Addr = NET56.split('/').next().unwrap().parse()?;
    LpmTrie::<_, [u8; 16], BanValue>::try_from(ebpf.map_mut("BANNET_V6").unwrap())?.insert(
        &Key::new(56, n56.octets()),
        BanValue::new(until, 56 << BAN_FLAG_LEN_SHIFT),
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

/// Bit `bit` of a pinned hint map.
fn pinned_bit(path: &std::path::Path, bit: u32) -> bool {
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(path).unwrap()).unwrap();
    Array::<_, u64>::try_from(map).unwrap().get(&(bit / 64), 0).unwrap() & 1 << (bit % 64) != 0
}

/// The IPv6 prefix bans a pinned trie holds, as (network, length).
fn trie_entries(path: &std::path::Path) -> Vec<(std::net::Ipv6Addr, u32)> {
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(path).unwrap()).unwrap();
    let trie = LpmTrie::<_, [u8; 16], BanValue>::try_from(map).unwrap();
    trie.keys().map(|k| k.unwrap()).map(|k| (k.data().into(), k.prefix_len())).collect()
}

#[test]
fn upgrade_from_0_1_0_keeps_bans_and_enforcement() {
    upgrade(&RELEASE_0_1_0, false);
}

/// From main before the split, with a start in between that crashed after copying the
/// /56 into the new trie but before attaching (the old program still on the link).
#[test]
fn upgrade_from_main_before_the_ipv6_split_through_a_crash() {
    upgrade(&MAIN_EB6F4F2, true);
}

fn upgrade(old: &Old, crash_first: bool) {
    if !root_or_skip("namespaces, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    // A host of the banned /25, beside the harvester and the innocent of the topology; a
    // host of the banned /56 (2001:db8::67 is a clean one of its /48), and its server.
    topo.client.ip(&["addr", "add", "192.0.2.130/24", "dev", "vc0"]).unwrap();
    topo.client.ip(&["addr", "add", &format!("{IN28}/24"), "dev", "vc0"]).unwrap();
    topo.client.ip(&["addr", "add", "192.0.2.40/24", "dev", "vc0"]).unwrap();
    topo.client.ip(&["addr", "add", &format!("{IN56}/64"), "dev", "vc0", "nodad"]).unwrap();
    topo.server.ip(&["addr", "add", "2001:db8:0:100::25/64", "dev", "vs0", "nodad"]).unwrap();
    let iface = topo.server_if.clone();
    let mut d = Daemon::prepare(Some(&topo.server.name), None, &["--interface", &iface, "--v6-prefix", "128"], Launch::test()).unwrap();
    let pins = PinDir::new(&d.pins);
    let old_id = {
        let (pins, iface) = (pins.clone(), iface.clone());
        let old = *old;
        topo.server.run_in(move || old_release_state(&old, &pins, &iface)).unwrap().unwrap()
    };
    let link = attach::link_pin(&pins.links(), blocksmtp::dataplane::Attached::XdpNative, &iface);
    assert_eq!(link_prog_id(&link), old_id, "the old program is attached");
    let (harvester, innocent, in_net, server) = ("192.0.2.66", "192.0.2.67", "192.0.2.130", "192.0.2.25:25");
    let banned = [(harvester, server), (in_net, server), ("2001:db8::66", "[2001:db8::25]:25"), (IN56, SERVER56), (IN28, server)];
    for (src, dst) in banned {
        assert!(!topo.connect(src, dst, T).unwrap(), "{src}: the old build enforces its ban");
    }
    assert!(topo.connect(innocent, server, T).unwrap());
    assert!(topo.connect("2001:db8::67", "[2001:db8::25]:25", T).unwrap());
    let (short, long) = (pins.map(map_names::BANNET_V6), pins.map(map_names::BANNET_V6_LONG));
    let n56: (std::net::Ipv6Addr, u32) = (NET56.split('/').next().unwrap().parse().unwrap(), 56);
    if crash_first {
        // A start that loads (copying the /56 into the new trie) and dies before attaching:
        // nothing unpinned, the old program still enforcing from the old trie.
        drop(Dataplane::load_pinned(&DataplaneConfig { v6_prefix: 128, ..Default::default() }, pins.clone()).unwrap());
        assert_eq!(trie_entries(&long), [n56], "copied");
        assert_eq!(trie_entries(&short), [n56], "and kept where the old program reads it");
        assert_eq!(link_prog_id(&link), old_id);
        assert!(!topo.connect(IN56, SERVER56, T).unwrap(), "the old program still drops the /56");
        assert!(!topo.connect(IN28, server, T).unwrap(), "and the /28, its /24 bit kept");
    }

    // The new daemon starts on those pins; the bans hold while it does: SYNs from the
    // banned sources, one after the other, from before the launch until it answers.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let probes: Vec<(std::net::IpAddr, std::net::SocketAddr)> =
            [banned[0], banned[1], banned[3], banned[4]].iter().map(|(s, d)| (s.parse().unwrap(), d.parse().unwrap())).collect();
        topo.client.spawn_in(move || {
            let (mut n, mut through) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for (src, dst) in &probes {
                    n += 1;
                    if connect_from(*src, *dst, PROBE) {
                        through.push(*src);
                    }
                }
            }
            (n, through)
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
    assert!(probes >= 3, "only {probes} probes");

    // Every ban kept, the /56 moved, the old hint's pin gone, the new hints there, the link
    // on the new program.
    for src in ["192.0.2.66", "192.0.2.128/25", "2001:db8::66/128", NET56, NET28, NET24] {
        assert!(d.row(src).is_some(), "{src} kept: {:?}\n{}", d.list(), d.stderr_text());
    }
    assert_eq!(d.list().unwrap().len(), 6, "each ban listed once: {:?}", d.list());
    assert_eq!(trie_entries(&long), [n56], "the /56 is in the trie of bans longer than /48");
    assert!(trie_entries(&short).is_empty(), "and no longer in the other");
    assert!(!pins.map("BANNET_HINT").exists(), "the 16-bit hint's pin is removed");
    assert!(pins.map(map_names::BANNET_HINT).exists() && pins.map(map_names::BANNET_HINT_LONG).exists(), "the new hints are pinned");
    assert_ne!(link_prog_id(&link), old_id, "the pinned link runs the new program");
    // The long IPv4 bans hint per /28 now; their /24's bit is cleared, the /24 ban's kept.
    let hint24 = pins.map(map_names::BANNET_HINT);
    assert!(!pinned_bit(&hint24, blocksmtp_common::hint_bit_v4(0xc0_00_02)), "192.0.2.0/24's bit cleared once attached");
    assert!(pinned_bit(&hint24, blocksmtp_common::hint_bit_v4(0xc0_00_03)), "192.0.3.0/24's bit kept");
    let hint4l = pins.map(map_names::BANNET_HINT_V4_LONG);
    for a in [[192, 0, 2, 16], [192, 0, 2, 128], [192, 0, 2, 240]] {
        assert!(pinned_bit(&hint4l, blocksmtp_common::hint_bit_v4l(u32::from_be_bytes(a) >> 4)), "{a:?}'s /28 bit");
    }
    assert!(!pinned_bit(&hint4l, blocksmtp_common::hint_bit_v4l(u32::from_be_bytes([192, 0, 2, 64]) >> 4)), "the innocent's /28 clear");
    for (src, dst) in banned {
        assert!(!topo.connect(src, dst, T).unwrap(), "{src}: banned after the upgrade");
    }
    assert!(topo.connect(innocent, server, T).unwrap(), "the innocent connects");
    assert!(topo.connect("2001:db8::67", "[2001:db8::25]:25", T).unwrap(), "so does a clean IPv6 host");

    // A prefix ban the old hint would hide (no IPv6 bit was ever set there): only the new
    // program, reading the new hint, drops it.
    assert!(d.ctl(&["ban", "2001:db8:0:1::/64"]).unwrap().status.success(), "{}", d.stderr_text());
    assert!(!topo.connect("2001:db8:0:1::67", "[2001:db8:0:1::25]:25", T).unwrap(), "the new prefix ban is enforced");
    assert!(topo.connect("2001:db8::67", "[2001:db8::25]:25", T).unwrap(), "outside it, still clean");
    // An IPv4 /28 after the upgrade: its /24 bit is never set, only its /28's.
    assert!(d.ctl(&["ban", "192.0.2.32/28"]).unwrap().status.success(), "{}", d.stderr_text());
    assert!(!topo.connect("192.0.2.40", server, T).unwrap(), "the new /28 is enforced");
    assert!(!pinned_bit(&hint24, blocksmtp_common::hint_bit_v4(0xc0_00_02)), "through the /28 hint alone");
    assert!(topo.connect(innocent, server, T).unwrap(), "its /24's other hosts are clean");
    assert!(d.ctl(&["unban", NET28]).unwrap().status.success());
    assert!(topo.connect(IN28, server, T).unwrap(), "the old release's /28 lifts");
    assert!(d.ctl(&["unban", "192.0.2.128/25"]).unwrap().status.success());
    assert!(topo.connect(in_net, server, T).unwrap(), "the old release's prefix ban lifts");
    assert!(d.ctl(&["unban", NET56]).unwrap().status.success());
    assert!(topo.connect(IN56, SERVER56, T).unwrap(), "the moved /56 lifts");
    assert!(!topo.connect(harvester, server, T).unwrap(), "the address ban stays");
    d.stop().unwrap();
}
