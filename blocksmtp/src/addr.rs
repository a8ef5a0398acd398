//! What gets banned: an IPv4 address, or an IPv6 prefix (a /64 by default, since one
//! host usually owns a whole /64 and can hop between its addresses) — or a whole
//! network of either family (a prefix ban: a /24 harvested from by many addresses).
use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A ban's subject: an IPv4 address (/32) or network, or an IPv6 network (host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceAddr(IpNet);

impl SourceAddr {
    /// The source that `ip` belongs to when IPv6 is counted per `/v6_prefix`.
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are treated as IPv4.
    pub fn from_ip(ip: IpAddr, v6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpNet::V4(Ipv4Net::new(v4, 32).expect("/32 is valid"))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::from_ip(IpAddr::V4(v4), v6_prefix),
                None => {
                    let len = v6_prefix.min(128);
                    Self(IpNet::V6(Ipv6Net::new(v6, len).expect("len ≤ 128").trunc()))
                }
            },
        }
    }

    /// The network of `len` bits holding `ip` (IPv4-mapped IPv6 counts as IPv4).
    pub fn prefix_of(ip: IpAddr, v4_len: u8, v6_len: u8) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpNet::V4(Ipv4Net::new(v4, v4_len.min(32)).expect("len ≤ 32").trunc())),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::prefix_of(IpAddr::V4(v4), v4_len, v6_len),
                None => Self(IpNet::V6(Ipv6Net::new(v6, v6_len.min(128)).expect("len ≤ 128").trunc())),
            },
        }
    }

    /// A network given as a prefix (host bits are cleared).
    pub fn from_net(net: IpNet) -> Self {
        Self(net.trunc())
    }

    /// Whether this is a network wider than one banned unit: an IPv4 prefix shorter
    /// than /32, or an IPv6 prefix shorter than `v6_prefix`.
    pub fn is_prefix_ban(&self, v6_prefix: u8) -> bool {
        match self.0 {
            IpNet::V4(n) => n.prefix_len() < 32,
            IpNet::V6(n) => n.prefix_len() < v6_prefix,
        }
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn net(&self) -> IpNet {
        self.0
    }

    pub fn is_v4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    /// Whether `ip` falls inside this source.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl fmt::Display for SourceAddr {
    /// `192.0.2.66` for an IPv4 address, `192.0.2.0/24` for an IPv4 network,
    /// `2001:db8::/64` for IPv6 (a single v6 host: `/128`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpNet::V4(n) if n.prefix_len() == 32 => write!(f, "{}", n.addr()),
            IpNet::V4(n) => write!(f, "{}/{}", n.network(), n.prefix_len()),
            IpNet::V6(n) => write!(f, "{}/{}", n.network(), n.prefix_len()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceAddrError {
    #[error("{0:?} is not an IP address or prefix")]
    Invalid(String),
    #[error("{0:?}: the prefix has host bits set (did you mean {1}?)")]
    HostBits(String, String),
}

impl FromStr for SourceAddr {
    type Err = SourceAddrError;

    /// `192.0.2.66`, `192.0.2.66/32`, `192.0.2.0/24`, `2001:db8::/64`, or a bare IPv6
    /// address (a /128). A prefix with host bits set is refused (a typo, most likely).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let s_unbracketed = s.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = s_unbracketed.parse::<IpAddr>() {
            return Ok(Self::from_ip(ip, 128));
        }
        let net: IpNet = s.parse().map_err(|_| SourceAddrError::Invalid(s.to_string()))?;
        if net.trunc() != net {
            return Err(SourceAddrError::HostBits(s.to_string(), net.trunc().to_string()));
        }
        Ok(Self(net))
    }
}

impl serde::Serialize for SourceAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SourceAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_hosts_collapse_to_their_prefix() {
        let a = SourceAddr::from_ip("2001:db8:0:0:0:0:0:66".parse().unwrap(), 64);
        let b = SourceAddr::from_ip("2001:db8::1:2:3:4".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8::/64");
        assert!(a.contains(&"2001:db8::ffff".parse().unwrap()));
        assert!(!a.contains(&"2001:db8:0:1::1".parse().unwrap()));
    }

    #[test]
    fn prefixes() {
        let p = SourceAddr::prefix_of("192.0.2.66".parse().unwrap(), 24, 48);
        assert_eq!(p.to_string(), "192.0.2.0/24");
        assert!(p.is_prefix_ban(64) && p.contains(&"192.0.2.1".parse().unwrap()));
        let p = SourceAddr::prefix_of("2001:db8:bad:1::66".parse().unwrap(), 24, 48);
        assert_eq!(p.to_string(), "2001:db8:bad::/48");
        assert!(p.is_prefix_ban(64) && !SourceAddr::from_ip("2001:db8::1".parse().unwrap(), 64).is_prefix_ban(64));
        assert_eq!(SourceAddr::prefix_of("::ffff:192.0.2.66".parse().unwrap(), 24, 48).to_string(), "192.0.2.0/24");
        // A /24 ban and the address .0 are different sources.
        assert_ne!("192.0.2.0".parse::<SourceAddr>().unwrap(), "192.0.2.0/24".parse::<SourceAddr>().unwrap());
    }

    #[test]
    fn v4_and_mapped() {
        let a = SourceAddr::from_ip("::ffff:192.0.2.66".parse().unwrap(), 64);
        assert_eq!(a.to_string(), "192.0.2.66");
        assert!(a.is_v4());
    }

    #[test]
    fn parses_what_admins_type() {
        assert_eq!("192.0.2.66".parse::<SourceAddr>().unwrap().to_string(), "192.0.2.66");
        assert_eq!("192.0.2.66/32".parse::<SourceAddr>().unwrap().to_string(), "192.0.2.66");
        assert_eq!("2001:db8::/64".parse::<SourceAddr>().unwrap().to_string(), "2001:db8::/64");
        assert_eq!("2001:db8::66".parse::<SourceAddr>().unwrap().to_string(), "2001:db8::66/128");
        assert_eq!("192.0.2.0/24".parse::<SourceAddr>().unwrap().to_string(), "192.0.2.0/24");
        assert!(matches!("192.0.2.1/24".parse::<SourceAddr>(), Err(SourceAddrError::HostBits(..))));
        assert_eq!("2001:db8:bad::/48".parse::<SourceAddr>().unwrap().to_string(), "2001:db8:bad::/48");
        assert!(matches!("2001:db8::1/64".parse::<SourceAddr>(), Err(SourceAddrError::HostBits(..))));
        assert!(matches!("example.com".parse::<SourceAddr>(), Err(SourceAddrError::Invalid(_))));
    }
}
