//! What gets banned: an IPv4 address, or an IPv6 prefix (a /64 by default, since one
//! host usually owns a whole /64 and can hop between its addresses).
use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A ban's subject: an IPv4 /32 or an IPv6 network (host bits zero).
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

    /// A network as it is (host bits cleared): a single address or a prefix.
    pub fn from_net(net: IpNet) -> Self {
        Self(net.trunc())
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
    /// `192.0.2.66` for IPv4, `2001:db8::/64` for IPv6 (a single v6 host: `/128`).
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
    #[error("{0:?}: IPv4 bans are per address; a prefix other than /32 is not supported")]
    V4Prefix(String),
    #[error("{0:?}: the prefix has host bits set (did you mean {1}?)")]
    HostBits(String, String),
}

impl FromStr for SourceAddr {
    type Err = SourceAddrError;

    /// `192.0.2.66`, `192.0.2.66/32`, `2001:db8::/64`, or a bare IPv6 address (a /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let s_unbracketed = s.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = s_unbracketed.parse::<IpAddr>() {
            return Ok(Self::from_ip(ip, 128));
        }
        let net: IpNet = s.parse().map_err(|_| SourceAddrError::Invalid(s.to_string()))?;
        match net {
            IpNet::V4(n) if n.prefix_len() != 32 => Err(SourceAddrError::V4Prefix(s.to_string())),
            IpNet::V4(n) => Ok(Self(IpNet::V4(n))),
            IpNet::V6(n) if n.trunc() != n => {
                Err(SourceAddrError::HostBits(s.to_string(), n.trunc().to_string()))
            }
            IpNet::V6(n) => Ok(Self(IpNet::V6(n))),
        }
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
        assert!(matches!("192.0.2.0/24".parse::<SourceAddr>(), Err(SourceAddrError::V4Prefix(_))));
        assert!(matches!("2001:db8::1/64".parse::<SourceAddr>(), Err(SourceAddrError::HostBits(..))));
        assert!(matches!("example.com".parse::<SourceAddr>(), Err(SourceAddrError::Invalid(_))));
    }
}
