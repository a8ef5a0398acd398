//! The Debian package on a real systemd: Debian 12 booted in systemd-nspawn, the freshly
//! built .deb installed with apt, and the unit judged by real TCP connects from a client
//! network namespace — protection out of the box (xdp mode, no restarts), harvests from
//! the journal and from /var/log/mail.log banned and dropped, forged journal lines
//! ignored, bans kept through `systemctl restart` and a reinstall, a rejected reload
//! failing visibly, nothing attached after `apt remove`, nothing left after `apt purge`.
//!
//! The root file system is debootstrapped once from the machine's Debian mirror (read
//! from /etc/apt/sources.list(.d); `BLOCKSMTP_DEBIAN_MIRROR` overrides) and cached as a
//! tarball under /var/cache/blocksmtp-tests; each run unpacks a fresh copy. Needs root,
//! systemd-nspawn (systemd-container), debootstrap, bpftool, and the package:
//! `BLOCKSMTP_DEB` (`cargo xtask test` builds it and sets it, and installs the tools).
//! Without them the test skips, saying why.
//!
//! Container facts this relies on (measured; see the package's README.Debian): nspawn's
//! seccomp filter and capability set forbid bpf(), so it runs with SYSTEMD_SECCOMP=0,
//! --capability=all and a private bpffs bound at /sys/fs/bpf; there is no D-Bus on the
//! host, hence --register=no --keep-unit. Lines from a process entered with nsenter reach
//! the daemon's `journalctl -f`; those of transient units or non-root users may not
//! within seconds in such a container, so the MTA is played by a copy of logger at the
//! MTA's own path (what journald records as _EXE), run as root, and the forged lines'
//! rejection is judged by a genuine harvest logged after them being banned.
use std::{
    fs,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use blocksmtp_tests::{
    daemon::KERNEL_BTF,
    is_root,
    netns::{Netns, connect_from},
};

const CACHE_DIR: &str = "/var/cache/blocksmtp-tests";
/// What the container needs besides the minimal base: systemd as init, journald's
/// peers, the tools the package and the test use inside (ip, iptables for the package's
/// Recommends-free install, socat as the port-25 listener). The package's own
/// dependencies (libc6, libgcc-s1) are in the base. rsyslog, disabled until the phase
/// that sets up README.Debian's trusted-sender filter.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,iproute2,iptables,procps,socat,bsdutils,rsyslog";
const SUITE: &str = "bookworm";
/// The server's address inside the container and the clients' addresses.
const SERVER: &str = "192.0.2.25";
const JOURNAL_HARVESTER: &str = "192.0.2.66";
const INNOCENT: &str = "192.0.2.67";
const FORGED: &str = "192.0.2.68";
const JOURNAL_HARVESTER_2: &str = "192.0.2.69";
const FILE_HARVESTER: &str = "192.0.2.70";
const UPGRADE_HARVESTER: &str = "192.0.2.71";
const POSTFIX_HARVESTER: &str = "192.0.2.72";
const EXIM_HARVESTER: &str = "192.0.2.73";
/// From another network: by this phase the earlier harvesters of 192.0.2.0/24 would make a
/// third address of that /24 a network-wide ban (the prefix evidence), covering the
/// forged source too.
const RSYSLOG_HARVESTER: &str = "198.51.100.74";
const RSYSLOG_FORGED: &str = "198.51.100.75";
/// Where Debian 12's sendmail binary lives (`/usr/sbin/sendmail-mta` links to it through
/// /etc/alternatives; /usr/lib/sm.bin/ before Debian 12): the path journald records as
/// _EXE for sendmail's lines.
const SENDMAIL_EXE: &str = "/usr/libexec/sendmail/sendmail";
/// Postfix's smtpd and Debian's Exim, likewise.
const POSTFIX_SMTPD_EXE: &str = "/usr/lib/postfix/sbin/smtpd";
const EXIM_EXE: &str = "/usr/sbin/exim4";

fn output(c: &mut Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(c: &mut Command) -> String {
    let o = output(c);
    assert!(o.status.success(), "{c:?} failed ({}):\n{}", o.status, text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// Why the test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, systemd-nspawn, bpffs)".into());
    }
    for (tool, pkg) in [("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"), ("bpftool", "bpftool"), ("ip", "iproute2")] {
        if !have(tool) {
            return Some(format!("{tool} is not installed (apt-get install {pkg}; `cargo xtask setup --test-deps` does it)"));
        }
    }
    match std::env::var_os("BLOCKSMTP_DEB") {
        None => Some("BLOCKSMTP_DEB is not set: build the package with `cargo xtask deb` and set it (`cargo xtask test` does both)".into()),
        Some(p) if !Path::new(&p).is_file() => Some(format!("BLOCKSMTP_DEB={} is not a file", Path::new(&p).display())),
        Some(_) => None,
    }
}

/// The Debian mirror the machine's apt uses (deb822 `URIs:` or one-line `deb URL suite`),
/// skipping security and update archives.
fn debian_mirror() -> String {
    if let Ok(m) = std::env::var("BLOCKSMTP_DEBIAN_MIRROR") {
        return m;
    }
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == "list" || e == "sources")
                && let Ok(t) = fs::read_to_string(&p)
            {
                texts.push(t);
            }
        }
    }
    let usable = |u: &str| (u.starts_with("http://") || u.starts_with("https://")) && u.contains("debian") && !u.contains("security");
    for t in &texts {
        for line in t.lines().map(str::trim) {
            let url = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                // `deb [opts] URL suite …`
                let rest = if rest.trim_start().starts_with('[') { rest.split_once(']').map_or("", |x| x.1) } else { rest };
                rest.split_whitespace().next()
            } else {
                None
            };
            if let Some(u) = url
                && usable(u)
            {
                return u.to_string();
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// The cached root tarball, debootstrapped on first use. Held under an flock so parallel
/// runs do not build it twice; built in a scratch directory and renamed into place, so
/// an interrupted build leaves no half tarball.
fn root_tarball() -> PathBuf {
    let mirror = debian_mirror();
    // The key covers what decides the content: suite, package list, mirror.
    let key = {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("{SUITE} {INCLUDE} {mirror}").bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        h
    };
    fs::create_dir_all(CACHE_DIR).unwrap();
    let tarball = Path::new(CACHE_DIR).join(format!("{SUITE}-nspawn-{key:016x}.tar"));
    let lock = fs::File::create(Path::new(CACHE_DIR).join("debootstrap.lock")).unwrap();
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0, "flock");
    if tarball.exists() {
        return tarball;
    }
    let build = Path::new(CACHE_DIR).join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&build);
    eprintln!("debootstrapping {SUITE} from {mirror} into {} (cached as {})", build.display(), tarball.display());
    let o = output(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
            .arg(&build)
            .arg(&mirror),
    );
    if !o.status.success() {
        let _ = fs::remove_dir_all(&build);
        panic!("debootstrap {SUITE} from {mirror} failed ({}):\n{}", o.status, text(&o));
    }
    // No package lists or downloaded .debs in the cache: the container installs offline.
    let _ = fs::remove_dir_all(build.join("var/cache/apt/archives"));
    let partial = tarball.with_extension("tar.partial");
    ok(Command::new("tar").arg("-C").arg(&build).args(["--numeric-owner", "-cf"]).arg(&partial).arg("."));
    fs::rename(&partial, &tarball).unwrap();
    let _ = fs::remove_dir_all(&build);
    tarball
}

