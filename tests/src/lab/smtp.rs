//! SMTP client actors: a small blocking client over `std::net::TcpStream` bound to a
//! chosen source address. These functions open sockets in the calling thread's network
//! namespace: call them inside the client namespace (`Netns::run_in`/`spawn_in`, or
//! through the `MailLab` wrappers, which do that). Every read and write has a timeout,
//! so an actor whose packets are dropped (a ban) reports where it was cut off and never
//! hangs.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, bail};

/// One SMTP reply (all lines of a multi-line reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

/// Timeouts of a session.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// For each reply. Sendmail answers a throttled RCPT after 1 s, and its greet pause
    /// delays the banner (1 s in Debian's config): keep this above both.
    pub read: Duration,
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(3), read: Duration::from_secs(5), write: Duration::from_secs(5) }
    }
}

/// Which way a transcript line went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Sent,
    Received,
    Note,
}

/// One line of a session's transcript, `at` after the session started.
#[derive(Clone, Debug)]
pub struct TranscriptLine {
    pub at: Duration,
    pub dir: Dir,
    pub text: String,
}

/// A transcript, printable like `  0.001 >>> HELO …`.
#[derive(Clone, Debug, Default)]
pub struct Transcript(pub Vec<TranscriptLine>);

impl std::fmt::Display for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.0 {
            let arrow = match l.dir {
                Dir::Sent => ">>>",
                Dir::Received => "<<<",
                Dir::Note => "---",
            };
            writeln!(f, "{:8.3} {arrow} {}", l.at.as_secs_f64(), l.text)?;
        }
        Ok(())
    }
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// QUIT was answered.
    Quit,
    /// The TCP connection could not be made (refused, timed out: e.g. already banned).
    ConnectFailed(String),
    /// The server closed the connection (EOF or reset) while we waited for `during`.
    Closed { during: String },
    /// No reply within the read timeout (or a write blocked) during `during`.
    TimedOut { during: String },
    /// The server refused the session (banner or HELO not 2xx).
    Refused(Reply),
    /// Any other I/O error.
    Error { during: String, error: String },
}

impl SessionEnd {
    /// The session was cut (closed, timed out or broken) rather than finished or refused.
    pub fn is_cut(&self) -> bool {
        matches!(self, Self::Closed { .. } | Self::TimedOut { .. } | Self::Error { .. } | Self::ConnectFailed(_))
    }
}

/// An open SMTP session.
pub struct Session {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    start: Instant,
    pub transcript: Transcript,
    pub local: SocketAddr,
}

/// A TCP stream to `server` from source address `src` (bound before connecting).
pub fn connect(src: IpAddr, server: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let domain = if server.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&server.into(), timeout)?;
    Ok(sock.into())
}

fn describe(e: &std::io::Error, during: &str) -> SessionEnd {
    use std::io::ErrorKind::*;
    match e.kind() {
        WouldBlock | TimedOut => SessionEnd::TimedOut { during: during.into() },
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
            SessionEnd::Closed { during: during.into() }
        }
        _ => SessionEnd::Error { during: during.into(), error: e.to_string() },
    }
}

impl Session {
    /// Connect (no banner read yet).
    pub fn open(src: IpAddr, server: SocketAddr, t: Timeouts) -> std::io::Result<Self> {
        let start = Instant::now();
        let stream = connect(src, server, t.connect)?;
        stream.set_read_timeout(Some(t.read))?;
        stream.set_write_timeout(Some(t.write))?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut s = Self { reader, stream, start, transcript: Transcript::default(), local };
        s.note(format!("connected {local} -> {server}"));
        Ok(s)
    }

    pub fn note(&mut self, text: String) {
        self.transcript.0.push(TranscriptLine { at: self.start.elapsed(), dir: Dir::Note, text });
    }

