//! Checking the attachments against the kernel, and re-attaching where an interface was
//! deleted and re-created (a NIC reset, a bond or VLAN re-created by ifupdown/networkd).
//!
//! This version compares each attached interface's ifindex with what `if_nametoindex`
//! answers now, on the daemon's tick; an interface that vanished or changed its index
//! is re-attached with the normal attach code (same mode as before).
use std::{
    collections::HashMap,
    sync::Mutex,
    time::SystemTime,
};

use super::{AttachMode, Attached, Dataplane, attach};

#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachmentStatus {
    pub iface: String,
    /// How it is attached now, or None when it is not (an error in status and a metric).
    pub attached: Option<Attached>,
    /// Since when it has been in this state (wall clock).
    pub since: SystemTime,
    /// Why this attach mode, or the error while detached.
    pub detail: String,
}

/// What reconcile last saw per interface: (ifindex at attach, state, since, detail).
/// Process-wide: the dataplane's own fields are not ours to extend here.
struct Seen {
    ifindex: u32,
    attached: Option<Attached>,
    since: SystemTime,
    detail: String,
}

static SEEN: Mutex<Option<HashMap<String, Seen>>> = Mutex::new(None);

fn ifindex(iface: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(iface) else { return 0 };
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn mode_of(how: Attached) -> AttachMode {
    match how {
        Attached::XdpNative => AttachMode::XdpNative,
        Attached::XdpGeneric => AttachMode::XdpGeneric,
        Attached::Tc => AttachMode::Tc,
    }
}

impl Dataplane {
    /// Check every wanted interface against the kernel and re-attach where needed; one line per repair.
    pub fn reconcile(&mut self) -> anyhow::Result<Vec<String>> {
        let mut repairs = Vec::new();
        let mut guard = SEEN.lock().expect("reconcile lock");
        let seen = guard.get_or_insert_with(HashMap::new);
        let links_dir = self.pins.as_ref().map(|p| p.links());
        // Interfaces wanted: every one attached at start, and any still detached.
        let mut wanted: Vec<(String, Option<Attached>)> = self.links.iter().map(|(i, h, _)| (i.clone(), Some(*h))).collect();
        for (i, s) in seen.iter() {
            if s.attached.is_none() && !wanted.iter().any(|(w, _)| w == i) {
                wanted.push((i.clone(), None));
            }
        }
        for (iface, how) in wanted {
            let now_index = ifindex(&iface);
            let entry = seen.entry(iface.clone()).or_insert_with(|| Seen {
                ifindex: now_index,
                attached: how,
                since: SystemTime::now(),
                detail: "attached at start".into(),
            });
            if entry.attached.is_some() && now_index != 0 && now_index == entry.ifindex {
                continue;
            }
            // Gone or re-created: the old link no longer enforces anything.
            let mode = how.or(entry.attached).map_or(AttachMode::Auto, mode_of);
            if let Some(pos) = self.links.iter().position(|(i, _, _)| *i == iface) {
                let (_, old, link) = self.links.remove(pos);
                drop(link);
                if let Some(dir) = &links_dir {
                    let _ = attach::unpin_and_detach(&attach::link_pin(dir, old, &iface));
                }
            }
            if now_index == 0 {
                if entry.attached.is_some() {
                    entry.attached = None;
                    entry.since = SystemTime::now();
                    entry.detail = format!("interface {iface} does not exist; waiting for it");
                    repairs.push(format!("{iface}: interface gone; detached, re-attaching when it is back"));
                }
                continue;
            }
            match attach::attach(&mut self.ebpf, &iface, mode, links_dir.as_deref()) {
                Ok((how, link)) => {
                    self.links.push((iface.clone(), how, link));
                    *entry = Seen { ifindex: now_index, attached: Some(how), since: SystemTime::now(), detail: "re-attached after the interface was re-created".into() };
                    repairs.push(format!("{iface}: re-attached as {how} (ifindex {now_index})"));
                }
                Err(e) => {
                    if entry.attached.is_some() || entry.detail != format!("{e:#}") {
                        repairs.push(format!("{iface}: re-attaching failed: {e:#}"));
                    }
                    entry.attached = None;
                    entry.since = SystemTime::now();
                    entry.detail = format!("{e:#}");
                }
            }
        }
        Ok(repairs)
    }

    pub fn attachment_status(&self) -> Vec<AttachmentStatus> {
        let guard = SEEN.lock().expect("reconcile lock");
        let mut out: Vec<AttachmentStatus> = self
            .links
            .iter()
            .map(|(iface, how, _)| {
                let s = guard.as_ref().and_then(|m| m.get(iface));
                AttachmentStatus {
                    iface: iface.clone(),
                    attached: Some(*how),
                    since: s.map_or_else(SystemTime::now, |s| s.since),
                    detail: s.map_or_else(|| "attached at start".into(), |s| s.detail.clone()),
                }
            })
            .collect();
        if let Some(m) = guard.as_ref() {
            for (iface, s) in m {
                if s.attached.is_none() && !out.iter().any(|a| a.iface == *iface) {
                    out.push(AttachmentStatus { iface: iface.clone(), attached: None, since: s.since, detail: s.detail.clone() });
                }
            }
        }
        out
    }
}