/// A booted container and everything around it; all undone on drop.
struct Container {
    nspawn: Option<Child>,
    leader: u32,
    root: Option<tempfile::TempDir>,
    bpffs: Option<tempfile::TempDir>,
    bpffs_mounted: bool,
    log: PathBuf,
    server: Netns,
    client: Netns,
}

impl Container {
    fn boot(deb: &Path) -> Self {
        let tarball = root_tarball();
        let server = Netns::new("nspct").expect("server netns");
        let client = Netns::new("nspcl").expect("client netns");
        server.ip(&["link", "add", "vs0", "type", "veth", "peer", "name", "vc0", "netns", &client.name]).unwrap();
        server.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "vs0"]).unwrap();
        server.ip(&["link", "set", "vs0", "up"]).unwrap();
        // The daemon attaches to the default route's interface.
        server.ip(&["route", "add", "default", "via", "192.0.2.1", "dev", "vs0"]).unwrap();
        // Clients of another network on the same segment (no router).
        server.ip(&["route", "add", "198.51.100.0/24", "dev", "vs0"]).unwrap();
        for a in [
            JOURNAL_HARVESTER,
            INNOCENT,
            FORGED,
            JOURNAL_HARVESTER_2,
            FILE_HARVESTER,
            UPGRADE_HARVESTER,
            POSTFIX_HARVESTER,
            EXIM_HARVESTER,
            RSYSLOG_HARVESTER,
            RSYSLOG_FORGED,
        ] {
            client.ip(&["addr", "add", &format!("{a}/24"), "dev", "vc0"]).unwrap();
        }
        client.ip(&["link", "set", "vc0", "up"]).unwrap();

        let mut c = Container {
            nspawn: None,
            leader: 0,
            root: None,
            bpffs: None,
            bpffs_mounted: false,
            log: PathBuf::new(),
            server,
            client,
        };
        let bpffs = tempfile::Builder::new().prefix("bsn-bpffs-").tempdir_in("/var/tmp").unwrap();
        ok(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(bpffs.path()));
        c.bpffs_mounted = true;
        c.bpffs = Some(bpffs);
        let root = tempfile::Builder::new().prefix("bsn-root-").tempdir_in("/var/tmp").unwrap();
        ok(Command::new("tar").arg("-C").arg(root.path()).args(["--numeric-owner", "-xpf"]).arg(&tarball));
        c.log = root.path().with_extension("console.log");
        let r = root.path();
        fs::write(r.join("etc/hostname"), "mx\n").unwrap();
        fs::copy(deb, r.join("root/blocksmtp.deb")).unwrap();
        // The SMTP port's listener (what the bans are judged against).
        fs::write(
            r.join("etc/systemd/system/smtp-listen.service"),
            "[Unit]\nDescription=port 25 listener for the blocksmtp test\n[Service]\n\
             ExecStart=/usr/bin/socat TCP4-LISTEN:25,fork,reuseaddr SYSTEM:'echo 220 mx'\n\
             [Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/etc/systemd/system/smtp-listen.service",
            r.join("etc/systemd/system/multi-user.target.wants/smtp-listen.service"),
        )
        .unwrap();
        // sendmail, as journald sees it: a program at sendmail's path, run as root.
        for exe in [SENDMAIL_EXE, POSTFIX_SMTPD_EXE, EXIM_EXE] {
            let to = r.join(exe.trim_start_matches('/'));
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(r.join("usr/bin/logger"), to).unwrap();
        }
        // rsyslog stays off (journal mode, no /var/log/mail.log) until its own phase.
        for l in ["etc/systemd/system/syslog.service", "etc/systemd/system/multi-user.target.wants/rsyslog.service"] {
            let _ = fs::remove_file(r.join(l));
        }
        c.root = Some(root);

        let console = fs::File::create(&c.log).unwrap();
        let machine = format!("bsn-{}", std::process::id());
        let child = Command::new("systemd-nspawn")
            .env("SYSTEMD_SECCOMP", "0")
            .arg("--capability=all")
            .arg(format!("--bind={}:/sys/fs/bpf", c.bpffs.as_ref().unwrap().path().display()))
            .arg(format!("--network-namespace-path=/run/netns/{}", c.server.name))
            .args(["--register=no", "--keep-unit", "--console=passive", "-M", &machine, "-b", "-D"])
            .arg(c.root.as_ref().unwrap().path())
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("starting systemd-nspawn");
        c.nspawn = Some(child);
        c.leader = c.find_leader();
        // Booted: every unit settled (running, or degraded if some unrelated unit failed).
        // `--wait` fails at once while the bus socket is not there yet: poll.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let o = c.exec(&["timeout", "60", "systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(Instant::now() < deadline, "container boot: {state:?} {}\n{}", text(&o), c.diagnostics());
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    /// The container's PID 1, as seen from here: the `systemd` process in our server
    /// network namespace.
    fn find_leader(&mut self) -> u32 {
        let want = fs::metadata(format!("/run/netns/{}", self.server.name)).unwrap().ino();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(s))) = self.nspawn.as_mut().map(Child::try_wait) {
                panic!("systemd-nspawn exited ({s}):\n{}", fs::read_to_string(&self.log).unwrap_or_default());
            }
            for e in fs::read_dir("/proc").unwrap().flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
                let net = fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
                if net.ok() != Some(want) {
                    continue;
                }
                let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let inner_pid_1 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .is_some_and(|v| v.split_whitespace().nth(1) == Some("1"));
                // nspawn's own child has pid 1 there too until it execs systemd.
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if inner_pid_1 && comm.trim() == "systemd" {
                    return pid;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no container init found within 30 s:\n{}", fs::read_to_string(&self.log).unwrap_or_default());
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    fn exec(&self, args: &[&str]) -> Output {
        output(&mut self.command(args))
    }

    /// Run inside; panic with the container's view of blocksmtp if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.exec(args);
        assert!(o.status.success(), "{args:?} in the container failed ({}):\n{}\n{}", o.status, text(&o), self.diagnostics());
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Run inside with `input` on stdin.
    fn feed(&self, args: &[&str], input: &str) {
        self.feed_and_linger(args, input, Duration::ZERO)
    }

    /// Like `feed`, keeping stdin open for `linger` after the input: the process is still
    /// alive when journald reads its /proc entry (_EXE, _COMM), as an MTA process that
    /// goes on with its session is.
    fn feed_and_linger(&self, args: &[&str], input: &str, linger: Duration) {
        let mut child = self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(linger);
        drop(stdin);
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{args:?} in the container failed ({}):\n{}", o.status, text(&o));
    }

    fn unit(&self, prop: &str) -> String {
        self.ok(&["systemctl", "show", "-p", prop, "--value", "blocksmtp.service"]).trim().to_string()
    }

    /// Whether a TCP connect from `src` to the container's port 25 completes (1 s).
    fn connects(&self, src: &str) -> bool {
        let src: IpAddr = src.parse().unwrap();
        let dst = SocketAddr::new(SERVER.parse().unwrap(), 25);
        self.client.run_in(move || connect_from(src, dst, Duration::from_secs(1))).unwrap()
    }

    fn wait_banned(&self, src: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !self.connects(src) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("{what}: {src} still connects after 30 s\n{}", self.diagnostics());
    }

    fn listed(&self) -> String {
        self.ok(&["blocksmtp", "list"])
    }

    /// What the XDP/TC hooks of the server's interface hold, from the host's bpftool.
    fn attached(&self) -> String {
        let o = output(Command::new("ip").args(["netns", "exec", &self.server.name, "bpftool", "-j", "net", "show", "dev", "vs0"]));
        assert!(o.status.success(), "bpftool net show: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bpftool -j: {e}: {}", text(&o)));
        let mut progs = Vec::new();
        for entry in v.as_array().into_iter().flatten() {
            for hook in ["xdp", "tc", "tcx"] {
                for p in entry[hook].as_array().into_iter().flatten() {
                    progs.push(format!("{hook}:{}", p["name"].as_str().unwrap_or("?")));
                }
            }
        }
        progs.join(" ")
    }

    fn diagnostics(&self) -> String {
        let o = self.exec(&["sh", "-c", "systemctl status --no-pager blocksmtp; journalctl --no-pager -n 60 -u blocksmtp"]);
        format!("--- in the container:\n{}", text(&o))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            // SIGTERM: nspawn asks the container's systemd to power off.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if self.bpffs_mounted
            && let Some(b) = &self.bpffs
        {
            let _ = Command::new("umount").arg("-l").arg(b.path()).status();
        }
        if let Some(r) = self.root.take() {
            // Mounts nspawn made inside are gone with its mount namespace; the tree is
            // plain files now.
            let _ = fs::remove_file(&self.log);
            drop(r);
        }
        // The netns guards (fields) delete both namespaces and the veth pair.
    }
}

