//! Attaching the programs to interfaces: XDP native, then XDP generic, then TC.
//!
//! XDP (5.9+) and TC on TCX kernels (6.6+) attach through a bpf_link pinned under
//! `<pin dir>/links/<mode>@<ifname>`, so the program keeps enforcing when the daemon dies
//! (even `kill -9`), and a restart swaps the new program into the pinned link
//! atomically: no gap in enforcement.
//!
//! TC before 6.6 has no link: the classifier is a cls_bpf filter on the clsact qdisc at
//! a fixed priority and handle, owned through a record in the links directory (a bpffs
//! directory named `tcnl-<ifindex>-<prio>-<handle>-<q0|q1>@<ifname>`; q1: we created
//! the qdisc). A restart replaces the program in that filter in place (netlink replace:
//! no gap); a stop removes the filter, and the qdisc if we created it and it is empty.
use std::{
    fmt, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    sys::SyscallError,
};
use blocksmtp_common::program_names;

use super::netlink;

/// `--attach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// XDP native, else XDP generic, else TC.
    Auto,
    /// XDP in the driver (fastest; needs driver support).
    XdpNative,
    /// XDP in the kernel's generic path (any NIC).
    XdpGeneric,
    /// TC ingress classifier (TCX on kernels ≥ 6.6, a netlink cls_bpf filter before).
    Tc,
}

/// How an interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attached {
    XdpNative,
    XdpGeneric,
    Tc,
}

impl Attached {
    const ALL: [Attached; 3] = [Attached::XdpNative, Attached::XdpGeneric, Attached::Tc];

    pub const fn as_str(self) -> &'static str {
        match self {
            Attached::XdpNative => "xdp-native",
            Attached::XdpGeneric => "xdp-generic",
            Attached::Tc => "tc",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn allowed_by(self, mode: AttachMode) -> bool {
        matches!(
            (mode, self),
            (AttachMode::Auto, _)
                | (AttachMode::XdpNative, Attached::XdpNative)
                | (AttachMode::XdpGeneric, Attached::XdpGeneric)
                | (AttachMode::Tc, Attached::Tc)
        )
    }
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// bpffs refuses names with a dot (`eth0.100` is a common VLAN interface): escape it.
fn pin_name(how: Attached, iface: &str) -> String {
    format!("{}@{}", how.as_str(), iface.replace('%', "%25").replace('.', "%2E"))
}

fn parse_pin_name(name: &str) -> Option<(Attached, String)> {
    let (mode, ifname) = name.split_once('@')?;
    Some((Attached::parse(mode)?, ifname.replace("%2E", ".").replace("%25", "%")))
}

pub fn link_pin(links_dir: &Path, how: Attached, iface: &str) -> std::path::PathBuf {
    links_dir.join(pin_name(how, iface))
}

/// Every pinned link: (interface, how it is attached, pin path).
fn pinned(links_dir: &Path) -> Vec<(String, Attached, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(links_dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let (how, ifname) = parse_pin_name(e.file_name().to_str()?)?;
            Some((ifname, how, e.path()))
        })
        .collect()
}

/// Pinned links found for `iface`.
fn pinned_for(links_dir: &Path, iface: &str) -> Vec<(Attached, PathBuf)> {
    pinned(links_dir).into_iter().filter(|(i, _, _)| i == iface).map(|(_, how, p)| (how, p)).collect()
}

/// Interfaces that have a pinned link or an owned tc filter, with how they are attached.
pub fn pinned_interfaces(links_dir: &Path) -> Vec<(String, Attached)> {
    let mut v: Vec<(String, Attached)> = pinned(links_dir).into_iter().map(|(i, how, _)| (i, how)).collect();
    v.extend(filter_records(links_dir).into_iter().map(|(i, _, _)| (i, Attached::Tc)));
    v
}

/// Forget an earlier run's attachment of `iface` (pinned links and owned tc filters).
pub fn detach_pinned(links_dir: &Path, iface: &str) -> anyhow::Result<()> {
    for (_, path) in pinned_for(links_dir, iface) {
        unpin_and_detach(&path)?;
    }
    for (_, rec, path) in filter_records(links_dir).into_iter().filter(|(i, _, _)| i == iface) {
        rec.remove(Some(&path))?;
    }
    Ok(())
}

/// Load both programs into the kernel (runs the verifier); a no-op once loaded. Attaching
/// loads only the program it attaches ([`xdp_program`], [`tc_program`]).
pub fn load(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    xdp_program(ebpf)?;
    tc_program(ebpf)?;
    Ok(())
}

/// The XDP program, loaded (verified) on first use: a host that attaches XDP never pays
/// the TC program's verification, the longer of the two (about 20–30 ms of a cold start
/// with 100,000 pinned bans), nor keeps it in the kernel.
pub fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    let xdp: &mut Xdp = program(ebpf, program_names::XDP)?.try_into()?;
    if xdp.fd().is_err() {
        xdp.load().context("loading the XDP program (verifier)")?;
    }
    Ok(xdp)
}

