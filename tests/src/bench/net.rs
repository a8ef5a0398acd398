//! The benchmarks' network: the standard `Topology` with many more client addresses
//! (documentation ranges only), a SYN prober that finds the instant a source starts
//! being dropped, and a raw-frame sender for offered-load tests.
use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{Netns, Topology, connect_from};

/// The server's extra addresses (one per documentation /24, so each is on-link).
pub const SERVER_V4: [&str; 3] = ["192.0.2.25", "198.51.100.25", "203.0.113.25"];

/// Client source addresses from the three IPv4 documentation /24s, skipping the
/// topology's own (.25, .66, .67): at most 3 × 250.
pub fn client_sources(n: usize) -> Vec<Ipv4Addr> {
    let mut v = Vec::with_capacity(n);
    'outer: for net in [[192u8, 0, 2], [198, 51, 100], [203, 0, 113]] {
        for host in 2u8..=254 {
            if [25, 66, 67].contains(&host) {
                continue;
            }
            if v.len() == n {
                break 'outer;
            }
            v.push(Ipv4Addr::new(net[0], net[1], net[2], host));
        }
    }
    v
}

/// `ip -n NS -batch -` with the given lines.
pub fn ip_batch(ns: &Netns, lines: &[String]) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("ip -batch")?;
    child.stdin.take().expect("piped").write_all(lines.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -batch in {}: {}", ns.name, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The standard topology, plus the server on all three documentation /24s and
/// `sources` added to the client's veth.
pub fn lab(sources: &[Ipv4Addr]) -> anyhow::Result<Topology> {
    let topo = Topology::new()?;
    topo.server.ip(&["addr", "add", "198.51.100.25/24", "dev", "vs0"])?;
    topo.server.ip(&["addr", "add", "203.0.113.25/24", "dev", "vs0"])?;
    let lines: Vec<String> = sources
        .iter()
        .map(|a| format!("addr add {a}/24 dev vc0"))
        .collect();
    if !lines.is_empty() {
        ip_batch(&topo.client, &lines)?;
    }
    Ok(topo)
}

/// The IPv4 address of the server on `src`'s /24.
pub fn server_for(src: Ipv4Addr) -> Ipv4Addr {
    let o = src.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 25)
}

/// A thread in the client namespace that connects from `src` to `dst` over and over
/// (each try with a `timeout`, `gap` apart) until two tries in a row fail: the first
/// of those is when the source started being dropped. Stopped by its guard or `deadline`.
pub struct Prober {
    handle: Option<JoinHandle<anyhow::Result<ProbeResult>>>,
    stop: Arc<AtomicBool>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeResult {
    /// Send instant of the first try of the two failing ones.
    pub first_drop: Option<Instant>,
    /// Tries that connected.
    pub ok: u64,
    /// Single failures followed by a success (not counted as the drop).
    pub flukes: u64,
    /// Send instant of the last try that connected.
    pub last_ok: Option<Instant>,
}

impl ProbeResult {
    /// The time from `t0` (the line that makes the ban written) to the first dropped try;
    /// an error when there was none, or when the drop cannot be timed (no try connected
    /// first, or the drop began before `t0`). `what` names the source and the target.
    pub fn drop_after(&self, t0: Instant, what: &str) -> anyhow::Result<Duration> {
        let Some(first_drop) = self.first_drop else {
            anyhow::bail!("{what}: not dropped before the prober's deadline ({} connects succeeded)", self.ok);
        };
        if self.ok == 0 {
            anyhow::bail!("{what}: no connect succeeded before the ban: the measurement cannot tell when the drop began");
        }
        if first_drop < t0 {
            anyhow::bail!("{what}: dropped before the threshold line was written");
        }
        Ok(first_drop - t0)
    }
}

impl Prober {
    pub fn start(client: &Netns, src: IpAddr, dst: SocketAddr, timeout: Duration, gap: Duration, deadline: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = client.spawn_in(move || {
            let started = Instant::now();
            let mut r = ProbeResult::default();
            let mut pending: Option<Instant> = None;
            while started.elapsed() < deadline && !stop2.load(Ordering::Relaxed) {
                let t = Instant::now();
                if connect_from(src, dst, timeout) {
                    r.ok += 1;
                    r.last_ok = Some(t);
                    if pending.take().is_some() {
                        r.flukes += 1;
                    }
                    std::thread::sleep(gap);
                } else if let Some(first) = pending {
                    r.first_drop = Some(first);
                    break;
                } else {
                    pending = Some(t);
                }
            }
            r
        });
        Self { handle: Some(handle), stop }
    }

    /// Wait for the result (the prober ends on a drop or at its deadline).
    pub fn join(mut self) -> anyhow::Result<ProbeResult> {
        self.handle.take().expect("joined once").join().map_err(|_| anyhow::anyhow!("prober panicked"))?
    }

    /// Stop now and return what was seen.
    pub fn stop(self) -> anyhow::Result<ProbeResult> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// IPv4 header checksum over `hdr` (checksum field zeroed by the caller).
fn ip_checksum(hdr: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in hdr.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN to port 25 as a complete Ethernet frame: real MACs, a valid IPv4 header
/// checksum (the stack checks it before netfilter), and source port `sport`.
pub fn syn_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    use crate::packet::{L4, Packet, SMTP};
    let mut f = Packet::tcp4(src.octets(), dst.octets(), SMTP).l4(L4::Tcp { sport, dport: SMTP }).build();
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24] = 0;
    f[25] = 0;
    let c = ip_checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// An interface's MAC address inside `ns`.
pub fn mac_of(ns: &Netns, ifname: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")])?;
    let s = String::from_utf8_lossy(&out.stdout);
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("MAC of {ifname}: {s:?}");
    }
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16)?;
    }
    Ok(mac)
}

/// What a raw send run did.
#[derive(Clone, Copy, Debug)]
pub struct SendResult {
    pub sent: u64,
    pub failed: u64,
    pub wall: Duration,
    /// The sending thread's CPU time (includes softirq work the kernel ran inline).
    pub cpu: Duration,
}

/// Send `count` frames (cycling through `frames`) on `ifname` in `ns` through an
/// AF_PACKET socket bypassing the qdisc, as fast as possible, stopping at `max_time`.
pub fn blast(ns: &Netns, ifname: &str, frames: Vec<Vec<u8>>, count: u64, max_time: Duration) -> anyhow::Result<SendResult> {
    let ifname = ifname.to_string();
    ns.run_in(move || -> anyhow::Result<SendResult> {
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let cname = std::ffi::CString::new(ifname.clone())?;
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        let one: libc::c_int = 1;
        unsafe {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, (&one as *const libc::c_int).cast(), 4)
        };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = 0;
        sll.sll_ifindex = ifindex as i32;
        if unsafe { libc::bind(sock.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32) } != 0 {
            bail!("bind AF_PACKET to {ifname}: {}", std::io::Error::last_os_error());
        }
        let (mut sent, mut failed) = (0u64, 0u64);
        let cpu0 = crate::bench::thread_cpu();
        let t = Instant::now();
        let mut i = 0usize;
        while sent + failed < count {
            let f = &frames[i];
            i = if i + 1 == frames.len() { 0 } else { i + 1 };
            let r = unsafe { libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            if r < 0 {
                failed += 1;
            } else {
                sent += 1;
            }
            if (sent + failed) % 4096 == 0 && t.elapsed() > max_time {
                break;
            }
        }
        Ok(SendResult { sent, failed, wall: t.elapsed(), cpu: crate::bench::thread_cpu() - cpu0 })
    })?
}
