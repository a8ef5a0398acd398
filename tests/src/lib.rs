//! Support for blocksmtp's end-to-end tests and benchmarks: packet fixtures, private
//! network namespaces (documentation addresses only), cleanup that runs on failure.
pub mod bench;
pub mod crowdsec;
pub mod daemon;
pub mod faults;
/// xtask's Debian package cache, the same file (xtask must build without this crate).
#[path = "../../xtask/src/debcache.rs"]
pub mod debcache;
pub mod guest;
pub mod distributed;
pub mod fleet;
pub mod loggen;
pub mod lab;
pub mod netns;
pub mod packet;

/// Whether we can do what root can (tests that need it skip, saying why, otherwise).
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// For tests that skip without root: true when root, else says `SKIP: needs root (why)`.
pub fn root_or_skip(why: &str) -> bool {
    if !is_root() {
        eprintln!("SKIP: needs root ({why})");
        return false;
    }
    true
}

/// Poll `cond` every 50 ms until it holds (true) or `timeout` passes (false).
pub fn poll(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// Wait up to `timeout` for `child` to exit (after it was asked to: a signal, a stop
/// command); then SIGKILL and reap it. Its exit status, or None when it had to be killed.
pub fn wait_or_kill(child: &mut std::process::Child, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
    let t = std::time::Instant::now();
    while t.elapsed() < timeout {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// For tests of the sendmail lab: true when root and sendmail is installed; else says
/// SKIP, except in CI (`CI` set), where a missing sendmail fails: xtask installs it.
pub fn sendmail_lab_ready() -> bool {
    if !root_or_skip("namespaces, mounts, port 25") {
        return false;
    }
    if let Err(why) = lab::Sendmail::available() {
        assert!(std::env::var_os("CI").is_none(), "sendmail is needed in CI: {why} (cargo xtask setup --test-deps)");
        eprintln!("SKIP: {why}");
        return false;
    }
    true
}