/// The TC program, loaded (verified) on first use.
pub fn tc_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    let tc: &mut SchedClassifier = program(ebpf, program_names::TC)?.try_into()?;
    if tc.fd().is_err() {
        tc.load().context("loading the TC program (verifier)")?;
    }
    Ok(tc)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| anyhow!("the eBPF object has no program {name}"))
}

// ---- kernel features --------------------------------------------------------------

/// The running kernel's (major, minor), from uname.
pub fn kernel_version() -> Option<(u32, u32)> {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let rel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned();
    let mut it = rel.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// The oldest kernel blocksmtp's dataplane runs on (README, "Kernels").
pub const MIN_KERNEL: (u32, u32) = (5, 9);

/// Refuse, naming the missing feature, on a kernel older than the dataplane needs:
/// bpf_ktime_get_boot_ns (5.8) for ban expiry, XDP through a bpf_link (5.9) so a
/// crash cannot leave an unowned program behind.
pub fn check_kernel() -> anyhow::Result<()> {
    let Some(v) = kernel_version() else { return Ok(()) };
    match missing_feature(v) {
        Some(what) => bail!(
            "kernel {}.{} is too old for the eBPF dataplane: it lacks {what}; blocksmtp needs Linux {}.{} or newer \
             (or use --mode iptables)",
            v.0,
            v.1,
            MIN_KERNEL.0,
            MIN_KERNEL.1
        ),
        None => Ok(()),
    }
}

fn missing_feature(v: (u32, u32)) -> Option<&'static str> {
    if v < (5, 8) {
        Some("the bpf_ktime_get_boot_ns helper (5.8) that ban expiry runs on")
    } else if v < MIN_KERNEL {
        Some("XDP through a bpf_link (5.9)")
    } else {
        None
    }
}

/// Whether TC attaches through TCX (a bpf_link, 6.6+) rather than a netlink filter.
fn tcx_available() -> bool {
    kernel_version().is_none_or(|v| v >= (6, 6))
}

pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    // if_nametoindex asks the calling thread's network namespace (sysfs may not).
    let c = std::ffi::CString::new(iface).map_err(|_| anyhow!("interface name {iface:?} contains NUL"))?;
    Ok(unsafe { libc::if_nametoindex(c.as_ptr()) })
}

// ---- what we hold -----------------------------------------------------------------

/// Our cls_bpf filter on a pre-TCX kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterRecord {
    pub ifindex: u32,
    pub priority: u16,
    pub handle: u32,
    /// We added the clsact qdisc (so we remove it on stop, if nothing else uses it).
    pub own_qdisc: bool,
}

/// Fixed, so a restart (or a stop after `kill -9`) finds the filter without a record.
pub const FILTER_PRIORITY: u16 = 0x2525;
pub const FILTER_HANDLE: u32 = 0x25;

impl FilterRecord {
    fn name(&self, iface: &str) -> String {
        let q = if self.own_qdisc { 1 } else { 0 };
        let escaped = iface.replace('%', "%25").replace('.', "%2E");
        format!("tcnl-{}-{}-{}-q{q}@{escaped}", self.ifindex, self.priority, self.handle)
    }

