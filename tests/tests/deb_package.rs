//! The Debian package, installed for real: `dpkg -i`, the installed binary at work on a
//! sample harvest, every file where it belongs, the shipped config accepted by the
//! daemon, the unit verified, reinstall, remove, purge — and nothing left behind.
//!
//! Needs root and dpkg, and the package itself: `BLOCKSMTP_DEB` names it (`cargo xtask
//! test` builds it with `cargo xtask deb` and sets it). Building it here would run a
//! release build inside `cargo test`; without the variable the test skips, saying so.
//! It refuses to touch a host where a blocksmtp package is already installed.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use blocksmtp_tests::is_root;

const PKG: &str = "blocksmtp";
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// A sendmail 8.17 harvest: six unknown recipients, then the session's summary line
/// naming the client (the only place its address appears).
const HARVEST: &str = "\
Nov 27 12:35:47 mx sm-mta[18868]: 6ARCZkEp018868: <tpwjzbwb15@example.com>... User unknown
Nov 27 12:35:49 mx sm-mta[18868]: 6ARCZkEp018868: <alice@example.com>... User unknown
Nov 27 12:35:52 mx sm-mta[18868]: 6ARCZkEp018868: <bob@example.com>... User unknown
Nov 27 12:35:55 mx sm-mta[18868]: 6ARCZkEp018868: <carol@example.com>... User unknown
Nov 27 12:35:58 mx sm-mta[18868]: 6ARCZkEp018868: <dave@example.com>... User unknown
Nov 27 12:36:01 mx sm-mta[18868]: 6ARCZkEp018868: <erin@example.com>... User unknown
Nov 27 12:36:04 mx sm-mta[18868]: 6ARCZkEp018868: from=<a@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=[192.0.2.66]
";

/// Files the package must install, with a check of their content.
const EXPECTED: &[(&str, &str)] = &[
    ("/usr/sbin/blocksmtp", ""),
    ("/usr/lib/systemd/system/blocksmtp.service", "ExecStart=/usr/sbin/blocksmtp run\n"),
    ("/etc/blocksmtp/blocksmtp.toml", "\nwhite-list = \"/etc/blocksmtp/whitelist\"\n"),
    ("/etc/blocksmtp/whitelist", "# /etc/blocksmtp/whitelist"),
    ("/usr/share/man/man8/blocksmtp.8.gz", "\n.SH FILES\n"),
    ("/usr/share/man/man8/blocksmtp-run.8.gz", "\n.SH SIGNALS\n"),
    ("/usr/share/man/man5/blocksmtp.toml.5.gz", "max\\-unknown"),
    ("/usr/share/man/man5/blocksmtp-whitelist.5.gz", ".TH blocksmtp\\-whitelist 5"),
    ("/usr/share/bash-completion/completions/blocksmtp", "blocksmtp"),
    ("/usr/share/zsh/vendor-completions/_blocksmtp", "#compdef blocksmtp"),
    ("/usr/share/fish/vendor_completions.d/blocksmtp.fish", "complete -c blocksmtp"),
    ("/usr/share/doc/blocksmtp/README.md", "# blocksmtp"),
    ("/usr/share/doc/blocksmtp/README.Debian", "bs:2345:respawn:/usr/sbin/blocksmtp run"),
    ("/usr/share/doc/blocksmtp/copyright", "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"),
    ("/usr/share/doc/blocksmtp/changelog.gz", ""),
];

/// What a purge must leave no trace of, besides the package's own files.
const GONE_AFTER_PURGE: &[&str] = &[
    "/etc/blocksmtp",
    "/var/lib/blocksmtp",
    "/run/blocksmtp",
    "/etc/systemd/system/blocksmtp.service",
    "/etc/systemd/system/multi-user.target.wants/blocksmtp.service",
    "/var/lib/systemd/deb-systemd-helper-enabled/blocksmtp.service",
    "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/blocksmtp.service",
    "/var/lib/systemd/deb-systemd-helper-masked/blocksmtp.service",
];

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

fn ok(prog: &str, args: &[&str]) -> String {
    let o = run(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn installed() -> bool {
    let o = run("dpkg-query", &["-W", "-f=${Status}", PKG]);
    o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with(" installed")
}

fn known_to_dpkg() -> bool {
    let o = run("dpkg-query", &["-W", "-f=${Status}", PKG]);
    o.status.success() && !String::from_utf8_lossy(&o.stdout).ends_with(" not-installed")
}

fn gunzip(path: &str) -> String {
    ok("gzip", &["-dc", path])
}

/// Why the test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("needs root (dpkg -i)".into());
    }
    if run("dpkg", &["--version"]).status.success().then_some(()).is_none() {
        return Some("dpkg is not installed".into());
    }
    match std::env::var_os("BLOCKSMTP_DEB") {
        None => {
            return Some(
                "BLOCKSMTP_DEB is not set: build the package with `cargo xtask deb` and set BLOCKSMTP_DEB to \
                 its path (`cargo xtask test` does both)"
                    .into(),
            );
        }
        Some(p) if !Path::new(&p).is_file() => {
            return Some(format!("BLOCKSMTP_DEB={} is not a file", Path::new(&p).display()));
        }
        Some(_) => {}
    }
    if known_to_dpkg() {
        return Some("a blocksmtp package is already installed (or its conffiles remain) on this host; refusing to purge it".into());
    }
    None
}

