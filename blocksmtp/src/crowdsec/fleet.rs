//! What the daemon does with pulled decisions: which to enforce, which to lift, and
//! which are our own pushes coming back (the echo: no second ban, no offence, no
//! escalation — CrowdSec bans never enter the policy's offence history at all).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{CrowdsecArgs, Decision, RawDecision, link::Pulled};
use crate::{addr::SourceAddr, whitelist::Whitelist};

/// A ban the daemon holds because LAPI decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub id: i64,
    pub origin: String,
    pub scenario: String,
}

/// What the enforcer must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Ban { source: SourceAddr, duration: Duration, origin: String },
    Unban { source: SourceAddr, origin: String },
}

/// The daemon's side of the fleet.
#[derive(Debug)]
pub struct Fleet {
    v6_prefix: u8,
    args: CrowdsecArgs,
    held: HashMap<SourceAddr, Held>,
    /// Our own bans pushed to LAPI and still running (their echo is ignored).
    pushed: HashMap<SourceAddr, Instant>,
    /// Pulled decisions not enforced, by reason (for `status`).
    pub skipped_whitelisted: u64,
    pub skipped_other: u64,
    pub echoes: u64,
}

impl Fleet {
    pub fn new(args: &CrowdsecArgs, v6_prefix: u8) -> Self {
        Self {
            v6_prefix,
            args: args.clone(),
            held: HashMap::new(),
            pushed: HashMap::new(),
            skipped_whitelisted: 0,
            skipped_other: 0,
            echoes: 0,
        }
    }

    /// Our detection banned `source` for `duration` and pushed it.
    pub fn pushed(&mut self, source: SourceAddr, duration: Duration) {
        let now = Instant::now();
        self.pushed.retain(|_, until| *until > now);
        self.pushed.insert(source, now + duration);
    }

    /// Where a ban came from, when LAPI decided it: `crowdsec/<origin>`.
    pub fn origin_of(&self, source: &SourceAddr) -> Option<String> {
        self.held.get(source).map(|h| format!("crowdsec/{}", h.origin))
    }

    /// The LAPI decision behind `source`'s ban, if LAPI decided it.
    pub fn held_ban(&self, source: &SourceAddr) -> Option<&Held> {
        self.held.get(source)
    }

