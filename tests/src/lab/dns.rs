//! A tiny authoritative DNS stub for the lab's server namespace: answers A, AAAA, MX and
//! PTR queries from a fixed table over UDP, NXDOMAIN for every other name, so sendmail's
//! sender-domain checks and reverse lookups are instant and deterministic (no query
//! ever leaves the namespace: resolv.conf points at 127.0.0.1).
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::Ordering,
    },
    time::Duration,
};

use anyhow::Context as _;

use crate::{lab::Worker, netns::Netns};

/// The records the stub serves.
#[derive(Clone, Debug, Default)]
pub struct DnsTable {
    /// Address records: name → A (IPv4) or AAAA (IPv6).
    pub addrs: Vec<(String, IpAddr)>,
    /// MX records: domain, preference, exchanger.
    pub mx: Vec<(String, u16, String)>,
    /// PTR records: address → name.
    pub ptr: Vec<(IpAddr, String)>,
}

impl DnsTable {
    /// The lab's zone: `example.com` (MX mx.example.com = 192.0.2.25 / 2001:db8::25),
    /// sender domains `example.net` and `example.org`, and forward-confirmed reverse
    /// names for the innocent client addresses only (`legit.example.net` = 192.0.2.67,
    /// `legit6.example.net` = 2001:db8::67); the harvester addresses (.66, ::66) have no
    /// reverse name, as in the reference capture.
    pub fn lab_default() -> Self {
        let mut t = Self::default();
        for (name, ip) in [
            ("mx.example.com", "192.0.2.25"),
            ("mx.example.com", "2001:db8::25"),
            ("legit.example.net", "192.0.2.67"),
            ("legit6.example.net", "2001:db8::67"),
        ] {
            t.host(name, ip.parse().unwrap());
        }
        t.addrs.push(("example.com".into(), "192.0.2.25".parse().unwrap()));
        t.addrs.push(("example.net".into(), "198.51.100.10".parse().unwrap()));
        t.addrs.push(("example.org".into(), "203.0.113.10".parse().unwrap()));
        t.mx.push(("example.com".into(), 10, "mx.example.com".into()));
        t
    }

    /// A forward-confirmed host: address record plus matching PTR.
    pub fn host(&mut self, name: &str, ip: IpAddr) -> &mut Self {
        self.addrs.push((name.to_string(), ip));
        self.ptr.push((ip, name.to_string()));
        self
    }

    /// The reverse name of `ip` (`67.2.0.192.in-addr.arpa`, nibbles `….ip6.arpa`).
    pub fn reverse_name(ip: &IpAddr) -> String {
        match ip {
            IpAddr::V4(a) => {
                let o = a.octets();
                format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
            }
            IpAddr::V6(a) => {
                let mut s = String::new();
                for b in a.octets().iter().rev() {
                    s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
                }
                s + "ip6.arpa"
            }
        }
    }
}

const A: u16 = 1;
const PTR: u16 = 12;
const MX: u16 = 15;
const AAAA: u16 = 28;
const ANY: u16 = 255;

/// Answer one query; `None` for datagrams that are not a well-formed single question.
pub fn answer(table: &DnsTable, q: &[u8]) -> Option<(Vec<u8>, String)> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question name (no compression in a question).
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qend = i + 4;
    if q.len() < qend {
        return None;
    }
    let name = labels.join(".");
    let eq = |n: &str| n.trim_end_matches('.').eq_ignore_ascii_case(&name);

    let mut answers: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut exists = false;
    for (n, ip) in &table.addrs {
        if eq(n) {
            exists = true;
            match ip {
                IpAddr::V4(a) if qtype == A || qtype == ANY => answers.push((A, a.octets().to_vec())),
                IpAddr::V6(a) if qtype == AAAA || qtype == ANY => answers.push((AAAA, a.octets().to_vec())),
                _ => {}
            }
        }
    }
    for (n, pref, exch) in &table.mx {
        if eq(n) {
            exists = true;
            if qtype == MX || qtype == ANY {
                let mut rd = pref.to_be_bytes().to_vec();
                rd.extend(encode_name(exch));
                answers.push((MX, rd));
            }
        }
    }
    for (ip, n) in &table.ptr {
        if eq(&DnsTable::reverse_name(ip)) {
            exists = true;
            if qtype == PTR || qtype == ANY {
                answers.push((PTR, encode_name(n)));
            }
        }
    }
    let rcode = if exists { 0 } else { 3 };
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]); // id
    r.push(0x84 | (q[2] & 0x01)); // QR, AA, RD copied
    r.push(0x80 | rcode); // RA, rcode
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..qend]);
    for (t, rdata) in &answers {
        r.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        r.extend_from_slice(&t.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes()); // IN
        r.extend_from_slice(&60u32.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
    }
    let desc = format!(
        "{name} type {qtype} -> {}",
        if rcode == 3 { "NXDOMAIN".to_string() } else { format!("{} answers", answers.len()) }
    );
    Some((r, desc))
}

fn encode_name(n: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for l in n.trim_end_matches('.').split('.') {
        v.push(l.len() as u8);
        v.extend_from_slice(l.as_bytes());
    }
    v.push(0);
    v
}

/// The running stub; stopped when dropped.
pub struct DnsStub {
    queries: Arc<Mutex<Vec<String>>>,
    _worker: Worker<anyhow::Result<()>>,
}

impl DnsStub {
    /// Serve `table` on UDP `addr` (e.g. 127.0.0.1:53) inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddr, table: DnsTable) -> anyhow::Result<Self> {
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stop = Worker::<()>::flag();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (queries, stop) = (queries.clone(), stop.clone());
            ns.spawn_in(move || {
                let sock = match UdpSocket::bind(addr).and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(50)))?;
                    Ok(s)
                }) {
                    Ok(s) => {
                        let _ = tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
                    if let Some((resp, desc)) = answer(&table, &buf[..n]) {
                        queries.lock().unwrap().push(desc);
                        let _ = sock.send_to(&resp, peer);
                    }
                }
            })
        };
        let worker = Worker::new(stop, thread);
        rx.recv().context("DNS stub thread")?.with_context(|| format!("binding the DNS stub on {addr}"))?;
        Ok(Self { queries, _worker: worker })
    }

    /// Queries answered so far, e.g. `66.2.0.192.in-addr.arpa type 12 -> NXDOMAIN`.
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend(encode_name(name));
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn answers_from_the_table() {
        let t = DnsTable::lab_default();
        let (r, _) = answer(&t, &query("67.2.0.192.in-addr.arpa", PTR)).unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert!(r.ends_with(&encode_name("legit.example.net")));

        let (r, _) = answer(&t, &query("66.2.0.192.in-addr.arpa", PTR)).unwrap();
        assert_eq!(r[3] & 0x0f, 3, "NXDOMAIN for the harvester");

        let (r, _) = answer(&t, &query("MX.Example.COM", AAAA)).unwrap();
        assert!(r.ends_with(&"2001:db8::25".parse::<std::net::Ipv6Addr>().unwrap().octets()));

        let (r, _) = answer(&t, &query("example.net", MX)).unwrap();
        assert_eq!((r[3] & 0x0f, u16::from_be_bytes([r[6], r[7]])), (0, 0), "NODATA");
    }

    #[test]
    fn ipv6_reverse_names_are_nibbles() {
        let n = DnsTable::reverse_name(&"2001:db8::67".parse().unwrap());
        assert_eq!(n, "7.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa");
    }
}
