//! Hand-built packets for BPF_PROG_TEST_RUN fixtures: Ethernet, 802.1Q/802.1ad tags,
//! IPv4 (with options and fragments), IPv6 (with extension headers), TCP, UDP, ICMP.
//! Checksums are left zero: the programs never read them.

#[derive(Clone, Debug)]
pub enum L3 {
    V4 { src: [u8; 4], dst: [u8; 4], options: Vec<u8>, frag_off: u16 },
    /// `ext`: extension headers in order, each `(type, total length in bytes, a multiple of 8)`.
    V6 { src: [u8; 16], dst: [u8; 16], ext: Vec<(u8, usize)> },
    /// Any other EtherType with `len` bytes of payload.
    Other { ethertype: u16, len: usize },
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp { sport: u16, dport: u16 },
    Udp { sport: u16, dport: u16 },
    Icmp,
    /// Protocol number, no header bytes (e.g. IPv6 "no next header").
    Raw(u8),
}

#[derive(Clone, Debug)]
pub struct Packet {
    /// TPIDs of VLAN tags, outermost first (0x8100, 0x88a8).
    pub vlans: Vec<u16>,
    pub l3: L3,
    pub l4: L4,
}

pub const SMTP: u16 = 25;

impl Packet {
    pub fn tcp4(src: [u8; 4], dst: [u8; 4], dport: u16) -> Self {
        Self {
            vlans: vec![],
            l3: L3::V4 { src, dst, options: vec![], frag_off: 0 },
            l4: L4::Tcp { sport: 40000, dport },
        }
    }

    pub fn tcp6(src: [u8; 16], dst: [u8; 16], dport: u16) -> Self {
        Self { vlans: vec![], l3: L3::V6 { src, dst, ext: vec![] }, l4: L4::Tcp { sport: 40000, dport } }
    }

    pub fn vlan(mut self, tpids: &[u16]) -> Self {
        self.vlans = tpids.to_vec();
        self
    }

    pub fn l4(mut self, l4: L4) -> Self {
        self.l4 = l4;
        self
    }

    pub fn ipv4_options(mut self, opts: &[u8]) -> Self {
        if let L3::V4 { options, .. } = &mut self.l3 {
            assert!(opts.len().is_multiple_of(4) && opts.len() <= 40, "IPv4 options pad to 4 bytes, ≤ 40");
            *options = opts.to_vec();
        }
        self
    }

    pub fn frag_off(mut self, v: u16) -> Self {
        if let L3::V4 { frag_off, .. } = &mut self.l3 {
            *frag_off = v;
        }
        self
    }

