//! A fleet on one L2 segment: a bridge `br0` in a hub namespace joins four hosts — a
//! CrowdSec LAPI host, two MX hosts and a client host — each by a veth whose inner end
//! is `eth0`. Shared by the fleet test (tests/tests/crowdsec_fleet.rs) and the fleet
//! benchmark (bench-fleet). Documentation addresses only; every namespace is deleted
//! when the `Fleet` drops (hosts first, the hub last).
use anyhow::Context as _;

use crate::netns::Netns;

/// The addresses (`ADDR/LEN`) each host gets on its `eth0`.
#[derive(Clone, Debug, Default)]
pub struct FleetAddrs {
    pub lapi: Vec<String>,
    pub mx1: Vec<String>,
    pub mx2: Vec<String>,
    pub client: Vec<String>,
}

pub struct Fleet {
    // Drop order: hosts first, then the hub (its veth ends go with the hosts' ends).
    pub client: Netns,
    pub mx1: Netns,
    pub mx2: Netns,
    pub lapi: Netns,
    pub hub: Netns,
}

impl Fleet {
    /// Build the segment; `tag` prefixes the namespaces' names (`bsm-<tag>…-PID-N`) so
    /// that runs of different tests or benchmarks are told apart.
    pub fn new(tag: &str, addrs: &FleetAddrs) -> anyhow::Result<Self> {
        let hub = Netns::new(&format!("{tag}hub"))?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        let mut hosts = Vec::new();
        for (host, list) in [("lapi", &addrs.lapi), ("mx1", &addrs.mx1), ("mx2", &addrs.mx2), ("cl", &addrs.client)] {
            let ns = Netns::new(&format!("{tag}{host}"))?;
            // Interface names are per namespace: the hub end is named after the host only.
            let hub_end = format!("h{host}");
            hub.ip(&["link", "add", &hub_end, "type", "veth", "peer", "name", "eth0", "netns", &ns.name])
                .with_context(|| format!("veth for {host}"))?;
            hub.ip(&["link", "set", &hub_end, "master", "br0", "up"])?;
            // One `ip -batch` for long address lists (benchmarks add hundreds of sources).
            let lines: Vec<String> = list.iter().map(|a| format!("addr add {a} dev eth0")).collect();
            if !lines.is_empty() {
                crate::bench::net::ip_batch(&ns, &lines).with_context(|| format!("addresses of {host}"))?;
            }
            ns.ip(&["link", "set", "eth0", "up"])?;
            hosts.push(ns);
        }
        let client = hosts.pop().expect("four hosts");
        let mx2 = hosts.pop().expect("four hosts");
        let mx1 = hosts.pop().expect("four hosts");
        let lapi = hosts.pop().expect("four hosts");
        Ok(Self { client, mx1, mx2, lapi, hub })
    }
}