    fn parse(name: &str) -> Option<(String, Self)> {
        let (lhs, ifname) = name.split_once('@')?;
        let f: Vec<&str> = lhs.strip_prefix("tcnl-")?.split('-').collect();
        let [ifindex, prio, handle, q] = f[..] else { return None };
        let rec = Self {
            ifindex: ifindex.parse().ok()?,
            priority: prio.parse().ok()?,
            handle: handle.parse().ok()?,
            own_qdisc: match q {
                "q1" => true,
                "q0" => false,
                _ => return None,
            },
        };
        Some((ifname.replace("%2E", ".").replace("%25", "%"), rec))
    }

    /// Whether our filter is on `ifindex`'s ingress hook right now.
    pub fn present(&self) -> anyhow::Result<bool> {
        Ok(netlink::ingress_filters(self.ifindex)?.iter().any(|f| {
            f.priority == self.priority && f.handle == self.handle && f.kind == "bpf" && f.prog_name.as_deref().is_some_and(ours_tc)
        }))
    }

    /// Remove the filter (and the qdisc if it is ours and now empty) and the record.
    pub fn remove(&self, record: Option<&Path>) -> anyhow::Result<()> {
        netlink::delete_ingress_filter(self.ifindex, self.priority, self.handle)?;
        if self.own_qdisc && netlink::clsact_unused(self.ifindex)? {
            netlink::delete_clsact(self.ifindex)?;
        }
        if let Some(p) = record {
            match std::fs::remove_dir(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
            }
        }
        Ok(())
    }
}

/// The kernel truncates program names to 15 bytes.
fn ours_tc(name: &str) -> bool {
    program_names::TC.starts_with(name) && !name.is_empty()
}

fn filter_records(links_dir: &Path) -> Vec<(String, FilterRecord, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(links_dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let (iface, rec) = FilterRecord::parse(e.file_name().to_str()?)?;
            Some((iface, rec, e.path()))
        })
        .collect()
}

/// What keeps a program attached to an interface.
pub enum Hold {
    /// XDP, or TC through TCX: dropping it detaches unless it is pinned. The second fd is
    /// ours to query and detach it with (aya's FdLink hides its own), opened from the pin
    /// (BPF_OBJ_GET needs no CAP_SYS_ADMIN, which the systemd unit does not grant).
    Link(FdLink, Option<OwnedFd>),
    /// TC before 6.6: a netlink filter (with its record under the pin dir, if any).
    Filter(FilterRecord, Option<PathBuf>),
}

/// One interface as attached now.
pub struct Held {
    pub how: Attached,
    pub ifindex: u32,
    pub hold: Hold,
    /// Why this mode ("auto: …", "TCX (kernel 6.18)").
    pub why: String,
}

impl Held {
    /// Whether the kernel still has it on `ifindex` (0: the interface is gone).
    pub fn live_on(&self, ifindex: u32) -> anyhow::Result<bool> {
        if ifindex == 0 || ifindex != self.ifindex {
            return Ok(false);
        }
        match &self.hold {
            Hold::Link(_, Some(fd)) => Ok(link_info(fd.as_raw_fd())?.ifindex == ifindex),
            // Cannot look (no fd of our own): the interface index is the same, trust it.
            Hold::Link(_, None) => Ok(true),
            Hold::Filter(rec, _) => rec.present(),
        }
    }

    /// The interface the link is on now (0: detached by the kernel, the device went).
    pub fn link_ifindex(&self) -> Option<u32> {
        match &self.hold {
            Hold::Link(_, fd) => fd.as_ref().and_then(|fd| link_info(fd.as_raw_fd()).ok()).map(|i| i.ifindex),
            Hold::Filter(..) => None,
        }
    }

    /// Detach now, removing its pin or record (a clean stop, or a stale attachment).
    pub fn detach(self, links_dir: Option<&Path>, iface: &str) -> anyhow::Result<()> {
        match self.hold {
            Hold::Link(l, fd) => {
                if let Some(fd) = &fd {
                    let _ = link_detach(fd.as_raw_fd());
                }
                if let Some(dir) = links_dir {
                    let path = link_pin(dir, self.how, iface);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e).with_context(|| format!("unpinning {}", path.display())),
                    }
                }
                drop(l);
                Ok(())
            }
            Hold::Filter(rec, path) => rec.remove(path.as_deref()),
        }
    }
}

