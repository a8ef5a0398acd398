//! The iptables enforcer against real iptables, inside private network namespaces
//! (the host's rules are never touched), for every backend present: iptables-nft and
//! iptables-legacy. Needs root; skips with a message otherwise.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime},
};

use blocksmtp::{
    addr::SourceAddr,
    enforce::{
        Enforcer,
        iptables::{IptablesConfig, IptablesEnforcer},
    },
};

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: needs root (network namespaces, iptables)");
            return;
        }
    };
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted (with all its rules) on drop.
struct NetNs(String);

impl NetNs {
    fn new() -> Self {
        let name = format!("blocksmtp-t-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        sh(&["ip", "netns", "add", &name]);
        let ns = Self(name);
        sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace.
    fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "netns", "exec", &self.0];
        a.extend(args);
        sh(&a)
    }

    /// Run `f` on a thread that has entered the namespace (children it spawns, such as
    /// iptables, and sockets it opens live there).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        let h = std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid netns fd affects only this thread.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(bin).is_file())
}

/// (iptables, ip6tables) pairs to test.
fn backends() -> Vec<(&'static str, &'static str)> {
    let all = [("iptables-nft", "ip6tables-nft"), ("iptables-legacy", "ip6tables-legacy")];
    let found: Vec<_> = all.into_iter().filter(|(a, b)| which(a) && which(b)).collect();
    if found.is_empty() && which("iptables") && which("ip6tables") {
        return vec![("iptables", "ip6tables")];
    }
    assert!(!found.is_empty(), "no iptables/ip6tables binaries found: install the iptables package");
    found
}

fn cfg(v4: &str, v6: &str) -> IptablesConfig {
    IptablesConfig {
        chain: "SPAM_UNAME_GUESSERS".into(),
        ports: vec![25, 587],
        mailer_ip_v4: Some("192.0.2.25".parse().unwrap()),
        mailer_ip_v6: Some("2001:db8::25".parse().unwrap()),
        iptables: v4.into(),
        ip6tables: Some(v6.into()),
        lock_wait_secs: 10,
    }
}

fn src(s: &str) -> SourceAddr {
    s.parse().unwrap()
}

