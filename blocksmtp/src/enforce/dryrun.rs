//! `--mode dry-run`: detect and log, touch nothing. Bans are remembered in memory so
//! `blocksmtp list` still shows what would be in force.
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use super::{ActiveBan, Enforcer};
use crate::addr::SourceAddr;

#[derive(Default)]
pub struct DryRun {
    bans: BTreeMap<SourceAddr, (SystemTime, bool)>,
}

impl Enforcer for DryRun {
    fn name(&self) -> &'static str {
        "dry-run"
    }

    fn ban(&mut self, source: &SourceAddr, duration: Duration, manual: bool) -> anyhow::Result<()> {
        let until = SystemTime::now() + duration;
        let entry = self.bans.entry(*source).or_insert((until, manual));
        entry.0 = entry.0.max(until);
        entry.1 |= manual;
        log::info!("dry-run: would ban {source} for {}s", duration.as_secs());
        Ok(())
    }

    fn unban(&mut self, source: &SourceAddr) -> anyhow::Result<bool> {
        Ok(self.bans.remove(source).is_some())
    }

    fn list(&self) -> anyhow::Result<Vec<ActiveBan>> {
        let now = SystemTime::now();
        Ok(self
            .bans
            .iter()
            .filter(|(_, (until, _))| *until > now)
            .map(|(source, (until, manual))| ActiveBan {
                source: *source,
                expires_at: *until,
                dropped: None,
                manual: *manual,
            })
            .collect())
    }

    fn active_count(&self) -> anyhow::Result<usize> {
        Ok(self.bans.len())
    }

    fn sweep_expired(&mut self) -> anyhow::Result<Vec<SourceAddr>> {
        let now = SystemTime::now();
        let gone: Vec<_> = self.bans.iter().filter(|(_, (u, _))| *u <= now).map(|(s, _)| *s).collect();
        for s in &gone {
            self.bans.remove(s);
        }
        Ok(gone)
    }

    fn shutdown(&mut self, _keep_bans: bool) -> anyhow::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_later_expiry_and_sweeps() {
        let mut d = DryRun::default();
        let s: SourceAddr = "192.0.2.66".parse().unwrap();
        d.ban(&s, Duration::from_secs(3600), false).unwrap();
        d.ban(&s, Duration::from_secs(1), false).unwrap();
        let l = d.list().unwrap();
        assert_eq!(l.len(), 1);
        assert!(l[0].expires_at > SystemTime::now() + Duration::from_secs(3000));
        d.ban(&"192.0.2.67".parse().unwrap(), Duration::ZERO, false).unwrap();
        assert_eq!(d.sweep_expired().unwrap(), vec!["192.0.2.67".parse().unwrap()]);
        assert!(d.unban(&s).unwrap());
        assert!(!d.unban(&s).unwrap());
    }
}
