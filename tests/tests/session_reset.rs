//! Ending a banned source's open SMTP sessions through sock_diag SOCK_DESTROY
//! (`SessionKiller`), judged by both ends of real TCP connections in network
//! namespaces: the server's blocked read must fail (the MTA's process is freed), the
//! client must see the reset, and an innocent's session on the same port must live on.
use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use blocksmtp::{
    addr::SourceAddr,
    enforce::sockdiag::{SessionKiller, Support},
};
use blocksmtp_tests::netns::Topology;
use socket2::{Domain, Socket, Type};

/// How one server-side session ended.
#[derive(Debug)]
struct Ended {
    peer: IpAddr,
    /// The read error the server saw (ECONNABORTED/ECONNRESET), or None for EOF.
    error: Option<ErrorKind>,
}

/// A dual-stack listener on [::]:25 (IPv4 clients arrive IPv4-mapped, as with
/// Postfix's and Exim's default `inet_protocols = all`) that serves each connection
/// with a blocking read loop, like an MTA process waiting for the next command, and
/// echoes what it reads.
fn serve(t: &Topology, ended: mpsc::Sender<Ended>) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let _ = t.server.spawn_in(move || {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
        s.set_only_v6(false).expect("dual stack");
        s.set_reuse_address(true).expect("reuseaddr");
        s.bind(&"[::]:25".parse::<SocketAddr>().unwrap().into()).expect("bind [::]:25");
        s.listen(64).expect("listen");
        let l: TcpListener = s.into();
        ready_tx.send(()).unwrap();
        while let Ok((mut c, peer)) = l.accept() {
            let ended = ended.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                let error = loop {
                    match c.read(&mut buf) {
                        Ok(0) => break None,
                        Ok(n) => {
                            let _ = c.write_all(&buf[..n]);
                        }
                        Err(e) => break Some(e.kind()),
                    }
                };
                let peer = match peer.ip() {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                    v4 => v4,
                };
                let _ = ended.send(Ended { peer, error });
            });
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5))?;
    Ok(())
}

/// An established session from `src` to the server, opened in the client namespace.
fn open(t: &Topology, src: &str, dst: &str) -> anyhow::Result<TcpStream> {
    let src: SocketAddr = SocketAddr::new(src.parse()?, 0);
    let dst: SocketAddr = dst.parse()?;
    t.client.run_in(move || -> anyhow::Result<TcpStream> {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
        s.bind(&src.into())?;
        s.connect_timeout(&dst.into(), Duration::from_secs(3))?;
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(s)
    })?
}

fn echo_works(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4];
    s.write_all(b"NOOP").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"NOOP"
}

