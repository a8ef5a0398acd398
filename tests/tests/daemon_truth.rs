//! What blocksmtp says is banned is what the kernel drops (issue 9): every verdict here
//! is a real TCP connect from the banned address in a private network namespace.
//!
//! Firewall reloads healed, a failed ban retried, a restart that does not blind the
//! detector (iptables and xdp), SIGHUPs and logrotate during a burst losing no line, a
//! wall-clock step that changes no iptables expiry, a control-socket flood, a kill -9
//! right after a ban, state-file faults, bad manual bans. (The interface deleted and
//! re-created is tested with the dataplane's link-event handling.)
use std::{
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use blocksmtp_tests::{
    daemon::{Daemon, sendmail_harvest},
    poll, root_or_skip,
    netns::Topology,
};

const T: Duration = Duration::from_millis(400);
/// Generous: a loaded CI machine must not make these flaky. Heals are due within 10 s.
const HEAL: Duration = Duration::from_secs(10);

/// Connects from `ip` to the server's port 25 fail (the kernel drops them).
fn dropped(topo: &Topology, ip: &str) -> bool {
    !topo.connect(ip, "192.0.2.25:25", T).unwrap()
}

fn iptables_mode() -> Vec<&'static str> {
    vec!["--mode", "iptables", "--ip6tables", "none", "--max-unknown", "3", "--ban-time", "1h"]
}

/// `iptables -F`, `iptables -F; iptables -X` and an `iptables-restore` of a ruleset
/// without the chain (what a firewall reload does): each healed within 10 s with every
/// active ban, while an innocent still connects.
#[test]
fn firewall_reloads_are_healed_with_every_ban() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let banned = ["192.0.2.66", "192.0.2.68", "192.0.2.69", "192.0.2.70", "192.0.2.71"];
    for ip in &banned[1..] {
        topo.client.ip(&["addr", "add", &format!("{ip}/24"), "dev", "vc0"]).unwrap();
    }
    let _srv = topo.serve(&[25]).unwrap();
    let d = Daemon::start(Some(&topo.server), &iptables_mode()).unwrap();
    for (i, ip) in banned.iter().enumerate() {
        d.write_log(&sendmail_harvest(ip, 41000 + i as u32, 3)).unwrap();
    }
    assert!(poll(HEAL, || banned.iter().all(|ip| d.in_force(ip))), "all banned:\n{}", d.stderr_text());
    for ip in banned {
        assert!(dropped(&topo, ip), "{ip} dropped before any reload");
    }
    let empty_ruleset = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
    for (what, cmds) in [
        ("iptables -F", vec![vec!["iptables", "-F"]]),
        ("iptables -F; iptables -X", vec![vec!["iptables", "-F"], vec!["iptables", "-X"]]),
        ("iptables-restore without the chain", vec![]),
    ] {
        if cmds.is_empty() {
            let path = d.dir.path().join("rules.v4");
            std::fs::write(&path, empty_ruleset).unwrap();
            topo.server.exec(&["iptables-restore", path.to_str().unwrap()]).unwrap();
        }
        for c in &cmds {
            topo.server.exec(c).unwrap();
        }
        let rules = String::from_utf8_lossy(&topo.server.exec(&["iptables", "-S"]).unwrap().stdout).into_owned();
        assert!(!rules.contains("-s 192.0.2.66"), "{what} removed the rules: {rules}");
        let healed = poll(HEAL, || banned.iter().all(|ip| dropped(&topo, ip)));
        assert!(healed, "after {what}: every banned address is dropped again within 10 s:\n{}", d.stderr_text());
        assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap(), "after {what}: an innocent connects");
        assert_eq!(d.list().unwrap().len(), banned.len(), "after {what}");
    }
    // A rule of ours that no ban accounts for (say, from a restored old snapshot) would
    // drop an innocent: removed as well.
    let future = (std::time::SystemTime::now() + Duration::from_secs(86_400)).duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let comment = format!("blocksmtp until={future}");
    topo.server.exec(&["iptables", "-A", "SPAM_UNAME_GUESSERS", "-s", "192.0.2.67", "-p", "tcp", "--dport", "25", "-m", "comment", "--comment", &comment, "-j", "DROP"]).unwrap();
    assert!(poll(HEAL, || topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap()), "stray rule removed:\n{}", d.stderr_text());
    assert!(banned.iter().all(|ip| dropped(&topo, ip)));
    let log = d.stderr_text();
    assert!(log.contains("1 rule(s) in chain SPAM_UNAME_GUESSERS that no active ban accounts for removed"), "{log}");
    assert!(log.contains("repaired") && log.contains("chain SPAM_UNAME_GUESSERS was gone: re-created"), "{log}");
    assert!(log.contains("missing rule(s) of 5 active ban(s) restored"), "{log}");
}