// ---- attaching --------------------------------------------------------------------

/// Attach to `iface` as `mode` allows, reusing a pinned link (or our tc filter) of an
/// allowed kind, clearing a stale attachment of ours left by a crash.
pub fn attach(ebpf: &mut Ebpf, iface: &str, mode: AttachMode, links_dir: Option<&Path>) -> anyhow::Result<Held> {
    let ifindex = ifindex(iface)?;
    if ifindex == 0 {
        bail!("network interface {iface:?} does not exist (see `ip link`)");
    }
    check_kernel()?;

    if let Some(dir) = links_dir {
        for (how, path) in pinned_for(dir, iface) {
            if how.allowed_by(mode) {
                match replace_pinned(ebpf, how, &path, ifindex) {
                    Ok(link) => {
                        log::info!("{iface}: took over the pinned {how} link (no gap in enforcement)");
                        let why = format!("{}; taken over from the previous run", explain(mode, how, &[]));
                        let fd = obj_get(&path).ok();
                        return Ok(Held { how, ifindex, hold: Hold::Link(link, fd), why });
                    }
                    Err(e) => log::warn!("{iface}: cannot reuse pinned {how} link {}: {e:#}", path.display()),
                }
            }
            // Wrong kind for this mode, or stale: detach it.
            unpin_and_detach(&path)?;
        }
        for (_, rec, path) in filter_records(dir).into_iter().filter(|(i, _, _)| i == iface) {
            if Attached::Tc.allowed_by(mode) && rec.ifindex == ifindex && !tcx_available() && rec.present().unwrap_or(false) {
                match replace_filter(ebpf, iface, &rec) {
                    Ok(()) => {
                        log::info!("{iface}: replaced the program in our tc filter (no gap in enforcement)");
                        let why = format!("{}; filter taken over from the previous run", explain(mode, Attached::Tc, &[]));
                        return Ok(Held { how: Attached::Tc, ifindex, hold: Hold::Filter(rec, Some(path)), why });
                    }
                    Err(e) => log::warn!("{iface}: cannot replace the program in our tc filter: {e:#}"),
                }
            }
            // Another mode now, or the interface was re-created since (its filter went with it).
            if rec.ifindex == ifindex {
                rec.remove(Some(&path))?;
            } else {
                let _ = std::fs::remove_dir(&path);
            }
        }
    }

    let candidates: &[Attached] = match mode {
        AttachMode::Auto => &Attached::ALL,
        AttachMode::XdpNative => &[Attached::XdpNative],
        AttachMode::XdpGeneric => &[Attached::XdpGeneric],
        AttachMode::Tc => &[Attached::Tc],
    };
    let mut errors = Vec::new();
    for &how in candidates {
        let r = attach_new(ebpf, iface, ifindex, how, links_dir).or_else(|e| {
            // A stale attachment of ours (a crash, or a pin removed by hand) is in the way: clear it, retry once.
            match clear_stale(ifindex, how) {
                Ok(true) => attach_new(ebpf, iface, ifindex, how, links_dir),
                _ => Err(e),
            }
        });
        match r {
            Ok(hold) => {
                let why = explain(mode, how, &errors);
                if !errors.is_empty() {
                    log::info!("{iface}: attached as {how} ({})", errors.join("; "));
                }
                return Ok(Held { how, ifindex, hold, why });
            }
            Err(e) => errors.push(format!("{how} failed: {e:#}")),
        }
    }
    bail!("cannot attach to {iface}: {}", errors.join("; "))
}

/// Why `how` was used: the mode asked for, the kernel's TC path, and what failed before.
fn explain(mode: AttachMode, how: Attached, failed: &[String]) -> String {
    let asked = match mode {
        AttachMode::Auto => "auto",
        AttachMode::XdpNative => "--attach xdp-native",
        AttachMode::XdpGeneric => "--attach xdp-generic",
        AttachMode::Tc => "--attach tc",
    };
    let kernel = kernel_version().map_or_else(|| "?".to_string(), |(a, b)| format!("{a}.{b}"));
    let what = match how {
        Attached::XdpNative => "XDP in the driver".to_string(),
        Attached::XdpGeneric => "XDP in the kernel's generic path".to_string(),
        Attached::Tc if tcx_available() => format!("TC ingress through TCX (kernel {kernel} ≥ 6.6)"),
        Attached::Tc => format!("TC ingress through a netlink cls_bpf filter (kernel {kernel} has no TCX)"),
    };
    if failed.is_empty() {
        format!("{asked}: {what}")
    } else {
        format!("{asked}: {what}, because {}", failed.join("; "))
    }
}