    /// Read one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> std::io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n = self.reader.read_until(b'\n', &mut raw)?;
            if n == 0 || raw.last() != Some(&b'\n') {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
            }
            let line = String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_string();
            self.transcript.0.push(TranscriptLine { at: self.start.elapsed(), dir: Dir::Received, text: line.clone() });
            let code = line.get(0..3).and_then(|c| c.parse::<u16>().ok()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an SMTP reply: {line:?}"))
            })?;
            let sep = line.as_bytes().get(3).copied().unwrap_or(b' ');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if sep != b'-' {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// Send one command line (CRLF added).
    pub fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.transcript.0.push(TranscriptLine { at: self.start.elapsed(), dir: Dir::Sent, text: line.to_string() });
        self.stream.write_all(format!("{line}\r\n").as_bytes())
    }

    /// Send raw bytes (message content).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.transcript.0.push(TranscriptLine {
            at: self.start.elapsed(),
            dir: Dir::Sent,
            text: format!("({} bytes of message)", bytes.len()),
        });
        self.stream.write_all(bytes)
    }

    /// Send a command and read its reply.
    pub fn command(&mut self, line: &str) -> std::io::Result<Reply> {
        self.send(line)?;
        self.read_reply()
    }

    /// Time since the session started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Close both directions.
    pub fn close(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A random-looking local part like `tpwjzbwb15` (a harvester's guess).
pub fn random_local_part() -> String {
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32)
        ^ SEQ.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = 5 + (next() % 4) as usize;
    let mut s: String = (0..len).map(|_| (b'a' + (next() % 26) as u8) as char).collect();
    s.push_str(&(next() % 90 + 10).to_string());
    s
}

/// One RCPT TO guess of a harvest.
#[derive(Clone, Debug)]
pub struct Guess {
    pub address: String,
    pub sent_at: Instant,
    pub reply: Option<Reply>,
    /// When the reply was read.
    pub replied_at: Option<Instant>,
}

/// What a harvest did.
#[derive(Clone, Debug)]
pub struct HarvestReport {
    pub src: IpAddr,
    pub server: SocketAddr,
    /// Guesses asked for.
    pub requested: usize,
    pub banner: Option<Reply>,
    /// Guesses sent, in order, with their replies (a guess without a reply is the one
    /// the connection broke on).
    pub guesses: Vec<Guess>,
    pub end: SessionEnd,
    pub started: Instant,
    pub elapsed: Duration,
    pub transcript: Transcript,
}

impl HarvestReport {
    /// Guesses that got a reply before the session ended.
    pub fn replied(&self) -> usize {
        self.guesses.iter().filter(|g| g.reply.is_some()).count()
    }
    /// Guesses answered `550 … User unknown`.
    pub fn unknown(&self) -> usize {
        self.guesses.iter().filter(|g| g.reply.as_ref().is_some_and(|r| r.code == 550)).count()
    }
    /// Whether all guesses were answered and QUIT was too.
    pub fn completed(&self) -> bool {
        self.end == SessionEnd::Quit && self.replied() == self.requested
    }
}

/// Harvest knobs beyond the basic ones.
#[derive(Clone, Debug)]
pub struct HarvestOptions {
    pub guesses: usize,
    /// Pause between a reply and the next guess.
    pub delay: Duration,
    /// Domain of the guessed recipients.
    pub domain: String,
    /// HELO (not EHLO) name, as harvest tools tend to use.
    pub helo: String,
    /// Envelope sender; random `…@example.net` when `None`.
    pub mail_from: Option<String>,
    pub timeouts: Timeouts,
}

impl Default for HarvestOptions {
    fn default() -> Self {
        Self {
            guesses: 8,
            delay: Duration::ZERO,
            domain: "example.com".into(),
            helo: "harvester.invalid".into(),
            mail_from: None,
            timeouts: Timeouts::default(),
        }
    }
}

/// Guess `n_guesses` random unknown recipients at example.com, `delay` apart.
pub fn harvest(src: IpAddr, server: SocketAddr, n_guesses: usize, delay: Duration) -> HarvestReport {
    harvest_with(src, server, &HarvestOptions { guesses: n_guesses, delay, ..Default::default() })
}

/// `harvest` with every knob.
pub fn harvest_with(src: IpAddr, server: SocketAddr, o: &HarvestOptions) -> HarvestReport {
    let started = Instant::now();
    let mut report = HarvestReport {
        src,
        server,
        requested: o.guesses,
        banner: None,
        guesses: Vec::new(),
        end: SessionEnd::Quit,
        started,
        elapsed: Duration::ZERO,
        transcript: Transcript::default(),
    };
    let mut s = match Session::open(src, server, o.timeouts) {
        Ok(s) => s,
        Err(e) => {
            report.end = SessionEnd::ConnectFailed(e.to_string());
            report.elapsed = started.elapsed();
            return report;
        }
    };
    report.end = harvest_session(&mut s, o, &mut report);
    s.close();
    report.elapsed = started.elapsed();
    report.transcript = std::mem::take(&mut s.transcript);
    report
}

fn harvest_session(s: &mut Session, o: &HarvestOptions, report: &mut HarvestReport) -> SessionEnd {
    let banner = match s.read_reply() {
        Ok(r) => r,
        Err(e) => return describe(&e, "banner"),
    };
    report.banner = Some(banner.clone());
    if banner.code != 220 {
        return SessionEnd::Refused(banner);
    }
    for (cmd, what) in [
        (format!("HELO {}", o.helo), "HELO"),
        (
            format!(
                "MAIL FROM:<{}>",
                o.mail_from.clone().unwrap_or_else(|| format!("{}@example.net", random_local_part()))
            ),
            "MAIL",
        ),
    ] {
        match s.command(&cmd) {
            Ok(r) if r.code == 250 => {}
            Ok(r) => return SessionEnd::Refused(r),
            Err(e) => return describe(&e, what),
        }
    }
    for i in 0..o.guesses {
        if i > 0 && !o.delay.is_zero() {
            std::thread::sleep(o.delay);
        }
        let address = format!("{}@{}", random_local_part(), o.domain);
        let sent_at = Instant::now();
        if let Err(e) = s.send(&format!("RCPT TO:<{address}>")) {
            report.guesses.push(Guess { address, sent_at, reply: None, replied_at: None });
            return describe(&e, "RCPT");
        }
        match s.read_reply() {
            Ok(r) => {
                let closing = (r.code == 421).then(|| r.clone());
                report.guesses.push(Guess { address, sent_at, reply: Some(r), replied_at: Some(Instant::now()) });
                if let Some(r) = closing {
                    // 421: the server is closing the session (BadRcptShutdown).
                    return SessionEnd::Refused(r);
                }
            }
            Err(e) => {
                report.guesses.push(Guess { address, sent_at, reply: None, replied_at: None });
                return describe(&e, "RCPT");
            }
        }
    }
    match s.command("QUIT") {
        Ok(_) => SessionEnd::Quit,
        Err(e) => describe(&e, "QUIT"),
    }
}

/// A delivered (accepted) message.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// Sendmail's queue id, from `250 2.0.0 <qid> Message accepted for delivery`.
    pub queue_id: String,
    pub message_id: String,
    pub reply: Reply,
    pub transcript: Transcript,
}

