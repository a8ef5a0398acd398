//! Dataplane benchmark (`cargo xtask bench`): per-packet cost of the XDP and TC programs
//! through BPF_PROG_TEST_RUN with 1; 10,000; 1,000,000 bans present; the same with
//! prefix bans (IPv4 /24s, IPv6 /48s, then /56s) from none to 1,000,000, in the LPM
//! tries and, same run, in per-length hash maps (the design measured against them); the cost against
//! the number of prefix lengths in use; and the ban insert rate. Prints figures and ratios; asserts nothing about speed.
use std::time::{Duration, Instant};

use blocksmtp::{
    addr::SourceAddr,
    dataplane::{Dataplane, DataplaneConfig, Program},
};
use blocksmtp_tests::packet::{Packet, SMTP, v4, v6};

fn source(i: u32) -> SourceAddr {
    // 10.0.0.0/8 as map keys only: nothing is ever sent to these addresses.
    let ip = std::net::Ipv4Addr::from(0x0a00_0000u32 + i);
    SourceAddr::from_ip(ip.into(), 64)
}

fn per_packet(dp: &Dataplane, prog: Program, pkt: &[u8], repeat: u32) -> f64 {
    // Best of 3: the kernel's own timer, averaged over `repeat` runs.
    (0..3)
        .map(|_| dp.test_run(prog, pkt, repeat).expect("test run").1.as_nanos() as f64)
        .fold(f64::MAX, f64::min)
}

/// The minimal peer, measured in the same run: (hit ns/pkt, miss ns/pkt).
fn baseline(pkt: &[u8], repeat: u32) -> anyhow::Result<(f64, f64)> {
    use aya::{
        maps::HashMap,
        programs::{TestRun, TestRunOptions, Xdp},
    };
    let mut ebpf = aya::Ebpf::load(blocksmtp::dataplane::BASELINE_OBJECT)?;
    let mut bans: HashMap<_, u32, u64> = HashMap::try_from(ebpf.map_mut("BASELINE_BANS").unwrap())?;
    bans.insert(u32::from_ne_bytes([192, 0, 2, 66]), 1, 0)?;
    let prog: &mut Xdp = ebpf.program_mut("baseline_xdp").unwrap().try_into()?;
    prog.load()?;
    let mut other = pkt.to_vec();
    other[29] = 67; // 192.0.2.67: a miss
    let run = |p: &[u8]| -> anyhow::Result<f64> {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let r = prog.test_run(TestRunOptions { data_in: Some(p), repeat, ..Default::default() })?;
            best = best.min(r.duration.as_nanos() as f64);
        }
        Ok(best)
    };
    Ok((run(pkt)?, run(&other)?))
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeat: u32 = if quick { 200_000 } else { 2_000_000 };
    let sizes: &[u32] = if quick { &[1, 10_000, 100_000] } else { &[1, 10_000, 1_000_000] };

    println!("== dataplane: per-packet cost (BPF_PROG_TEST_RUN, repeat {repeat}, best of 3) ==");
    let mut dp = Dataplane::load_unpinned(&DataplaneConfig::default())?;
    for prog in [Program::Xdp, Program::Tc] {
        let id = dp.program_id(prog)?;
        let insns = std::process::Command::new("bpftool")
            .args(["prog", "dump", "xlated", "id", &id.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).count())
            .unwrap_or(0);
        println!("{prog:?} program: {insns} instructions after verification (bpftool prog dump xlated id {id})");
        if std::env::var_os("BENCH_DUMP").is_some() {
            let _ = std::process::Command::new("bpftool").args(["prog", "dump", "xlated", "id", &id.to_string()]).status();
        }
    }
    let banned = Packet::tcp4(v4("192.0.2.66"), v4("192.0.2.25"), SMTP).build();
    let clean = Packet::tcp4(v4("192.0.2.67"), v4("192.0.2.25"), SMTP).build();
    let other = Packet::tcp4(v4("192.0.2.66"), v4("192.0.2.25"), 443).build();
    dp.ban(&"192.0.2.66".parse()?, Duration::from_secs(3600), false)?;
    let mut present = 1u32;
    let mut rows = Vec::new();
    println!("{:>10} {:>8} {:>14} {:>14} {:>14}", "bans", "program", "banned ns/pkt", "clean ns/pkt", "port443 ns/pkt");
    for &n in sizes {
        while present < n {
            dp.ban(&source(present), Duration::from_secs(3600), false)?;
            present += 1;
        }
        for prog in [Program::Xdp, Program::Tc] {
            let b = per_packet(&dp, prog, &banned, repeat);
            let c = per_packet(&dp, prog, &clean, repeat);
            let o = per_packet(&dp, prog, &other, repeat);
            println!("{n:>10} {:>8} {b:>14.1} {c:>14.1} {o:>14.1}", format!("{prog:?}"));
            rows.push((n, prog, b, c));
        }
    }
    let base = baseline(&banned, repeat)?;
    println!(
        "baseline (one XDP hash lookup, no parsing): {:.1} ns/pkt hit, {:.1} ns/pkt miss; blocksmtp XDP clean path at 1 ban: {:.2}x the baseline miss",
        base.0,
        base.1,
        rows[0].3 / base.1
    );
    for prog in [Program::Xdp, Program::Tc] {
        let first = rows.iter().find(|r| r.1 == prog).unwrap();
        let last = rows.iter().rev().find(|r| r.1 == prog).unwrap();
        println!(
            "{prog:?}: cost at {} bans / at 1 ban: banned {:.2}x, clean {:.2}x (target ≤ 1.3x)",
            last.0,
            last.2 / first.2,
            last.3 / first.3
        );
    }
    drop(dp);
    prefix_bans(repeat, quick, base.1)?;

    println!("\n== dataplane: ban insert rate ==");
    let n = 100_000u32;
    let mut dp = Dataplane::load_unpinned(&DataplaneConfig::default())?;
    let t = Instant::now();
    for i in 0..n {
        dp.ban(&source(i), Duration::from_secs(3600), false)?;
    }
    let el = t.elapsed();
    println!("{n} distinct IPv4 bans in {:.3} s: {:.0} bans/s (target ≥ 200,000/s)", el.as_secs_f64(), n as f64 / el.as_secs_f64());
    let t = Instant::now();
    for i in 0..n {
        dp.unban(&source(i))?;
    }
    let el = t.elapsed();
    println!("{n} unbans in {:.3} s: {:.0} unbans/s", el.as_secs_f64(), n as f64 / el.as_secs_f64());
    Ok(())
}

