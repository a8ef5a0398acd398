//! Enforce: turn a ban decision into dropped packets.
//!
//! Three enforcers share one interface: `xdp` (the eBPF dataplane, default),
//! `iptables` (the old daemon's chain, for plain hosts) and `dry-run` (log only).
use std::time::{Duration, SystemTime};

use crate::addr::SourceAddr;

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

/// Lets the daemon reach an enforcer's own extras (the dataplane's counters).
pub trait AsAny {
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

impl<T: std::any::Any> AsAny for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The concrete enforcer behind a trait object, if it is a `T`.
pub fn downcast_ref<T: 'static>(e: &dyn Enforcer) -> Option<&T> {
    AsAny::as_any(e).downcast_ref()
}

/// The concrete enforcer behind a trait object, if it is a `T`.
pub fn downcast_mut<T: 'static>(e: &mut dyn Enforcer) -> Option<&mut T> {
    AsAny::as_any_mut(e).downcast_mut()
}

/// What every enforcer offers the daemon.
pub trait Enforcer: Send + AsAny {
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

    /// Detach from the system. With `keep_bans`, leave the bans in force for the next
    /// start (pinned maps, the iptables chain); otherwise remove every trace.
    fn shutdown(&mut self, keep_bans: bool) -> anyhow::Result<()>;
}
