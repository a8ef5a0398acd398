//! The packet-fixture table: each row is a packet, what it is, the map state, and the
//! verdict both programs (XDP and TC) must reach, run through BPF_PROG_TEST_RUN. The
//! verdict is checked twice: by the program's return value and by which one of the
//! per-CPU verdict counters moved.
use std::time::Duration;

use blocksmtp::{
    addr::SourceAddr,
    dataplane::{Dataplane, DataplaneConfig, Program},
};
use blocksmtp_common::Verdict::{self, *};
use blocksmtp_tests::{
    is_root,
    packet::{L3, L4, Packet, SMTP, v4, v6},
};

/// An address (banned per the config's unit) or a CIDR network (a prefix ban).
#[derive(Clone, Copy)]
enum Ban {
    /// Banned for an hour.
    Active(&'static str),
    /// Banned, but the ban ended already.
    Expired(&'static str),
}

const NET4: &str = "192.0.2.0/24";
const NET6: &str = "2001:db8:bad::/48";
/// A ban longer than /48 (`BANNET_V6L`, its own hint) inside NET6's /48.
const NET56: &str = "2001:db8:bad:100::/56";
/// Three IPv4 lengths in use at once (/8, /16, /24), and three IPv6 (/32, /48, /56).
const LENS4: &[Ban] = &[Ban::Active("203.0.0.0/8"), Ban::Active("192.0.0.0/16"), Ban::Active(NET4)];
const LENS6: &[Ban] = &[Ban::Active("2001:db8::/32"), Ban::Active(NET6), Ban::Active("2001:db8:bad:100::/56")];

/// Which dataplane configuration a case runs under.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cfg {
    /// Port 25, any destination, IPv6 per /64 — the defaults.
    Default,
    /// Ports 25 and 587, only to the mailer addresses 192.0.2.25 / 2001:db8::25.
    Mailer,
    /// IPv6 per /128.
    V6Host,
}

struct Case {
    name: &'static str,
    cfg: Cfg,
    packet: Packet,
    bans: &'static [Ban],
    allow: &'static [&'static str],
    expect: Verdict,
}

const HARVESTER: &str = "192.0.2.66";
const HARVESTER6: &str = "2001:db8::66";

fn tcp4(src: &str, dport: u16) -> Packet {
    Packet::tcp4(v4(src), v4("192.0.2.25"), dport)
}

fn tcp6(src: &str, dport: u16) -> Packet {
    Packet::tcp6(v6(src), v6("2001:db8::25"), dport)
}

