//! Private network namespaces joined by veth pairs, for tests that send real traffic.
//! Only documentation addresses are used (192.0.2.0/24, 2001:db8::/32). Every namespace
//! is deleted when its guard drops, so cleanup runs even when a test panics.
use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Run a command; fail with its stderr if it fails.
pub fn sh(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `bsm-<tag>-<pid>-<n>`: unique per process and call, short enough for ifnames.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!("bsm-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS …`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// `ip netns exec NS …`
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Run `f` on a thread that has entered this namespace: sockets it opens and
    /// interfaces it names are this namespace's.
    pub fn run_in<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> anyhow::Result<R> {
        let path = format!("/var/run/netns/{}", self.name);
        let handle = std::thread::spawn(move || -> anyhow::Result<R> {
            enter(&path)?;
            Ok(f())
        });
        handle.join().map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
    }

    /// Like `run_in`, but returns the thread's handle (for servers).
    pub fn spawn_in<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> JoinHandle<anyhow::Result<R>> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || -> anyhow::Result<R> {
            enter(&path)?;
            Ok(f())
        })
    }
}

fn enter(path: &str) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace takes its veth ends, qdiscs and XDP/TC links with it.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The standard test topology: a mail server and its clients on one link.
///
/// server `vs0`: 192.0.2.25/24, 2001:db8::25/64, 2001:db8:0:1::25/64
/// client `vc0`: 192.0.2.66/24 (the harvester), 192.0.2.67/24 (an innocent),
///               2001:db8::66/64 and 2001:db8::67/64 (one /64), 2001:db8:0:1::67/64 (another)
pub struct Topology {
    pub server: Netns,
    pub client: Netns,
    pub server_if: String,
}

impl Topology {
    pub fn new() -> anyhow::Result<Self> {
        let server = Netns::new("s")?;
        let client = Netns::new("c")?;
        let topo = Self { server, client, server_if: "vs0".to_string() };
        topo.create_link()?;
        Ok(topo)
    }

    /// Make the veth pair with its addresses (again, after `delete_link`: an interface
    /// re-created with the same name, as a NIC reset or ifupdown does).
    pub fn create_link(&self) -> anyhow::Result<()> {
        let (server, client) = (&self.server, &self.client);
        server.ip(&["link", "add", "vs0", "type", "veth", "peer", "name", "vc0", "netns", &client.name])?;
        for (ns, ifname, addrs) in [
            (&server, "vs0", &["192.0.2.25/24", "2001:db8::25/64", "2001:db8:0:1::25/64"][..]),
            (
                &client,
                "vc0",
                &["192.0.2.66/24", "192.0.2.67/24", "2001:db8::66/64", "2001:db8::67/64", "2001:db8:0:1::67/64"][..],
            ),
        ] {
            for a in addrs {
                // nodad: usable at once, no 1-2 s of duplicate address detection.
                if a.contains(':') {
                    ns.ip(&["addr", "add", a, "dev", ifname, "nodad"])?;
                } else {
                    ns.ip(&["addr", "add", a, "dev", ifname])?;
                }
            }
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        Ok(())
    }

    /// Delete the server's veth (its peer goes with it).
    pub fn delete_link(&self) -> anyhow::Result<()> {
        self.server.ip(&["link", "del", "vs0"]).map(drop)
    }

    /// Listen on `ports` (IPv4 and IPv6) in the server namespace, accepting and
    /// closing connections until the guard drops.
    pub fn serve(&self, ports: &[u16]) -> anyhow::Result<Servers> {
        serve(&self.server, ports)
    }

    /// Connect from `src` (a client address) to `dst`, with a short timeout.
    pub fn connect(&self, src: &str, dst: &str, timeout: Duration) -> anyhow::Result<bool> {
        let src: std::net::IpAddr = src.parse()?;
        let dst: SocketAddr = dst.parse()?;
        self.client.run_in(move || connect_from(src, dst, timeout))
    }
}

/// Listen on `ports` (IPv4 and IPv6) in `ns`, accepting and closing connections until
/// the guard drops.
pub fn serve(ns: &Netns, ports: &[u16]) -> anyhow::Result<Servers> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for &port in ports {
        for addr in [format!("0.0.0.0:{port}"), format!("[::]:{port}")] {
            let stop = stop.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(ns.spawn_in(move || {
                let l = match bind_v6only(&addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                l.set_nonblocking(true).expect("nonblocking");
                let _ = tx.send(Ok(()));
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => drop(s),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            rx.recv().context("server thread")??;
        }
    }
    Ok(Servers { stop, threads })
}

fn bind_v6only(addr: &str) -> anyhow::Result<TcpListener> {
    let sa: SocketAddr = addr.parse()?;
    let domain = if sa.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4);
        if sa.is_ipv6() {
            libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&one as *const libc::c_int).cast(), 4);
        }
    }
    let (storage, len) = sockaddr(&sa);
    if unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } != 0
        || unsafe { libc::listen(fd, 128) } != 0
    {
        let e = std::io::Error::last_os_error();
        unsafe { libc::close(fd) };
        bail!("bind/listen {addr}: {e}");
    }
    Ok(unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn sockaddr(sa: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match sa {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as _,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (storage, std::mem::size_of::<libc::sockaddr_in>() as _)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as _,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (storage, std::mem::size_of::<libc::sockaddr_in6>() as _)
        }
    }
}

/// A TCP connect from a chosen source address; `Ok(false)` on timeout or refusal.
pub fn connect_from(src: std::net::IpAddr, dst: SocketAddr, timeout: Duration) -> bool {
    let domain = if dst.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    let (s, slen) = sockaddr(&SocketAddr::new(src, 0));
    if unsafe { libc::bind(fd, (&s as *const libc::sockaddr_storage).cast(), slen) } != 0 {
        unsafe { libc::close(fd) };
        return false;
    }
    // Hand the bound socket to std for the timed connect.
    let sock = unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let (d, dlen) = sockaddr(&dst);
    let r = unsafe { libc::connect(raw, (&d as *const libc::sockaddr_storage).cast(), dlen) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return false;
    }
    let mut pfd = libc::pollfd { fd: raw, events: libc::POLLOUT, revents: 0 };
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n != 1 {
        return false;
    }
    let mut err: libc::c_int = 0;
    let mut len = 4 as libc::socklen_t;
    unsafe { libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut libc::c_int).cast(), &mut len) };
    drop::<TcpStream>(sock);
    err == 0
}

/// Server threads; stopped and joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
