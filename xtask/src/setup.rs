//! `cargo xtask setup`: everything the eBPF build needs, installed once, idempotently.
//!
//! - the nightly toolchain's rust-src (for `-Z build-std=core`);
//! - bpf-linker, built against the LLVM that ships inside the nightly toolchain (no
//!   system LLVM needed): a folder whose lib/ links to the toolchain's libLLVM becomes
//!   LLVM_PREFIX, and the built linker finds libLLVM there at run time (RUNPATH), so
//!   the folder lives in CARGO_HOME, not in a temporary directory;
//! - a BPF filesystem at /sys/fs/bpf (where the daemon pins its maps);
//! - with `test_deps`, clippy and the Debian packages the tests use.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd, cmd_output, debcache};

/// Debian packages the end-to-end tests and benchmarks drive.
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2", "bpftool", "iptables", "ipset", "nftables", "sendmail", "procps", "kmod", "time", "util-linux",
    "dpkg-dev", "binutils", "systemd", "man-db", "logrotate", "crowdsec", "systemd-container", "debootstrap",
    // tests/tests/guest_debian_6_1.rs: Debian's 6.1 kernel booted in qemu (TCG) with a busybox initramfs.
    "qemu-system-x86", "busybox-static",
    // tests/tests/crowdsec_tls.rs: the private CA and LAPI's certificate.
    "openssl",
];

pub fn setup(test_deps: bool) -> anyhow::Result<()> {
    let mut changed = Vec::new();
    nightly_rust_src(&mut changed)?;
    bpf_linker(&mut changed)?;
    bpffs(&mut changed)?;
    if test_deps {
        crowdsec_offline();
        clippy(&mut changed)?;
        debian_packages(TEST_PACKAGES, &mut changed)?;
        guest_kernel(&mut changed)?;
    }
    if changed.is_empty() {
        println!("setup: nothing to do (nightly rust-src, bpf-linker, bpffs{} already in place)", if test_deps { ", test packages" } else { "" });
    } else {
        for c in &changed {
            println!("setup: {c}");
        }
    }
    Ok(())
}

/// Whether the eBPF build can run as things stand (cheap; no installs).
pub fn ready() -> bool {
    nightly_sysroot().map(|s| rust_src_present(&s)).unwrap_or(false) && bpf_linker_works()
}

/// clippy for the default toolchain: tests/tests/workspace_lint.rs lints the workspace.
fn clippy(changed: &mut Vec<String>) -> anyhow::Result<()> {
    if Command::new("rustup").args(["which", "cargo-clippy"]).output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    cmd(Command::new("rustup").args(["component", "add", "clippy"])).context("`rustup component add clippy` failed")?;
    changed.push("added clippy to the default toolchain".into());
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = cmd_output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    Ok(PathBuf::from(out.trim()))
}

fn rust_src_present(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").exists()
}

fn nightly_rust_src(changed: &mut Vec<String>) -> anyhow::Result<()> {
    let sysroot = match nightly_sysroot() {
        Ok(s) => s,
        Err(_) => {
            cmd(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"]))
                .context("no nightly toolchain and `rustup toolchain install nightly` failed")?;
            changed.push("installed the nightly toolchain with rust-src".into());
            return Ok(());
        }
    };
    if !rust_src_present(&sysroot) {
        cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
        changed.push("added rust-src to the nightly toolchain".into());
    }
    Ok(())
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"))
}

fn bpf_linker(changed: &mut Vec<String>) -> anyhow::Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let libdir = sysroot.join("lib");
    // The toolchain ships libLLVM.so.<major>.<minor>-rust-<version>.
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}: is the nightly toolchain complete?", libdir.display()))?;
    let vv = cmd_output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("`rustc +nightly -vV` names no LLVM version")?
        .to_string();
    let prefix = cargo_home().join("blocksmtp-llvm").join(format!("llvm-{major}"));
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib).with_context(|| format!("creating {}", plib.display()))?;
    for name in ["libLLVM.so".to_string(), lib.clone()] {
        let link = plib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&lib), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!("setup: building bpf-linker against the nightly toolchain's LLVM {major} (about 80 s)…");
    cmd(Command::new("cargo")
        .args(["install", "--locked", "bpf-linker", "--version", "^0.13", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .arg("--force")
        .env("LLVM_PREFIX", &prefix)
        // The xtask itself runs under stable; cargo install must not inherit its rustc.
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN"))
    .context("building bpf-linker failed")?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but does not run: is {} on PATH?", cargo_home().join("bin").display());
    }
    changed.push(format!("built bpf-linker against LLVM {major} (libLLVM via {})", prefix.display()));
    Ok(())
}

fn bpffs(changed: &mut Vec<String>) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    }) {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs at /sys/fs/bpf (needs root)")?;
    changed.push("mounted bpffs at /sys/fs/bpf".into());
    Ok(())
}