fn count(listing: &str, needle: &str) -> usize {
    listing.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn chain_jumps_rules_expiry_v6() {
    require_root!();
    for (v4, v6) in backends() {
        let ns = NetNs::new();
        let ns_name = ns.0.clone();
        ns.run(move || {
            let ns = NetNs(ns_name);
            let mut e = IptablesEnforcer::new(cfg(v4, v6)).unwrap();
            eprintln!("{v4}: {:?}", e.backends());
            e.ban(&src("192.0.2.66"), Duration::from_secs(3600), false).unwrap();
            e.ban(&src("2001:db8:0:66::/64"), Duration::from_secs(3600), true).unwrap();
            e.ban(&src("192.0.2.67"), Duration::from_secs(1), false).unwrap();

            let s4 = ns.exec(&[v4, "-S"]);
            assert!(s4.contains("-N SPAM_UNAME_GUESSERS"), "{s4}");
            assert_eq!(count(&s4, "-A INPUT -d 192.0.2.25/32 -p tcp -m tcp --dport 25 -j SPAM_UNAME_GUESSERS"), 1, "{s4}");
            assert_eq!(count(&s4, "-A INPUT -d 192.0.2.25/32 -p tcp -m tcp --dport 587 -j SPAM_UNAME_GUESSERS"), 1, "{s4}");
            assert_eq!(count(&s4, "-A SPAM_UNAME_GUESSERS -s 192.0.2.66/32 -p tcp -m tcp --dport 25 -m comment --comment \"blocksmtp until="), 1, "{s4}");
            assert_eq!(count(&s4, "-A SPAM_UNAME_GUESSERS -s 192.0.2.66/32 -p tcp -m tcp --dport 587 -m comment"), 1, "{s4}");
            assert_eq!(count(&s4, "-j DROP"), 4, "{s4}");
            let s6 = ns.exec(&[v6, "-S"]);
            assert_eq!(count(&s6, "-A INPUT -d 2001:db8::25/128 -p tcp -m tcp --dport 25 -j SPAM_UNAME_GUESSERS"), 1, "{s6}");
            assert_eq!(count(&s6, "-A SPAM_UNAME_GUESSERS -s 2001:db8:0:66::/64 -p tcp -m tcp --dport 25 -m comment --comment \"blocksmtp until="), 1, "{s6}");
            assert!(s6.contains(" manual\" -j DROP"), "{s6}");

            // Expiry bookkeeping: a shorter re-ban keeps the later expiry, a longer one
            // replaces the rules (no duplicates).
            let before = e.list().unwrap().into_iter().find(|b| b.source == src("192.0.2.66")).unwrap();
            e.ban(&src("192.0.2.66"), Duration::from_secs(10), false).unwrap();
            let same = e.list().unwrap().into_iter().find(|b| b.source == src("192.0.2.66")).unwrap();
            assert_eq!(before.expires_at, same.expires_at);
            e.ban(&src("192.0.2.66"), Duration::from_secs(7200), false).unwrap();
            let later = e.list().unwrap().into_iter().find(|b| b.source == src("192.0.2.66")).unwrap();
            assert!(later.expires_at > before.expires_at + Duration::from_secs(3000));
            let s4 = ns.exec(&[v4, "-S", "SPAM_UNAME_GUESSERS"]);
            assert_eq!(count(&s4, "-s 192.0.2.66/32"), 2, "{s4}");
            assert_eq!(later.dropped, Some(0));

            // Sweep: the 1 s ban goes, the others stay.
            std::thread::sleep(Duration::from_millis(2100));
            assert_eq!(e.sweep_expired().unwrap(), vec![src("192.0.2.67")]);
            let s4 = ns.exec(&[v4, "-S", "SPAM_UNAME_GUESSERS"]);
            assert_eq!(count(&s4, "192.0.2.67"), 0, "{s4}");
            assert_eq!(count(&s4, "192.0.2.66"), 2, "{s4}");
            assert_eq!(e.list().unwrap().len(), 2);

            assert!(e.unban(&src("2001:db8:0:66::/64")).unwrap());
            assert!(!e.unban(&src("2001:db8:0:66::/64")).unwrap());
            assert_eq!(count(&ns.exec(&[v6, "-S"]), "-j DROP"), 0);

            e.shutdown(false).unwrap();
            for bin in [v4, v6] {
                let s = ns.exec(&[bin, "-S"]);
                assert!(!s.contains("SPAM_UNAME_GUESSERS"), "{bin} after shutdown: {s}");
            }
            std::mem::forget(ns); // the outer guard deletes it
        });
    }
}

#[test]
fn adoption_after_restart_and_cleanup_of_tampering() {
    require_root!();
    for (v4, v6) in backends() {
        let ns = NetNs::new();
        let ns_name = ns.0.clone();
        ns.run(move || {
            let ns = NetNs(ns_name);
            let mut e = IptablesEnforcer::new(cfg(v4, v6)).unwrap();
            e.ban_many(&[
                (src("192.0.2.66"), Duration::from_secs(3600), false),
                (src("198.51.100.7"), Duration::from_secs(600), true),
                (src("2001:db8:1::/64"), Duration::from_secs(900), false),
            ])
            .unwrap();
            let before = e.list().unwrap();
            let s4_before = ns.exec(&[v4, "-S"]);
            let s6_before = ns.exec(&[v6, "-S"]);
            e.shutdown(true).unwrap();
            drop(e);

            // Restart: same rules, nothing duplicated, expiries recovered.
            let e = IptablesEnforcer::new(cfg(v4, v6)).unwrap();
            assert_eq!(e.list().unwrap(), before);
            assert_eq!(ns.exec(&[v4, "-S"]), s4_before);
            assert_eq!(ns.exec(&[v6, "-S"]), s6_before);
            drop(e);

            // Tampering: a duplicate rule, a stale jump, a rule for a port no longer
            // protected, a foreign rule without our comment.
            ns.exec(&[v4, "-A", "SPAM_UNAME_GUESSERS", "-s", "192.0.2.66", "-p", "tcp", "--dport", "25", "-m", "comment", "--comment", "blocksmtp until=1", "-j", "DROP"]);
            ns.exec(&[v4, "-A", "SPAM_UNAME_GUESSERS", "-s", "192.0.2.70", "-p", "tcp", "--dport", "2525", "-m", "comment", "--comment", "blocksmtp until=4102444800", "-j", "DROP"]);
            ns.exec(&[v4, "-A", "SPAM_UNAME_GUESSERS", "-s", "192.0.2.71", "-p", "tcp", "--dport", "25", "-j", "DROP"]);
            ns.exec(&[v4, "-I", "INPUT", "-p", "tcp", "--dport", "2525", "-j", "SPAM_UNAME_GUESSERS"]);
            ns.exec(&[v4, "-I", "INPUT", "-p", "tcp", "--dport", "25", "-d", "192.0.2.25", "-j", "SPAM_UNAME_GUESSERS"]);
            let mut e = IptablesEnforcer::new(cfg(v4, v6)).unwrap();
            let s4 = ns.exec(&[v4, "-S"]);
            assert_eq!(count(&s4, "-j SPAM_UNAME_GUESSERS"), 2, "{s4}");
            assert_eq!(count(&s4, "--dport 2525"), 0, "{s4}");
            assert_eq!(count(&s4, "-s 192.0.2.66/32"), 2, "{s4}");
            assert_eq!(count(&s4, "-s 192.0.2.70/32"), 2, "adopted onto the configured ports: {s4}");
            assert_eq!(count(&s4, "-s 192.0.2.71/32 -p tcp -m tcp --dport 25 -j DROP"), 1, "foreign rule kept: {s4}");
            let l = e.list().unwrap();
            assert_eq!(l.len(), 4);
            let b70 = l.iter().find(|b| b.source == src("192.0.2.70")).unwrap();
            assert_eq!(b70.expires_at, SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800));
            assert!(l.iter().find(|b| b.source == src("198.51.100.7")).unwrap().manual);

            e.shutdown(false).unwrap();
            assert!(!ns.exec(&[v4, "-S"]).contains("SPAM_UNAME_GUESSERS"));
            assert!(!ns.exec(&[v6, "-S"]).contains("SPAM_UNAME_GUESSERS"));
            std::mem::forget(ns);
        });
    }
}