fn cases() -> Vec<Case> {
    use Ban::*;
    use Cfg::*;
    let b4: &'static [Ban] = &[Active(HARVESTER)];
    let b6: &'static [Ban] = &[Active(HARVESTER6)];
    let none: &'static [&'static str] = &[];
    let c = |name, cfg, packet, bans, allow, expect| Case { name, cfg, packet, bans, allow, expect };
    vec![
        c("banned v4 to 25", Default, tcp4(HARVESTER, SMTP), b4, none, Drop),
        c("banned v6 to 25", Default, tcp6(HARVESTER6, SMTP), b6, none, Drop),
        c("banned v4 to another port", Default, tcp4(HARVESTER, 2525), b4, none, PassNotProtected),
        c("banned v6 to another port", Default, tcp6(HARVESTER6, 443), b6, none, PassNotProtected),
        c("not banned v4", Default, tcp4("192.0.2.67", SMTP), b4, none, PassNotBanned),
        c("not banned v6 (other /64)", Default, tcp6("2001:db8:0:1::67", SMTP), b6, none, PassNotBanned),
        c("second host of a banned /64", Default, tcp6("2001:db8::67", SMTP), b6, none, Drop),
        c("second host of a banned /64, bans per /128", V6Host, tcp6("2001:db8::67", SMTP), b6, none, PassNotBanned),
        c("banned /128 host, bans per /128", V6Host, tcp6(HARVESTER6, SMTP), b6, none, Drop),
        c("expired v4 ban", Default, tcp4(HARVESTER, SMTP), &[Expired(HARVESTER)], none, PassExpired),
        c("expired v6 ban", Default, tcp6(HARVESTER6, SMTP), &[Expired(HARVESTER6)], none, PassExpired),
        c("allow-listed v4 /24 with a ban", Default, tcp4(HARVESTER, SMTP), b4, &["192.0.2.0/24"], PassAllowListed),
        c("allow-listed v4 host with a ban", Default, tcp4(HARVESTER, SMTP), b4, &["192.0.2.66/32"], PassAllowListed),
        c("allow-list of another net", Default, tcp4(HARVESTER, SMTP), b4, &["198.51.100.0/24"], Drop),
        c("allow-listed v6 host inside a banned /64", Default, tcp6("2001:db8::99", SMTP), b6, &["2001:db8::99/128"], PassAllowListed),
        c("v6 neighbour of an allow-listed host", Default, tcp6(HARVESTER6, SMTP), b6, &["2001:db8::99/128"], Drop),
        c("802.1Q tagged", Default, tcp4(HARVESTER, SMTP).vlan(&[0x8100]), b4, none, Drop),
        c("QinQ (802.1ad + 802.1Q)", Default, tcp4(HARVESTER, SMTP).vlan(&[0x88a8, 0x8100]), b4, none, Drop),
        c("QinQ v6", Default, tcp6(HARVESTER6, SMTP).vlan(&[0x88a8, 0x8100]), b6, none, Drop),
        c("three VLAN tags: not parsed", Default, tcp4(HARVESTER, SMTP).vlan(&[0x88a8, 0x8100, 0x8100]), b4, none, PassNotIp),
        c("IPv4 with 8 bytes of options", Default, tcp4(HARVESTER, SMTP).ipv4_options(&[1, 1, 1, 1, 0x94, 4, 0, 0]), b4, none, Drop),
        c("IPv4 with 40 bytes of options", Default, tcp4(HARVESTER, SMTP).ipv4_options(&[1; 40]), b4, none, Drop),
        c("IPv6 hop-by-hop", Default, tcp6(HARVESTER6, SMTP).ipv6_ext(&[(0, 8)]), b6, none, Drop),
        c("IPv6 hop-by-hop + routing + dest-opts", Default, tcp6(HARVESTER6, SMTP).ipv6_ext(&[(0, 8), (43, 24), (60, 16)]), b6, none, Drop),
        c("IPv6 with 5 extension headers: not parsed", Default, tcp6(HARVESTER6, SMTP).ipv6_ext(&[(0, 8), (60, 8), (60, 8), (60, 8), (60, 8)]), b6, none, PassMalformed),
        c("IPv6 fragment header", Default, tcp6(HARVESTER6, SMTP).ipv6_ext(&[(44, 8)]), b6, none, PassFragment),
        c("IPv4 non-first fragment", Default, tcp4(HARVESTER, SMTP).frag_off(185), b4, none, PassFragment),
        c("IPv4 first fragment (MF set)", Default, tcp4(HARVESTER, SMTP).frag_off(0x2000), b4, none, Drop),
        c("UDP to 25", Default, tcp4(HARVESTER, SMTP).l4(L4::Udp { sport: 5, dport: SMTP }), b4, none, PassNotTcp),
        c("ICMP echo", Default, tcp4(HARVESTER, SMTP).l4(L4::Icmp), b4, none, PassNotTcp),
        c("ICMPv6 echo", Default, tcp6(HARVESTER6, SMTP).l4(L4::Icmp), b6, none, PassNotTcp),
        c("IPv6 no next header", Default, tcp6(HARVESTER6, SMTP).l4(L4::Raw(59)), b6, none, PassNotTcp),
        c(
            "ARP",
            Default,
            Packet { vlans: vec![], l3: L3::Other { ethertype: 0x0806, len: 28 }, l4: L4::Raw(0) },
            b4,
            none,
            PassNotIp,
        ),
        c("mailer filter: to the mailer", Mailer, tcp4(HARVESTER, SMTP), b4, none, Drop),
        c("mailer filter: to another host", Mailer, Packet::tcp4(v4(HARVESTER), v4("192.0.2.26"), SMTP), b4, none, PassNotProtected),
        c("mailer filter off: to another host", Default, Packet::tcp4(v4(HARVESTER), v4("192.0.2.26"), SMTP), b4, none, Drop),
        c("mailer filter v6: to the mailer", Mailer, tcp6(HARVESTER6, SMTP), b6, none, Drop),
        c("mailer filter v6: to another host", Mailer, Packet::tcp6(v6(HARVESTER6), v6("2001:db8::26"), SMTP), b6, none, PassNotProtected),
        c("second protected port (587)", Mailer, tcp4(HARVESTER, 587), b4, none, Drop),
        c("587 unprotected by default", Default, tcp4(HARVESTER, 587), b4, none, PassNotProtected),
        // Prefix bans (the BANNET tries: the longest covering prefix answers).
        c("v4 host inside a banned /24", Default, tcp4("192.0.2.77", SMTP), &[Active(NET4)], none, Drop),
        c("v4 host outside a banned /24", Default, tcp4("198.51.100.7", SMTP), &[Active(NET4)], none, PassNotBanned),
        c("v4 banned /24 to another port", Default, tcp4("192.0.2.77", 2525), &[Active(NET4)], none, PassNotProtected),
        c("v4 expired /24 ban", Default, tcp4("192.0.2.77", SMTP), &[Expired(NET4)], none, PassExpired),
        c("v4 expired address ban inside an active /24", Default, tcp4(HARVESTER, SMTP), &[Expired(HARVESTER), Active(NET4)], none, Drop),
        c("v4 active address ban inside an expired /24", Default, tcp4(HARVESTER, SMTP), &[Active(HARVESTER), Expired(NET4)], none, Drop),
        c("v4 nested /16 and /24 bans", Default, tcp4("192.0.7.1", SMTP), &[Active("192.0.0.0/16"), Active(NET4)], none, Drop),
        c("v4 /8 ban", Default, tcp4("203.0.113.9", SMTP), &[Active("203.0.0.0/8")], none, Drop),
        c("allow-listed v4 host inside a banned /24", Default, tcp4("192.0.2.77", SMTP), &[Active(NET4)], &["192.0.2.77/32"], PassAllowListed),
        c("v4 neighbour of an allow-listed host in a banned /24", Default, tcp4("192.0.2.78", SMTP), &[Active(NET4)], &["192.0.2.77/32"], Drop),
        c("v6 host inside a banned /48", Default, tcp6("2001:db8:bad:1::66", SMTP), &[Active(NET6)], none, Drop),
        c("v6 host outside a banned /48", Default, tcp6("2001:db8:bae::66", SMTP), &[Active(NET6)], none, PassNotBanned),
        c("v6 expired /48 ban", Default, tcp6("2001:db8:bad:1::66", SMTP), &[Expired(NET6)], none, PassExpired),
        c("v6 /32 ban", Default, tcp6("2001:db8:ffff::1", SMTP), &[Active("2001:db8::/32")], none, Drop),
        c("allow-listed v6 host inside a banned /48", Default, tcp6("2001:db8:bad:1::66", SMTP), &[Active(NET6)], &["2001:db8:bad:1::66/128"], PassAllowListed),
        c("v6 /64 ban with bans per /128 (a prefix ban)", V6Host, tcp6("2001:db8::67", SMTP), &[Active("2001:db8::/64")], none, Drop),
        c("mailer filter: banned /24 to another host", Mailer, Packet::tcp4(v4("192.0.2.77"), v4("192.0.2.26"), SMTP), &[Active(NET4)], none, PassNotProtected),
        c("v6 banned /48 in a VLAN", Default, tcp6("2001:db8:bad::9", SMTP).vlan(&[0x8100]), &[Active(NET6)], none, Drop),
        // Several lengths in use at once.
        c("v4 /8, /16, /24 in use: in the /8 only", Default, tcp4("203.0.113.9", SMTP), LENS4, none, Drop),
        c("v4 /8, /16, /24 in use: in the /16 only", Default, tcp4("192.0.7.1", SMTP), LENS4, none, Drop),
        c("v4 /8, /16, /24 in use: in none", Default, tcp4("198.51.100.7", SMTP), LENS4, none, PassNotBanned),
        c("v4 /20 and /24 in use: same /16, in neither", Default, tcp4("198.51.101.7", SMTP), &[Active("198.51.100.0/24"), Active("198.51.112.0/20")], none, PassNotBanned),
        c("v4 /20 and /24 in use: in the /20", Default, tcp4("198.51.127.7", SMTP), &[Active("198.51.100.0/24"), Active("198.51.112.0/20")], none, Drop),
        // The trie answers with the longest covering prefix: an expired one is looked through.
        c("v4 expired /24 inside an active /16", Default, tcp4("192.0.2.77", SMTP), &[Expired(NET4), Active("192.0.0.0/16")], none, Drop),
        c("v4 expired /28, /24, /20 inside an active /8", Default, tcp4("203.0.113.9", SMTP), &[Expired("203.0.113.0/28"), Expired("203.0.113.0/24"), Expired("203.0.112.0/20"), Active("203.0.0.0/8")], none, Drop),
        c("v4 five nested, the four longest expired: past the bound", Default, tcp4("203.0.113.9", SMTP), &[Expired("203.0.113.0/28"), Expired("203.0.113.0/24"), Expired("203.0.112.0/20"), Expired("203.0.0.0/16"), Active("203.0.0.0/8")], none, PassExpired),
        c("v4 active /24 inside an expired /16", Default, tcp4("192.0.2.77", SMTP), &[Active(NET4), Expired("192.0.0.0/16")], none, Drop),
        c("v4 expired /24 inside an expired /16", Default, tcp4("192.0.2.77", SMTP), &[Expired(NET4), Expired("192.0.0.0/16")], none, PassExpired),
        c("allow-listed v4 host inside banned /16 and /24", Default, tcp4("192.0.2.77", SMTP), &[Active(NET4), Active("192.0.0.0/16")], &["192.0.2.77/32"], PassAllowListed),
        c("allow-listed v4 /28 inside a banned /8", Default, tcp4("203.0.113.9", SMTP), LENS4, &["203.0.113.0/28"], PassAllowListed),
        c("v4 /31 ban: the other address of the pair", Default, tcp4("192.0.2.67", SMTP), &[Active("192.0.2.66/31")], none, Drop),
        c("v4 /31 ban: the next pair", Default, tcp4("192.0.2.68", SMTP), &[Active("192.0.2.66/31")], none, PassNotBanned),
        c("v6 /32, /48, /56 in use: in the /32 only", Default, tcp6("2001:db8:ffff::1", SMTP), LENS6, none, Drop),
        c("v6 /32, /48, /56 in use: in the /56", Default, tcp6("2001:db8:bad:100::1", SMTP), LENS6, none, Drop),
        c("v6 /40 and /56 in use: same /32, in neither", Default, tcp6("2001:db8:ff00::1", SMTP), &[Active("2001:db8:bad:100::/56"), Active("2001:db8:100::/40")], none, PassNotBanned),
        c("v6 expired /56 inside an active /40", Default, tcp6("2001:db8:1ad:100::1", SMTP), &[Expired("2001:db8:1ad:100::/56"), Active("2001:db8:100::/40")], none, Drop),
        c("v6 active /40 outside an expired /56", Default, tcp6("2001:db8:1ad:200::1", SMTP), &[Expired("2001:db8:1ad:100::/56"), Active("2001:db8:100::/40")], none, Drop),
        c("v6 expired /48 inside an expired /32", Default, tcp6("2001:db8:bad:1::66", SMTP), &[Expired(NET6), Expired("2001:db8::/32")], none, PassExpired),
        c("allow-listed v6 host inside banned /32, /48, /56", Default, tcp6("2001:db8:bad:100::1", SMTP), LENS6, &["2001:db8:bad:100::1/128"], PassAllowListed),
        c("v6 /96 ban with bans per /128 (a length past 64)", V6Host, tcp6("2001:db8::1:0:7", SMTP), &[Active("2001:db8::1:0:0/96")], none, Drop),
        c("v6 /96 ban with bans per /128: the next /96", V6Host, tcp6("2001:db8::2:0:7", SMTP), &[Active("2001:db8::1:0:0/96")], none, PassNotBanned),
        c("v6 /96 and /60 in use, bans per /128: in the /60", V6Host, tcp6("2001:db8::9", SMTP), &[Active("2001:db8::1:0:0/96"), Active("2001:db8::/60")], none, Drop),
        // IPv6 split by length: bans longer than /48 in their own trie, looked at first.
        c("v6 split: clean host of a /48 holding a /56 ban", Default, tcp6("2001:db8:bad:200::9", SMTP), &[Active(NET56)], none, PassNotBanned),
        c("v6 split: host inside the /56", Default, tcp6("2001:db8:bad:100::9", SMTP), &[Active(NET56)], none, Drop),
        c("v6 split: host inside the /56 and its /48", Default, tcp6("2001:db8:bad:100::9", SMTP), &[Active(NET56), Active(NET6)], none, Drop),
        c("v6 split: expired /56 inside an active /48", Default, tcp6("2001:db8:bad:100::9", SMTP), &[Expired(NET56), Active(NET6)], none, Drop),
        c("v6 split: active /56 inside an expired /48", Default, tcp6("2001:db8:bad:100::9", SMTP), &[Active(NET56), Expired(NET6)], none, Drop),
        c("v6 split: expired /56 inside an expired /48", Default, tcp6("2001:db8:bad:100::9", SMTP), &[Expired(NET56), Expired(NET6)], none, PassExpired),
        c("v6 split: expired /56 alone", Default, tcp6("2001:db8:bad:100::9", SMTP), &[Expired(NET56)], none, PassExpired),
        c("v6 split: expired /60 and /56 inside an active /32", Default, tcp6("2001:db8:bad:100::9", SMTP), &[Expired("2001:db8:bad:100::/60"), Expired(NET56), Active("2001:db8::/32")], none, Drop),
        c("v6 split: four expired past /48 (each trie its own bound) inside an active /48", Default, tcp6("2001:db8:bad:100::9", SMTP), &[Expired("2001:db8:bad:100::/63"), Expired("2001:db8:bad:100::/62"), Expired("2001:db8:bad:100::/60"), Expired(NET56), Active(NET6)], none, Drop),
        c("v6 split: allow-listed host inside a banned /56", Default, tcp6("2001:db8:bad:100::9", SMTP), &[Active(NET56)], &["2001:db8:bad:100::9/128"], PassAllowListed),
        c("v6 split: allow-listed host inside a banned /56 and /48", Default, tcp6("2001:db8:bad:100::9", SMTP), &[Active(NET56), Active(NET6)], &["2001:db8:bad:100::9/128"], PassAllowListed),
        c("v6 split: neighbour of an allow-listed host in a banned /56", Default, tcp6("2001:db8:bad:100::a", SMTP), &[Active(NET56)], &["2001:db8:bad:100::9/128"], Drop),
        c("v6 split: a /60 and a /56 in use, bans per /128: in the /60", V6Host, tcp6("2001:db8:bad:5::9", SMTP), &[Active("2001:db8:bad::/60"), Active(NET56)], none, Drop),
        c("v4 unchanged: expired /28 inside an active /24", Default, tcp4("192.0.2.70", SMTP), &[Expired("192.0.2.64/28"), Active(NET4)], none, Drop),
        c("v4 unchanged: clean host of a /24 holding a /28", Default, tcp4("192.0.2.9", SMTP), &[Active("192.0.2.64/28")], none, PassNotBanned),
        // IPv4 bans past /24 hint per /28 (`BANNET_HINT4L`), in the same trie.
        c("v4 split: host inside a banned /28", Default, tcp4("192.0.2.70", SMTP), &[Active("192.0.2.64/28")], none, Drop),
        c("v4 split: allow-listed host inside a banned /28", Default, tcp4("192.0.2.70", SMTP), &[Active("192.0.2.64/28")], &["192.0.2.70/32"], PassAllowListed),
        c("v4 split: neighbour of an allow-listed host in a banned /28", Default, tcp4("192.0.2.71", SMTP), &[Active("192.0.2.64/28")], &["192.0.2.70/32"], Drop),
        c("v4 split: allow-listed host inside a banned /28 and /24", Default, tcp4("192.0.2.70", SMTP), &[Active("192.0.2.64/28"), Active(NET4)], &["192.0.2.70/32"], PassAllowListed),
        c("v4 split: active /28 inside an expired /24", Default, tcp4("192.0.2.70", SMTP), &[Active("192.0.2.64/28"), Expired(NET4)], none, Drop),
        c("v4 split: expired /28 inside an expired /24", Default, tcp4("192.0.2.70", SMTP), &[Expired("192.0.2.64/28"), Expired(NET4)], none, PassExpired),
        c("v4 split: expired /28 alone", Default, tcp4("192.0.2.70", SMTP), &[Expired("192.0.2.64/28")], none, PassExpired),
        c("v4 split: outside the active /28 of an expired /24", Default, tcp4("192.0.2.9", SMTP), &[Active("192.0.2.64/28"), Expired(NET4)], none, PassExpired),
        c("v4 split: outside the active /28 of an active /24", Default, tcp4("192.0.2.9", SMTP), &[Active("192.0.2.64/28"), Active(NET4)], none, Drop),
        c("v4 split: a /30 inside an expired /28 inside an active /16", Default, tcp4("192.0.2.69", SMTP), &[Active("192.0.2.68/30"), Expired("192.0.2.64/28"), Active("192.0.0.0/16")], none, Drop),
        c("v4 split: expired /30 and /28 inside an active /16", Default, tcp4("192.0.2.69", SMTP), &[Expired("192.0.2.68/30"), Expired("192.0.2.64/28"), Active("192.0.0.0/16")], none, Drop),
    ]
}

