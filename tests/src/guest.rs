//! Booting Debian's stock kernel in qemu (TCG) with a small initramfs: busybox, the
//! host's ip/tc/iptables-nft with their libraries, the kernel package's modules that the
//! tests need, and the binaries under test. The kernel package is fetched with apt and
//! extracted (never installed) into a cache directory kept between runs.
use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Extracted kernel packages live here between runs.
pub const CACHE: &str = crate::debcache::CACHE;

/// Kernel modules the guest loads (with their dependencies from modules.dep): veth, the
/// clsact qdisc and cls_bpf for TC before TCX, nf_tables with the xtables matches the
/// iptables enforcer's rules use.
pub const MODULES: &[&str] = &[
    "veth", "sch_ingress", "cls_bpf", "crc32c_generic", "libcrc32c", "nfnetlink", "nf_tables", "x_tables", "nft_compat",
    "xt_tcpudp", "xt_comment", "xt_multiport",
];

/// An extracted kernel package: the image and its module tree.
pub struct Kernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// Debian's 6.1 kernel, fetched and unpacked on first use (crate::debcache, which
/// `cargo xtask setup --test-deps` runs too). Err only when it cannot be obtained at all.
pub fn debian_6_1_kernel() -> anyhow::Result<Kernel> {
    let k = crate::debcache::kernel_6_1()?
        .context("apt-cache depends linux-image-amd64 names no linux-image-6.1.*-amd64 (not Debian 12?)")?;
    let version = crate::debcache::kernel_version(&k.tree).context("the unpacked kernel has no boot/vmlinuz-* and modules.dep")?;
    Ok(Kernel {
        vmlinuz: k.tree.join("boot").join(format!("vmlinuz-{version}")),
        modules: k.tree.join("lib/modules").join(&version),
        version,
    })
}

/// `MODULES` and their dependencies, in load order (dependencies first).
pub fn module_files(k: &Kernel) -> anyhow::Result<Vec<PathBuf>> {
    let dep = std::fs::read_to_string(k.modules.join("modules.dep"))?;
    let deps: std::collections::HashMap<String, Vec<String>> = dep
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((m.to_string(), d.split_whitespace().map(str::to_string).collect()))
        })
        .collect();
    let by_name = |name: &str| -> Option<String> {
        deps.keys()
            .find(|p| Path::new(p).file_name().and_then(|f| f.to_str()).is_some_and(|f| f.split('.').next() == Some(name)))
            .cloned()
    };
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for m in MODULES {
        let path = by_name(m).with_context(|| format!("kernel {} has no module {m}", k.version))?;
        // modules.dep lists every dependency, deepest last: load them in reverse.
        for p in deps[&path].iter().rev().chain(std::iter::once(&path)) {
            if seen.insert(p.clone()) {
                order.push(k.modules.join(p));
            }
        }
    }
    Ok(order)
}

/// A cpio "newc" archive (what the kernel unpacks as its initramfs).
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Default for Cpio {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpio {
    pub fn new() -> Self {
        Self { out: Vec::new(), ino: 1, dirs: BTreeSet::new() }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let name = name.trim_start_matches('/');
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.out.extend_from_slice(hdr.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
        self.out.extend_from_slice(data);
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// A directory and its parents.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            if self.dirs.insert(cur.clone()) {
                let c = cur.clone();
                self.entry(&c, 0o040755, &[]);
            }
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((d, _)) = path.trim_start_matches('/').rsplit_once('/') {
            self.dir(d);
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parent(path);
        self.entry(path, 0o100000 | mode, data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(path, 0o120777, target.as_bytes());
    }

    /// A host file at the same path (symlinks followed).
    pub fn host_file(&mut self, path: &str) -> anyhow::Result<()> {
        let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        self.file(path, 0o755, &data);
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// The shared libraries `bins` load (ldd), the dynamic loader included.
pub fn libraries(bins: &[&Path]) -> anyhow::Result<BTreeSet<String>> {
    let mut libs = BTreeSet::new();
    for b in bins {
        let out = Command::new("ldd").arg(b).output().with_context(|| format!("ldd {}", b.display()))?;
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, "=>", p, ..] if p.starts_with('/') => {
                    libs.insert(p.to_string());
                }
                [p, ..] if p.starts_with('/') => {
                    libs.insert(p.to_string());
                }
                _ => {}
            }
        }
    }
    Ok(libs)
}

/// A binary without its debug info (the debug build is >100 MB), as bytes.
pub fn stripped(bin: &Path) -> anyhow::Result<Vec<u8>> {
    let tmp = tempfile::NamedTempFile::new()?;
    let st = Command::new("objcopy").arg("--strip-debug").arg(bin).arg(tmp.path()).status().context("running objcopy")?;
    if !st.success() {
        bail!("objcopy --strip-debug {} failed", bin.display());
    }
    Ok(std::fs::read(tmp.path())?)
}

/// Boot `kernel` with `initrd` under TCG; returns the console output. The guest powers off
/// when done; it is killed after `timeout`.
pub fn boot(kernel: &Kernel, initrd: &Path, timeout: Duration, console: &Path) -> anyhow::Result<String> {
    let log = std::fs::File::create(console)?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-net", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting qemu-system-x86_64 (Debian package qemu-system-x86; `cargo xtask setup --test-deps`)")?;
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(console).unwrap_or_default();
    match status {
        Some(_) => Ok(out),
        None => bail!("the guest did not power off within {timeout:?}; console:\n{out}"),
    }
}

/// Write `data` to `path` (0755).
pub fn write_exec(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}