/// The other prefix-ban design, measured in the same run: the same classifier with the
/// prefix bans in per-length hash maps (blocksmtp-ebpf/src/bin/hash.rs), filled here
/// through its maps as a loader would.
struct HashDp {
    ebpf: aya::Ebpf,
    flags: u8,
    lens: blocksmtp_common::NetLens,
    hint: blocksmtp::dataplane::hint::Hint,
}

impl HashDp {
    fn load() -> anyhow::Result<Self> {
        let mut ebpf = aya::Ebpf::load(blocksmtp::dataplane::HASH_OBJECT)?;
        for name in ["hash_xdp", "hash_tc"] {
            match ebpf.program_mut(name).expect("hash program") {
                aya::programs::Program::Xdp(x) => x.load()?,
                aya::programs::Program::SchedClassifier(c) => c.load()?,
                _ => unreachable!(),
            }
        }
        let mut t = Self { ebpf, flags: 0, lens: blocksmtp_common::NetLens::EMPTY, hint: Default::default() };
        t.set_flags(0)?;
        Ok(t)
    }

    fn set_flags(&mut self, add: u8) -> anyhow::Result<()> {
        self.flags |= add;
        let mut cfg = blocksmtp_common::Config::new(&[25], 64);
        cfg.flags = self.flags;
        let mut m: aya::maps::Array<_, blocksmtp_common::Config> = aya::maps::Array::try_from(self.ebpf.map_mut("CONFIG").unwrap())?;
        m.set(0, cfg, 0)?;
        Ok(())
    }

