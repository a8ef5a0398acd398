//! Packet headers: bounds-checked access for the verifier, and the parse of an
//! Ethernet frame down to the TCP destination port.
use blocksmtp_common::Verdict;

// EtherTypes and protocol numbers as they appear in the packet (network byte order).
const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
const ETH_P_8021AD: u16 = 0x88A8u16.to_be();
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
/// Extension headers walked before giving up (real SYNs carry none or one).
const MAX_IPV6_EXT: usize = 4;

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// A TCP segment's addresses and destination port, as they sit in the packet.
pub enum Tcp {
    /// Source and destination as packet bytes.
    V4 { saddr: [u8; 4], daddr: [u8; 4], dport_be: u16 },
    /// Addresses as two 64-bit words each (two loads, two compares, two ANDs), packet order.
    V6 { saddr: [u64; 2], daddr: [u64; 2], dport_be: u16 },
}

/// A pointer to a `T` at `off` bytes into the packet, if the packet is long enough.
#[inline(always)]
pub fn at<T>(start: usize, end: usize, off: usize) -> Option<*const T> {
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Load a `T` with one instruction. Packet fields are not always naturally aligned
/// (IP starts at offset 14); x86-64 and arm64 allow that, and `read_unaligned` would
/// compile to one load per byte on BPF.
#[inline(always)]
pub fn load<T: Copy>(start: usize, end: usize, off: usize) -> Option<T> {
    at::<T>(start, end, off).map(|p| unsafe { *p })
}

/// The TCP destination port (network order), if a whole TCP header is present.
#[inline(always)]
pub fn tcp_dport(start: usize, end: usize, off: usize) -> Option<u16> {
    at::<[u8; TCP_HLEN]>(start, end, off)?;
    load::<u16>(start, end, off + 2)
}

/// Parse a frame down to TCP, or say why it is not a TCP segment we can read.
#[inline(always)]
pub fn parse(start: usize, end: usize) -> Result<Tcp, Verdict> {
    let mut proto = load::<u16>(start, end, 12).ok_or(Verdict::PassMalformed)?;
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, 802.1ad QinQ).
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = load::<u16>(start, end, off + 2).ok_or(Verdict::PassMalformed)?;
        off += VLAN_HLEN;
    }
    if proto == ETH_P_IP {
        ipv4(start, end, off)
    } else if proto == ETH_P_IPV6 {
        ipv6(start, end, off)
    } else {
        Err(Verdict::PassNotIp)
    }
}

#[inline(always)]
fn ipv4(start: usize, end: usize, off: usize) -> Result<Tcp, Verdict> {
    let ip = at::<Ipv4Hdr>(start, end, off).ok_or(Verdict::PassMalformed)?;
    let ip = unsafe { &*ip };
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Verdict::PassMalformed);
    }
    // Fragment offset ≠ 0: no TCP header here (the first fragment carries it).
    if u16::from_be(ip.frag_off) & 0x1fff != 0 {
        return Err(Verdict::PassFragment);
    }
    if ip.protocol != IPPROTO_TCP {
        return Err(Verdict::PassNotTcp);
    }
    let dport_be = tcp_dport(start, end, off + ihl).ok_or(Verdict::PassMalformed)?;
    Ok(Tcp::V4 { saddr: ip.saddr.to_ne_bytes(), daddr: ip.daddr.to_ne_bytes(), dport_be })
}

#[inline(always)]
fn ipv6(start: usize, end: usize, off: usize) -> Result<Tcp, Verdict> {
    let mut next = load::<u8>(start, end, off + 6).ok_or(Verdict::PassMalformed)?;
    let (Some(saddr), Some(daddr)) = (load::<[u64; 2]>(start, end, off + 8), load::<[u64; 2]>(start, end, off + 24)) else {
        return Err(Verdict::PassMalformed);
    };
    let mut l4 = off + IPV6_HLEN;
    // Skip hop-by-hop, routing and destination-options headers.
    for _ in 0..MAX_IPV6_EXT {
        if next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS {
            break;
        }
        let ext = load::<[u8; 2]>(start, end, l4).ok_or(Verdict::PassMalformed)?;
        next = ext[0];
        l4 += (ext[1] as usize + 1) * 8;
    }
    if next == IPPROTO_FRAGMENT {
        return Err(Verdict::PassFragment);
    }
    if next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS {
        return Err(Verdict::PassMalformed);
    }
    if next != IPPROTO_TCP {
        return Err(Verdict::PassNotTcp);
    }
    let dport_be = tcp_dport(start, end, l4).ok_or(Verdict::PassMalformed)?;
    Ok(Tcp::V6 { saddr, daddr, dport_be })
}