/// The prefix-ban hints (`BANNET_HINT24`: one bit per IPv4 /24 of bans up to /24, per
/// folded IPv6 /48 of bans up to /48; `BANNET_HINT4L`: one per folded IPv4 /28 of bans
/// longer than /24; `BANNET_HINT6L`: one per folded /56 of IPv6 bans longer than /48).
/// Each row: the bans, a source, its verdict, and which of the kernel's hint bits for it
/// are set — which tries its packet walks. A clean source pays only when its own /24
/// (/48), or for the longer bans /28 (/56), holds or is covered by a prefix ban, or its
/// folded network collides with a banned one.
struct HintCase {
    name: &'static str,
    bans: &'static [Ban],
    src: &'static str,
    expect: Verdict,
    lookup: Walks,
}

/// (`BANNET_HINT24`'s bit, the long class's: `BANNET_HINT4L`'s or `BANNET_HINT6L`'s).
type Walks = (bool, bool);
const NO: Walks = (false, false);
const SHORT: Walks = (true, false);
const LONG: Walks = (false, true);
const BOTH: Walks = (true, true);

/// A /48 whose folded hint bit is 2001:db8:bad::/48's: 0x3fff00 ^ 0xa7f5a0 = 0x20010d ^
/// 0xb80bad. The /48s of one /24 never collide, so it lies in another /24: 3fff::/20
/// (documentation, RFC 9637), as packet bytes only — nothing is sent.
const FOLD_TWIN: &str = "3fff:a7:f5a0::9";
/// A /56 whose `BANNET_HINT6L` bit is 2001:db8:bad:100::/56's (the 24-bit fold; the /56s
/// of one /32 never collide): 3fff:0:f5a0:a600::/56, packet bytes only.
const LONG_TWIN: &str = "3fff:0:f5a0:a600::9";
/// An IPv4 /28 whose `BANNET_HINT4L` bit is 192.0.2.32/28's (the /28s of one /4 never
/// collide, and the documentation networks share 192.0.0.0/4): 208.0.2.48/28 in
/// 208.0.0.0/4, as packet bytes only — nothing is sent.
const V4_TWIN: &str = "208.0.2.57";