/// README.Debian's rsyslog set-up: the imuxsock module line for /etc/rsyslog.conf and
/// the filter file's text (the indented lines after its `# /etc/rsyslog.d/…` comment).
fn readme_rsyslog() -> (String, String) {
    let readme = include_str!("../../packaging/README.Debian");
    let module = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("module(load=\"imuxsock\"") && l.contains("ParseTrusted"))
        .expect("README.Debian shows no imuxsock module line")
        .to_string();
    let mut filter = String::new();
    let mut lines = readme.lines().skip_while(|l| !l.trim_start().starts_with("# /etc/rsyslog.d/10-mail-trusted.conf"));
    for l in lines.by_ref().take_while(|l| l.starts_with("    ")) {
        filter.push_str(l.trim_start());
        filter.push('\n');
    }
    assert!(filter.contains("then stop"), "README.Debian's filter not found:\n{filter}");
    (module, filter)
}

/// A sendmail 8.17 harvest of six unknown recipients and the session summary naming
/// the client, as syslog messages (without the syslog header).
fn sendmail_harvest(qid: &str, client: &str) -> String {
    let mut s = String::new();
    for u in ["tpwjzbwb15", "alice", "bob", "carol", "dave", "erin"] {
        s.push_str(&format!("{qid}: <{u}@example.com>... User unknown\n"));
    }
    s.push_str(&format!("{qid}: from=<a@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=[{client}]\n"));
    s
}

