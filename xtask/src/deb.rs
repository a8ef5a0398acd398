//! `cargo xtask deb`: the Debian package, built with dpkg-deb from the release binary.
//!
//! Layout (see packaging/README.Debian for the why):
//! - /usr/sbin/blocksmtp (stripped; the eBPF object is embedded in it);
//! - /usr/lib/systemd/system/blocksmtp.service (where debhelper puts units for trixie, and what
//!   bookworm's merged /usr and systemd read as well);
//! - /etc/blocksmtp/blocksmtp.toml (conffile): `blocksmtp config` from the built binary,
//!   with `white-list` pointed at /etc/blocksmtp/whitelist and `keep-bans = true` (restarts
//!   and upgrades keep the bans in force; prerm detaches on removal); /etc/blocksmtp/whitelist
//!   (conffile, comments only);
//! - man pages (section 8 for the commands, 5 for the config file and the whitelist) and
//!   bash/zsh/fish completions from `blocksmtp generate`;
//! - /usr/share/doc/blocksmtp: README.md, README.Debian, copyright (every bundled crate's
//!   licence, see `copyright`), changelog.gz;
//! - DEBIAN/: control (Depends from dpkg-shlibdeps), conffiles, md5sums, maintainer
//!   scripts from packaging/.
//!
//! The release build is reused: `cargo build --release` is a no-op when it is fresh,
//! and `--no-build` skips even that. The package is written to
//! `<target>/debian/blocksmtp_<version>_<arch>.deb`.
use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{cmd, cmd_output};

const PKG: &str = "blocksmtp";
/// The line of `blocksmtp config` that the shipped config uncomments.
const WHITELIST_DEFAULT_LINE: &str = "# white-list = \"/etc/blocksmtp/whitelist\"   # not set; for example";
const WHITELIST_SHIPPED_LINE: &str = "white-list = \"/etc/blocksmtp/whitelist\"";
/// The keep-bans line of `blocksmtp config`, and what the package ships instead: a
/// restart or an upgrade (postinst restarts the unit) must not lift the bans.
const KEEP_BANS_DEFAULT_LINE: &str = "# keep-bans = false";
const KEEP_BANS_SHIPPED_LINE: &str = "keep-bans = true";