#[test]
fn ten_thousand_bans_in_one_batch() {
    require_root!();
    for (v4, v6) in backends() {
        let ns = NetNs::new();
        let ns_name = ns.0.clone();
        ns.run(move || {
            let ns = NetNs(ns_name);
            let mut c = cfg(v4, v6);
            c.ports = vec![25];
            let mut e = IptablesEnforcer::new(c.clone()).unwrap();
            // 10,000 documentation sources: 9,232 IPv6 /64s and the 768 IPv4 test addresses.
            let mut bans = Vec::new();
            for net in ["192.0.2", "198.51.100", "203.0.113"] {
                for i in 0..256 {
                    bans.push((src(&format!("{net}.{i}")), Duration::from_secs(3600), false));
                }
            }
            let mut i = 0u32;
            while bans.len() < 10_000 {
                bans.push((src(&format!("2001:db8:{:x}:{:x}::/64", i >> 16, i & 0xffff)), Duration::from_secs(3600), false));
                i += 1;
            }
            let t = Instant::now();
            e.ban_many(&bans).unwrap();
            let ban_time = t.elapsed();
            let rules = count(&ns.exec(&[v4, "-S", "SPAM_UNAME_GUESSERS"]), "-j DROP")
                + count(&ns.exec(&[v6, "-S", "SPAM_UNAME_GUESSERS"]), "-j DROP");
            assert_eq!(rules, 10_000);
            let t = Instant::now();
            let listed = e.list().unwrap().len();
            let list_time = t.elapsed();
            assert_eq!(listed, 10_000);
            e.shutdown(true).unwrap();
            drop(e);
            let t = Instant::now();
            let mut e = IptablesEnforcer::new(c).unwrap();
            let adopt_time = t.elapsed();
            assert_eq!(e.list().unwrap().len(), 10_000);
            let t = Instant::now();
            e.shutdown(false).unwrap();
            let remove_time = t.elapsed();
            eprintln!(
                "{v4}/{v6}: 10,000 bans in {ban_time:?}; list {list_time:?}; adopt after restart {adopt_time:?}; remove all {remove_time:?}"
            );
            std::mem::forget(ns);
        });
    }
}