/// A full transaction (EHLO, MAIL, RCPT, DATA, QUIT); `Ok` when DATA got 250.
/// `body` is the message body; From/To/Subject/Message-ID headers are added.
pub fn deliver(src: IpAddr, server: SocketAddr, from: &str, to: &str, body: &str) -> anyhow::Result<Delivered> {
    let mut s =
        Session::open(src, server, Timeouts::default()).map_err(|e| anyhow!("connecting {src} -> {server}: {e}"))?;
    let r = deliver_session(&mut s, from, to, body);
    s.close();
    match r {
        Ok((reply, message_id)) => {
            let queue_id =
                reply.lines.first().and_then(|l| l.split_whitespace().nth(1)).unwrap_or_default().to_string();
            Ok(Delivered { queue_id, message_id, reply, transcript: s.transcript })
        }
        Err(e) => bail!("delivery {src} -> {server} failed: {e}\n{}", s.transcript),
    }
}

fn deliver_session(s: &mut Session, from: &str, to: &str, body: &str) -> anyhow::Result<(Reply, String)> {
    let expect = |r: Reply, code: u16| if r.code == code { Ok(r) } else { Err(anyhow!("expected {code}, got {r}")) };
    expect(s.read_reply()?, 220)?;
    expect(s.command("EHLO legit.example.net")?, 250)?;
    expect(s.command(&format!("MAIL FROM:<{from}>"))?, 250)?;
    expect(s.command(&format!("RCPT TO:<{to}>"))?, 250)?;
    expect(s.command("DATA")?, 354)?;
    let message_id = format!("<lab-{}@example.net>", random_local_part());
    let mut msg =
        format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: blocksmtp lab delivery\r\nMessage-ID: {message_id}\r\n\r\n");
    for line in body.lines() {
        if line.starts_with('.') {
            msg.push('.');
        }
        msg.push_str(line);
        msg.push_str("\r\n");
    }
    msg.push_str(".\r\n");
    s.send_raw(msg.as_bytes())?;
    let accepted = expect(s.read_reply()?, 250)?;
    // QUIT's reply does not change the outcome: the message is accepted.
    let _ = s.command("QUIT");
    Ok((accepted, message_id))
}