    /// Give a new length a slot in NET_LENS (before its first entry, as the design requires).
    fn use_len(&mut self, v6: bool, len: u8) -> anyhow::Result<()> {
        let (slots, end) = if v6 { (&mut self.lens.v6, &mut self.lens.v6_end) } else { (&mut self.lens.v4, &mut self.lens.v4_end) };
        if slots[..usize::from(*end)].contains(&len) {
            return Ok(());
        }
        anyhow::ensure!(usize::from(*end) < blocksmtp_common::MAX_NET_LENS, "too many prefix lengths");
        slots[usize::from(*end)] = len;
        *end += 1;
        let mut m: aya::maps::Array<_, blocksmtp_common::NetLens> = aya::maps::Array::try_from(self.ebpf.map_mut("NET_LENS").unwrap())?;
        m.set(0, self.lens, 0)?;
        Ok(())
    }

    fn ban(&mut self, src: &SourceAddr) -> anyhow::Result<()> {
        use blocksmtp_common::{BanKeyV4, BanValue, CONFIG_BANNET_V4, CONFIG_BANNET_V6, NetKeyV4, NetKeyV6};
        let v = BanValue::new(blocksmtp::dataplane::clock::boottime_ns() + 3_600_000_000_000, 0);
        match src.net() {
            ipnet::IpNet::V4(n) if n.prefix_len() == 32 => {
                let mut m: aya::maps::HashMap<_, BanKeyV4, BanValue> = aya::maps::HashMap::try_from(self.ebpf.map_mut("BANS_V4").unwrap())?;
                m.insert(BanKeyV4 { addr: n.addr().octets() }, v, 0)?;
                return Ok(());
            }
            ipnet::IpNet::V4(n) => {
                self.use_len(false, n.prefix_len())?;
                let mut m: aya::maps::HashMap<_, NetKeyV4, BanValue> = aya::maps::HashMap::try_from(self.ebpf.map_mut("NETS_V4").unwrap())?;
                m.insert(NetKeyV4 { len: n.prefix_len().into(), addr: n.network().octets() }, v, 0)?;
                self.set_flags(CONFIG_BANNET_V4)?;
            }
            ipnet::IpNet::V6(n) => {
                self.use_len(true, n.prefix_len())?;
                let mut m: aya::maps::HashMap<_, NetKeyV6, BanValue> = aya::maps::HashMap::try_from(self.ebpf.map_mut("NETS_V6").unwrap())?;
                m.insert(NetKeyV6 { len: n.prefix_len().into(), addr: n.network().octets() }, v, 0)?;
                self.set_flags(CONFIG_BANNET_V6)?;
            }
        }
        let mut hint: aya::maps::Array<_, u64> = aya::maps::Array::try_from(self.ebpf.map_mut(blocksmtp_common::map_names::BANNET_HINT).unwrap())?;
        for (w, v) in self.hint.add(blocksmtp::dataplane::hint_block(&src.net())) {
            hint.set(w, v, 0)?;
        }
        Ok(())
    }

    fn per_packet(&self, prog: Program, pkt: &[u8], repeat: u32) -> f64 {
        use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
        let run = || -> u128 {
            let opts = TestRunOptions { data_in: Some(pkt), repeat, ..Default::default() };
            let r = match prog {
                Program::Xdp => <&Xdp>::try_from(self.ebpf.program("hash_xdp").unwrap()).unwrap().test_run(opts),
                Program::Tc => <&SchedClassifier>::try_from(self.ebpf.program("hash_tc").unwrap()).unwrap().test_run(opts),
            };
            r.expect("hash test run").duration.as_nanos()
        };
        (0..3).map(|_| run() as f64).fold(f64::MAX, f64::min)
    }
}

/// Both designs, given the same bans.
struct Both {
    trie: Dataplane,
    hash: HashDp,
}

impl Both {
    fn load() -> anyhow::Result<Self> {
        Ok(Self { trie: Dataplane::load_unpinned(&DataplaneConfig::default())?, hash: HashDp::load()? })
    }