    pub fn ipv6_ext(mut self, headers: &[(u8, usize)]) -> Self {
        if let L3::V6 { ext, .. } = &mut self.l3 {
            *ext = headers.to_vec();
        }
        self
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp => match self.l3 {
                L3::V6 { .. } => 58,
                _ => 1,
            },
            L4::Raw(p) => p,
        }
    }

    /// The packet's bytes, and the offsets at which each header ends.
    pub fn build_with_boundaries(&self) -> (Vec<u8>, Vec<usize>) {
        let mut b = Vec::with_capacity(128);
        let mut bounds = Vec::new();
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // dst MAC
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // src MAC
        let ethertype = match &self.l3 {
            L3::V4 { .. } => 0x0800u16,
            L3::V6 { .. } => 0x86dd,
            L3::Other { ethertype, .. } => *ethertype,
        };
        for (i, tpid) in self.vlans.iter().enumerate() {
            b.extend_from_slice(&tpid.to_be_bytes());
            bounds.push(b.len());
            b.extend_from_slice(&(100 + i as u16).to_be_bytes()); // VLAN id
        }
        b.extend_from_slice(&ethertype.to_be_bytes());
        bounds.push(b.len());
        let proto = self.proto();
        let l4 = self.l4_bytes();
        match &self.l3 {
            L3::V4 { src, dst, options, frag_off } => {
                let ihl = 5 + options.len() / 4;
                let total = (ihl * 4 + l4.len()) as u16;
                b.push(0x40 | ihl as u8);
                b.push(0);
                b.extend_from_slice(&total.to_be_bytes());
                b.extend_from_slice(&[0x12, 0x34]);
                b.extend_from_slice(&frag_off.to_be_bytes());
                b.push(64);
                b.push(proto);
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(src);
                b.extend_from_slice(dst);
                bounds.push(b.len());
                b.extend_from_slice(options);
                if !options.is_empty() {
                    bounds.push(b.len());
                }
            }
            L3::V6 { src, dst, ext } => {
                let ext_len: usize = ext.iter().map(|(_, l)| l).sum();
                b.extend_from_slice(&[0x60, 0, 0, 0]);
                b.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                b.push(ext.first().map_or(proto, |(t, _)| *t));
                b.push(64);
                b.extend_from_slice(src);
                b.extend_from_slice(dst);
                bounds.push(b.len());
                for (i, (_, len)) in ext.iter().enumerate() {
                    assert!(*len >= 8 && len % 8 == 0, "extension headers are multiples of 8 bytes");
                    let next = ext.get(i + 1).map_or(proto, |(t, _)| *t);
                    b.push(next);
                    b.push((len / 8 - 1) as u8);
                    // PadN option filling the rest (valid for HBH/DST; harmless for routing).
                    b.push(1);
                    b.push((len - 4) as u8);
                    b.extend(std::iter::repeat_n(0, len - 4));
                    bounds.push(b.len());
                }
            }
            L3::Other { len, .. } => {
                b.extend(std::iter::repeat_n(0xab, *len));
                return (b, bounds);
            }
        }
        b.extend_from_slice(&l4);
        bounds.push(b.len());
        (b, bounds)
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_boundaries().0
    }

    fn l4_bytes(&self) -> Vec<u8> {
        match self.l4 {
            L4::Tcp { sport, dport } => {
                let mut t = Vec::with_capacity(20);
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
                t.push(0x50); // data offset 5
                t.push(0x02); // SYN
                t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, csum, urg
                t
            }
            L4::Udp { sport, dport } => {
                let mut u = Vec::with_capacity(8);
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&[0, 8, 0, 0]);
                u
            }
            L4::Icmp => vec![8, 0, 0, 0, 0, 1, 0, 1],
            L4::Raw(_) => vec![],
        }
    }
}

/// `a.b.c.d` → bytes.
pub fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().expect("IPv4 literal").octets()
}

/// An IPv6 literal → bytes.
pub fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("IPv6 literal").octets()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_layout() {
        let (p, bounds) = Packet::tcp4(v4("192.0.2.66"), v4("192.0.2.25"), 25).build_with_boundaries();
        assert_eq!(p.len(), 14 + 20 + 20);
        assert_eq!(bounds, vec![14, 34, 54]);
        assert_eq!(&p[12..14], &[0x08, 0x00]);
        assert_eq!(p[23], 6);
        assert_eq!(&p[26..30], &[192, 0, 2, 66]);
        assert_eq!(&p[36..38], &25u16.to_be_bytes());
    }

    #[test]
    fn qinq_ipv6_ext_layout() {
        let pkt = Packet::tcp6(v6("2001:db8::66"), v6("2001:db8::25"), 25)
            .vlan(&[0x88a8, 0x8100])
            .ipv6_ext(&[(0, 8), (60, 16)]);
        let (p, bounds) = pkt.build_with_boundaries();
        assert_eq!(bounds, vec![14, 18, 22, 62, 70, 86, 106]);
        assert_eq!(&p[12..14], &[0x88, 0xa8]);
        assert_eq!(&p[20..22], &[0x86, 0xdd]);
        assert_eq!(p[22 + 6], 0, "first next-header is hop-by-hop");
        assert_eq!(p[62], 60);
        assert_eq!(p[70], 6);
        assert_eq!(p[71], 1, "16-byte header: length 1 (in 8-byte units, minus one)");
    }
}