/// A ban the enforcer refuses (iptables-restore failing while a flag file exists) is
/// pending — in `list`, `status` and the log — and in force once the enforcer works.
#[test]
fn a_failed_ban_is_retried_until_it_holds() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let ipt = blocksmtp_tests::faults::FailingIptables::new().unwrap();
    let mut args = iptables_mode();
    let ipt_s = ipt.iptables().to_str().unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The server namespace's own loopback: the metrics are read from inside it.
    let metrics = format!("127.0.0.1:{port}");
    args.extend(["--iptables", &ipt_s, "--metrics-listen", &metrics]);
    let d = Daemon::start(Some(&topo.server), &args).unwrap();

    ipt.fail(true).unwrap();
    d.write_log(&sendmail_harvest("192.0.2.66", 42000, 3)).unwrap();
    let pending = poll(HEAL, || d.row("192.0.2.66").is_some_and(|r| r["pending"] == true));
    assert!(pending, "listed as pending:\n{}", d.stderr_text());
    assert_eq!(d.status().unwrap()["pending_bans"], 1);
    let scrape = move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(&metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let body = topo.server.run_in(scrape.clone()).unwrap();
    assert!(body.contains("blocksmtp_bans_pending 1") && body.contains("blocksmtp_ban_failures_total 1"), "{body}");
    assert!(!dropped(&topo, "192.0.2.66"), "not in force while iptables-restore fails");
    // More guesses meanwhile decide nothing new; the retry is what brings the ban.
    d.write_log(&sendmail_harvest("192.0.2.66", 42001, 5)).unwrap();

    ipt.fail(false).unwrap();
    assert!(poll(Duration::from_secs(40), || dropped(&topo, "192.0.2.66")), "in force once iptables works:\n{}", d.stderr_text());
    assert!(d.in_force("192.0.2.66"));
    assert_eq!(d.status().unwrap()["pending_bans"], 0);
    assert!(poll(HEAL, || topo.server.run_in(scrape.clone()).unwrap().contains("blocksmtp_bans_pending 0")));
    let log = d.stderr_text();
    assert!(log.contains("pending, retrying") && log.contains("now in force (after"), "{log}");
    assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap());
}