    fn ban(&mut self, src: &SourceAddr, trie_too: bool) -> anyhow::Result<()> {
        self.hash.ban(src)?;
        if trie_too {
            self.trie.ban(src, Duration::from_secs(3600), false)?;
        }
        Ok(())
    }

    fn per_packet(&self, design: &str, prog: Program, pkt: &[u8], repeat: u32) -> f64 {
        if design == "trie" { per_packet(&self.trie, prog, pkt, repeat) } else { self.hash.per_packet(prog, pkt, repeat) }
    }
}

fn net(s: &str) -> SourceAddr {
    SourceAddr::from_net(s.parse().unwrap())
}

/// Per-packet cost with prefix bans, LPM tries (the product) against per-length hash
/// maps (the other design), same bans, same packets: a source inside a banned /24
/// (/48); a clean source whose /16 (/32) holds no prefix ban; one in the /16 (/32) of
/// banned networks but not in a /24 (/48) holding one (hint bit clear either way:
/// nothing looked up); one whose own /24 (/48) holds a longer ban (hint bit set: it
/// pays the prefix lookup). Then the cost of that last packet against the number of
/// prefix lengths in use, and what wide bans cost to set and lift.
fn prefix_bans(repeat: u32, quick: bool, base_miss: f64) -> anyhow::Result<()> {
    println!("\n== dataplane: prefix bans, LPM tries (product) vs per-length hash maps (1,000 address bans present) ==");
    let mut both = Both::load()?;
    for i in 1..1000 {
        both.ban(&source(i), true)?;
    }
    let net4 = |i: u32| SourceAddr::from_net(ipnet::IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0b00_0000u32 + (i << 8)), 24).unwrap()));
    let net6 = |i: u32| {
        let a = std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(i & 0xffff) << 80));
        SourceAddr::from_net(ipnet::IpNet::V6(ipnet::Ipv6Net::new(a, 48).unwrap()))
    };
    // Past the /48s one /32 holds: /56s inside the banned /48s 1, 2, … (a second length).
    let net56 = |j: u32| {
        let a = std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(1 + j / 256) << 80) | (u128::from(j % 256) << 72));
        SourceAddr::from_net(ipnet::IpNet::V6(ipnet::Ipv6Net::new(a, 56).unwrap()))
    };
    let in4 = Packet::tcp4(v4("203.0.113.9"), v4("192.0.2.25"), SMTP).build();
    let clean4 = Packet::tcp4(v4("192.0.2.67"), v4("192.0.2.25"), SMTP).build();
    let in6 = Packet::tcp6(v6("2001:db8:bad:1::9"), v6("2001:db8::25"), SMTP).build();
    let clean6 = Packet::tcp6(v6("2001:db9::67"), v6("2001:db8::25"), SMTP).build();
    // Clean, in the /16 (/32) of banned networks but not in a /24 (/48) holding one: its
    // hint bit is clear. 2001:db8:fffe::/48 is not banned in any row.
    let near4 = Packet::tcp4(v4("203.0.114.9"), v4("192.0.2.25"), SMTP).build();
    let near6 = Packet::tcp6(v6("2001:db8:fffe::9"), v6("2001:db8::25"), SMTP).build();
    // Clean, in a /24 (/48) holding a longer ban (203.0.115.16/28, 2001:db8:ffff:100::/56):
    // hint bit set, it pays the trie lookup — IPv4 in the deep trie of the 65,000 row, too;
    // IPv6 only in the trie of bans longer than /48 (the /56 alone), the /48s' hint clear.
    // (An earlier version of this benchmark used 2001:db8:bae::, which the 65,000 row
    // banned: its "clean" figure there was a dropped packet's.)
    let same4 = Packet::tcp4(v4("203.0.115.9"), v4("192.0.2.25"), SMTP).build();
    let same6 = Packet::tcp6(v6("2001:db8:ffff::9"), v6("2001:db8::25"), SMTP).build();
    println!(
        "{:>11} {:>6} {:>7} {:>13} {:>8} {:>8} {:>8} {:>13} {:>8} {:>8} {:>8}",
        "prefix bans", "design", "program", "in /24 ns/pkt", "clean v4", "v4 /16", "v4 /24", "in /48 ns/pkt", "clean v6", "v6 /32", "v6 /48"
    );
    let sizes: &[u32] = if quick { &[0, 1, 1000] } else { &[0, 1, 1000, 65_000, 1_000_000] };
    let mut present = 0u32;
    let mut rows = Vec::new();
    for &n in sizes {
        if n > 0 && present == 0 {
            both.ban(&net("203.0.113.0/24"), true)?;
            both.ban(&net("2001:db8:bad::/48"), true)?;
            both.ban(&net("203.0.115.16/28"), true)?;
            both.ban(&net("2001:db8:ffff:100::/56"), true)?;
            present = 1;
        }
        // The tries hold 65,536 entries: the last row is the hash maps' alone (the product
        // refuses prefix bans past that).
        let trie_too = n <= 65_000;
        let mut fill = || -> anyhow::Result<()> {
            while present < n {
                both.ban(&net4(present), trie_too)?;
                // 2001:db8:bad::/48 is i = 0x0bad: skip it (banned already).
                if present < 65_000 && present != 0x0bad {
                    both.ban(&net6(present), trie_too)?;
                } else if present >= 65_000 {
                    both.ban(&net56(present - 65_000), false)?;
                }
                present += 1;
            }
            Ok(())
        };
        // Kernel memory for a million entries may be short on a shared machine: say so
        // and keep the rows measured so far.
        if let Err(e) = fill() {
            println!("{n:>12} row not measured: inserting prefix ban {present} failed: {e:#}");
            break;
        }
        for prog in [Program::Xdp, Program::Tc] {
            for design in ["trie", "hash"] {
                if design == "trie" && !trie_too {
                    continue;
                }
                let r = [&in4, &clean4, &near4, &same4, &in6, &clean6, &near6, &same6].map(|p| both.per_packet(design, prog, p, repeat));
                println!(
                    "{n:>11} {design:>6} {:>7} {:>13.1} {:>8.1} {:>8.1} {:>8.1} {:>13.1} {:>8.1} {:>8.1} {:>8.1}",
                    format!("{prog:?}"),
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    r[6],
                    r[7]
                );
                rows.push((n, design, prog, r));
            }
        }
    }
    for prog in [Program::Xdp, Program::Tc] {
        for design in ["trie", "hash"] {
            let none = rows.iter().find(|r| r.1 == design && r.2 == prog && r.0 == 0).unwrap();
            let worst = |col: usize| rows.iter().filter(|r| r.1 == design && r.2 == prog).map(|r| r.3[col] / none.3[col]).fold(0.0, f64::max);
            let last = rows.iter().rev().find(|r| r.1 == design && r.2 == prog).unwrap();
            println!(
                "{design} {prog:?}: clean packet with prefix bans / with none, worst row up to {}: v4 {:.2}x, in a /16 with bans {:.2}x, in a /24 with a /28 {:.2}x; v6 {:.2}x, in a /32 with bans {:.2}x, in a /48 with a /56 {:.2}x (target ≤ 1.3x)",
                last.0,
                worst(1),
                worst(2),
                worst(3),
                worst(5),
                worst(6),
                worst(7)
            );
        }
    }
    let trie_xdp = |col: usize| rows.iter().filter(|r| r.1 == "trie" && r.2 == Program::Xdp).map(|r| r.3[col]).fold(0.0, f64::max);
    println!(
        "trie Xdp: worst clean v6 in a /48 with a /56 {:.1} ns/pkt = {:.2}x the baseline miss ({base_miss:.1} ns, target ≤ 1.5x); worst clean v6 {:.1} ns/pkt = {:.2}x",
        trie_xdp(7),
        trie_xdp(7) / base_miss,
        trie_xdp(5),
        trie_xdp(5) / base_miss
    );
    drop(both);
    prefix_lengths(repeat)?;
    wide_bans()
}

