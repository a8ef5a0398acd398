//! Debian packages fetched (`apt-get download`) and unpacked (`dpkg-deb -x`), never
//! installed, into a cache kept between runs under /var/cache/blocksmtp-tests/: Debian's
//! 6.1 kernel for the qemu guest test, Postfix and Exim for the mail lab.
//!
//! One file for both users: `cargo xtask setup --test-deps` (module `debcache` of xtask)
//! and the tests crate (tests/src/lib.rs includes this file by `#[path]`), so the cache
//! is made one way and xtask needs nothing of the tests crate. Only std and anyhow here.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Where the unpacked trees live.
pub const CACHE: &str = "/var/cache/blocksmtp-tests";

/// An unpacked tree, and whether this call fetched it (false: it was in the cache).
pub struct Unpacked {
    pub tree: PathBuf,
    pub fetched: bool,
}

/// `tree` as `complete` judges it, or made so: `packages` downloaded into a fresh
/// `<tree>.download`, all unpacked into a fresh `<tree>.tmp`, `finish`ed there (depmod, a
/// stamp) and renamed to `tree`, so that a tree is never seen half made. Under a lock
/// (`<tree>.lock`): tests running in parallel, and xtask, may ask at the same time.
pub fn unpacked(
    tree: &Path,
    packages: &[&str],
    complete: impl Fn(&Path) -> bool,
    finish: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<Unpacked> {
    if complete(tree) {
        return Ok(Unpacked { tree: tree.to_path_buf(), fetched: false });
    }
    let parent = tree.parent().context("a cache tree has a parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let lock_path = sibling(tree, "lock");
    let lock = fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    // Another process may have made it while this one waited for the lock.
    if complete(tree) {
        return Ok(Unpacked { tree: tree.to_path_buf(), fetched: false });
    }
    let dl = sibling(tree, "download");
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    // A kernel package is ~70 MB: say why this takes a while.
    eprintln!("debcache: fetching {} into {}", packages.join(" "), tree.display());
    download(packages, &dl)?;
    let tmp = sibling(tree, "tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut debs: Vec<PathBuf> =
        fs::read_dir(&dl)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "deb")).collect();
    debs.sort();
    if debs.len() < packages.len() {
        bail!("apt-get download {} left {} .deb files in {}", packages.join(" "), debs.len(), dl.display());
    }
    for deb in &debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    }
    finish(&tmp)?;
    let _ = fs::remove_dir_all(tree);
    fs::rename(&tmp, tree).with_context(|| format!("renaming {} to {}", tmp.display(), tree.display()))?;
    let _ = fs::remove_dir_all(&dl);
    if !complete(tree) {
        bail!("{} is not complete after unpacking {}", tree.display(), packages.join(" "));
    }
    Ok(Unpacked { tree: tree.to_path_buf(), fetched: true })
}

/// `<tree>.<ext>` beside `tree`.
fn sibling(tree: &Path, ext: &str) -> PathBuf {
    let mut s = tree.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// `apt-get download` into `dir`; once more after `apt-get update` when it fails (package
/// lists missing on a fresh machine, or stale after a point release).
fn download(packages: &[&str], dir: &Path) -> anyhow::Result<()> {
    let get = || run(Command::new("apt-get").args(["download", "-q"]).args(packages).current_dir(dir));
    if get().is_ok() {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    get().map(|_| ())
}

/// Run `c` with its output captured; an error carries its stderr.
fn run(c: &mut Command) -> anyhow::Result<String> {
    let out = c.stdin(Stdio::null()).output().with_context(|| format!("cannot run {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!("{c:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Debian 12's own kernel (the package linux-image-amd64 depends on), unpacked with the
/// module dependencies its postinst would have made (depmod). `None`: apt offers no 6.1
/// kernel (not Debian 12).
pub fn kernel_6_1() -> anyhow::Result<Option<Unpacked>> {
    let tree = Path::new(CACHE).join("kernel-6.1/tree");
    if kernel_version(&tree).is_some() {
        return Ok(Some(Unpacked { tree, fetched: false }));
    }
    let package = match kernel_6_1_package() {
        Some(p) => p,
        None => {
            // Package lists missing on a fresh machine: read them once, then decide.
            let _ = run(Command::new("apt-get").args(["update", "-q"]));
            match kernel_6_1_package() {
                Some(p) => p,
                None => return Ok(None),
            }
        }
    };
    let depmod = |tmp: &Path| -> anyhow::Result<()> {
        let version = vmlinuz(tmp).with_context(|| format!("{package} has no boot/vmlinuz-*"))?;
        run(Command::new("depmod").arg("-b").arg(tmp).arg(&version)).map(|_| ())
    };
    unpacked(&tree, &[&package], |t| kernel_version(t).is_some(), depmod).map(Some)
}

/// linux-image-amd64's dependency linux-image-6.1.*-amd64, if apt knows one.
fn kernel_6_1_package() -> Option<String> {
    let deps = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"])).ok()?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-6.1.") && p.ends_with("-amd64"))
        .map(str::to_string)
}

/// The version of the kernel unpacked in `tree` (`boot/vmlinuz-V`), once its modules
/// have their `modules.dep`.
pub fn kernel_version(tree: &Path) -> Option<String> {
    let v = vmlinuz(tree)?;
    tree.join("lib/modules").join(&v).join("modules.dep").exists().then_some(v)
}

fn vmlinuz(tree: &Path) -> Option<String> {
    fs::read_dir(tree.join("boot"))
        .ok()?
        .flatten()
        .find_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("vmlinuz-")).map(str::to_string))
}