/// After SIGTERM and a start without --keep-bans (bans lifted), the restored offence
/// history must not hide the source: new guesses ban it again. A kill -9 one second
/// after a ban keeps the ban, listed with its guesses and reason.
#[test]
fn restarts_neither_blind_detection_nor_lose_the_reason() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let mut d = Daemon::start(Some(&topo.server), &iptables_mode()).unwrap();
    d.write_log(&sendmail_harvest("192.0.2.66", 43000, 3)).unwrap();
    assert!(poll(HEAL, || d.in_force("192.0.2.66")));
    d.stop().unwrap();
    assert!(!dropped(&topo, "192.0.2.66"), "bans lifted at a stop without --keep-bans");
    assert!(std::fs::read_to_string(&d.state).unwrap().contains("192.0.2.66"), "history saved");

    d.spawn().unwrap();
    d.write_log(&sendmail_harvest("192.0.2.66", 43001, 3)).unwrap();
    assert!(poll(HEAL, || dropped(&topo, "192.0.2.66")), "banned again after the restart:\n{}", d.stderr_text());
    let row = d.row("192.0.2.66").unwrap();
    assert_eq!(row["manual"], false);

    // kill -9 one second after a new ban: the chain stays, and the history of the ban
    // was saved in time for the restart to show why.
    d.write_log(&sendmail_harvest("192.0.2.67", 43002, 4)).unwrap();
    assert!(poll(HEAL, || d.in_force("192.0.2.67")));
    // Saves are at most one a second, on the 1 s tick: a fixed sleep here raced the tick.
    let saved = poll(Duration::from_secs(5), || std::fs::read_to_string(&d.state).is_ok_and(|s| s.contains("192.0.2.67")));
    assert!(saved, "the new ban's history is saved within seconds:\n{}", d.stderr_text());
    d.kill9().unwrap();
    d.spawn().unwrap();
    let row = d.row("192.0.2.67").expect("listed after the restart");
    assert_eq!(row["guesses"], 4, "{row}\n{}", d.stderr_text());
    assert!(row["reason"].as_str().unwrap().contains("unknown recipients"), "{row}");
    assert!(dropped(&topo, "192.0.2.67"));
}

/// An LD_PRELOAD shim that adds the seconds in `$SHIM_CLOCK_FILE` to CLOCK_REALTIME,
/// gettimeofday() and time() — the daemon's wall clock only, never the host's.
fn clock_shim(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("shim.c");
    std::fs::write(
        &src,
        r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
static long offset(void) {
    const char *p = getenv("SHIM_CLOCK_FILE");
    long o = 0;
    if (!p) return 0;
    FILE *f = fopen(p, "re");
    if (!f) return 0;
    if (fscanf(f, "%ld", &o) != 1) o = 0;
    fclose(f);
    return o;
}
int clock_gettime(clockid_t c, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(c, ts);
    if (r == 0 && (c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE)) ts->tv_sec += offset();
    return r;
}
int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    return 0;
}
time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
"#,
    )
    .unwrap();
    let so = dir.join("shim.so");
    let out = Command::new("cc").args(["-shared", "-fPIC", "-O2", "-o"]).arg(&so).arg(&src).arg("-ldl").output().unwrap();
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    so
}