/// Setting and lifting one prefix ban, by width: the hint words written (once each,
/// batched) and the user side's hint memory (counts per block, bitmap chunks in use).
fn wide_bans() -> anyhow::Result<()> {
    println!("\n== dataplane: one prefix ban set and lifted, by width (hint words written once each) ==");
    let mut dp = Dataplane::load_unpinned(&DataplaneConfig::default())?;
    println!("{:>20} {:>10} {:>10} {:>13} {:>16}", "ban", "ban ms", "unban ms", "hint blocks", "hint bitmap B");
    for s in ["203.0.113.0/24", "203.0.0.0/16", "203.0.0.0/8", "128.0.0.0/1", "0.0.0.0/0", "2001:db8::/32", "2001:d00::/24", "::/0"] {
        let src = net(s);
        let t = Instant::now();
        dp.ban(&src, Duration::from_secs(3600), false)?;
        let ban = t.elapsed();
        let (blocks, bytes) = dp.hint_footprint();
        let t = Instant::now();
        dp.unban(&src)?;
        let unban = t.elapsed();
        println!("{s:>20} {:>10.3} {:>10.3} {blocks:>13} {bytes:>16}", ban.as_secs_f64() * 1e3, unban.as_secs_f64() * 1e3);
    }
    anyhow::ensure!(dp.hint_footprint() == (0, 0), "hint memory left after the last unban: {:?}", dp.hint_footprint());
    Ok(())
}