/// crowdsec's postinst registers with the online Central API unless credentials for it
/// exist; the tests run private LAPIs only, so opt out first (a comment line is enough).
pub fn crowdsec_offline() {
    let f = Path::new("/etc/crowdsec/online_api_credentials.yaml");
    if !f.exists() {
        let _ = std::fs::create_dir_all("/etc/crowdsec");
        let _ = std::fs::write(f, "# blocksmtp tests: no Central API\n");
    }
}

/// Debian 12's own kernel for the qemu guest test (tests/src/guest.rs), unpacked into
/// the cache, never installed.
fn guest_kernel(changed: &mut Vec<String>) -> anyhow::Result<()> {
    match debcache::kernel_6_1()? {
        None => println!("setup: WARNING: apt offers no linux-image-6.1.*-amd64 (not Debian 12?): the 6.1 guest test will skip"),
        Some(k) if k.fetched => changed.push(format!("unpacked Debian's 6.1 kernel into {} for the qemu guest test", k.tree.display())),
        Some(_) => {}
    }
    Ok(())
}

const BOUNCER_UNIT: &str = "crowdsec-firewall-bouncer.service";

/// crowdsec-firewall-bouncer's postinst registers a bouncer with the host's own crowdsec
/// database (`cscli bouncers add`) unless its override file exists; the benchmark runs
/// the bouncer with a private config and key only, so create the override first.
pub fn firewall_bouncer_offline() {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = Path::new("/etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml.local");
    if !f.exists() {
        let _ = std::fs::create_dir_all("/etc/crowdsec/bouncers");
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(f)
            .and_then(|mut w| std::io::Write::write_all(&mut w, b"# blocksmtp benchmarks: no automatic registration\n"));
    }
}

/// The postinst enables the bouncer's unit (policy-rc.d only stops the start now): with
/// no key it would fail at every boot. Called after a fresh install only (an admin's own
/// choice stays), it leaves the unit disabled, recorded so that upgrades keep it so.
pub fn firewall_bouncer_disabled() {
    if Path::new("/etc/systemd/system/multi-user.target.wants").join(BOUNCER_UNIT).exists() {
        let _ = Command::new("deb-systemd-helper")
            .args(["disable", BOUNCER_UNIT])
            .env("DPKG_MAINTSCRIPT_PACKAGE", "crowdsec-firewall-bouncer")
            .status();
    }
}

/// Whether Debian package `p` is installed.
pub fn installed(p: &str) -> bool {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
    matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub fn debian_packages(pkgs: &[&str], changed: &mut Vec<String>) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("missing packages {missing:?} and no apt-get: install them by hand");
    }
    println!("setup: installing {}", missing.join(" "));
    cmd(Command::new("apt-get").arg("update").arg("-q"))?;
    // Package scripts must not start services on the host (sendmail, rsyslog): tests
    // start their own, inside namespaces.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let had_policy = policy.exists();
    if !had_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").ok();
        let _ = Command::new("chmod").args(["755"]).arg(policy).status();
    }
    let r = cmd(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if !had_policy {
        let _ = std::fs::remove_file(policy);
    }
    r?;
    changed.push(format!("installed Debian packages: {}", missing.join(" ")));
    Ok(())
}