/// Build the package; returns its path.
pub fn run(no_build: bool) -> anyhow::Result<PathBuf> {
    let root = crate::workspace_root();
    let packaging = root.join("packaging");
    need_tools()?;

    let bin = crate::target_dir().join("release").join(PKG);
    if no_build {
        ensure!(bin.exists(), "{} does not exist: build it (cargo build --release -p blocksmtp) or drop --no-build", bin.display());
    } else {
        crate::ensure_setup()?;
        cmd(crate::cargo().args(["build", "--release", "-p", PKG]))?;
    }

    let version = cargo_version(&root)?;
    fs::create_dir_all(crate::target_dir().join("debian"))?;
    // The changelog with the packager filled in (Maintainer and the entries' trailers).
    let maintainer = maintainer(&root)?;
    let changelog = crate::target_dir().join("debian/changelog");
    fs::write(&changelog, fs::read_to_string(packaging.join("changelog"))?.replace("@MAINTAINER@", &maintainer))?;
    let (cl_version, timestamp) = changelog_head(&changelog)?;
    ensure!(
        cl_version == version,
        "packaging/changelog's latest entry is {cl_version}, Cargo.toml says {version}: add a changelog entry \
         (dch -c packaging/changelog -v {version}) before packaging"
    );
    let arch = cmd_output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_string();

    let out_dir = crate::target_dir().join("debian");
    let stage = out_dir.join(PKG);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage)?;

    // The binary, stripped as dh_strip does (debug info would be most of its size).
    let sbin = stage.join("usr/sbin/blocksmtp");
    install(&bin, &sbin, 0o755)?;
    cmd(Command::new("strip").args(["--remove-section=.comment", "--remove-section=.note", "--strip-unneeded"]).arg(&sbin))?;

    // Config: what the binary itself prints, with the whitelist switched on.
    let template = cmd_output(Command::new(&sbin).arg("config"))?;
    let config = shipped_config(&template)?;
    write(&stage.join("etc/blocksmtp/blocksmtp.toml"), config.as_bytes(), 0o644)?;
    install(&packaging.join("whitelist"), &stage.join("etc/blocksmtp/whitelist"), 0o644)?;

    install(&packaging.join("blocksmtp.service"), &stage.join("usr/lib/systemd/system/blocksmtp.service"), 0o644)?;

    // Man pages and completions, generated from the CLI definition.
    let gen_dir = out_dir.join("generated");
    if gen_dir.exists() {
        fs::remove_dir_all(&gen_dir)?;
    }
    cmd(Command::new(&sbin).arg("generate").arg(&gen_dir))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(gen_dir.join("man"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    for want in ["blocksmtp.8", "blocksmtp-run.8", "blocksmtp.toml.5", "blocksmtp-whitelist.5"] {
        ensure!(pages.iter().any(|p| p.file_name() == Some(want.as_ref())), "blocksmtp generate wrote no {want}");
    }
    for page in &pages {
        let name = page.file_name().expect("a file").to_string_lossy().into_owned();
        // /usr/sbin: section 8 (lintian: manual-page-for-system-command); file formats: 5.
        let section = match name.rsplit_once('.') {
            Some((_, s @ ("8" | "5"))) => s,
            _ => bail!("unexpected file {name} among the man pages"),
        };
        gzip_to(page, &stage.join(format!("usr/share/man/man{section}/{name}.gz")))?;
    }
    let comp = gen_dir.join("completions");
    install(&comp.join("blocksmtp.bash"), &stage.join("usr/share/bash-completion/completions/blocksmtp"), 0o644)?;
    install(&comp.join("_blocksmtp"), &stage.join("usr/share/zsh/vendor-completions/_blocksmtp"), 0o644)?;
    install(&comp.join("blocksmtp.fish"), &stage.join("usr/share/fish/vendor_completions.d/blocksmtp.fish"), 0o644)?;

    let doc = stage.join("usr/share/doc").join(PKG);
    install(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    install(&packaging.join("README.Debian"), &doc.join("README.Debian"), 0o644)?;
    install(&crate::copyright::current(&root, &out_dir)?, &doc.join("copyright"), 0o644)?;
    fs::create_dir_all(&doc)?;
    gzip_to(&changelog, &doc.join("changelog.gz"))?;

    // DEBIAN/
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    for script in ["postinst", "prerm", "postrm"] {
        install(&packaging.join(script), &debian.join(script), 0o755)?;
    }
    let conffiles = files_under(&stage.join("etc"))?
        .into_iter()
        .map(|p| format!("/{}\n", p.strip_prefix(&stage).expect("under stage").display()))
        .collect::<String>();
    write(&debian.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    write(&debian.join("md5sums"), md5sums(&stage)?.as_bytes(), 0o644)?;

    let depends = shlib_depends(&out_dir, &sbin)?;
    let control = fs::read_to_string(packaging.join("control"))?
        .replace("@VERSION@", &version)
        .replace("@ARCH@", &arch)
        .replace("@DEPENDS@", &depends)
        .replace("@MAINTAINER@", &maintainer)
        .replace("@INSTALLED_SIZE@", &installed_size_kib(&stage)?.to_string());
    if let Some(p) = placeholder(&control) {
        bail!("packaging/control has an unknown placeholder {p}");
    }
    write(&debian.join("control"), control.as_bytes(), 0o644)?;

    // Reproducible: every mtime is the changelog entry's date (dpkg-deb stores them).
    cmd(Command::new("find")
        .arg(&stage)
        .args(["-exec", "touch", "--no-dereference", &format!("--date=@{timestamp}"), "{}", "+"]))?;

    let deb = out_dir.join(format!("{PKG}_{version}_{arch}.deb"));
    cmd(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb)
        .env("SOURCE_DATE_EPOCH", timestamp.to_string()))?;
    println!("deb: {}", deb.display());
    Ok(deb)
}

/// dpkg-deb, dpkg-shlibdeps (dpkg-dev), strip (binutils), gzip: installed if missing.
fn need_tools() -> anyhow::Result<()> {
    let have = |t: &str| Command::new(t).arg("--version").output().is_ok_and(|o| o.status.success());
    let mut pkgs = Vec::new();
    if !have("dpkg-shlibdeps") || !have("dpkg-parsechangelog") {
        pkgs.push("dpkg-dev");
    }
    if !have("strip") {
        pkgs.push("binutils");
    }
    if !have("gzip") {
        pkgs.push("gzip");
    }
    if !pkgs.is_empty() {
        let mut changed = Vec::new();
        crate::setup::debian_packages(&pkgs, &mut changed)?;
    }
    Ok(())
}

/// Who builds the package, `Name <email>`: DEBFULLNAME and DEBEMAIL (as dch reads them;
/// DEBEMAIL may be `Name <email>` itself), else git's user.name and user.email, else the
/// last commit's author. No made-up address goes into a package.
fn maintainer(root: &Path) -> anyhow::Result<String> {
    let env = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if let Some(mail) = env("DEBEMAIL") {
        if mail.contains('<') {
            return Ok(mail);
        }
        if let Some(name) = env("DEBFULLNAME") {
            return Ok(format!("{name} <{mail}>"));
        }
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    if let (Some(n), Some(m)) = (git(&["config", "user.name"]), git(&["config", "user.email"])) {
        return Ok(format!("{n} <{m}>"));
    }
    git(&["log", "-1", "--format=%an <%ae>"])
        .context("no maintainer: set DEBFULLNAME and DEBEMAIL (or git's user.name and user.email)")
}

/// The workspace's package version, from `cargo metadata`-free parsing of Cargo.toml.
fn cargo_version(root: &Path) -> anyhow::Result<String> {
    let text = fs::read_to_string(root.join("Cargo.toml"))?;
    let mut in_pkg = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_pkg = l == "[workspace.package]";
            continue;
        }
        if in_pkg && let Some(v) = l.strip_prefix("version") {
            let v = v.trim_start().strip_prefix('=').context("version line without =")?.trim().trim_matches('"');
            return Ok(v.to_string());
        }
    }
    bail!("no version in [workspace.package] of Cargo.toml")
}

/// The latest changelog entry's version and its date (seconds since the epoch).
fn changelog_head(path: &Path) -> anyhow::Result<(String, u64)> {
    let field = |f: &str| -> anyhow::Result<String> {
        Ok(cmd_output(Command::new("dpkg-parsechangelog").arg("-l").arg(path).args(["-S", f]))?.trim().to_string())
    };
    let version = field("Version")?;
    let ts = field("Timestamp")?.parse().context("dpkg-parsechangelog: Timestamp is not a number")?;
    Ok((version, ts))
}

/// `blocksmtp config` with the whitelist and keep-bans lines switched on: the whitelist
/// file ships, and bans must survive restarts and upgrades.
fn shipped_config(template: &str) -> anyhow::Result<String> {
    // On a build host where the package is installed, `blocksmtp config` already has the
    // whitelist on (the file exists): the same result.
    let count = |line: &str| template.lines().filter(|l| *l == line).count();
    let wl = count(WHITELIST_DEFAULT_LINE) + count(WHITELIST_SHIPPED_LINE);
    ensure!(wl == 1, "`blocksmtp config` has {wl} lines `{WHITELIST_DEFAULT_LINE}` or `{WHITELIST_SHIPPED_LINE}` (expected one): update xtask/src/deb.rs");
    let kb = count(KEEP_BANS_DEFAULT_LINE);
    ensure!(kb == 1, "`blocksmtp config` has {kb} lines `{KEEP_BANS_DEFAULT_LINE}` (expected one): update xtask/src/deb.rs");
    let mut out = String::new();
    for line in template.lines() {
        if line.starts_with("# (on: /etc/blocksmtp/whitelist exists)") {
            continue;
        }
        out.push_str(match line {
            WHITELIST_DEFAULT_LINE => WHITELIST_SHIPPED_LINE,
            KEEP_BANS_DEFAULT_LINE => KEEP_BANS_SHIPPED_LINE,
            l => l,
        });
        out.push('\n');
    }
    Ok(out)
}

/// The first `@NAME@` (capitals and underscores) in `text`, if any.
fn placeholder(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(i) = rest.find('@') {
        let after = &rest[i + 1..];
        let name_len = after.find(|c: char| !(c.is_ascii_uppercase() || c == '_')).unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('@') {
            return Some(&rest[i..i + name_len + 2]);
        }
        rest = after;
    }
    None
}

fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &data, mode)
}