/// Purges the package on drop, whatever happened, and removes the policy-rc.d it put
/// in place (so no service is started on the host by the package's scripts).
struct Guard {
    own_policy: bool,
}

impl Guard {
    fn new() -> Self {
        let own_policy = !Path::new(POLICY_RC_D).exists();
        if own_policy {
            std::fs::write(POLICY_RC_D, "#!/bin/sh\n# blocksmtp deb_package test: start nothing\nexit 101\n").unwrap();
            ok("chmod", &["755", POLICY_RC_D]);
        }
        Self { own_policy }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if known_to_dpkg() {
            let o = run("dpkg", &["--purge", PKG]);
            if !o.status.success() {
                eprintln!("cleanup: dpkg --purge {PKG} failed: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
        if self.own_policy {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

#[test]
fn deb_installs_works_and_purges_cleanly() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP deb_package: {why}");
        return;
    }
    let deb = PathBuf::from(std::env::var_os("BLOCKSMTP_DEB").unwrap());
    let deb = deb.to_str().expect("a UTF-8 path");
    let version = ok("dpkg-deb", &["-f", deb, "Version"]).trim().to_string();
    let guard = Guard::new();

    // The package's metadata.
    let control = ok("dpkg-deb", &["-f", deb]);
    for field in ["Depends: libc6", "Recommends: iptables", "Suggests: sendmail-bin | postfix | exim4", "Section: mail"] {
        assert!(control.contains(field), "control lacks {field:?}:\n{control}");
    }
    assert!(!control.contains("example.invalid"), "placeholder in the control file:\n{control}");

    ok("dpkg", &["-i", deb]);
    assert!(installed(), "dpkg -i did not leave {PKG} installed");

    // The installed binary.
    let v = ok("/usr/sbin/blocksmtp", &["--version"]);
    assert_eq!(v.trim(), format!("blocksmtp {version}"), "--version of the installed binary");

    // A dry run over a harvest names the harvester (the binary works, eBPF and all
    // linked in; replay needs no root but runs as root here, harmlessly).
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    std::fs::write(&log, HARVEST).unwrap();
    let report = ok("/usr/sbin/blocksmtp", &["replay", "--json", log.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap_or_else(|e| panic!("replay --json: {e}:\n{report}"));
    let bans = report["bans"].as_array().unwrap_or_else(|| panic!("no bans array:\n{report}"));
    assert_eq!(bans.len(), 1, "one harvester: {report}");
    assert_eq!(bans[0]["source"], "192.0.2.66", "{report}");
    assert_eq!(bans[0]["guesses"], 6, "{report}");

    // Every file where it belongs, and dpkg knows them.
    let listed = ok("dpkg", &["-L", PKG]);
    let listed: Vec<&str> = listed.lines().collect();
    for (path, needle) in EXPECTED {
        assert!(listed.contains(path), "dpkg -L {PKG} does not list {path}");
        assert!(Path::new(path).is_file(), "{path} is not installed");
        if needle.is_empty() {
            continue;
        }
        let text = if path.ends_with(".gz") { gunzip(path) } else { std::fs::read_to_string(path).unwrap() };
        assert!(text.contains(needle), "{path} lacks {needle:?}");
    }
    // Every bundled crate's licence, from Cargo.lock; no placeholder anywhere.
    let copyright = std::fs::read_to_string("/usr/share/doc/blocksmtp/copyright").unwrap();
    for needle in ["\nFiles: crates/aya-0.", "\nFiles: crates/tokio-", "\nFiles: crates/aya-ebpf-", "\nLicense: MIT\n ", "\nLicense: Apache-2.0\n "] {
        assert!(copyright.contains(needle), "copyright lacks {needle:?}");
    }
    assert!(!copyright.contains("example.invalid") && !gunzip("/usr/share/doc/blocksmtp/changelog.gz").contains("example.invalid"));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata("/usr/sbin/blocksmtp").unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o755, "/usr/sbin/blocksmtp mode");
    let man = gunzip("/usr/share/man/man8/blocksmtp.8.gz");
    assert!(man.contains(".TH blocksmtp 8"), "blocksmtp.8 is not a section-8 man page:\n{}", &man[..man.len().min(400)]);
    for section in ["EXIT STATUS", "FILES", "SIGNALS", "EXAMPLES", "SEE ALSO"] {
        assert!(man.contains(&format!(".SH \"{section}\"")) || man.contains(&format!(".SH {section}\n")), "blocksmtp.8 lacks {section}");
    }
    if run("man", &["--version"]).status.success() {
        let page = ok("man", &["-P", "cat", "blocksmtp"]);
        assert!(page.contains("blocksmtp"), "man blocksmtp renders nothing useful");
    }
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}\n", PKG]);
    for c in ["/etc/blocksmtp/blocksmtp.toml", "/etc/blocksmtp/whitelist"] {
        assert!(conffiles.lines().any(|l| l.trim_start().starts_with(&format!("{c} "))), "{c} is not a conffile:\n{conffiles}");
    }
    // The shipped config is `blocksmtp config` with only the whitelist switched on.
    let template = ok("/usr/sbin/blocksmtp", &["config"]);
    let shipped = std::fs::read_to_string("/etc/blocksmtp/blocksmtp.toml").unwrap();
    let active: Vec<&str> = shipped.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    assert_eq!(active, vec!["keep-bans = true", "white-list = \"/etc/blocksmtp/whitelist\""], "active settings in the shipped config");
    // Regenerating the config (`blocksmtp config > /etc/blocksmtp/blocksmtp.toml`) keeps the
    // shipped whitelist on.
    assert!(template.lines().any(|l| l == "white-list = \"/etc/blocksmtp/whitelist\""), "blocksmtp config drops the whitelist:\n{template}");
    for line in template.lines().filter(|l| l.starts_with("# ") && l.contains(" = ") && !l.starts_with("# white-list ") && !l.starts_with("# keep-bans ")) {
        assert!(shipped.contains(line), "shipped config lacks {line:?}");
    }
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/blocksmtp.service").exists(),
        "postinst did not enable the unit (deb-systemd-helper enable)"
    );

    daemon_accepts_shipped_config(dir.path());

    if run("systemd-analyze", &["--version"]).status.success() {
        let o = run("systemd-analyze", &["verify", "/usr/lib/systemd/system/blocksmtp.service"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "systemd-analyze verify failed:\n{err}");
        assert!(!err.contains("blocksmtp.service:"), "systemd-analyze verify complains about the unit:\n{err}");
    } else {
        eprintln!("note: systemd-analyze not installed; unit not verified");
    }

    // Reinstall (postinst configure with an old version: the upgrade path).
    std::fs::write("/etc/blocksmtp/whitelist", "# local edit\n192.0.2.25\n").unwrap();
    ok("dpkg", &["--force-confold", "-i", deb]);
    assert_eq!(std::fs::read_to_string("/etc/blocksmtp/whitelist").unwrap(), "# local edit\n192.0.2.25\n", "conffile edit kept");

    // Remove: conffiles stay, the unit is masked, the program is gone.
    ok("dpkg", &["--remove", PKG]);
    assert!(!Path::new("/usr/sbin/blocksmtp").exists(), "binary left after remove");
    assert!(Path::new("/etc/blocksmtp/blocksmtp.toml").exists(), "remove must keep conffiles");

    // Purge: nothing left.
    std::fs::create_dir_all("/var/lib/blocksmtp").unwrap();
    std::fs::write("/var/lib/blocksmtp/state.json", "{}").unwrap();
    ok("dpkg", &["--purge", PKG]);
    assert!(!run("dpkg", &["-L", PKG]).status.success(), "dpkg -L {PKG} still succeeds after purge");
    for (path, _) in EXPECTED {
        assert!(!Path::new(path).exists(), "{path} left after purge");
    }
    for path in GONE_AFTER_PURGE {
        assert!(std::fs::symlink_metadata(path).is_err(), "{path} left after purge");
    }
    drop(guard);
}

/// The installed daemon starts with the shipped config and whitelist (dry-run mode,
/// reading stdin, private socket and state file), answers `status`, and stops on
/// SIGTERM.
fn daemon_accepts_shipped_config(dir: &Path) {
    let socket = dir.join("control.sock");
    let state = dir.join("state.json");
    let mut child = Command::new("/usr/sbin/blocksmtp")
        .args(["run", "--mode", "dry-run", "--stdin", "--cmd-read-timeout", "0"])
        .arg("--control-socket")
        .arg(&socket)
        .arg("--state-file")
        .arg(&state)
        // stdin at EOF at once: the daemon keeps running (control socket open). (A
        // pipe held open would keep it from exiting after SIGTERM: tokio's blocking
        // stdin read outlives the runtime; reported to the daemon's owners.)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the installed daemon");
    let start = Instant::now();
    let mut status = None;
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(s)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read as _;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the daemon exited ({s}) with the shipped config:\n{err}");
        }
        if socket.exists() {
            let o = run("/usr/sbin/blocksmtp", &["status", "--json", "--control-socket", socket.to_str().unwrap()]);
            if o.status.success() {
                status = Some(String::from_utf8_lossy(&o.stdout).into_owned());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("the daemon never answered `status` on its control socket within 10 s");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_else(|e| panic!("status --json: {e}: {status}"));
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["data"]["mode"], "dry-run", "{status}");
    let exit = exit.expect("the daemon did not stop within 10 s of SIGTERM");
    assert!(exit.success(), "the daemon's clean stop failed: {exit}");
}
