//! Enforce: turn a ban decision into dropped packets.
//!
//! Three enforcers share one interface: `xdp` (the eBPF dataplane, default),
//! `iptables` (the old daemon's chain, for plain hosts) and `dry-run` (log only).
use std::time::{Duration, SystemTime};

use crate::{
    addr::SourceAddr,
    dataplane::{AttachmentStatus, DataplaneConfig},
};

pub mod dryrun;
pub mod sockdiag;
pub mod iptables;
pub mod xdp;

/// One ban as an enforcer holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ActiveBan {
    pub source: SourceAddr,
    /// Wall-clock end of the ban.
    pub expires_at: SystemTime,
    /// Packets dropped under this ban, where the enforcer counts them.
    pub dropped: Option<u64>,
    /// Set by `blocksmtp ban`, not by detection.
    pub manual: bool,
}

/// What every enforcer offers the daemon.
pub trait Enforcer: Send {
    /// `xdp`, `iptables` or `dry-run`.
    fn name(&self) -> &'static str;

    /// Ban `source` for `duration` from now. Banning an already-banned source keeps
    /// the later of the two expiries.
    fn ban(&mut self, source: &SourceAddr, duration: Duration, manual: bool) -> anyhow::Result<()>;

    /// Ban many sources at once; enforcers that can batch (iptables-restore) do.
    fn ban_many(&mut self, bans: &[(SourceAddr, Duration, bool)]) -> anyhow::Result<()> {
        for (source, duration, manual) in bans {
            self.ban(source, *duration, *manual)?;
        }
        Ok(())
    }

    /// Lift a ban. `Ok(false)` when there was none.
    fn unban(&mut self, source: &SourceAddr) -> anyhow::Result<bool>;

    /// Unexpired bans.
    fn list(&self) -> anyhow::Result<Vec<ActiveBan>>;

    /// How many bans are in force (expired ones may count until the next sweep).
    fn active_count(&self) -> anyhow::Result<usize> {
        Ok(self.list()?.len())
    }

    /// Remove expired bans; returns the sources removed.
    fn sweep_expired(&mut self) -> anyhow::Result<Vec<SourceAddr>>;

    /// Whether `source`'s ban is in force in the kernel now (the truth the daemon's
    /// "banned" is read from).
    fn contains(&self, source: &SourceAddr) -> anyhow::Result<bool> {
        Ok(self.list()?.iter().any(|b| b.source == *source))
    }

    /// Compare what the kernel holds with what should be in force and repair the
    /// difference; one line per repair. Called about once a second: enforcers whose check
    /// costs more (iptables runs a process) space their checks out themselves.
    fn reconcile(&mut self) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Where the enforcer is attached and how (xdp mode; empty otherwise).
    fn attachments(&self) -> Vec<AttachmentStatus> {
        Vec::new()
    }

    /// Packet counters by verdict, where the enforcer counts them.
    fn packet_stats(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Apply a reloaded configuration: protected ports and addresses, and the whitelist
    /// the kernel must never drop.
    fn reconfigure(&mut self, _cfg: &DataplaneConfig, _allow: &[ipnet::IpNet]) -> anyhow::Result<()> {
        Ok(())
    }

    /// Detach from the system. With `keep_bans`, leave the bans in force for the next
    /// start (pinned maps, the iptables chain); otherwise remove every trace.
    fn shutdown(&mut self, keep_bans: bool) -> anyhow::Result<()>;
}
