//! Attaching the programs to interfaces: XDP native, then XDP generic, then TC.
//!
//! Each attachment is a bpf_link pinned under `<pin dir>/links/<mode>@<ifname>`, so
//! the program keeps enforcing when the daemon dies (even `kill -9`), and a restart
//! swaps the new program into the pinned link atomically: no gap in enforcement.
use std::{fmt, io, path::Path};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc,
    },
    sys::SyscallError,
};
use blocksmtp_common::program_names;

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
    /// TC ingress classifier (TCX on kernels ≥ 6.6).
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
fn pinned_for(links_dir: &Path, iface: &str) -> Vec<(Attached, std::path::PathBuf)> {
    pinned(links_dir).into_iter().filter(|(i, _, _)| i == iface).map(|(_, how, p)| (how, p)).collect()
}

/// Interfaces that have a pinned link, with how they are attached.
pub fn pinned_interfaces(links_dir: &Path) -> Vec<(String, Attached)> {
    pinned(links_dir).into_iter().map(|(i, how, _)| (i, how)).collect()
}

/// Load both programs into the kernel (runs the verifier); a no-op once loaded.
pub fn load(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let xdp: &mut Xdp = program(ebpf, program_names::XDP)?.try_into()?;
    if xdp.fd().is_err() {
        xdp.load().context("loading the XDP program (verifier)")?;
    }
    let tc: &mut SchedClassifier = program(ebpf, program_names::TC)?.try_into()?;
    if tc.fd().is_err() {
        tc.load().context("loading the TC program (verifier)")?;
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| anyhow!("the eBPF object has no program {name}"))
}

/// Attach to `iface` as `mode` allows, reusing a pinned link of an allowed kind.
/// Returns how it is attached and the link (dropping it detaches unless it is pinned).
pub fn attach(ebpf: &mut Ebpf, iface: &str, mode: AttachMode, links_dir: Option<&Path>) -> anyhow::Result<(Attached, FdLink)> {
    // if_nametoindex asks the calling thread's network namespace (sysfs may not).
    let c = std::ffi::CString::new(iface).map_err(|_| anyhow!("interface name {iface:?} contains NUL"))?;
    if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        bail!("network interface {iface:?} does not exist (see `ip link`)");
    }
    load(ebpf)?;

    if let Some(dir) = links_dir {
        for (how, path) in pinned_for(dir, iface) {
            if how.allowed_by(mode) {
                match replace_pinned(ebpf, how, &path) {
                    Ok(link) => {
                        log::info!("{iface}: took over the pinned {how} link (no gap in enforcement)");
                        return Ok((how, link));
                    }
                    Err(e) => log::warn!("{iface}: cannot reuse pinned {how} link {}: {e:#}", path.display()),
                }
            }
            // Wrong kind for this mode, or stale: detach it.
            unpin_and_detach(&path)?;
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
        match attach_new(ebpf, iface, how, links_dir) {
            Ok(link) => {
                if !errors.is_empty() {
                    log::info!("{iface}: attached as {how} ({})", errors.join("; "));
                }
                return Ok((how, link));
            }
            Err(e) => errors.push(format!("{how} failed: {e:#}")),
        }
    }
    bail!("cannot attach to {iface}: {}", errors.join("; "))
}

fn attach_new(ebpf: &mut Ebpf, iface: &str, how: Attached, links_dir: Option<&Path>) -> anyhow::Result<FdLink> {
    let fd_link: FdLink = match how {
        Attached::XdpNative | Attached::XdpGeneric => {
            let xdp: &mut Xdp = program(ebpf, program_names::XDP)?.try_into()?;
            let xdp_mode = if how == Attached::XdpNative { XdpMode::Driver } else { XdpMode::Skb };
            let id = xdp.attach(iface, xdp_mode)?;
            let link = xdp.take_link(id)?;
            match FdLink::try_from(link) {
                Ok(l) => l,
                Err(_) => bail!("kernel attached XDP without a bpf_link; cannot pin it"),
            }
        }
        Attached::Tc => {
            // Kernels before 6.6 need the clsact qdisc; TCX does not.
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                log::debug!("{iface}: clsact qdisc: {e} (fine on TCX kernels or if it exists)");
            }
            let prog: &mut SchedClassifier = program(ebpf, program_names::TC)?.try_into()?;
            let id = prog.attach(iface, TcAttachType::Ingress)?;
            let link = prog.take_link(id)?;
            match FdLink::try_from(link) {
                Ok(l) => l,
                Err(_) => bail!("kernel attached TC through netlink (pre-6.6): no bpf_link to pin"),
            }
        }
    };
    match links_dir {
        Some(dir) => {
            let pinned = fd_link
                .pin(link_pin(dir, how, iface))
                .map_err(|e| anyhow!("pinning the {how} link of {iface}: {e}"))?;
            Ok(FdLink::from(pinned))
        }
        None => Ok(fd_link),
    }
}

fn replace_pinned(ebpf: &mut Ebpf, how: Attached, path: &Path) -> anyhow::Result<FdLink> {
    let pinned = PinnedLink::from_pin(path)?;
    let fd_link = FdLink::from(pinned);
    match how {
        Attached::XdpNative | Attached::XdpGeneric => {
            let xdp: &mut Xdp = program(ebpf, program_names::XDP)?.try_into()?;
            let id = xdp.attach_to_link(fd_link.try_into()?)?;
            Ok(FdLink::try_from(xdp.take_link(id)?)?)
        }
        Attached::Tc => {
            let prog: &mut SchedClassifier = program(ebpf, program_names::TC)?.try_into()?;
            let id = prog.attach_to_link(fd_link.try_into()?)?;
            Ok(FdLink::try_from(prog.take_link(id)?)?)
        }
    }
}

/// Remove a pinned link: the program detaches from its interface.
pub fn unpin_and_detach(path: &Path) -> anyhow::Result<()> {
    match PinnedLink::from_pin(path) {
        Ok(pinned) => {
            // The link lives while a pin or an fd holds it: this drops the last of both.
            drop(pinned.unpin().with_context(|| format!("unpinning {}", path.display()))?);
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
}