/// The same harvest as /var/log/mail.log lines written by rsyslog.
fn sendmail_harvest_file(qid: &str, client: &str) -> String {
    sendmail_harvest(qid, client).lines().map(|m| format!("Dec  1 11:00:00 mx sm-mta[4242]: {m}\n")).collect()
}

#[test]
fn package_on_debian_12_systemd() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP systemd_nspawn: {why}");
        return;
    }
    let deb = PathBuf::from(std::env::var_os("BLOCKSMTP_DEB").unwrap());
    let c = Container::boot(&deb);
    assert!(c.connects(INNOCENT), "the listener in the container is not reachable before install");

    // Installed with apt, offline: every dependency is in the base system.
    c.ok(&["apt-get", "install", "-y", "--no-install-recommends", "/root/blocksmtp.deb"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.exec(&["blocksmtp", "status"]).status.code() != Some(0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }

    // Protects out of the box: active, never restarted, xdp mode, a program attached.
    assert_eq!(c.unit("ActiveState"), "active", "{}", c.diagnostics());
    assert_eq!(c.unit("NRestarts"), "0", "the unit restarted\n{}", c.diagnostics());
    // The sandbox and limits as systemd 252 reads them.
    assert_eq!(c.unit("StartLimitBurst"), "5");
    assert_eq!(c.unit("StartLimitIntervalUSec"), "5min");
    assert_eq!(c.unit("SystemCallErrorNumber"), "1", "SystemCallErrorNumber=EPERM");
    assert!(c.unit("ExecReload").contains("path=/usr/sbin/blocksmtp ; argv[]=/usr/sbin/blocksmtp reload"), "{}", c.unit("ExecReload"));
    assert_eq!(c.unit("ProtectKernelTunables"), "no");
    // The kernel's BTF is hidden from the daemon (aya would parse all of it at start;
    // the programs need none of it) and the dataplane loaded without it (below: mode,
    // program attached, a harvester's connects dropped).
    let pid = c.unit("MainPID");
    let btf_size = |ns: &[&str]| {
        let mut args = ns.to_vec();
        args.extend(["stat", "-c", "%s", KERNEL_BTF]);
        c.exec(&args)
    };
    if Path::new(KERNEL_BTF).exists() {
        let outside = btf_size(&[]);
        assert!(outside.status.success() && text(&outside).trim() != "0", "the container does not show the kernel's BTF: {}", text(&outside));
        let inside = btf_size(&["nsenter", "-t", &pid, "-m", "--"]);
        assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), "0", "the daemon's mount namespace still shows the kernel's BTF: {}", text(&inside));
    }
    let peak = c.ok(&["grep", "-E", "^Vm(RSS|HWM)", &format!("/proc/{pid}/status")]);
    eprintln!("daemon memory under the unit: {}", peak.split_whitespace().collect::<Vec<_>>().join(" "));
    let status: serde_json::Value = serde_json::from_str(&c.ok(&["blocksmtp", "status", "--json"])).unwrap();
    assert_eq!(status["data"]["mode"], "xdp", "{status}");
    // No mail log in the container: the journal, whose lines say who wrote them.
    let sources = status["data"]["sources"].as_array().cloned().unwrap_or_default();
    assert!(sources.iter().any(|s| s["name"] == "journal" && s["trusted"] == true), "journal source not trusted: {status}");
    let attached = c.attached();
    assert!(attached.contains("xdp:") || attached.contains("tc"), "nothing attached to vs0 after install: {attached:?}");
    assert!(fs::read_dir(c.bpffs.as_ref().unwrap().path().join("blocksmtp")).is_ok(), "no pins under /sys/fs/bpf/blocksmtp");
    if attached.contains("xdp:") {
        let link = ok(Command::new("ip").args(["-n", &c.server.name, "-d", "link", "show", "dev", "vs0"]));
        assert!(link.contains("prog/xdp"), "ip link does not show the XDP program:\n{link}");
    }

    // A harvest logged through the journal by sendmail (its binary, as root).
    let linger = Duration::from_millis(1500);
    c.feed_and_linger(&[SENDMAIL_EXE, "-t", "sm-mta", "--id=4242"], &sendmail_harvest("6B1B0AAa004242", JOURNAL_HARVESTER), linger);
    c.wait_banned(JOURNAL_HARVESTER, "journal harvest");
    assert!(c.connects(INNOCENT), "the innocent client is dropped too");

    // Forged: the same lines with sendmail's tag, from logger as root (alive while
    // journald reads its _EXE, and exiting at once so that journald finds no _EXE) and
    // as nobody. None is sendmail's binary; a genuine harvest logged after them is
    // banned, so they were read and refused.
    c.feed_and_linger(&["logger", "-t", "sm-mta", "--id=4243"], &sendmail_harvest("6B1B0AAb004243", FORGED), linger);
    c.feed(&["logger", "-t", "sm-mta", "--id=4249"], &sendmail_harvest("6B1B0AAg004249", FORGED));
    c.feed(
        &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "logger", "-t", "sm-mta", "--id=4244"],
        &sendmail_harvest("6B1B0AAc004244", FORGED),
    );
    c.feed(
        &["logger", "-t", "postfix/../../evil", "--id=4245"],
        &(1..=6)
            .map(|i| {
                format!(
                    "NOQUEUE: reject: RCPT from unknown[{FORGED}]: 550 5.1.1 <u{i}@example.com>: Recipient address rejected: \
                     User unknown in local recipient table; from=<> to=<u{i}@example.com> proto=ESMTP helo=<x>\n"
                )
            })
            .collect::<String>(),
    );
    c.feed_and_linger(&[SENDMAIL_EXE, "-t", "sm-mta", "--id=4246"], &sendmail_harvest("6B1B0AAd004246", JOURNAL_HARVESTER_2), linger);
    c.wait_banned(JOURNAL_HARVESTER_2, "journal harvest after the forged lines");

    // Postfix's submission service (`-o syslog_name=postfix/submission`) and Exim with
    // its own timestamp in the message: read from the journal as well.
    let postfix: String = (1..=6)
        .map(|i| {
            format!(
                "NOQUEUE: reject: RCPT from unknown[{POSTFIX_HARVESTER}]: 550 5.1.1 <p{i}@example.com>: Recipient address \
                 rejected: User unknown in local recipient table; from=<> to=<p{i}@example.com> proto=ESMTP helo=<x>\n"
            )
        })
        .collect();
    c.feed_and_linger(&[POSTFIX_SMTPD_EXE, "-t", "postfix/submission/smtpd", "--id=4250"], &postfix, linger);
    c.wait_banned(POSTFIX_HARVESTER, "postfix/submission/smtpd harvest in the journal");
    let exim: String = (1..=12)
        .map(|i| {
            let reason = if i <= 10 { "Unrouteable address".to_string() } else { format!("REJECT [{EXIM_HARVESTER}]: bad recipient count high [{i}]") };
            format!("2026-12-01 11:00:{i:02} H=(x) [{EXIM_HARVESTER}]:4{i:04} I=[{SERVER}]:25 F=<> rejected RCPT <e{i}@example.com>: {reason}\n")
        })
        .collect();
    c.feed_and_linger(&[EXIM_EXE, "-t", "exim", "--id=4251"], &exim, linger);
    c.wait_banned(EXIM_HARVESTER, "exim harvest in the journal");
    assert!(c.connects(FORGED), "a forged journal line banned {FORGED}\n{}", c.listed());
    assert!(!c.listed().contains(FORGED), "a forged journal line banned {FORGED}:\n{}", c.listed());

    // Restart (now following /var/log/mail.log, the default when it exists): the bans
    // stay in force, and a harvest in the file is banned.
    c.ok(&["install", "-m", "0640", "-g", "adm", "/dev/null", "/var/log/mail.log"]);
    c.ok(&["systemctl", "restart", "blocksmtp.service"]);
    assert!(!c.connects(JOURNAL_HARVESTER), "{JOURNAL_HARVESTER} connects right after the restart");
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.exec(&["blocksmtp", "status"]).status.code() != Some(0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    let list = c.listed();
    for a in [JOURNAL_HARVESTER, JOURNAL_HARVESTER_2] {
        assert!(!c.connects(a), "{a} connects after the restart\n{list}");
        assert!(list.contains(a), "{a} not listed after the restart:\n{list}");
    }
    assert_eq!(c.unit("NRestarts"), "0", "{}", c.diagnostics());
    let status: serde_json::Value = serde_json::from_str(&c.ok(&["blocksmtp", "status", "--json"])).unwrap();
    let sources = status["data"]["sources"].as_array().cloned().unwrap_or_default();
    assert!(
        sources.iter().any(|s| s["name"] == "/var/log/mail.log" && s["trusted"] == false),
        "not following /var/log/mail.log (shown as untrusted) after the restart: {status}"
    );
    c.feed(&["sh", "-c", "cat >> /var/log/mail.log"], &sendmail_harvest_file("6B1B0AAe004247", FILE_HARVESTER));
    c.wait_banned(FILE_HARVESTER, "harvest in /var/log/mail.log");
    assert!(c.connects(INNOCENT), "the innocent client is dropped after the restart");

    // Reinstall (the upgrade path: postinst restarts the unit): bans kept, new ones made.
    c.ok(&["dpkg", "-i", "/root/blocksmtp.deb"]);
    for a in [JOURNAL_HARVESTER, JOURNAL_HARVESTER_2, FILE_HARVESTER] {
        assert!(!c.connects(a), "{a} connects after the reinstall\n{}", c.diagnostics());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.exec(&["blocksmtp", "status"]).status.code() != Some(0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(c.unit("ActiveState"), "active", "{}", c.diagnostics());
    c.feed(&["sh", "-c", "cat >> /var/log/mail.log"], &sendmail_harvest_file("6B1B0AAf004248", UPGRADE_HARVESTER));
    c.wait_banned(UPGRADE_HARVESTER, "harvest after the reinstall");

    // A reload with a broken whitelist fails visibly, and the daemon keeps running.
    let wl = c.ok(&["cat", "/etc/blocksmtp/whitelist"]);
    c.feed(&["sh", "-c", "cat > /etc/blocksmtp/whitelist"], "192.0.2.300\n");
    let o = c.exec(&["systemctl", "reload", "blocksmtp.service"]);
    assert!(!o.status.success(), "systemctl reload accepted a broken whitelist:\n{}", text(&o));
    assert_eq!(c.unit("ActiveState"), "active", "a rejected reload stopped the daemon\n{}", c.diagnostics());
    c.feed(&["sh", "-c", "cat > /etc/blocksmtp/whitelist"], &wl);
    if c.exec(&["blocksmtp", "reload", "--help"]).status.success() {
        c.ok(&["systemctl", "reload", "blocksmtp.service"]);
    } else {
        eprintln!("note: this blocksmtp has no `reload` command yet; only the failing reload was checked");
    }
    assert!(!c.connects(JOURNAL_HARVESTER), "{JOURNAL_HARVESTER} connects after the reload");

    // rsyslog set up as README.Debian says (imuxsock's trusted properties, a filter on
    // the sender's program), journald forwarding to it as on Debian: sendmail's lines
    // reach /var/log/mail.log and are banned on, a forged `logger -t sm-mta` does not.
    let (module_line, filter) = readme_rsyslog();
    c.ok(&["systemctl", "enable", "rsyslog.service"]);
    let conf = c.ok(&["cat", "/etc/rsyslog.conf"]);
    assert!(conf.contains("module(load=\"imuxsock\")"), "Debian's rsyslog.conf has no imuxsock line to edit:\n{conf}");
    let conf = conf.replacen("module(load=\"imuxsock\")", &module_line, 1);
    c.feed(&["sh", "-c", "cat > /etc/rsyslog.conf"], &conf);
    c.feed(&["sh", "-c", "cat > /etc/rsyslog.d/10-mail-trusted.conf"], &filter);
    c.ok(&["rsyslogd", "-N1"]);
    c.ok(&["systemctl", "restart", "rsyslog.service"]);
    // Facility mail, as sendmail logs (logger's default, user, goes elsewhere).
    c.feed_and_linger(&["logger", "-p", "mail.info", "-t", "sm-mta", "--id=4252"], &sendmail_harvest("6B1B0AAh004252", RSYSLOG_FORGED), linger);
    c.feed_and_linger(&[SENDMAIL_EXE, "-p", "mail.info", "-t", "sm-mta", "--id=4253"], &sendmail_harvest("6B1B0AAi004253", RSYSLOG_HARVESTER), linger);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.ok(&["cat", "/var/log/mail.log"]).contains(&format!("relay=[{RSYSLOG_HARVESTER}]")) {
        if Instant::now() > deadline {
            let o = c.exec(&[
                "sh",
                "-c",
                "tail -n 20 /var/log/mail.log; systemctl status --no-pager rsyslog syslog.socket; journalctl --no-pager -n 30 -u rsyslog; \
                 grep -ri forward /etc/systemd/journald.conf; cat /etc/rsyslog.d/10-mail-trusted.conf; grep imuxsock /etc/rsyslog.conf",
            ]);
            panic!("sendmail's lines never reached /var/log/mail.log through rsyslog:\n{}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    c.wait_banned(RSYSLOG_HARVESTER, "sendmail's harvest through rsyslog");
    let maillog = c.ok(&["cat", "/var/log/mail.log"]);
    assert!(maillog.contains(&format!("relay=[{RSYSLOG_HARVESTER}]")), "sendmail's lines not in mail.log:\n{maillog}");
    assert!(!maillog.contains(RSYSLOG_FORGED), "the forged lines passed rsyslog's filter:\n{maillog}");
    // They did reach rsyslog (and the journal), and were refused there: not lost on the way.
    let journal = c.ok(&["journalctl", "--no-pager", "-t", "sm-mta", "-g", RSYSLOG_FORGED]);
    assert!(journal.contains(RSYSLOG_FORGED), "the forged lines were never logged:\n{journal}");
    assert!(c.connects(RSYSLOG_FORGED), "a forged syslog line banned {RSYSLOG_FORGED}\n{}", c.listed());

    // A broken config: the restart fails at once (no restart loop), and the bans stay in
    // force meanwhile (keep-bans: the pinned program goes on dropping).
    let config = c.ok(&["cat", "/etc/blocksmtp/blocksmtp.toml"]);
    c.feed(&["sh", "-c", "cat >> /etc/blocksmtp/blocksmtp.toml"], "max-unknown = \"many\"\n");
    let _ = c.exec(&["systemctl", "restart", "blocksmtp.service"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.unit("ActiveState") != "failed" {
        assert!(Instant::now() < deadline, "a broken config did not fail the unit:\n{}", c.diagnostics());
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(c.unit("ActiveState"), "failed", "the unit restarted on a config error\n{}", c.diagnostics());
    assert_eq!(c.unit("NRestarts"), "0", "the unit restarted on a config error\n{}", c.diagnostics());
    let journal = c.ok(&["journalctl", "--no-pager", "-u", "blocksmtp", "-n", "20"]);
    assert!(journal.contains("key `max-unknown`"), "the journal does not name the bad key:\n{journal}");
    assert!(!c.connects(JOURNAL_HARVESTER), "{JOURNAL_HARVESTER} let in while the daemon is down");
    c.feed(&["sh", "-c", "cat > /etc/blocksmtp/blocksmtp.toml"], &config);
    c.ok(&["systemctl", "start", "blocksmtp.service"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.exec(&["blocksmtp", "status"]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the fixed config does not start:\n{}", c.diagnostics());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(c.listed().contains(JOURNAL_HARVESTER), "bans not taken over after the failed start:\n{}", c.listed());

    // apt remove: nothing attached any more, nothing dropped, no pins; config kept.
    c.ok(&["apt-get", "remove", "-y", "blocksmtp"]);
    assert_eq!(c.attached(), "", "programs still attached after apt remove");
    let link = ok(Command::new("ip").args(["-n", &c.server.name, "-d", "link", "show", "dev", "vs0"]));
    assert!(!link.contains("prog/xdp") && !link.contains(" xdp"), "XDP still on vs0 after apt remove:\n{link}");
    assert!(c.connects(JOURNAL_HARVESTER), "{JOURNAL_HARVESTER} still dropped after apt remove");
    assert!(!c.bpffs.as_ref().unwrap().path().join("blocksmtp").exists(), "pins left after apt remove");
    assert!(c.exec(&["test", "-f", "/etc/blocksmtp/blocksmtp.toml"]).status.success(), "apt remove must keep the config");
    assert!(!c.exec(&["test", "-e", "/usr/sbin/blocksmtp"]).status.success(), "the binary is left after apt remove");

    // apt purge: nothing left.
    c.ok(&["apt-get", "purge", "-y", "blocksmtp"]);
    let st = c.exec(&["dpkg-query", "-W", "-f=${Status}", "blocksmtp"]);
    assert!(!st.status.success() || String::from_utf8_lossy(&st.stdout).contains("not-installed"), "dpkg still knows blocksmtp: {}", text(&st));
    for p in [
        "/etc/blocksmtp",
        "/var/lib/blocksmtp",
        "/run/blocksmtp",
        "/usr/sbin/blocksmtp",
        "/usr/lib/systemd/system/blocksmtp.service",
        "/lib/systemd/system/blocksmtp.service",
        "/etc/systemd/system/blocksmtp.service",
        "/etc/systemd/system/multi-user.target.wants/blocksmtp.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/blocksmtp.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/blocksmtp.service",
        "/var/lib/systemd/deb-systemd-helper-masked/blocksmtp.service",
    ] {
        assert!(!c.exec(&["test", "-e", p]).status.success(), "{p} left after apt purge");
        assert!(!c.exec(&["test", "-L", p]).status.success(), "{p} left after apt purge (a symlink)");
    }
    assert_eq!(c.attached(), "", "programs attached after apt purge");
    // maps.debug and progs.debug are the kernel's own (bpf_preload) on every bpffs mount.
    let left: Vec<_> = fs::read_dir(c.bpffs.as_ref().unwrap().path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "maps.debug" && n != "progs.debug")
        .collect();
    assert!(left.is_empty(), "bpffs not empty after apt purge: {left:?}");
    drop(c);
}
