//! Hosts that are never banned.
//!
//! File format (the old daemon's): one entry per line — an IPv4 or IPv6 address, a
//! CIDR prefix (`192.0.2.0/24`, `2001:db8::/48`) or an IPv4 address with a netmask
//! (`192.0.2.0/255.255.255.0`). A `#` in column zero starts a comment; blank lines
//! are allowed; blanks around an entry are ignored. A bad entry is an error naming
//! the file and the line number. Loopback (`127.0.0.0/8`, `::1`) is always in.
//!
//! A ban's subject is a [`SourceAddr`] — an IPv4 address or a whole IPv6 prefix. The
//! policy refuses to ban a source the whitelist *overlaps* in any way ([`Whitelist::
//! overlaps`]): a /64 that holds one whitelisted host is not banned, because dropping
//! the /64 would drop that host too. Guesses are ignored per address
//! ([`Whitelist::contains`]).
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::addr::SourceAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Whitelist {
    nets: Vec<IpNet>,
    /// The nets as sorted, merged address ranges per family: [`Whitelist::contains`]
    /// runs for every guess, a binary search stays cheap with a long whitelist.
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// A whitelist that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WhitelistError {
    // `err`, not `source`: the message already says it, an error chain must not repeat it.
    #[error("whitelist {}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}:{line}: {entry:?} is not an IP address, CIDR prefix or address/netmask", path.display())]
    BadEntry { path: PathBuf, line: usize, entry: String },
}

fn loopback() -> [IpNet; 2] {
    [
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid")),
        IpNet::V6(Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("valid")),
    ]
}

impl Default for Whitelist {
    fn default() -> Self {
        Self::indexed(loopback().to_vec())
    }
}

/// Sorted, merged `[start, end]` ranges.
fn merged<T: Ord + Copy>(mut r: Vec<(T, T)>) -> Vec<(T, T)> {
    r.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn in_ranges<T: Ord + Copy>(r: &[(T, T)], x: T) -> bool {
    let i = r.partition_point(|&(s, _)| s <= x);
    i > 0 && x <= r[i - 1].1
}

/// Parse one entry: address, CIDR prefix, or IPv4 address/netmask. Host bits of a
/// prefix are dropped (`192.0.2.7/24` means `192.0.2.0/24`).
pub fn parse_entry(s: &str) -> Option<IpNet> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    let (addr, mask) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let mask: Ipv4Addr = mask.parse().ok()?;
    let bits = u32::from(mask);
    // A netmask is contiguous ones followed by zeros.
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return None;
    }
    Ipv4Net::new(addr, bits.leading_ones() as u8).ok().map(|n| IpNet::V4(n.trunc()))
}