fn hint_cases() -> Vec<HintCase> {
    use Ban::*;
    let h = |name, bans, src, expect, lookup| HintCase { name, bans, src, expect, lookup };
    const NEAR6: &[Ban] = &[Active("2001:db8:bac::/48"), Active(NET6), Active("2001:db8:bae::/48")];
    const WITH28: &[Ban] = &[Active(NET4), Active("192.0.3.16/28")];
    const WITH28_IN24: &[Ban] = &[Active(NET4), Active("192.0.2.64/28")];
    vec![
        h("v4 clean in the /16 of a banned /24: no lookup", &[Active(NET4)], "192.0.3.9", PassNotBanned, NO),
        h("v4 clean in the next /24, a /28 banned in it: no lookup", WITH28, "192.0.3.9", PassNotBanned, NO),
        h("v4 inside that /28: the long hint's bit", WITH28, "192.0.3.20", Drop, LONG),
        h("v4 clean in the last /28 of that /24: no lookup", WITH28, "192.0.3.250", PassNotBanned, NO),
        h("v4 inside a banned /24", &[Active(NET4)], "192.0.2.77", Drop, SHORT),
        h("v4 inside a /28 of a banned /24: both bits", WITH28_IN24, "192.0.2.70", Drop, BOTH),
        h("v4 outside that /28, in the banned /24", WITH28_IN24, "192.0.2.9", Drop, SHORT),
        h("v4 inside a /28 of an expired /24", &[Active("192.0.2.64/28"), Expired(NET4)], "192.0.2.70", Drop, BOTH),
        h("v4 outside the /28 of an expired /24: looked up, passes", &[Active("192.0.2.64/28"), Expired(NET4)], "192.0.2.9", PassExpired, SHORT),
        h("v4 expired /28: looked up, passes", &[Expired("192.0.2.64/28")], "192.0.2.70", PassExpired, LONG),
        h("v4 /31 ban: the rest of its /24, no lookup", &[Active("192.0.2.66/31")], "192.0.2.9", PassNotBanned, NO),
        h("v4 /31 ban: the rest of its /28 pays the lookup", &[Active("192.0.2.66/31")], "192.0.2.70", PassNotBanned, LONG),
        h("v4 /25 ban: its last /28", &[Active("192.0.2.128/25")], "192.0.2.250", Drop, LONG),
        h("v4 /25 ban: the other half of its /24, no lookup", &[Active("192.0.2.128/25")], "192.0.2.120", PassNotBanned, NO),
        h("v4 long fold collision: passes, paying the lookup", &[Active("192.0.2.32/28")], V4_TWIN, PassNotBanned, LONG),
        h("v4 long fold twin with the /28 lifted: no lookup", &[], V4_TWIN, PassNotBanned, NO),
        h("v4 expired /24: looked up, passes", &[Expired(NET4)], "192.0.2.77", PassExpired, SHORT),
        h("v4 /8 ban: a /24 inside it", &[Active("203.0.0.0/8")], "203.0.113.9", Drop, SHORT),
        // The widest bans (a CrowdSec range may be one): every word of the family's half is
        // written, and cleared again when lifted (the next row's bit must be clear).
        h("v4 /0 ban: every source", &[Active("0.0.0.0/0")], "198.51.100.7", Drop, SHORT),
        h("v4 /8 ban: a clean source outside it, no lookup", &[Active("203.0.0.0/8")], "198.51.100.7", PassNotBanned, NO),
        h("v4 /23 ban: its second /24", &[Active("198.51.100.0/23")], "198.51.101.7", Drop, SHORT),
        h("v4 /23 ban: the /24 after it, no lookup", &[Active("198.51.100.0/23")], "198.51.102.7", PassNotBanned, NO),
        h("v6 clean next to three banned /48s: no lookup", NEAR6, "2001:db8:baf::9", PassNotBanned, NO),
        h("v6 inside one of them", NEAR6, "2001:db8:bae:1::9", Drop, SHORT),
        h("v6 clean in a /48 holding a banned /56: no lookup", &[Active(NET56)], "2001:db8:bad:200::9", PassNotBanned, NO),
        h("v6 inside that /56: the long class's trie", &[Active(NET56)], "2001:db8:bad:100::9", Drop, LONG),
        h("v6 inside the /56 with its /48 banned too: both tries' bits", &[Active(NET56), Active(NET6)], "2001:db8:bad:100::9", Drop, BOTH),
        h("v6 another /56 of that banned /48: the short class's only", &[Active(NET56), Active(NET6)], "2001:db8:bad:200::9", Drop, SHORT),
        h("v6 clean in the /56 of a banned /60: pays the small trie", &[Active("2001:db8:bad:100::/60")], "2001:db8:bad:110::9", PassNotBanned, LONG),
        h("v6 /52 ban: its last /56", &[Active("2001:db8:bad:1000::/52")], "2001:db8:bad:1f00::9", Drop, LONG),
        h("v6 /52 ban: the /56 after it, no lookup", &[Active("2001:db8:bad:1000::/52")], "2001:db8:bad:2000::9", PassNotBanned, NO),
        h("v6 long-class fold collision: passes, paying the small trie", &[Active(NET56)], LONG_TWIN, PassNotBanned, LONG),
        h("v6 long fold twin with the /56 lifted: no lookup", &[], LONG_TWIN, PassNotBanned, NO),
        h("v6 fold collision with a banned /48: passes, paying the lookup", &[Active(NET6)], FOLD_TWIN, PassNotBanned, SHORT),
        h("v6 fold twin with the /48 ban lifted: no lookup", &[], FOLD_TWIN, PassNotBanned, NO),
        h("v6 /40 ban: a /48 inside it", &[Active("2001:db8:100::/40")], "2001:db8:1ff::9", Drop, SHORT),
        h("v6 ::/0 ban: every source", &[Active("::/0")], "2001:db8:200::9", Drop, SHORT),
        h("v6 /40 ban: another /40 of the /32, no lookup", &[Active("2001:db8:100::/40")], "2001:db8:200::9", PassNotBanned, NO),
        h("v6 /16 ban (wider than /24: every IPv6 bit): a clean source outside pays", &[Active("2001::/16")], "3fff::9", PassNotBanned, SHORT),
    ]
}