fn write(to: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, data).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `gzip -9n`, as dh_compress does (no name or timestamp in the header).
fn gzip_to(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = Command::new("gzip").args(["-9n", "-c"]).arg(from).output().context("running gzip")?;
    ensure!(out.status.success(), "gzip {} failed: {}", from.display(), String::from_utf8_lossy(&out.stderr));
    write(to, &out.stdout, 0o644)
}

/// Regular files under `dir`, sorted (empty if `dir` does not exist).
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
        };
        for e in entries {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// DEBIAN/md5sums: every file outside DEBIAN/ and /etc (conffiles are checked by
/// dpkg from their own record), as dh_md5sums writes it.
fn md5sums(stage: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    for f in files_under(stage)? {
        let rel = f.strip_prefix(stage).expect("under stage");
        if rel.starts_with("DEBIAN") || rel.starts_with("etc") {
            continue;
        }
        let sum = cmd_output(Command::new("md5sum").arg(&f))?;
        let sum = sum.split_whitespace().next().context("md5sum printed nothing")?;
        writeln!(out, "{sum}  {}", rel.display())?;
    }
    Ok(out)
}

/// dpkg-gencontrol's Installed-Size: KiB per file (rounded up) plus one per directory.
fn installed_size_kib(stage: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut todo = vec![stage.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_name() == "DEBIAN" && d == stage {
                continue;
            }
            let m = e.metadata()?;
            if m.is_dir() {
                total += 1;
                todo.push(e.path());
            } else {
                total += m.len().div_ceil(1024);
            }
        }
    }
    Ok(total)
}