impl Whitelist {
    /// Only loopback.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loopback plus `nets`.
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self::indexed(loopback().into_iter().chain(nets).collect())
    }

    fn indexed(nets: Vec<IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in &nets {
            match n {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Self { nets, v4: merged(v4), v6: merged(v6) }
    }

    /// Read a whitelist file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, WhitelistError> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|err| WhitelistError::Io { path: path.into(), err })?;
        Self::parse(&String::from_utf8_lossy(&text), path)
    }

    /// Parse whitelist text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, WhitelistError> {
        let mut nets = loopback().to_vec();
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let entry = line.trim();
            let net = parse_entry(entry).ok_or_else(|| WhitelistError::BadEntry {
                path: path.into(),
                line: n + 1,
                entry: entry.to_string(),
            })?;
            nets.push(net);
        }
        Ok(Self::indexed(nets))
    }

    /// Whether `ip` is whitelisted (IPv4-mapped IPv6 is checked as IPv4).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match canonical(*ip) {
            IpAddr::V4(a) => in_ranges(&self.v4, u32::from(a)),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }

    /// Whether the whole of `source` is whitelisted.
    pub fn covers(&self, source: &SourceAddr) -> bool {
        let s = source.net();
        self.nets.iter().any(|n| n.contains(&s))
    }

    /// Whether any whitelisted address lies inside `source` (or `source` inside a
    /// whitelisted net): banning it would drop a whitelisted host.
    pub fn overlaps(&self, source: &SourceAddr) -> bool {
        let s = source.net();
        self.nets.iter().any(|n| n.contains(&s) || s.contains(n))
    }

    /// The entries, loopback first.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl fmt::Display for Whitelist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn src(s: &str, p: u8) -> SourceAddr {
        SourceAddr::from_ip(ip(s), p)
    }

    const FILE: &str = "# trusted relays\n\
        192.0.2.10\n\
        \n\
        198.51.100.0/24\n\
          203.0.113.0/255.255.255.128  \n\
        2001:db8:1::25\n\
        2001:db8:2::/48\n\
        #192.0.2.99\n";

    #[test]
    fn entries_of_each_form() {
        let w = Whitelist::parse(FILE, Path::new("wl")).unwrap();
        assert!(w.contains(&ip("192.0.2.10")));
        assert!(!w.contains(&ip("192.0.2.11")));
        assert!(w.contains(&ip("198.51.100.77")));
        assert!(w.contains(&ip("203.0.113.127")));
        assert!(!w.contains(&ip("203.0.113.128")));
        assert!(w.contains(&ip("2001:db8:1::25")));
        assert!(w.contains(&ip("2001:db8:2:ffff::1")));
        assert!(!w.contains(&ip("192.0.2.99")), "commented out");
        assert!(w.contains(&ip("127.0.0.1")) && w.contains(&ip("127.8.9.10")) && w.contains(&ip("::1")));
        assert!(w.contains(&ip("::ffff:192.0.2.10")));
    }

    #[test]
    fn nested_and_adjacent_entries() {
        // Nested, overlapping and adjacent entries merge into ranges; the answers are the nets'.
        let w = Whitelist::parse("192.0.2.128/25\n192.0.2.0/24\n192.0.2.7\n198.51.100.0/25\n198.51.100.128/25\n2001:db8::/33\n2001:db8::/32\n", Path::new("wl")).unwrap();
        for (a, want) in [
            ("192.0.1.255", false),
            ("192.0.2.0", true),
            ("192.0.2.255", true),
            ("192.0.3.0", false),
            ("198.51.100.127", true),
            ("198.51.100.128", true),
            ("198.51.101.0", false),
            ("2001:db8:ffff:ffff::1", true),
            ("2001:db9::", false),
            ("2001:db7:ffff::", false),
        ] {
            assert_eq!(w.contains(&ip(a)), want, "{a}");
            assert_eq!(w.nets().iter().any(|n| n.contains(&ip(a))), want, "{a}: the nets agree");
        }
    }

    #[test]
    fn sources_covered_or_overlapping() {
        let w = Whitelist::parse(FILE, Path::new("wl")).unwrap();
        assert!(w.covers(&src("192.0.2.10", 64)));
        assert!(w.overlaps(&src("192.0.2.10", 64)));
        assert!(!w.overlaps(&src("192.0.2.11", 64)));
        // A /64 holding one whitelisted host overlaps but is not covered.
        let s = src("2001:db8:1::66", 64);
        assert!(w.overlaps(&s) && !w.covers(&s));
        let s = src("2001:db8:2:5::66", 64);
        assert!(w.overlaps(&s) && w.covers(&s));
        assert!(!w.overlaps(&src("2001:db8:3::66", 64)));
    }

    #[test]
    fn bad_entries_name_file_and_line() {
        for (text, line) in [
            ("192.0.2.1\nmail.example.com\n", 2),
            ("\n\n192.0.2.0/33\n", 3),
            (" # indented comment is not a comment\n", 1),
            ("192.0.2.0/255.0.255.0\n", 1),
            ("192.0.2.1 192.0.2.2\n", 1),
        ] {
            let e = Whitelist::parse(text, Path::new("/etc/blocksmtp/white-list")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("/etc/blocksmtp/white-list:{line}: ")), "{msg}");
        }
        let e = Whitelist::load("/nonexistent/blocksmtp-wl").unwrap_err();
        assert!(e.to_string().starts_with("whitelist /nonexistent/blocksmtp-wl: "), "{e}");
    }

    #[test]
    fn load_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wl");
        std::fs::write(&p, FILE).unwrap();
        let w = Whitelist::load(&p).unwrap();
        assert_eq!(w.nets().len(), 2 + 5);
        assert!(Whitelist::new().contains(&ip("127.0.0.1")));
        assert!(!Whitelist::new().contains(&ip("192.0.2.10")));
    }
}