/// A connection that read the banner and then says nothing; closed when dropped.
pub struct IdleClient {
    pub banner: Reply,
    pub local: SocketAddr,
    session: Session,
}

impl IdleClient {
    /// Whether the server has closed the connection (e.g. its command timeout, a reaper
    /// killing the child): non-blocking check.
    pub fn server_closed(&mut self) -> bool {
        let stream = &self.session.stream;
        if stream.set_nonblocking(true).is_err() {
            return true;
        }
        let mut b = [0u8; 512];
        let r = stream.peek(&mut b);
        let _ = stream.set_nonblocking(false);
        match r {
            Ok(0) => true,
            Ok(_) => false, // data pending (a 421): not closed yet
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }

    pub fn transcript(&self) -> &Transcript {
        &self.session.transcript
    }
}

impl Drop for IdleClient {
    fn drop(&mut self) {
        self.session.close();
    }
}

/// Connect, read the banner, send nothing.
pub fn idle(src: IpAddr, server: SocketAddr) -> anyhow::Result<IdleClient> {
    let mut session =
        Session::open(src, server, Timeouts::default()).map_err(|e| anyhow!("connecting {src} -> {server}: {e}"))?;
    let banner = session.read_reply().map_err(|e| anyhow!("banner from {server}: {e}"))?;
    if banner.code != 220 {
        bail!("{server} refused {src}: {banner}");
    }
    let local = session.local;
    Ok(IdleClient { banner, local, session })
}

/// What a VRFY probe got.
#[derive(Clone, Debug)]
pub struct VrfyReport {
    /// Each name probed, with its reply if one came.
    pub replies: Vec<(String, Option<Reply>)>,
    pub end: SessionEnd,
    pub transcript: Transcript,
}

/// HELO, then `VRFY name` for each name, then QUIT.
pub fn vrfy_probe(src: IpAddr, server: SocketAddr, names: &[&str]) -> VrfyReport {
    let mut replies = Vec::new();
    let (end, transcript) = match Session::open(src, server, Timeouts::default()) {
        Err(e) => (SessionEnd::ConnectFailed(e.to_string()), Transcript::default()),
        Ok(mut s) => {
            let end = (|| {
                match s.read_reply() {
                    Ok(r) if r.code == 220 => {}
                    Ok(r) => return SessionEnd::Refused(r),
                    Err(e) => return describe(&e, "banner"),
                }
                match s.command("HELO prober.invalid") {
                    Ok(r) if r.code == 250 => {}
                    Ok(r) => return SessionEnd::Refused(r),
                    Err(e) => return describe(&e, "HELO"),
                }
                for name in names {
                    match s.command(&format!("VRFY {name}")) {
                        Ok(r) => replies.push((name.to_string(), Some(r))),
                        Err(e) => {
                            replies.push((name.to_string(), None));
                            return describe(&e, "VRFY");
                        }
                    }
                }
                match s.command("QUIT") {
                    Ok(_) => SessionEnd::Quit,
                    Err(e) => describe(&e, "QUIT"),
                }
            })();
            s.close();
            (end, std::mem::take(&mut s.transcript))
        }
    };
    VrfyReport { replies, end, transcript }
}

/// Plain TCP connect from `src`; false on refusal or timeout.
pub fn can_connect(src: IpAddr, server: SocketAddr, timeout: Duration) -> bool {
    crate::netns::connect_from(src, server, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_parts_look_random_and_differ() {
        let a = random_local_part();
        let b = random_local_part();
        assert_ne!(a, b);
        assert!(a.len() >= 7 && a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
    }

    #[test]
    fn session_end_classification() {
        let e = std::io::Error::new(std::io::ErrorKind::WouldBlock, "x");
        assert_eq!(describe(&e, "RCPT"), SessionEnd::TimedOut { during: "RCPT".into() });
        let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "x");
        assert!(describe(&e, "RCPT").is_cut());
    }
}