#[test]
fn hint_fixture_table() {
    if !is_root() {
        eprintln!("SKIP hint_fixture_table: needs root (BPF)");
        return;
    }
    assert_eq!(blocksmtp_common::hint_bit_v6(0x3fff_00a7_f5a0), blocksmtp_common::hint_bit_v6(0x2001_0db8_0bad), "FOLD_TWIN");
    assert_eq!(blocksmtp_common::hint_bit_v6l((0x3fff_0000_f5a0 << 8) | 0xa6), blocksmtp_common::hint_bit_v6l((0x2001_0db8_0bad << 8) | 0x01), "LONG_TWIN");
    assert_eq!(blocksmtp_common::hint_bit_v4l(0xd00_0023), blocksmtp_common::hint_bit_v4l(0xc00_0022), "V4_TWIN");
    let mut dp = dataplane(Cfg::Default);
    let mut failures = Vec::new();
    for case in hint_cases() {
        set_state(&mut dp, case.bans, &[]);
        let ip: std::net::IpAddr = case.src.parse().unwrap();
        let lookup = dp.hint_bits_for(ip).unwrap();
        let pkt = match ip {
            std::net::IpAddr::V4(_) => tcp4(case.src, SMTP),
            std::net::IpAddr::V6(_) => tcp6(case.src, SMTP),
        }
        .build();
        for prog in [Program::Xdp, Program::Tc] {
            let (ret, verdict) = run(&dp, prog, &pkt);
            if verdict != case.expect || ret != expected_ret(prog, case.expect) {
                failures.push(format!("{prog:?}: {}: expected {:?}, got {verdict:?} (ret {ret})", case.name, case.expect));
            }
        }
        if lookup != case.lookup {
            failures.push(format!("{}: hint bits (short, long) of {} are {lookup:?}, expected {:?}", case.name, case.src, case.lookup));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

fn dataplane(cfg: Cfg) -> Dataplane {
    let c = match cfg {
        Cfg::Default => DataplaneConfig::default(),
        Cfg::Mailer => DataplaneConfig {
            ports: vec![25, 587],
            mailer_ips: vec!["192.0.2.25".parse().unwrap(), "2001:db8::25".parse().unwrap()],
            v6_prefix: 64,
            ..Default::default()
        },
        Cfg::V6Host => DataplaneConfig { v6_prefix: 128, ..Default::default() },
    };
    Dataplane::load_unpinned(&c).expect("load the programs (verifier must accept them)")
}

fn set_state(dp: &mut Dataplane, bans: &[Ban], allow: &[&str]) {
    for ban in dp.list().unwrap() {
        dp.unban(&ban.source).unwrap();
    }
    // Expired bans are not listed: clear every address and network the table uses.
    for ban in cases().iter().flat_map(|c| c.bans).chain(hint_cases().iter().flat_map(|c| c.bans)) {
        let (Ban::Active(s) | Ban::Expired(s)) = *ban;
        if s.contains('/') {
            let _ = dp.unban(&s.parse().unwrap());
        }
    }
    for s in [HARVESTER, HARVESTER6, "2001:db8::99", NET4, NET6] {
        let _ = dp.unban(&s.parse().unwrap());
    }
    let prefix = dp.config().v6_prefix_len;
    for ban in bans {
        let (s, d) = match ban {
            Ban::Active(s) => (s, Duration::from_secs(3600)),
            Ban::Expired(s) => (s, Duration::ZERO),
        };
        let src = if s.contains('/') { s.parse().unwrap() } else { SourceAddr::from_ip(s.parse().unwrap(), prefix) };
        dp.ban(&src, d, false).unwrap();
    }
    let nets: Vec<ipnet::IpNet> = allow.iter().map(|a| a.parse().unwrap()).collect();
    dp.set_allow_list(&nets).unwrap();
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX;

fn expected_ret(p: Program, v: Verdict) -> u32 {
    match (p, v == Drop) {
        (Program::Xdp, true) => XDP_DROP,
        (Program::Xdp, false) => XDP_PASS,
        (Program::Tc, true) => TC_ACT_SHOT,
        (Program::Tc, false) => TC_ACT_UNSPEC,
    }
}

/// Run `packet`, return (return value, the one verdict counter that moved).
fn run(dp: &Dataplane, p: Program, packet: &[u8]) -> (u32, Verdict) {
    let before = dp.stats().unwrap();
    let (ret, _) = dp.test_run(p, packet, 1).unwrap_or_else(|e| panic!("test run of {p:?} on {} bytes: {e:?}", packet.len()));
    let after = dp.stats().unwrap();
    let moved: Vec<Verdict> = Verdict::ALL
        .into_iter()
        .filter(|v| after.count(*v) != before.count(*v))
        .collect();
    assert_eq!(moved.len(), 1, "exactly one verdict counter must move, moved: {moved:?}");
    assert_eq!(after.count(moved[0]) - before.count(moved[0]), 1);
    (ret, moved[0])
}

#[test]
fn fixture_table() {
    if !is_root() {
        eprintln!("SKIP fixture_table: needs root (BPF)");
        return;
    }
    let mut failures = Vec::new();
    let mut ran = 0;
    for cfg in [Cfg::Default, Cfg::Mailer, Cfg::V6Host] {
        let mut dp = dataplane(cfg);
        for case in cases().into_iter().filter(|c| c.cfg == cfg) {
            set_state(&mut dp, case.bans, case.allow);
            let pkt = case.packet.build();
            for prog in [Program::Xdp, Program::Tc] {
                let (ret, verdict) = run(&dp, prog, &pkt);
                ran += 1;
                if verdict != case.expect || ret != expected_ret(prog, case.expect) {
                    failures.push(format!(
                        "{:?} {:?}: {}: expected {:?} (ret {}), got {verdict:?} (ret {ret})",
                        prog,
                        cfg,
                        case.name,
                        case.expect,
                        expected_ret(prog, case.expect)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {ran} runs failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(ran, cases().len() * 2);
}

/// Every would-be-dropped packet, cut short at every header boundary and at every
/// byte: never dropped, always counted as malformed, never a verifier complaint.
#[test]
fn truncated_packets_pass() {
    if !is_root() {
        eprintln!("SKIP truncated_packets_pass: needs root (BPF)");
        return;
    }
    let mut dp = dataplane(Cfg::Default);
    let mut checked = 0;
    for case in cases().into_iter().filter(|c| c.cfg == Cfg::Default && c.expect == Drop) {
        set_state(&mut dp, case.bans, case.allow);
        let (full, bounds) = case.packet.build_with_boundaries();
        assert_eq!(*bounds.last().unwrap(), full.len());
        // ETH_HLEN is the smallest packet BPF_PROG_TEST_RUN accepts.
        // The kernel builds a test skb only once the fixed IP header is whole.
        let l3_end = bounds[case.packet.vlans.len() + 1];
        for len in 14..full.len() {
            for prog in [Program::Xdp, Program::Tc] {
                if prog == Program::Tc && dp.test_run(prog, &full[..len], 1).is_err() {
                    assert!(len < l3_end, "{}: TC test run refused {len} bytes (IP header ends at {l3_end})", case.name);
                    continue;
                }
                let (ret, verdict) = run(&dp, prog, &full[..len]);
                let at_boundary = bounds.contains(&len);
                assert_eq!(
                    (ret, verdict),
                    (expected_ret(prog, PassMalformed), PassMalformed),
                    "{prog:?}: {} cut to {len} bytes{}",
                    case.name,
                    if at_boundary { " (a header boundary)" } else { "" }
                );
                checked += 1;
            }
        }
        // And whole, it is dropped: the cut is what made it pass.
        assert_eq!(run(&dp, Program::Xdp, &full).1, Drop, "{}", case.name);
    }
    assert!(checked > 500, "only {checked} truncations checked");
}

#[test]
fn ban_lookup_unban_roundtrip() {
    if !is_root() {
        eprintln!("SKIP ban_lookup_unban_roundtrip: needs root (BPF)");
        return;
    }
    let mut dp = dataplane(Cfg::Default);
    let s: SourceAddr = "2001:db8::66".parse().unwrap(); // a /128: kept per /64
    dp.ban(&s, Duration::from_secs(60), true).unwrap();
    let list = dp.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].source.to_string(), "2001:db8::/64");
    assert!(list[0].manual);
    let pkt = tcp6("2001:db8::1234", SMTP).build();
    assert_eq!(run(&dp, Program::Xdp, &pkt).1, Drop);
    assert_eq!(dp.lookup(&s).unwrap().unwrap().dropped, 1, "per-ban drop counter");
    // A shorter expiry never shortens a ban.
    let before = dp.lookup(&s).unwrap().unwrap().expires_boot_ns;
    dp.ban(&s, Duration::from_secs(1), false).unwrap();
    let after = dp.lookup(&s).unwrap().unwrap();
    assert_eq!(after.expires_boot_ns, before);
    assert_eq!(after.dropped, 1, "re-banning keeps the drop counter");
    assert!(dp.unban(&"2001:db8::/64".parse().unwrap()).unwrap());
    assert!(!dp.unban(&s).unwrap());
    assert_eq!(run(&dp, Program::Xdp, &pkt).1, PassNotBanned);
    // Networks wider than the unit are prefix bans: listed, looked up, lifted exactly.
    let n4: SourceAddr = "192.0.2.0/24".parse().unwrap();
    let n6: SourceAddr = "2001:db8:bad::/48".parse().unwrap();
    let n16: SourceAddr = "192.0.0.0/16".parse().unwrap();
    dp.ban(&n4, Duration::from_secs(60), true).unwrap();
    dp.ban(&n6, Duration::from_secs(60), false).unwrap();
    let mut listed: Vec<String> = dp.list().unwrap().iter().map(|b| b.source.to_string()).collect();
    listed.sort();
    assert_eq!(listed, ["192.0.2.0/24", "2001:db8:bad::/48"]);
    assert_eq!((dp.counts(), dp.prefix_counts()), ((1, 1), (1, 1)));
    assert!(dp.lookup(&n4).unwrap().unwrap().manual);
    // The /16 holding the /24 has no ban of its own (a trie answers with the /24 only
    // for keys inside it).
    assert!(dp.lookup(&n16).unwrap().is_none());
    assert!(!dp.unban(&n16).unwrap());
    assert_eq!(run(&dp, Program::Xdp, &tcp4("192.0.2.9", SMTP).build()).1, Drop);
    assert_eq!(dp.lookup(&n4).unwrap().unwrap().dropped, 1, "per-ban drop counter of a prefix ban");
    // Two networks of one /24 share a hint bit: lifting one keeps the other enforced.
    let n4b: SourceAddr = "192.0.2.128/25".parse().unwrap();
    dp.ban(&n4b, Duration::from_secs(60), false).unwrap();
    assert!(dp.unban(&n4b).unwrap());
    assert_eq!(run(&dp, Program::Xdp, &tcp4("192.0.2.10", SMTP).build()).1, Drop);
    dp.ban(&n4b, Duration::from_secs(60), false).unwrap();
    assert!(dp.unban(&n4).unwrap());
    assert_eq!(run(&dp, Program::Xdp, &tcp4("192.0.2.130", SMTP).build()).1, Drop);
    assert_eq!(run(&dp, Program::Xdp, &tcp4("192.0.2.10", SMTP).build()).1, PassNotBanned);
    // A ban past /24 hints per /28: the /25 keeps its eight /28s' bits, the rest of the /24 none.
    assert_eq!(dp.hint_bits_for("192.0.2.130".parse().unwrap()).unwrap(), (false, true), "the /25's /28s");
    assert!(!dp.hint_set_for("192.0.2.10".parse().unwrap()).unwrap(), "the /24's bit went with the /24");
    assert!(dp.unban(&n4b).unwrap() && dp.unban(&n6).unwrap());
    assert_eq!(dp.prefix_counts(), (0, 0));
    assert!(!dp.hint_set_for("192.0.2.130".parse().unwrap()).unwrap(), "the last ban of the /24 lifted: its bits too");
    assert_eq!(run(&dp, Program::Xdp, &tcp4("192.0.2.9", SMTP).build()).1, PassNotBanned);
    assert!(dp.list().unwrap().is_empty());
}

/// IPv6 prefix bans longer than /48 live in their own trie (`BANNET_V6L`): routed there
/// by length, listed, looked up, counted, swept and lifted like the others; each class's
/// hint bit and config bit set and cleared on its own.
#[test]
fn long_v6_prefix_bans_have_their_own_trie() {
    use blocksmtp_common::{CONFIG_BANNET_V6, CONFIG_BANNET_V6L};
    if !is_root() {
        eprintln!("SKIP long_v6_prefix_bans_have_their_own_trie: needs root (BPF)");
        return;
    }
    let mut dp = dataplane(Cfg::Default);
    let (n48, n56): (SourceAddr, SourceAddr) = (NET6.parse().unwrap(), NET56.parse().unwrap());
    let inside = tcp6("2001:db8:bad:100::9", SMTP).build();
    let (src, clean): (std::net::IpAddr, std::net::IpAddr) = ("2001:db8:bad:100::9".parse().unwrap(), "2001:db8:bad:200::9".parse().unwrap());
    let flags = |dp: &Dataplane| (dp.config().flags & CONFIG_BANNET_V6 != 0, dp.config().flags & CONFIG_BANNET_V6L != 0);
    assert_eq!(flags(&dp), (false, false));
    dp.ban(&n56, Duration::from_secs(60), true).unwrap();
    assert_eq!(flags(&dp), (false, true), "only the long class's trie is looked at");
    assert_eq!(dp.hint_bits_for(src).unwrap(), (false, true));
    assert_eq!(dp.hint_bits_for(clean).unwrap(), (false, false), "another /56 of its /48: no trie");
    assert_eq!((dp.counts(), dp.prefix_counts()), ((0, 1), (0, 1)));
    let listed: Vec<String> = dp.list().unwrap().iter().map(|b| b.source.to_string()).collect();
    assert_eq!(listed, [NET56]);
    assert!(dp.lookup(&n56).unwrap().unwrap().manual);
    assert!(dp.lookup(&n48).unwrap().is_none(), "the /48 holding it has no ban of its own");
    assert!(!dp.unban(&n48).unwrap());
    assert_eq!(run(&dp, Program::Xdp, &inside).1, Drop);
    assert_eq!(dp.lookup(&n56).unwrap().unwrap().dropped, 1, "charged to the /56");
    // Its /48 banned too: both classes; the longer ban answers while in force.
    dp.ban(&n48, Duration::from_secs(60), false).unwrap();
    assert_eq!(flags(&dp), (true, true));
    assert_eq!(dp.hint_bits_for(src).unwrap(), (true, true));
    assert_eq!(dp.hint_bits_for(clean).unwrap(), (true, false));
    assert_eq!(dp.prefix_counts(), (0, 2));
    assert_eq!(run(&dp, Program::Xdp, &inside).1, Drop);
    assert_eq!(dp.lookup(&n56).unwrap().unwrap().dropped, 2);
    assert!(dp.unban(&n56).unwrap());
    assert_eq!(flags(&dp), (true, false));
    assert_eq!(dp.hint_bits_for(src).unwrap(), (true, false), "the long bit clears with its last ban");
    assert_eq!(run(&dp, Program::Xdp, &inside).1, Drop, "the /48 still holds");
    assert_eq!(dp.lookup(&n48).unwrap().unwrap().dropped, 1);
    assert!(dp.unban(&n48).unwrap());
    assert_eq!((flags(&dp), dp.hint_bits_for(src).unwrap(), dp.prefix_counts()), ((false, false), (false, false), (0, 0)));
    assert_eq!(run(&dp, Program::Xdp, &inside).1, PassNotBanned);
    // Expired: swept from its trie, its bit and flag cleared.
    dp.ban(&n56, Duration::ZERO, false).unwrap();
    assert_eq!(run(&dp, Program::Xdp, &inside).1, PassExpired);
    assert_eq!(dp.sweep_expired().unwrap(), vec![n56]);
    assert_eq!((flags(&dp), dp.hint_bits_for(src).unwrap(), dp.prefix_counts()), ((false, false), (false, false), (0, 0)));
    assert_eq!(dp.hint_footprint(), (0, 0));
}

#[test]
fn sweep_removes_only_expired() {
    if !is_root() {
        eprintln!("SKIP sweep_removes_only_expired: needs root (BPF)");
        return;
    }
    let mut dp = dataplane(Cfg::Default);
    dp.ban(&"192.0.2.1".parse().unwrap(), Duration::ZERO, false).unwrap();
    dp.ban(&"192.0.2.2".parse().unwrap(), Duration::from_secs(3600), false).unwrap();
    dp.ban(&"2001:db8:1::/64".parse().unwrap(), Duration::ZERO, false).unwrap();
    // Extended after being set short: the stale heap entry must not remove it.
    dp.ban(&"192.0.2.3".parse().unwrap(), Duration::ZERO, false).unwrap();
    dp.ban(&"192.0.2.3".parse().unwrap(), Duration::from_secs(3600), false).unwrap();
    dp.ban(&"198.51.100.0/24".parse().unwrap(), Duration::ZERO, false).unwrap();
    dp.ban(&"203.0.113.0/24".parse().unwrap(), Duration::from_secs(3600), false).unwrap();
    let mut swept: Vec<String> = dp.sweep_expired().unwrap().iter().map(|s| s.to_string()).collect();
    swept.sort();
    assert_eq!(swept, vec!["192.0.2.1", "198.51.100.0/24", "2001:db8:1::/64"]);
    assert_eq!(dp.counts(), (3, 0));
    assert_eq!(dp.prefix_counts(), (1, 0));
    assert!(dp.sweep_expired().unwrap().is_empty());
}

/// Listing and the restart index read the maps in batches: more entries than one batch
/// holds, both families, expired ones left out.
#[test]
fn list_reads_every_entry_in_batches() {
    if !is_root() {
        eprintln!("SKIP list_reads_every_entry_in_batches: needs root (BPF)");
        return;
    }
    let mut dp = dataplane(Cfg::Default);
    for i in 0..10_000u32 {
        // 10.0.0.0/8 as map keys only: nothing is sent to them.
        let ip = std::net::Ipv4Addr::from(0x0a00_0000u32 + i);
        dp.ban(&SourceAddr::from_ip(ip.into(), 64), Duration::from_secs(600), false).unwrap();
    }
    for i in 0..5_000u32 {
        let ip = std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(i) << 64));
        dp.ban(&SourceAddr::from_ip(ip.into(), 64), Duration::from_secs(600), false).unwrap();
    }
    dp.ban(&"192.0.2.1".parse().unwrap(), Duration::ZERO, false).unwrap();
    let list = dp.list().unwrap();
    assert_eq!(list.len(), 15_000);
    let mut uniq: Vec<String> = list.iter().map(|b| b.source.to_string()).collect();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 15_000, "no entry twice");
    assert_eq!(dp.counts(), (10_001, 5_000));
}
