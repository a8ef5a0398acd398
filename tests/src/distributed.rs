//! Scoring a replay of a distributed-harvest scenario (tests/src/loggen.rs): which of
//! the campaign's guesses were answered before a covering ban was in force, how many
//! of its addresses a ban covered, and which innocents were banned. Shared by
//! `bench-distributed` and the replay-only CI test.
use std::net::IpAddr;

use ipnet::IpNet;

use crate::loggen::{Rendered, Scenario};

/// A ban as a tool reported it: what, decided when (unix µs), for how long (s).
#[derive(Clone, Debug)]
pub struct Ban {
    pub net: IpNet,
    pub at_us: i64,
    pub secs: u64,
}

impl Ban {
    /// From replay's JSON (`source` an address or CIDR, `banned_at` RFC 3339, `ban_time`).
    pub fn from_replay(b: &serde_json::Value) -> anyhow::Result<Self> {
        let src = b["source"].as_str().ok_or_else(|| anyhow::anyhow!("ban without source: {b}"))?;
        let net = parse_net(src)?;
        let at_us = match b["banned_at_unix"].as_f64() {
            Some(f) => (f * 1e6).round() as i64,
            None => {
                let at = b["banned_at"].as_str().ok_or_else(|| anyhow::anyhow!("ban without banned_at: {b}"))?;
                let at = blocksmtp::parse::time::parse_rfc3339(at.as_bytes()).ok_or_else(|| anyhow::anyhow!("bad banned_at {at}"))?;
                // One-second precision: the triggering guess must not count as blocked.
                at.duration_since(std::time::UNIX_EPOCH)?.as_micros() as i64 + 999_999
            }
        };
        Ok(Self { net, at_us, secs: b["ban_time"].as_u64().unwrap_or(0) })
    }

    /// Whether this ban covers `ip` at `t_us`: decided before it and not expired.
    pub fn blocks(&self, ip: &IpAddr, t_us: i64) -> bool {
        self.net.contains(ip) && t_us > self.at_us && t_us < self.at_us + self.secs as i64 * 1_000_000
    }
}

pub fn parse_net(s: &str) -> anyhow::Result<IpNet> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Ok(s.parse::<IpNet>()?)
}

/// The outcome for one tool on one scenario.
#[derive(Clone, Debug, Default)]
pub struct Score {
    pub guesses: usize,
    pub answered: usize,
    pub addresses: usize,
    pub covered: usize,
    /// Innocent addresses any ban covered.
    pub innocents_banned: Vec<IpAddr>,
    pub bans: usize,
}

impl Score {
    pub fn answered_share(&self) -> f64 {
        self.answered as f64 / self.guesses.max(1) as f64
    }

    pub fn covered_share(&self) -> f64 {
        self.covered as f64 / self.addresses.max(1) as f64
    }
}

pub fn score(s: &Scenario, r: &Rendered, bans: &[Ban]) -> Score {
    let answered = r.campaign_guesses.iter().filter(|(t, ip)| !bans.iter().any(|b| b.blocks(ip, *t))).count();
    let covered = s.campaign.iter().filter(|ip| bans.iter().any(|b| b.net.contains(*ip))).count();
    let innocents_banned = s.innocents.iter().filter(|ip| bans.iter().any(|b| b.net.contains(*ip))).copied().collect();
    Score { guesses: r.campaign_guesses.len(), answered, addresses: s.campaign.len(), covered, innocents_banned, bans: bans.len() }
}

/// A fail2ban jail over `(ip, unix seconds)` failures: `maxretry` within `findtime`
/// bans for `bantime`; failures of a banned address are dropped (as iptables would).
pub fn jail(failures: &[(IpAddr, i64)], maxretry: usize, findtime: i64, bantime: i64) -> Vec<Ban> {
    let mut sorted = failures.to_vec();
    sorted.sort_by_key(|f| f.1);
    let mut recent: std::collections::HashMap<IpAddr, Vec<i64>> = Default::default();
    let mut until: std::collections::HashMap<IpAddr, i64> = Default::default();
    let mut bans = Vec::new();
    for (ip, t) in sorted {
        if until.get(&ip).is_some_and(|u| t < *u) {
            continue;
        }
        let v = recent.entry(ip).or_default();
        v.retain(|x| t - x < findtime);
        v.push(t);
        if v.len() >= maxretry {
            v.clear();
            until.insert(ip, t + bantime);
            bans.push(Ban { net: IpNet::from(ip), at_us: t * 1_000_000, secs: bantime as u64 });
        }
    }
    bans
}