/// The daemon's wall clock stepped +2 h: a 1 h iptables ban stays in force (its expiry
/// runs on CLOCK_BOOTTIME), and the step is real for the daemon (a ban made after it
/// carries the stepped wall-clock time in its comment).
#[test]
fn wall_clock_step_does_not_lift_iptables_bans() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let shim_dir = tempfile::tempdir().unwrap();
    let so = clock_shim(shim_dir.path());
    let clock = shim_dir.path().join("offset");
    std::fs::write(&clock, "0").unwrap();
    let d = Daemon::start_with_env(
        Some(&topo.server),
        &[("LD_PRELOAD", so.to_str().unwrap()), ("SHIM_CLOCK_FILE", clock.to_str().unwrap())],
        &iptables_mode(),
    )
    .unwrap();
    d.write_log(&sendmail_harvest("192.0.2.66", 44000, 3)).unwrap();
    assert!(poll(HEAL, || d.in_force("192.0.2.66")));
    assert!(dropped(&topo, "192.0.2.66"));

    std::fs::write(&clock, "7200").unwrap();
    // Sweeps run twice a second: give them many chances to (wrongly) expire the ban.
    std::thread::sleep(Duration::from_secs(4));
    assert!(dropped(&topo, "192.0.2.66"), "still enforced after the +2 h step:\n{}", d.stderr_text());
    assert!(d.in_force("192.0.2.66"));

    d.ctl(&["ban", "192.0.2.67", "--for", "1h"]).unwrap();
    let rules = String::from_utf8_lossy(&topo.server.exec(&["iptables", "-S"]).unwrap().stdout).into_owned();
    let line = rules.lines().find(|l| l.contains("-s 192.0.2.67/32")).unwrap_or_else(|| panic!("{rules}"));
    let until: u64 = line.split("until=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(until > now + 7200 + 3000, "the daemon's wall clock is stepped (shim works): until={until}, host now={now}");
    assert!(dropped(&topo, "192.0.2.66") && dropped(&topo, "192.0.2.67"));
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// 1,200 control connections held open (and a log rotation meanwhile): the daemon's CPU
/// and log stay bounded, a harvest made meanwhile is banned, and the CLI works again once
/// the flood's idle connections time out.
#[test]
fn control_socket_flood_is_bounded() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    // The daemon gets systemd's default soft limit of 1024 descriptors (fewer than the
    // flood; the hard limit stays as it is, as under systemd); the test needs more.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert!(lim.rlim_max >= 4096, "the test needs a hard descriptor limit of at least 4096");
    let set_soft = |n: u64| unsafe {
        let r = libc::rlimit { rlim_cur: n, rlim_max: lim.rlim_max };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    };
    set_soft(1024);
    let d = Daemon::start(Some(&topo.server), &iptables_mode());
    set_soft(lim.rlim_max);
    let d = d.unwrap();
    let pid = d.pid().unwrap();
    let log_before = std::fs::metadata(&d.stderr).unwrap().len();
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..1200 {
        match UnixStream::connect(&d.socket) {
            Ok(s) => held.push(s),
            // The backlog is full: the kernel refuses; the daemon is not the one hurt.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    // Rotate the log during the flood and harvest into the new file.
    std::fs::rename(&d.log, d.dir.path().join("mail.log.1")).unwrap();
    std::fs::write(&d.log, b"").unwrap();
    d.write_log(&sendmail_harvest("192.0.2.66", 45000, 3)).unwrap();
    assert!(poll(HEAL, || dropped(&topo, "192.0.2.66")), "banned during the flood:\n{}", d.stderr_text());
    std::thread::sleep(Duration::from_secs(3));
    let wall = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - cpu_before) as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let log_growth = std::fs::metadata(&d.stderr).unwrap().len() - log_before;
    eprintln!("flood: {} connections held, daemon CPU {cpu:.2} s in {wall:.1} s, log +{log_growth} bytes", held.len());
    assert!(cpu < wall * 0.5, "the daemon does not spin: {cpu:.2} s CPU in {wall:.1} s");
    assert!(log_growth < 64 * 1024, "warnings are rate-limited: +{log_growth} bytes:\n{}", d.stderr_text());
    assert!(poll(Duration::from_secs(20), || d.ctl(&["status"]).map(|o| o.status.success()).unwrap_or(false)), "the CLI answers again");
    drop(held);
    assert!(d.in_force("192.0.2.66"));
}

/// 100 SIGHUPs during a 20,000-line burst lose no line; a reload keeps the open guess
/// windows (6 guesses, reload, 6 more at a threshold of 10 → banned); `blocksmtp reload`
/// reports a rejected config with exit 1 and keeps running; whitelisting a banned
/// address on reload lifts its ban.
#[test]
fn reload_loses_no_line_and_no_window() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("blocksmtp.toml");
    let wl = dir.path().join("whitelist");
    std::fs::write(&wl, "192.0.2.1\n").unwrap();
    std::fs::write(&cfg, format!("mode = \"dry-run\"\nmax-unknown = 10\nwhite-list = \"{}\"\n", wl.display())).unwrap();
    let d = Daemon::start(None, &["--config", cfg.to_str().unwrap()]).unwrap();
    let pid = d.pid().unwrap() as i32;
    let lines = |d: &Daemon| d.status().ok().and_then(|s| s["lines"].as_u64()).unwrap_or(0);

    // Windows and sessions survive: 6 guesses, SIGHUP, 6 more.
    let h = sendmail_harvest("192.0.2.66", 46000, 6);
    d.write_log(&h[..6]).unwrap();
    assert!(d.wait_for(Duration::from_secs(5), |d| lines(d) == 6).is_some());
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(d.wait_for(Duration::from_secs(5), |d| d.stderr_text().contains("reloaded")).is_some(), "{}", d.stderr_text());
    let h2 = sendmail_harvest("192.0.2.66", 46000, 12);
    d.write_log(&h2[6..]).unwrap();
    assert!(d.wait_for(Duration::from_secs(5), |d| d.in_force("192.0.2.66")).is_some(), "12 guesses across a reload ban:\n{}", d.stderr_text());

    // 20,000 lines with 100 SIGHUPs among them.
    let before = lines(&d);
    let burst: Vec<String> =
        (0..20_000).map(|i| format!("Nov 27 12:35:47 mx sm-mta[47{:03}]: 6ARCZkEp0{i:05}: <b{i}@example.com>... User unknown", i % 1000)).collect();
    for (k, chunk) in burst.chunks(200).enumerate() {
        d.write_log(chunk).unwrap();
        unsafe { libc::kill(pid, libc::SIGHUP) };
        if k % 10 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let all = d.wait_for(Duration::from_secs(30), |d| lines(d) == before + 20_000);
    assert!(all.is_some(), "read {} of 20000 lines across 100 SIGHUPs:\n{}", lines(&d) - before, d.stderr_text());

    // A rejected config: exit 1, the reason on stderr, the daemon keeps its config.
    std::fs::write(&cfg, "mode = \"dry-run\"\nmax-unknown = 10\nwindow = \"0s\"\n").unwrap();
    let out = d.ctl(&["reload"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3: key `window`", cfg.display())), "{err}");

    // Whitelisting a banned address lifts its ban.
    std::fs::write(&cfg, format!("mode = \"dry-run\"\nmax-unknown = 10\nwhite-list = \"{}\"\n", wl.display())).unwrap();
    std::fs::write(&wl, "192.0.2.1\n192.0.2.66\n").unwrap();
    assert!(d.ctl(&["reload"]).unwrap().status.success());
    assert!(!d.in_force("192.0.2.66"), "whitelisted now: unbanned\n{}", d.stderr_text());
}

/// Debian's logrotate (create + postrotate HUP, then copytruncate) during a burst: no
/// line lost. The copytruncate case waits for the reader before rotating: lines written
/// between logrotate's copy and its truncate are lost to every follower (documented).
#[test]
fn real_logrotate_during_a_burst_loses_no_line() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    if Command::new("logrotate").arg("--version").output().is_err() {
        panic!("logrotate is not installed (cargo xtask setup installs it)");
    }
    let d = Daemon::start(None, &["--mode", "dry-run", "--max-unknown", "1000000"]).unwrap();
    let pid = d.pid().unwrap();
    let lines = |d: &Daemon| d.status().ok().and_then(|s| s["lines"].as_u64()).unwrap_or(0);
    let state = d.dir.path().join("logrotate.state");
    let conf = d.dir.path().join("logrotate.conf");
    let mut written = 0u64;
    let burst = |round: usize| -> Vec<String> {
        (0..2000).map(|i| format!("Nov 27 12:35:47 mx sm-mta[48{round:03}]: 6ARCZkEp{round:02}{i:05}: <r{round}x{i}@example.com>... User unknown")).collect()
    };
    for (round, mode) in ["create", "create", "copytruncate", "copytruncate"].iter().enumerate() {
        let body = match *mode {
            "create" => format!("create 0640 root root\n    postrotate\n        kill -HUP {pid}\n    endscript"),
            _ => "copytruncate".to_string(),
        };
        std::fs::write(&conf, format!("{} {{\n    rotate 10\n    missingok\n    {body}\n}}\n", d.log.display())).unwrap();
        let b = burst(round);
        let (first, second) = b.split_at(1000);
        d.write_log(first).unwrap();
        written += first.len() as u64;
        if *mode == "copytruncate" {
            assert!(d.wait_for(Duration::from_secs(10), |d| lines(d) == written).is_some(), "caught up before copytruncate");
        }
        let out = Command::new("logrotate").arg("-f").arg("-s").arg(&state).arg(&conf).output().unwrap();
        assert!(out.status.success(), "logrotate: {}", String::from_utf8_lossy(&out.stderr));
        if *mode == "create" {
            // The writer goes on into the new file at once (the HUP is in flight).
            d.write_log(second).unwrap();
        } else {
            assert!(d.wait_for(Duration::from_secs(10), |d| d.status().map(|s| s["sources"][0]["position"].as_u64() == Some(0)).unwrap_or(false)).is_some());
            d.write_log(second).unwrap();
        }
        written += second.len() as u64;
        let ok = d.wait_for(Duration::from_secs(20), |d| lines(d) == written);
        assert!(ok.is_some(), "{mode}: wrote {written}, read {}:\n{}", lines(&d), d.stderr_text());
    }
}

/// Manual bans that cannot name a guessing client, or last 0 s or longer than
/// --ban-time-max, are refused with exit 1 and a reason; a raw request for u64::MAX
/// seconds too. A sane one is taken.
#[test]
fn bad_manual_bans_are_refused() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    let d = Daemon::start(None, &["--mode", "dry-run", "--ban-time-max", "7d"]).unwrap();
    // Exit 1: the daemon refused; exit 2: the command line did, before asking it.
    for (args, code, why) in [
        (vec!["ban", "0.0.0.0"], 1, "unspecified"),
        (vec!["ban", "255.255.255.255"], 1, "broadcast"),
        (vec!["ban", "224.0.0.1"], 1, "multicast"),
        (vec!["ban", "ff02::1"], 1, "multicast"),
        (vec!["ban", "::"], 1, "unspecified"),
        (vec!["ban", "192.0.2.66", "--for", "0s"], 2, "no time"),
        (vec!["ban", "192.0.2.66", "--for", "30d"], 1, "--ban-time-max"),
    ] {
        let out = d.ctl(&args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    // The daemon refuses a zero duration too, when a client sends one anyway.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    std::io::Write::write_all(&mut s, b"{\"cmd\":\"ban\",\"source\":\"192.0.2.66\",\"secs\":0}\n").unwrap();
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut reply).unwrap();
    assert!(reply.contains("\"ok\":false") && reply.contains("longer than 0s"), "{reply}");
    let mut s = UnixStream::connect(&d.socket).unwrap();
    std::io::Write::write_all(&mut s, format!("{{\"cmd\":\"ban\",\"source\":\"192.0.2.66\",\"secs\":{}}}\n", u64::MAX).as_bytes()).unwrap();
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut reply).unwrap();
    assert!(reply.contains("\"ok\":false") && reply.contains("--ban-time-max"), "{reply}");
    assert!(d.list().unwrap().is_empty(), "nothing was banned");
    assert!(d.ctl(&["ban", "192.0.2.66", "--for", "1h"]).unwrap().status.success());
    assert!(d.in_force("192.0.2.66"));
}

/// The same blindness after a restart, in xdp mode: the pinned maps are removed at a
/// stop without --keep-bans, so the restored history must not hide new guesses.
#[test]
fn xdp_restart_without_keep_bans_bans_again() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    let topo = Topology::new().unwrap();
    let _srv = topo.serve(&[25]).unwrap();
    let mut d = Daemon::start(Some(&topo.server), &["--interface", "vs0", "--max-unknown", "3", "--ban-time", "1h", "--cmd-read-timeout", "0"]).unwrap();
    d.write_log(&sendmail_harvest("192.0.2.66", 49000, 3)).unwrap();
    assert!(poll(HEAL, || dropped(&topo, "192.0.2.66")));
    d.stop().unwrap();
    assert!(!dropped(&topo, "192.0.2.66"));
    d.spawn().unwrap();
    d.write_log(&sendmail_harvest("192.0.2.66", 49001, 3)).unwrap();
    assert!(poll(HEAL, || dropped(&topo, "192.0.2.66")), "banned again:\n{}", d.stderr_text());
    assert!(d.stderr_text().contains("ban 192.0.2.66 for 2h (offence 2)"), "the history still escalates:\n{}", d.stderr_text());
}