fn attach_new(ebpf: &mut Ebpf, iface: &str, ifindex: u32, how: Attached, links_dir: Option<&Path>) -> anyhow::Result<Hold> {
    let fd_link: FdLink = match how {
        Attached::XdpNative | Attached::XdpGeneric => {
            let xdp = xdp_program(ebpf)?;
            let xdp_mode = if how == Attached::XdpNative { XdpMode::Driver } else { XdpMode::Skb };
            let id = xdp.attach(iface, xdp_mode)?;
            let link = xdp.take_link(id)?;
            match FdLink::try_from(link) {
                Ok(l) => l,
                Err(_) => bail!("kernel attached XDP without a bpf_link (Linux < 5.9)"),
            }
        }
        Attached::Tc if !tcx_available() => return attach_filter(ebpf, iface, ifindex, links_dir),
        Attached::Tc => {
            let prog = tc_program(ebpf)?;
            let id = prog.attach_with_options(iface, TcAttachType::Ingress, TcAttachOptions::TcxOrder(Default::default()))?;
            let link = prog.take_link(id)?;
            match FdLink::try_from(link) {
                Ok(l) => l,
                Err(_) => bail!("kernel attached TC without a TCX link"),
            }
        }
    };
    match links_dir {
        Some(dir) => {
            let pinned = fd_link
                .pin(link_pin(dir, how, iface))
                .map_err(|e| anyhow!("pinning the {how} link of {iface}: {e}"))?;
            let fd = obj_get(&link_pin(dir, how, iface)).ok();
            Ok(Hold::Link(FdLink::from(pinned), fd))
        }
        None => {
            // Unpinned (tests, tools; run as root): reach the link through its id.
            let fd = fd_link.info().ok().and_then(|i| link_fd_by_id(i.id()).ok());
            Ok(Hold::Link(fd_link, fd))
        }
    }
}

/// TC before 6.6: our cls_bpf filter on clsact ingress, recorded under the pin dir.
fn attach_filter(ebpf: &mut Ebpf, iface: &str, ifindex: u32, links_dir: Option<&Path>) -> anyhow::Result<Hold> {
    let own_qdisc = !netlink::has_clsact(ifindex)?;
    if own_qdisc {
        tc::qdisc_add_clsact(iface).map_err(|e| anyhow!("adding the clsact qdisc to {iface}: {e}"))?;
    }
    let rec = FilterRecord { ifindex, priority: FILTER_PRIORITY, handle: FILTER_HANDLE, own_qdisc };
    // Record first: a crash between the two leaves a record a later start or stop clears.
    let path = match links_dir {
        Some(dir) => {
            let p = dir.join(rec.name(iface));
            std::fs::create_dir(&p).or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
                .with_context(|| format!("recording our tc filter at {}", p.display()))?;
            Some(p)
        }
        None => None,
    };
    let prog = tc_program(ebpf)?;
    let opts = NlOptions { priority: rec.priority, handle: TcHandle::from(rec.handle), classid: None };
    let attached = prog.attach_with_options(iface, TcAttachType::Ingress, TcAttachOptions::Netlink(opts));
    let attached = match attached {
        // A filter of ours from an earlier run without a record (pins removed): replace its program.
        Err(_) if netlink::ingress_filters(ifindex).is_ok_and(|fs| {
            fs.iter().any(|f| f.priority == rec.priority && f.handle == rec.handle && f.prog_name.as_deref().is_some_and(ours_tc))
        }) => replace_filter(ebpf, iface, &rec).map(|()| None),
        r => r.map(Some).map_err(anyhow::Error::from),
    };
    match attached {
        Ok(Some(id)) => {
            let prog = tc_program(ebpf)?;
            // The daemon owns the filter through its record, not through aya: a dropped
            // aya link would detach it at exit, and with --keep-bans it must stay.
            std::mem::forget(prog.take_link(id)?);
        }
        Ok(None) => {}
        Err(e) => {
            let _ = rec.remove(path.as_deref());
            return Err(e.context(format!("attaching the tc filter to {iface}")));
        }
    }
    Ok(Hold::Filter(rec, path))
}