    /// The ban of `source` ended or was lifted here (expiry, `unban`).
    pub fn forget(&mut self, source: &SourceAddr) {
        self.held.remove(source);
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn is_echo(&self, d: &Decision) -> bool {
        d.origin == super::ORIGIN && self.pushed.get(&d.source).is_some_and(|until| *until > Instant::now())
    }

    fn enforceable(&mut self, raw: &RawDecision, whitelist: &Whitelist) -> Option<Decision> {
        match raw.to_decision(self.v6_prefix, &self.args) {
            Ok(d) if whitelist.overlaps(&d.source) => {
                self.skipped_whitelisted += 1;
                log::warn!(
                    "crowdsec: not enforcing decision {} ({} from {}): it overlaps the whitelist",
                    d.id,
                    d.source,
                    d.origin
                );
                None
            }
            Ok(d) => Some(d),
            Err(why) => {
                self.skipped_other += 1;
                log::debug!("crowdsec: decision {} ({} {}) not enforced: {why}", raw.id, raw.scope, raw.value);
                None
            }
        }
    }

    fn take_new(&mut self, d: Decision, out: &mut Vec<Action>) {
        if self.is_echo(&d) {
            self.echoes += 1;
            return;
        }
        let origin = format!("crowdsec/{}", d.origin);
        self.held.insert(d.source, Held { id: d.id, origin: d.origin, scenario: d.scenario });
        out.push(Action::Ban { source: d.source, duration: d.remaining, origin });
    }

    /// The actions one pull asks for. `Sync` is the whole truth: held bans missing
    /// from it are lifted.
    pub fn on_pulled(&mut self, pulled: Pulled, whitelist: &Whitelist) -> Vec<Action> {
        let mut out = Vec::new();
        match pulled {
            Pulled::Sync(all) => {
                // One decision per source: the one with the most time left.
                let mut best: HashMap<SourceAddr, Decision> = HashMap::new();
                for raw in &all {
                    if let Some(d) = self.enforceable(raw, whitelist) {
                        match best.get(&d.source) {
                            Some(b) if b.remaining >= d.remaining => {}
                            _ => {
                                best.insert(d.source, d);
                            }
                        }
                    }
                }
                let gone: Vec<SourceAddr> = self.held.keys().filter(|s| !best.contains_key(s)).copied().collect();
                for source in gone {
                    let h = self.held.remove(&source).expect("listed above");
                    out.push(Action::Unban { source, origin: format!("crowdsec/{}", h.origin) });
                }
                let mut ds: Vec<Decision> = best.into_values().collect();
                ds.sort_by_key(|d| d.source);
                for d in ds {
                    self.take_new(d, &mut out);
                }
            }
            Pulled::Changes { new, deleted } => {
                for raw in &deleted {
                    // Only the decision that made our ban lifts it (another may still run).
                    let Ok(d) = raw.to_decision(self.v6_prefix, &CrowdsecArgs::default()).or_else(|_| {
                        // An expired deletion still names its source.
                        let mut r = raw.clone();
                        r.duration = "1s".into();
                        r.to_decision(self.v6_prefix, &CrowdsecArgs::default())
                    }) else {
                        continue;
                    };
                    if self.held.get(&d.source).is_some_and(|h| h.id == d.id) {
                        let h = self.held.remove(&d.source).expect("checked");
                        out.push(Action::Unban { source: d.source, origin: format!("crowdsec/{}", h.origin) });
                    }
                }
                for raw in &new {
                    if let Some(d) = self.enforceable(raw, whitelist) {
                        self.take_new(d, &mut out);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(id: i64, origin: &str, scope: &str, value: &str, duration: &str) -> RawDecision {
        RawDecision {
            id,
            origin: origin.into(),
            scenario: "s".into(),
            scope: scope.into(),
            kind: "ban".into(),
            value: value.into(),
            duration: duration.into(),
        }
    }

    fn src(s: &str) -> SourceAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sync_changes_echo_and_whitelist() {
        let wl = Whitelist::from_nets(["203.0.113.0/24".parse().unwrap()]);
        let mut f = Fleet::new(&CrowdsecArgs::default(), 64);
        f.pushed(src("192.0.2.66"), Duration::from_secs(3600));
        let a = f.on_pulled(
            Pulled::Sync(vec![
                raw(1, "cscli", "Ip", "192.0.2.9", "1h"),
                raw(2, "cscli", "Ip", "192.0.2.9", "2h"),
                raw(3, "blocksmtp", "Ip", "192.0.2.66", "1h"),
                raw(4, "cscli", "Ip", "203.0.113.5", "1h"),
                raw(5, "crowdsec", "Range", "198.51.100.0/24", "30m"),
            ]),
            &wl,
        );
        assert_eq!(
            a,
            vec![
                Action::Ban { source: src("192.0.2.9"), duration: Duration::from_secs(7200), origin: "crowdsec/cscli".into() },
                Action::Ban {
                    source: SourceAddr::from_net("198.51.100.0/24".parse().unwrap()),
                    duration: Duration::from_secs(1800),
                    origin: "crowdsec/crowdsec".into()
                },
            ],
            "the longest decision per source; our own echo and whitelisted sources are not enforced"
        );
        assert_eq!((f.echoes, f.skipped_whitelisted), (1, 1));
        assert_eq!(f.origin_of(&src("192.0.2.9")).as_deref(), Some("crowdsec/cscli"));
        assert_eq!(f.origin_of(&src("192.0.2.66")), None, "our own ban stays ours");

        // Deleting the other decision of 192.0.2.9 lifts nothing; deleting the held one does.
        assert!(f.on_pulled(Pulled::Changes { new: vec![], deleted: vec![raw(1, "cscli", "Ip", "192.0.2.9", "-1s")] }, &wl).is_empty());
        let a = f.on_pulled(Pulled::Changes { new: vec![], deleted: vec![raw(2, "cscli", "Ip", "192.0.2.9", "-1s")] }, &wl);
        assert_eq!(a, vec![Action::Unban { source: src("192.0.2.9"), origin: "crowdsec/cscli".into() }]);

        // Another host's push of our scenario is enforced here.
        let a = f.on_pulled(Pulled::Changes { new: vec![raw(6, "blocksmtp", "Ip", "2001:db8::66", "1h")], deleted: vec![] }, &wl);
        assert_eq!(a, vec![Action::Ban { source: src("2001:db8::/64"), duration: Duration::from_secs(3600), origin: "crowdsec/blocksmtp".into() }]);

        // A full resync without the range lifts it.
        let a = f.on_pulled(Pulled::Sync(vec![raw(6, "blocksmtp", "Ip", "2001:db8::66", "59m")]), &wl);
        assert_eq!(
            a,
            vec![
                Action::Unban { source: SourceAddr::from_net("198.51.100.0/24".parse().unwrap()), origin: "crowdsec/crowdsec".into() },
                Action::Ban { source: src("2001:db8::/64"), duration: Duration::from_secs(3540), origin: "crowdsec/blocksmtp".into() },
            ]
        );
    }
}
