//! rtnetlink for the dataplane: what is attached to an interface (XDP program ids, tc
//! filters and qdiscs), removing our cls_bpf filter and clsact qdisc on kernels before
//! TCX, and a link-event subscription so a re-created interface is re-attached at once.
use std::io;

use anyhow::Context as _;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp},
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{AsyncSocket as _, AsyncSocketExt as _, Socket, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};

/// RTNLGRP_LINK as a multicast group number (linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;

/// Send one request and collect the replies (a dump's messages, or the ACK).
fn request(msg: RouteNetlinkMessage, flags: u16) -> anyhow::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
    socket.bind_auto().context("binding the rtnetlink socket")?;
    socket.connect(&SocketAddr::new(0, 0)).context("connecting the rtnetlink socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).context("rtnetlink send")?;

    let mut out = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full().context("rtnetlink receive")?;
        let mut off = 0;
        while off < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..]).context("parsing an rtnetlink reply")?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => match e.code {
                    None => return Ok(out),
                    Some(code) => return Err(io::Error::from_raw_os_error(-code.get()).into()),
                },
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
        if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
            return Ok(out);
        }
    }
}

/// The XDP program ids on interface `ifindex`: (driver, generic).
pub fn xdp_prog_ids(ifindex: u32) -> anyhow::Result<(u32, u32)> {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    let replies = request(RouteNetlinkMessage::GetLink(m), 0).with_context(|| format!("RTM_GETLINK ifindex {ifindex}"))?;
    let (mut drv, mut skb) = (0, 0);
    for r in replies {
        if let RouteNetlinkMessage::NewLink(l) = r {
            for a in l.attributes {
                if let LinkAttribute::Xdp(xs) = a {
                    for x in xs {
                        match x {
                            LinkXdp::DrvProgId(id) => drv = id,
                            LinkXdp::SkbProgId(id) => skb = id,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    Ok((drv, skb))
}

/// A tc filter on an ingress hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcFilter {
    pub priority: u16,
    pub handle: u32,
    pub kind: String,
    pub prog_name: Option<String>,
    pub prog_id: Option<u32>,
}

fn tc_message(ifindex: u32, parent: TcHandle) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = ifindex as i32;
    m.header.parent = parent;
    m
}

const INGRESS_PARENT: TcHandle = TcHandle { major: 0xffff, minor: TcHandle::MIN_INGRESS };
const EGRESS_PARENT: TcHandle = TcHandle { major: 0xffff, minor: TcHandle::MIN_EGRESS };

/// The filters on `ifindex`'s clsact ingress hook (empty when there is no clsact).
pub fn ingress_filters(ifindex: u32) -> anyhow::Result<Vec<TcFilter>> {
    filters(ifindex, INGRESS_PARENT)
}

/// No filter on either hook of `ifindex`'s clsact: removing the qdisc takes nothing of others'.
pub fn clsact_unused(ifindex: u32) -> anyhow::Result<bool> {
    Ok(filters(ifindex, INGRESS_PARENT)?.is_empty() && filters(ifindex, EGRESS_PARENT)?.is_empty())
}

fn filters(ifindex: u32, parent: TcHandle) -> anyhow::Result<Vec<TcFilter>> {
    let replies = match request(RouteNetlinkMessage::GetTrafficFilter(tc_message(ifindex, parent)), NLM_F_DUMP) {
        Ok(r) => r,
        // No clsact qdisc (or no such device): no filters.
        Err(e) if matches!(e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error), Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e).with_context(|| format!("RTM_GETTFILTER ifindex {ifindex}")),
    };
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewTrafficFilter(f) = r else { continue };
        if f.header.index != ifindex as i32 || u32::from(f.header.handle) == 0 {
            // The handle-0 entry is the priority's chain head, not a filter.
            continue;
        }
        let mut tf = TcFilter {
            priority: (f.header.info >> 16) as u16,
            handle: f.header.handle.into(),
            kind: String::new(),
            prog_name: None,
            prog_id: None,
        };
        for a in f.attributes {
            match a {
                TcAttribute::Kind(k) => tf.kind = k,
                TcAttribute::Options(opts) => {
                    for o in opts {
                        match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => tf.prog_name = Some(n),
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => tf.prog_id = Some(id),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        out.push(tf);
    }
    Ok(out)
}

/// Whether `ifindex` has a clsact qdisc.
pub fn has_clsact(ifindex: u32) -> anyhow::Result<bool> {
    let replies = request(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()), NLM_F_DUMP).context("RTM_GETQDISC")?;
    Ok(replies.into_iter().any(|r| {
        matches!(&r, RouteNetlinkMessage::NewQueueDiscipline(q)
            if q.header.index == ifindex as i32
                && q.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact")))
    }))
}

/// Delete one ingress filter. `Ok(false)` when it was not there.
pub fn delete_ingress_filter(ifindex: u32, priority: u16, handle: u32) -> anyhow::Result<bool> {
    let mut m = tc_message(ifindex, INGRESS_PARENT);
    m.header.handle = handle.into();
    // tcm_info: priority in the upper 16 bits, protocol (ETH_P_ALL, network order) below.
    m.header.info = (u32::from(priority) << 16) | u32::from((libc::ETH_P_ALL as u16).to_be());
    m.attributes.push(TcAttribute::Kind("bpf".into()));
    match request(RouteNetlinkMessage::DelTrafficFilter(m), NLM_F_ACK) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting tc filter prio {priority} handle {handle:#x} on ifindex {ifindex}")),
    }
}

/// Delete the clsact qdisc of `ifindex` (and every filter in it).
pub fn delete_clsact(ifindex: u32) -> anyhow::Result<()> {
    let mut m = tc_message(ifindex, TcHandle::CLSACT);
    m.header.handle = TcHandle { major: 0xffff, minor: 0 };
    m.attributes.push(TcAttribute::Kind("clsact".into()));
    match request(RouteNetlinkMessage::DelQueueDiscipline(m), NLM_F_ACK) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting the clsact qdisc of ifindex {ifindex}")),
    }
}

/// Link events (RTM_NEWLINK/DELLINK: created, deleted, renamed, up/down) in the calling
/// thread's network namespace.
pub struct LinkWatch {
    socket: TokioSocket,
}

impl LinkWatch {
    /// Subscribe; needs a running tokio runtime.
    pub fn new() -> anyhow::Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE).context("opening an rtnetlink socket for link events")?;
        socket.socket_mut().bind(&SocketAddr::new(0, 1 << (RTNLGRP_LINK - 1))).context("subscribing to rtnetlink link events")?;
        Ok(Self { socket })
    }

    /// Wait for the next batch of link events. An overrun (ENOBUFS: events were lost)
    /// counts as a change too: the caller re-checks everything anyway.
    pub async fn changed(&mut self) {
        let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf).await {
                Ok(()) if link_event(&buf) => break,
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => break,
                Err(e) => {
                    log::warn!("rtnetlink link events: {e}; re-checking interfaces every second only");
                    std::future::pending::<()>().await;
                }
            }
        }
        log::debug!("rtnetlink: link event");
        // Drain what else arrived (a re-created interface sends several messages).
        loop {
            buf.clear();
            let r = std::future::poll_fn(|cx| match self.socket.poll_recv(cx, &mut buf) {
                std::task::Poll::Pending => std::task::Poll::Ready(None),
                std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
            })
            .await;
            if !matches!(r, Some(Ok(()))) {
                break;
            }
        }
    }
}

fn link_event(data: &[u8]) -> bool {
    matches!(
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(data).map(|m| m.payload),
        Ok(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_))) | Err(_)
    )
}
