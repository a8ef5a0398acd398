//! End a banned source's open SMTP sessions through the kernel: sock_diag's
//! SOCK_DESTROY (what `ss -K` does) resets each established TCP connection from the
//! source to a protected port, so Postfix's smtpd, Exim or any other MTA sees the
//! connection aborted and frees its process at once. Dropped packets alone leave such
//! a session hanging until the MTA's own timeout (Postfix: 300 s).
//!
//! The socket list is a dump of the daemon's own network namespace (the MTA's), kept
//! to connections whose local port is protected and whose peer lies in a banned
//! source. IPv4 clients of a dual-stack listener appear as AF_INET6 sockets with an
//! IPv4-mapped peer (`::ffff:192.0.2.66`): they are matched as IPv4.
//!
//! Needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN; [`SessionKiller::probe`] tells
//! whether this kernel has it, once at start.
use std::{
    io,
    net::IpAddr,
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    message::SockDiagDestroy,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::addr::SourceAddr;

/// One TCP connection of a banned source to a protected port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The banned client (IPv4-mapped peers shown as IPv4).
    pub peer: IpAddr,
    pub peer_port: u16,
    pub local: IpAddr,
    pub local_port: u16,
    family: u8,
    id: SocketId,
}

/// Whether this kernel can destroy sockets, as found by [`SessionKiller::probe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// Why not (the kernel lacks CONFIG_INET_DIAG_DESTROY, or no CAP_NET_ADMIN).
    No(String),
}

/// Resets banned sources' established connections to the protected ports.
#[derive(Debug)]
pub struct SessionKiller {
    ports: Vec<u16>,
}

/// States worth ending: the connection is up or being torn down slowly by the peer.
fn live_states() -> StateFlags {
    StateFlags::ESTABLISHED | StateFlags::SYN_RECV | StateFlags::CLOSE_WAIT
}

fn peer_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl SessionKiller {
    pub fn new(ports: &[u16]) -> Self {
        Self { ports: ports.to_vec() }
    }

    /// Ask the kernel to destroy a socket that cannot exist: ENOENT means SOCK_DESTROY
    /// works here; EOPNOTSUPP (no CONFIG_INET_DIAG_DESTROY) or EPERM mean it does not.
    pub fn probe() -> Support {
        let mut id = SocketId::new_v4();
        // Port 0 to port 0 from 0.0.0.0: never a socket. Cookie "any".
        id.cookie = [0xff; 8];
        match destroy(AF_INET, &id) {
            Ok(()) => Support::Yes,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Support::Yes,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                Support::No("the kernel lacks SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)".into())
            }
            Err(e) => Support::No(format!("sock_diag SOCK_DESTROY: {e}")),
        }
    }

    /// The open sessions of any of `sources` to a protected port.
    pub fn sessions_of(&self, sources: &[SourceAddr]) -> io::Result<Vec<Session>> {
        let mut out = Vec::new();
        if sources.is_empty() {
            return Ok(out);
        }
        // Dual-stack listeners hold IPv4 clients as AF_INET6 sockets: IPv4 sources
        // need both dumps.
        let families: &[u8] = if sources.iter().any(SourceAddr::is_v4) { &[AF_INET, AF_INET6] } else { &[AF_INET6] };
        for &family in families {
            dump(family, |id| {
                if !self.ports.contains(&id.source_port) {
                    return;
                }
                let peer = peer_ip(id.destination_address);
                if sources.iter().any(|s| s.contains(&peer)) {
                    out.push(Session {
                        peer,
                        peer_port: id.destination_port,
                        local: peer_ip(id.source_address),
                        local_port: id.source_port,
                        family,
                        id: id.clone(),
                    });
                }
            })?;
        }
        Ok(out)
    }

    /// Reset every open session of `sources`; returns those ended. A session that
    /// closed meanwhile (ENOENT) is not an error.
    pub fn end_sessions_of(&self, sources: &[SourceAddr]) -> io::Result<Vec<Session>> {
        let mut ended = Vec::new();
        for s in self.sessions_of(sources)? {
            match destroy(s.family, &s.id) {
                Ok(()) => ended.push(s),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ended)
    }
}

fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_SOCK_DIAG)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

fn send<T: NetlinkSerializable + std::fmt::Debug>(s: &Socket, flags: u16, payload: T) -> io::Result<()> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    let mut msg = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send(&buf, 0)?;
    Ok(())
}

fn request(family: u8, id: SocketId) -> InetRequest {
    InetRequest { family, protocol: IPPROTO_TCP, extensions: ExtensionFlags::empty(), states: live_states(), socket_id: id }
}

/// Dump the TCP sockets of `family` in live states, calling `each` with their ids.
fn dump(family: u8, mut each: impl FnMut(&SocketId)) -> io::Result<()> {
    let s = socket()?;
    let id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    send(&s, NLM_F_REQUEST | NLM_F_DUMP, SockDiagMessage::InetRequest(request(family, id)))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.recv(&mut &mut buf[..], 0)?;
        if n == 0 {
            return Ok(());
        }
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[off..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag reply: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => each(&r.header.socket_id),
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// SOCK_DESTROY one socket, waiting for the kernel's answer.
fn destroy(family: u8, id: &SocketId) -> io::Result<()> {
    let s = socket()?;
    let req = SockDiagDestroy::new(SockDiagMessage::InetRequest(request(family, id.clone())));
    send(&s, NLM_F_REQUEST | NLM_F_ACK, req)?;
    let mut buf = vec![0u8; 8192];
    let n = s.recv(&mut &mut buf[..], 0)?;
    let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag reply: {e}")))?;
    match msg.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn mapped_peers_are_ipv4() {
        let m: Ipv6Addr = "::ffff:192.0.2.66".parse().unwrap();
        assert_eq!(peer_ip(IpAddr::V6(m)), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66)));
        let v6: Ipv6Addr = "2001:db8::66".parse().unwrap();
        assert_eq!(peer_ip(IpAddr::V6(v6)), IpAddr::V6(v6));
    }
}