/// Put this run's TC program into our existing filter (netlink replace, no gap).
fn replace_filter(ebpf: &mut Ebpf, iface: &str, rec: &FilterRecord) -> anyhow::Result<()> {
    let prog = tc_program(ebpf)?;
    let old = SchedClassifierLink::attached(iface, TcAttachType::Ingress, rec.priority, TcHandle::from(rec.handle), None)?;
    let id = prog.attach_to_link(old)?;
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}

fn replace_pinned(ebpf: &mut Ebpf, how: Attached, path: &Path, ifindex: u32) -> anyhow::Result<FdLink> {
    let on = link_info(obj_get(path)?.as_raw_fd())?.ifindex;
    let pinned = PinnedLink::from_pin(path)?;
    let fd_link = FdLink::from(pinned);
    if on != ifindex {
        bail!("it is on ifindex {on}, the interface is {ifindex} now (re-created)");
    }
    if how == Attached::Tc && !tcx_available() {
        bail!("a TCX link, but TC attaches through netlink here");
    }
    match how {
        Attached::XdpNative | Attached::XdpGeneric => {
            let xdp = xdp_program(ebpf)?;
            let id = xdp.attach_to_link(fd_link.try_into()?)?;
            Ok(FdLink::try_from(xdp.take_link(id)?)?)
        }
        Attached::Tc => {
            let prog = tc_program(ebpf)?;
            let id = prog.attach_to_link(fd_link.try_into()?)?;
            Ok(FdLink::try_from(prog.take_link(id)?)?)
        }
    }
}

/// Remove a pinned link: the program detaches from its interface at once (BPF_LINK_DETACH;
/// dropping the last reference alone detaches only after an RCU grace period, and a start
/// in another XDP mode right after would fail with EEXIST).
pub fn unpin_and_detach(path: &Path) -> anyhow::Result<()> {
    let own = obj_get(path).ok();
    match PinnedLink::from_pin(path) {
        Ok(pinned) => {
            let link = pinned.unpin().with_context(|| format!("unpinning {}", path.display()))?;
            if let Some(fd) = &own
                && let Err(e) = link_detach(fd.as_raw_fd())
            {
                log::debug!("{}: BPF_LINK_DETACH: {e}", path.display());
            }
            drop(link);
            Ok(())
        }
        Err(LinkError::SyscallError(SyscallError { io_error, .. })) if io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            // Not a link any more (interface gone): just remove the file.
            log::warn!("{}: {e}; removing the pin", path.display());
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
        }
    }
}

/// A program of ours sits on `ifindex` with nothing of ours holding it (a crash, pins
/// removed by hand): detach it. Only this namespace's device is looked at (XDP program
/// ids from rtnetlink), never another namespace's same ifindex. Best effort: walking link
/// and program ids needs CAP_SYS_ADMIN; without it the attach error stands as it was.
fn clear_stale(ifindex: u32, how: Attached) -> anyhow::Result<bool> {
    match how {
        Attached::XdpNative | Attached::XdpGeneric => {
            let (drv, skb) = netlink::xdp_prog_ids(ifindex)?;
            let mut cleared = false;
            for prog_id in [drv, skb].into_iter().filter(|id| *id != 0) {
                if !prog_name(prog_id).is_ok_and(|n| program_names::XDP.starts_with(&n) && !n.is_empty()) {
                    continue;
                }
                for link_id in link_ids() {
                    let Ok(fd) = link_fd_by_id(link_id) else { continue };
                    let Ok(info) = link_info(fd.as_raw_fd()) else { continue };
                    if info.prog_id == prog_id && info.link_type == BPF_LINK_TYPE_XDP && info.ifindex == ifindex {
                        link_detach(fd.as_raw_fd()).with_context(|| format!("detaching stale XDP link {link_id}"))?;
                        log::warn!("ifindex {ifindex}: detached a stale XDP link of ours (link {link_id}, program {prog_id})");
                        cleared = true;
                    }
                }
            }
            Ok(cleared)
        }
        Attached::Tc => Ok(false),
    }
}