/// The state file: a corrupt one is moved aside (and said so) and the daemon runs; a
/// stale temporary file is removed; one of an unknown version stops the start with a
/// clear message and is left as it is.
#[test]
fn state_file_faults_are_handled_and_said() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    let mut d = Daemon::start(None, &["--mode", "dry-run"]).unwrap();
    d.stop().unwrap();
    std::fs::write(&d.state, "{\"version\":1,\"offenders\":[{\"sour").unwrap();
    let tmp = d.state.with_file_name("state.json.tmp");
    std::fs::write(&tmp, "half a write").unwrap();
    d.spawn().unwrap();
    assert!(!tmp.exists(), "stale .tmp removed");
    let aside: Vec<String> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "moved aside: {aside:?}");
    assert!(d.stderr_text().contains("is not valid blocksmtp state") && d.stderr_text().contains(&aside[0]), "{}", d.stderr_text());
    d.stop().unwrap();

    std::fs::write(&d.state, "{\"version\":999,\"offenders\":[]}").unwrap();
    let e = d.spawn().unwrap_err().to_string();
    assert!(e.contains("has version 999") && e.contains("refusing to overwrite"), "{e}");
    assert_eq!(std::fs::read_to_string(&d.state).unwrap(), "{\"version\":999,\"offenders\":[]}");
}

