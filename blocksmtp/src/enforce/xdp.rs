//! `--mode xdp` (the default): bans live in the eBPF dataplane's maps.
use std::time::Duration;

use super::{ActiveBan, Enforcer};
use crate::{
    addr::SourceAddr,
    dataplane::{AttachMode, Attached, Dataplane, DataplaneConfig, PinDir, Stats, reconcile::AttachmentStatus},
};

pub struct XdpEnforcer {
    dp: Option<Dataplane>,
}

impl XdpEnforcer {
    /// Load (reusing pinned maps under `pins`), configure and attach to `interfaces`.
    pub fn start(cfg: &DataplaneConfig, pins: PinDir, interfaces: &[String], mode: AttachMode) -> anyhow::Result<Self> {
        let mut dp = Dataplane::load_pinned(cfg, pins)?;
        if dp.restored {
            let (v4, v6) = dp.counts();
            log::info!("reusing pinned ban maps: {v4} IPv4 and {v6} IPv6 entries");
        }
        for (iface, how) in dp.attach(interfaces, mode)? {
            log::info!("{iface}: dropping banned sources' packets ({how})");
        }
        Ok(Self { dp: Some(dp) })
    }

    fn dp(&self) -> &Dataplane {
        self.dp.as_ref().expect("dataplane used after shutdown")
    }

    fn dp_mut(&mut self) -> &mut Dataplane {
        self.dp.as_mut().expect("dataplane used after shutdown")
    }

    pub fn attachments(&self) -> Vec<(String, Attached)> {
        self.dp().attachments()
    }

    pub fn stats(&self) -> anyhow::Result<Stats> {
        self.dp().stats()
    }

    /// Re-attach interfaces the kernel lost (see `dataplane::reconcile`); one line per repair.
    pub fn reconcile(&mut self) -> anyhow::Result<Vec<String>> {
        self.dp_mut().reconcile()
    }

    /// Every guarded interface: how it is attached now (None: detached), since when, why.
    pub fn attachment_status(&self) -> Vec<AttachmentStatus> {
        self.dp().attachment_status()
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        self.dp_mut()
    }
}

impl Enforcer for XdpEnforcer {
    fn name(&self) -> &'static str {
        "xdp"
    }

    fn ban(&mut self, source: &SourceAddr, duration: Duration, manual: bool) -> anyhow::Result<()> {
        self.dp_mut().ban(source, duration, manual).map(drop)
    }

    fn unban(&mut self, source: &SourceAddr) -> anyhow::Result<bool> {
        self.dp_mut().unban(source)
    }

    fn list(&self) -> anyhow::Result<Vec<ActiveBan>> {
        Ok(self
            .dp()
            .list()?
            .into_iter()
            .map(|b| ActiveBan { source: b.source, expires_at: b.expires_at(), dropped: Some(b.dropped), manual: b.manual })
            .collect())
    }

    /// O(1): the dataplane counts its entries (the sweep runs twice a second).
    fn active_count(&self) -> anyhow::Result<usize> {
        let (v4, v6) = self.dp().counts();
        Ok(v4 + v6)
    }

    fn sweep_expired(&mut self) -> anyhow::Result<Vec<SourceAddr>> {
        self.dp_mut().sweep_expired()
    }

    fn shutdown(&mut self, keep_bans: bool) -> anyhow::Result<()> {
        match self.dp.take() {
            Some(dp) => dp.shutdown(keep_bans),
            None => Ok(()),
        }
    }
}