/// Many bans ending together (a mass expiry) rewrite the chain in one pass instead of
/// deleting rule by rule; the bans still running keep their rules.
#[test]
fn mass_expiry_keeps_the_running_bans() {
    require_root!();
    for (v4, v6) in backends() {
        let ns = NetNs::new();
        let ns_name = ns.0.clone();
        ns.run(move || {
            let ns = NetNs(ns_name);
            let mut e = IptablesEnforcer::new(cfg(v4, v6)).unwrap();
            let mut bans = Vec::new();
            for net in ["192.0.2", "198.51.100"] {
                for i in 0..150 {
                    bans.push((src(&format!("{net}.{i}")), Duration::from_secs(1), false));
                }
            }
            for i in 0..20 {
                bans.push((src(&format!("203.0.113.{i}")), Duration::from_secs(3600), false));
            }
            e.ban_many(&bans).unwrap();
            std::thread::sleep(Duration::from_millis(2100));
            let gone = e.sweep_expired().unwrap();
            assert_eq!(gone.len(), 300);
            let listing = ns.exec(&[v4, "-S", "SPAM_UNAME_GUESSERS"]);
            let ports = cfg(v4, v6).ports.len();
            assert_eq!(count(&listing, "-j DROP"), 20 * ports, "{listing}");
            assert_eq!(count(&listing, "-s 203.0.113."), 20 * ports, "{listing}");
            assert_eq!(count(&listing, "blocksmtp until="), 20 * ports, "{listing}");
            assert_eq!(e.list().unwrap().len(), 20);
            e.shutdown(false).unwrap();
            std::mem::forget(ns);
        });
    }
}

/// Real traffic: client and server namespaces joined by a veth pair; after the ban the
/// client cannot reach port 25 but still reaches 2525; after unban, 25 works again.
#[test]
fn banned_client_cannot_connect_to_25_but_can_to_2525() {
    require_root!();
    let (v4, v6) = backends()[0];
    let srv = NetNs::new();
    let cli = NetNs::new();
    sh(&["ip", "-n", &srv.0, "link", "add", "bsm0", "type", "veth", "peer", "name", "bsm1", "netns", &cli.0]);
    srv.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", "bsm0"]);
    srv.exec(&["ip", "link", "set", "bsm0", "up"]);
    cli.exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", "bsm1"]);
    cli.exec(&["ip", "link", "set", "bsm1", "up"]);

    // Listeners live in the server namespace for the whole test.
    let listeners = srv.run(|| {
        (TcpListener::bind("192.0.2.1:25").unwrap(), TcpListener::bind("192.0.2.1:2525").unwrap())
    });
    let connect = |port: u16| {
        cli.run(move || {
            let a: SocketAddr = format!("192.0.2.1:{port}").parse().unwrap();
            TcpStream::connect_timeout(&a, Duration::from_millis(700)).is_ok()
        })
    };
    // Wait for the link (DAD is not involved for IPv4, but the veth must be up).
    let end = Instant::now() + Duration::from_secs(5);
    while !connect(25) {
        assert!(Instant::now() < end, "no connectivity before the ban");
    }
    assert!(connect(2525));

    let mut e = srv.run(move || {
        let mut c = cfg(v4, v6);
        c.ports = vec![25];
        c.mailer_ip_v4 = Some("192.0.2.1".parse().unwrap());
        c.mailer_ip_v6 = None;
        IptablesEnforcer::new(c).unwrap()
    });
    let e2 = srv.run(move || {
        e.ban(&src("192.0.2.2"), Duration::from_secs(600), false).unwrap();
        e
    });
    e = e2;
    let t = Instant::now();
    assert!(!connect(25), "banned client reached port 25");
    assert!(t.elapsed() >= Duration::from_millis(600), "refused rather than dropped");
    assert!(connect(2525), "port 2525 must not be affected");
    let (mut e, dropped) = srv.run(move || {
        let d = e.list().unwrap()[0].dropped;
        (e, d)
    });
    assert!(dropped.unwrap_or(0) >= 1, "drop counter: {dropped:?}");
    e = srv.run(move || {
        assert!(e.unban(&src("192.0.2.2")).unwrap());
        e
    });
    assert!(connect(25), "unbanned client still blocked");
    srv.run(move || e.shutdown(false).unwrap());
    drop(listeners);
}
