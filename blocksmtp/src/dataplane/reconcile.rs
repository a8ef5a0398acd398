//! Keeping the attachments true: every wanted interface is checked against the kernel
//! (the link's ifindex, our tc filter's presence) and re-attached when it was lost — an
//! interface deleted and re-created (a NIC reset, a bond or VLAN rebuilt by ifupdown or
//! networkd), renamed away and back, or our filter removed by `tc qdisc del`. The
//! daemon calls `reconcile` on link events (`LinkWatch`) and on a ~1 s tick; `status`
//! and the metrics read `attachment_status`, so a detached interface shows as an error,
//! never as the mode it had.
use std::time::SystemTime;

use super::{
    AttachMode, Attached, Dataplane,
    attach::{self, Held},
};

pub use super::netlink::LinkWatch;

#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachmentStatus {
    pub iface: String,
    /// How it is attached now, or None when it is not (an error in status and a metric).
    pub attached: Option<super::Attached>,
    /// Since when it has been in this state (wall clock).
    pub since: std::time::SystemTime,
    /// Why this attach mode, or the error while detached.
    pub detail: String,
}

/// One interface the dataplane was asked to guard.
pub struct Attachment {
    pub iface: String,
    pub mode: AttachMode,
    /// What we hold on it; kept while the kernel still has it somewhere (a renamed
    /// interface keeps its program, and is right again once renamed back).
    pub held: Option<Held>,
    /// Whether `held` is on the interface of this name right now.
    pub ok: bool,
    pub since: SystemTime,
    pub detail: String,
}

impl Attachment {
    pub fn new(iface: &str, mode: AttachMode, held: Held) -> Self {
        Self { iface: iface.to_string(), mode, detail: held.why.clone(), held: Some(held), ok: true, since: SystemTime::now() }
    }

    pub(super) fn attached(&self) -> Option<Attached> {
        self.held.as_ref().filter(|_| self.ok).map(|h| h.how)
    }

    fn set(&mut self, ok: bool, detail: String) {
        if ok != self.ok {
            self.since = SystemTime::now();
        }
        self.ok = ok;
        self.detail = detail;
    }

    pub fn status(&self) -> AttachmentStatus {
        AttachmentStatus { iface: self.iface.clone(), attached: self.attached(), since: self.since, detail: self.detail.clone() }
    }
}

impl super::Dataplane {
    /// Check every wanted interface against the kernel and re-attach where needed; one line per repair.
    pub fn reconcile(&mut self) -> anyhow::Result<Vec<String>> {
        let links_dir = self.pins.as_ref().map(|p| p.links());
        let Dataplane { ebpf, ifaces, .. } = self;
        let mut repairs = Vec::new();
        for a in ifaces.iter_mut() {
            let (was_ok, was_detail) = (a.ok, a.detail.clone());
            if let Some(line) = check(ebpf, a, links_dir.as_deref())? {
                repairs.push(line);
            }
            // Losing an interface is an error, said once per new reason (not every second).
            if !a.ok && (was_ok || a.detail != was_detail) {
                log::error!("{}: not protected: {}", a.iface, a.detail);
            }
        }
        Ok(repairs)
    }

    pub fn attachment_status(&self) -> Vec<AttachmentStatus> {
        self.ifaces.iter().map(Attachment::status).collect()
    }
}

/// One interface: in force on the device of its name, or re-attached, or detached with why.
fn check(ebpf: &mut aya::Ebpf, a: &mut Attachment, links_dir: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let now_index = attach::ifindex(&a.iface)?;
    let was = a.held.as_ref().map(|h| h.ifindex);
    let live = match &a.held {
        Some(h) => h.live_on(now_index).unwrap_or_else(|e| {
            log::debug!("{}: checking the attachment: {e:#}", a.iface);
            false
        }),
        None => false,
    };
    if live {
        if a.ok {
            return Ok(None);
        }
        let h = a.held.as_ref().expect("held");
        let line = format!("{}: {} attachment in force again (the interface is back under its name)", a.iface, h.how);
        let why = h.why.clone();
        a.set(true, why);
        return Ok(Some(line));
    }
    // Not in force on the device of this name. A program the kernel still has on a renamed
    // device is kept (right again once renamed back) unless the name is another device's now.
    if let Some(h) = &a.held {
        if now_index == 0 && h.link_ifindex().is_some_and(|on| on != 0) {
            let detail = format!("interface {} does not exist (renamed or deleted); its program stays on ifindex {}", a.iface, h.ifindex);
            a.set(false, detail);
            return Ok(None);
        }
        let held = a.held.take().expect("held");
        if let Err(e) = held.detach(links_dir, &a.iface) {
            log::debug!("{}: removing the lost attachment: {e:#}", a.iface);
        }
    }
    if now_index == 0 {
        a.set(false, format!("interface {} does not exist; waiting for it to appear", a.iface));
        return Ok(None);
    }
    match attach::attach(ebpf, &a.iface, a.mode, links_dir) {
        Ok(held) => {
            let cause = match was {
                Some(old) if old != held.ifindex => format!("interface re-created: ifindex {old} → {}", held.ifindex),
                Some(_) => "the attachment was removed from the interface".to_string(),
                None => "the interface is back".to_string(),
            };
            let line = format!("{}: re-attached as {} ({cause}; {})", a.iface, held.how, held.why);
            // A new attachment, even when the loss came and went between two checks.
            a.detail = held.why.clone();
            a.held = Some(held);
            a.ok = true;
            a.since = SystemTime::now();
            Ok(Some(line))
        }
        Err(e) => {
            a.set(false, format!("attaching failed: {e:#}"));
            Ok(None)
        }
    }
}