/// The binary's shared-library dependencies, as dpkg-shlibdeps computes them
/// (`${shlibs:Depends}`). It wants a debian/control naming the package, so it runs in
/// a scratch directory that has one.
fn shlib_depends(out_dir: &Path, bin: &Path) -> anyhow::Result<String> {
    let scratch = out_dir.join("shlibdeps");
    fs::create_dir_all(scratch.join("debian"))?;
    fs::write(
        scratch.join("debian/control"),
        format!("Source: {PKG}\n\nPackage: {PKG}\nArchitecture: any\nDescription: scratch\n"),
    )?;
    let bin = fs::canonicalize(bin)?;
    let out = cmd_output(Command::new("dpkg-shlibdeps").arg("-O").arg(format!("-e{}", bin.display())).current_dir(&scratch))?;
    let deps = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?
        .trim()
        .to_string();
    ensure!(!deps.is_empty(), "dpkg-shlibdeps found no dependency for {}: is it a static binary?", bin.display());
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_switches_on_the_whitelist_and_keep_bans_only() {
        let t = "# header\n\n# Whitelist file.\n# white-list = \"/etc/blocksmtp/whitelist\"   # not set; for example\n\n# keep-bans = false\n# max-unknown = 5\n";
        let c = shipped_config(t).unwrap();
        assert!(c.contains("\nwhite-list = \"/etc/blocksmtp/whitelist\"\n"), "{c}");
        assert!(c.contains("\nkeep-bans = true\n"), "{c}");
        assert!(!c.contains(WHITELIST_DEFAULT_LINE) && !c.contains(KEEP_BANS_DEFAULT_LINE), "{c}");
        assert!(c.contains("# max-unknown = 5\n"), "{c}");
        assert!(shipped_config("# max-unknown = 5\n").is_err(), "a template without the line is an error");
        let on = "# (on: /etc/blocksmtp/whitelist exists)\nwhite-list = \"/etc/blocksmtp/whitelist\"\n# keep-bans = false\n";
        assert_eq!(shipped_config(on).unwrap(), "white-list = \"/etc/blocksmtp/whitelist\"\nkeep-bans = true\n");
    }

    #[test]
    fn placeholders_are_found_but_mail_addresses_are_not() {
        assert_eq!(placeholder("Version: @VERSION@\n"), Some("@VERSION@"));
        assert_eq!(placeholder("Maintainer: x <a@example.invalid>\nDepends: @DEPENDS@"), Some("@DEPENDS@"));
        assert_eq!(placeholder("Maintainer: x <a@example.invalid>\n"), None);
        assert_eq!(placeholder("a@@b"), None);
    }

    #[test]
    fn version_comes_from_the_workspace_package() {
        let v = cargo_version(&crate::workspace_root()).unwrap();
        assert!(v.split('.').count() == 3 && v.split('.').all(|p| p.parse::<u32>().is_ok()), "{v}");
    }
}