/// Re-create the topology's veth pair with the same names and addresses (a NIC reset, a
/// VLAN re-created by ifupdown).
fn recreate_link(topo: &Topology) {
    topo.server.ip(&["link", "add", "vs0", "type", "veth", "peer", "name", "vc0", "netns", &topo.client.name]).unwrap();
    for a in ["192.0.2.25/24", "2001:db8::25/64"] {
        topo.server.ip(&["addr", "add", a, "dev", "vs0", "nodad"]).unwrap();
    }
    for a in ["192.0.2.66/24", "192.0.2.67/24"] {
        topo.client.ip(&["addr", "add", a, "dev", "vc0"]).unwrap();
    }
    topo.server.ip(&["link", "set", "vs0", "up"]).unwrap();
    topo.client.ip(&["link", "set", "vc0", "up"]).unwrap();
}

/// The mail interface deleted and re-created under the same name: drops resume (the
/// daemon re-attaches), and `status` shows an attachment again.
#[test]
fn xdp_reattaches_to_a_recreated_interface() {
    if !root_or_skip("network namespaces, iptables, BPF") {
        return;
    }
    for attach in ["auto", "tc"] {
        let topo = Topology::new().unwrap();
        let _srv = topo.serve(&[25]).unwrap();
        let args = ["--interface", "vs0", "--attach", attach, "--max-unknown", "3", "--ban-time", "1h", "--cmd-read-timeout", "0"];
        let d = Daemon::start(Some(&topo.server), &args).unwrap();
        d.write_log(&sendmail_harvest("192.0.2.66", 50000, 3)).unwrap();
        assert!(poll(HEAL, || dropped(&topo, "192.0.2.66")), "{attach}");
        topo.server.ip(&["link", "del", "vs0"]).unwrap();
        let detached = |d: &Daemon| {
            d.status().ok().and_then(|s| s["attachments"].as_array().cloned()).is_some_and(|a| a.iter().any(|x| x["iface"] == "vs0" && x["attached"].is_null()))
        };
        assert!(poll(HEAL, || detached(&d)), "{attach}: status says vs0 is not attached while it is gone: {}", d.status().unwrap());
        recreate_link(&topo);
        assert!(poll(Duration::from_secs(5), || topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap()), "{attach}: the new link works");
        assert!(poll(HEAL, || dropped(&topo, "192.0.2.66")), "{attach}: drops resume on the re-created interface:\n{}", d.stderr_text());
        assert!(topo.connect("192.0.2.67", "192.0.2.25:25", T).unwrap(), "{attach}");
        let st = d.status().unwrap();
        let attached = st["attachments"].as_array().is_some_and(|a| a.iter().any(|x| x["iface"] == "vs0" && !x["attached"].is_null()));
        assert!(attached, "{attach}: {st}");
    }
}