// ---- bpf(2) for links: info, lookup by id, detach (aya 0.14 exposes none of these) ---

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_XDP: u32 = 6;

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<libc::c_long> {
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as libc::c_uint) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

#[derive(Debug)]
struct LinkInfo {
    link_type: u32,
    prog_id: u32,
    /// XDP and TCX links: the device's ifindex, 0 once the device is gone.
    ifindex: u32,
}

fn obj_info(fd: i32, info: &mut [u8]) -> io::Result<()> {
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

fn link_info(fd: i32) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then a union at offset 16 whose xdp and
    // tcx members both start with the ifindex.
    let mut info = [0u8; 64];
    obj_info(fd, &mut info)?;
    let u32_at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().expect("4 bytes"));
    Ok(LinkInfo { link_type: u32_at(0), prog_id: u32_at(8), ifindex: u32_at(16) })
}

/// A new fd for the object pinned at `path` (BPF_OBJ_GET).
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let mut attr = [0u8; 16];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn link_detach(fd: i32) -> io::Result<()> {
    let mut attr = [0u8; 8];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

fn link_ids() -> Vec<u32> {
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        let mut attr = [0u8; 12];
        attr[0..4].copy_from_slice(&start.to_ne_bytes());
        if bpf(BPF_LINK_GET_NEXT_ID, &mut attr).is_err() {
            return ids;
        }
        start = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes"));
        ids.push(start);
    }
}

fn fd_by_id(cmd: libc::c_long, id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 12];
    attr[0..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(cmd, &mut attr)?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    fd_by_id(BPF_LINK_GET_FD_BY_ID, id)
}

fn prog_name(id: u32) -> io::Result<String> {
    let fd = fd_by_id(BPF_PROG_GET_FD_BY_ID, id)?;
    // struct bpf_prog_info: name[16] at offset 64.
    let mut info = [0u8; 80];
    obj_info(fd.as_raw_fd(), &mut info)?;
    let name = &info[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The interface carrying the IPv4 default route (else the IPv6 one).
pub fn default_interface() -> anyhow::Result<String> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" && f[7] == "00000000" {
            return Ok(f[0].to_string());
        }
    }
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 10 && f[0] == "00000000000000000000000000000000" && f[1] == "00" && f[9] != "lo" {
            return Ok(f[9].to_string());
        }
    }
    bail!("no default route: name the interface(s) with --interface")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_without_dots() {
        for iface in ["eth0", "eth0.100", "we%ird.1"] {
            let name = pin_name(Attached::Tc, iface);
            assert!(!name.contains('.'), "{name}");
            assert_eq!(parse_pin_name(&name), Some((Attached::Tc, iface.to_string())));
        }
        assert_eq!(parse_pin_name("bogus@eth0"), None);
    }

    #[test]
    fn filter_records_round_trip_and_are_not_link_pins() {
        let rec = FilterRecord { ifindex: 7, priority: FILTER_PRIORITY, handle: FILTER_HANDLE, own_qdisc: true };
        let name = rec.name("eth0.100");
        assert!(!name.contains('.'), "{name}");
        assert_eq!(FilterRecord::parse(&name), Some(("eth0.100".to_string(), rec)));
        assert_eq!(parse_pin_name(&name), None, "a record is not taken for a link pin");
        assert_eq!(FilterRecord::parse("tc@eth0"), None);
    }

    #[test]
    fn old_kernels_are_refused_naming_the_feature() {
        assert!(missing_feature((4, 19)).unwrap().contains("bpf_ktime_get_boot_ns"));
        assert!(missing_feature((5, 8)).unwrap().contains("bpf_link"));
        assert_eq!(missing_feature((5, 9)), None);
        assert_eq!(missing_feature((6, 1)), None);
    }
}