#[test]
fn banned_sessions_are_reset_and_others_live_on() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("needs root (network namespaces, sock_diag)");
    }
    let t = Topology::new().unwrap();
    let (tx, rx) = mpsc::channel();
    serve(&t, tx).unwrap();

    let mut harvester_v4 = open(&t, "192.0.2.66", "192.0.2.25:25").unwrap();
    let mut harvester_v6 = open(&t, "2001:db8::66", "[2001:db8::25]:25").unwrap();
    let mut innocent_v4 = open(&t, "192.0.2.67", "192.0.2.25:25").unwrap();
    let mut innocent_v6 = open(&t, "2001:db8:0:1::67", "[2001:db8::25]:25").unwrap();
    for s in [&mut harvester_v4, &mut harvester_v6, &mut innocent_v4, &mut innocent_v6] {
        assert!(echo_works(s), "session up before the ban");
    }

    let banned: Vec<SourceAddr> = vec!["192.0.2.66".parse().unwrap(), "2001:db8::/64".parse().unwrap()];
    // The killer works in the MTA's namespace, as the daemon does.
    let (support, ended) = t
        .server
        .run_in(move || {
            let support = SessionKiller::probe();
            let k = SessionKiller::new(&[25, 587]);
            let listed = k.sessions_of(&banned).expect("dump");
            let ended = k.end_sessions_of(&banned).expect("destroy");
            (support, (listed, ended))
        })
        .unwrap();
    assert_eq!(support, Support::Yes, "this kernel has SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)");
    let (listed, ended) = ended;
    let mut peers: Vec<String> = listed.iter().map(|s| s.peer.to_string()).collect();
    peers.sort();
    assert_eq!(peers, ["192.0.2.66", "2001:db8::66"], "only the banned sources' sessions are listed");
    assert_eq!(ended.len(), 2, "both banned sessions destroyed: {ended:?}");

    // The server's blocked reads end at once (the MTA process is free) ...
    let start = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 2 && start.elapsed() < Duration::from_secs(1) {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(50)) {
            seen.push(e);
        }
    }
    let mut ended_peers: Vec<String> = seen.iter().map(|e| e.peer.to_string()).collect();
    ended_peers.sort();
    assert_eq!(ended_peers, ["192.0.2.66", "2001:db8::66"], "server sessions ended within 1 s: {seen:?}");
    for e in &seen {
        assert_eq!(e.error, Some(ErrorKind::ConnectionAborted), "the server sees the session aborted: {e:?}");
    }
    // ... the harvester sees a reset ...
    for s in [&mut harvester_v4, &mut harvester_v6] {
        let mut buf = [0u8; 8];
        let r = s.write_all(b"RCPT").and_then(|()| s.read(&mut buf));
        assert!(matches!(r, Err(_) | Ok(0)), "the harvester's session is gone: {r:?}");
    }
    // ... and the innocents' sessions on the same port go on.
    for s in [&mut innocent_v4, &mut innocent_v6] {
        assert!(echo_works(s), "an innocent's session survives the ban");
    }
    assert!(rx.try_recv().is_err(), "no other session ended");
}

/// The daemon, end to end: a Postfix-style harvest in the log bans the source, and
/// its session that was open all along is reset (no sendmail process involved).
#[test]
fn daemon_resets_the_banned_harvesters_open_session() {
    use blocksmtp_tests::{
        daemon::Daemon,
        loggen::{LogGen, Style},
    };
    if unsafe { libc::geteuid() } != 0 {
        panic!("needs root (network namespaces, BPF)");
    }
    let t = Topology::new().unwrap();
    let (tx, rx) = mpsc::channel();
    serve(&t, tx).unwrap();
    let d = Daemon::start(Some(&t.server), &["--interface", "vs0", "--max-unknown", "3", "--cmd-read-timeout", "0"]).unwrap();
    let mut harvester = open(&t, "2001:db8::66", "[2001:db8::25]:25").unwrap();
    let mut innocent = open(&t, "192.0.2.67", "192.0.2.25:25").unwrap();
    assert!(echo_works(&mut harvester) && echo_works(&mut innocent));

    let mut g = LogGen::new(Style::Bsd, 7, 1_800_000_000);
    g.postfix_harvest("2001:db8::66".parse().unwrap(), None, 3, 1.0);
    let lines: Vec<String> = String::from_utf8(g.finish()).unwrap().lines().map(str::to_string).collect();
    d.write_log(&lines).unwrap();
    d.wait_for(Duration::from_secs(5), |d| d.listed("2001:db8::/64"))
        .unwrap_or_else(|| panic!("no ban:\n{}", d.stderr_text()));
    let banned_at = Instant::now();
    let e = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_else(|_| panic!("session not reset within 1 s of the ban:\n{}", d.stderr_text()));
    eprintln!("ban listed → server session ended in {:?}", banned_at.elapsed());
    assert_eq!(e.peer.to_string(), "2001:db8::66");
    assert_eq!(e.error, Some(ErrorKind::ConnectionAborted));
    assert!(d.stderr_text().contains("reset session of 2001:db8::66"), "{}", d.stderr_text());
    assert!(echo_works(&mut innocent), "the innocent's session goes on");
    assert!(rx.try_recv().is_err(), "no other session ended");
}