/// The clean packet next to banned networks, against the number of prefix lengths in
/// use (the hash design looks up each; the trie's depth does not change much).
fn prefix_lengths(repeat: u32) -> anyhow::Result<()> {
    println!("\n== dataplane: clean packet in a /24 (/48) holding a prefix ban, by prefix lengths in use ==");
    let near4 = Packet::tcp4(v4("203.0.113.9"), v4("192.0.2.25"), SMTP).build();
    let near6 = Packet::tcp6(v6("2001:db8:4000::9"), v6("2001:db8::25"), SMTP).build();
    let clean4 = Packet::tcp4(v4("192.0.2.67"), v4("192.0.2.25"), SMTP).build();
    // One network per length, none covering the two packets; the first length's network
    // shares their /24 (/48), so their hint bits are set.
    let v4_nets: Vec<String> = [25u8, 23, 22, 20, 18, 28, 30, 17, 24, 26, 27, 29, 31, 21, 19, 12]
        .iter()
        .map(|&l| match l {
            25 => "203.0.113.128/25".to_string(),
            12 => "198.16.0.0/12".to_string(),
            l => format!("203.0.128.0/{l}"),
        })
        .collect();
    let v6_nets: Vec<String> = [56u8, 40, 44, 48, 36, 52, 60, 33, 34, 35, 37, 38, 39, 41, 42, 43]
        .iter()
        .map(|&l| if l == 56 { "2001:db8:4000:100::/56".to_string() } else { format!("2001:db8:8000::/{l}") })
        .collect();
    let mut both = Both::load()?;
    let none = [per_packet(&both.trie, Program::Xdp, &near4, repeat), per_packet(&both.trie, Program::Xdp, &near6, repeat)];
    println!("no prefix ban: clean v4 {:.1} ns/pkt, clean v6 {:.1} ns/pkt (XDP)", none[0], none[1]);
    println!("{:>8} {:>6} {:>16} {:>16} {:>14}", "lengths", "design", "clean v4 /24 ns", "clean v6 /48 ns", "clean v4 other");
    let mut used = 0;
    for k in [1usize, 2, 4, 8, 16] {
        while used < k {
            both.ban(&net(&v4_nets[used]), true)?;
            both.ban(&net(&v6_nets[used]), true)?;
            used += 1;
        }
        for design in ["trie", "hash"] {
            let r = [&near4, &near6, &clean4].map(|p| both.per_packet(design, Program::Xdp, p, repeat));
            println!(
                "{k:>8} {design:>6} {:>9.1} ({:.2}x) {:>9.1} ({:.2}x) {:>14.1}",
                r[0],
                r[0] / none[0],
                r[1],
                r[1] / none[1],
                r[2]
            );
        }
    }
    Ok(())
}
