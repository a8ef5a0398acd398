//! A private syslog receiver: a unix datagram socket that a sendmail in a private mount
//! namespace sees as `/dev/log`, and a log file written in a classic syslog format.
//!
//! Every datagram is written to the file with one `write(2)` on an `O_APPEND` file as it
//! arrives (no buffering), so a follower of the file (inotify) sees each line at once.
//! The receiver also keeps every line in memory with the instant it was written, which
//! is what the lab's latency figures are measured against.
use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use super::Worker;

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `Nov 27 12:35:47 mx sm-mta[18868]: …` (rsyslog's RSYSLOG_TraditionalFileFormat,
    /// the classic /var/log/mail.log look).
    Traditional,
    /// `2026-11-27T12:29:10.929159+00:00 mx sm-mta[18868]: …` (RSYSLOG_FileFormat, what
    /// Debian 12's stock rsyslog.conf writes).
    Rfc3339,
}

/// One line as written to the log file (without its newline).
#[derive(Clone, Debug)]
pub struct LogLine {
    /// When the line's `write(2)` returned: from then on a reader of the file sees it.
    pub written: Instant,
    /// Wall-clock time of receipt (the line's timestamp).
    pub at: SystemTime,
    /// Syslog facility (2 = mail) and severity of the datagram.
    pub facility: u8,
    pub severity: u8,
    /// The full line, e.g. `Nov 27 12:35:47 mx sm-mta[18868]: 6ARC…: <x@example.com>... User unknown`.
    pub line: String,
}

#[derive(Default)]
struct Shared {
    lines: Mutex<Vec<LogLine>>,
    cond: Condvar,
}

/// The receiver; its thread stops when this drops.
pub struct SyslogReceiver {
    socket: PathBuf,
    log: PathBuf,
    shared: Arc<Shared>,
    worker: Worker<()>,
}

impl SyslogReceiver {
    /// Bind `socket` (mode 0666, as /dev/log is) and append lines to `log` with `hostname`.
    pub fn start(socket: &Path, log: &Path, hostname: &str, format: LogFormat) -> anyhow::Result<Self> {
        let sock = UnixDatagram::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let shared = Arc::new(Shared::default());
        let stop = Worker::<()>::flag();
        let hostname = hostname.to_string();
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("lab-syslog".into())
                .spawn(move || receive(sock, file, &hostname, format, &shared, &stop))?
        };
        Ok(Self { socket: socket.to_path_buf(), log: log.to_path_buf(), shared, worker: Worker::new(stop, thread) })
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The socket (seen as /dev/log by sendmail).
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Every line written so far.
    pub fn lines(&self) -> Vec<LogLine> {
        self.shared.lines.lock().unwrap().clone()
    }

    /// Number of lines written so far (a mark for `lines_since`).
    pub fn mark(&self) -> usize {
        self.shared.lines.lock().unwrap().len()
    }

    /// Lines written after `mark`.
    pub fn lines_since(&self, mark: usize) -> Vec<LogLine> {
        self.shared.lines.lock().unwrap().get(mark..).unwrap_or_default().to_vec()
    }

    /// Wait until at least `n` lines after `mark` satisfy `pred`; returns the matching
    /// lines seen by then (fewer than `n` on timeout).
    pub fn wait_for(&self, mark: usize, n: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> Vec<LogLine> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.shared.lines.lock().unwrap();
        loop {
            let found: Vec<LogLine> =
                lines.get(mark..).unwrap_or_default().iter().filter(|l| pred(&l.line)).cloned().collect();
            let now = Instant::now();
            if found.len() >= n || now >= deadline {
                return found;
            }
            lines = self.shared.cond.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    fn stop(&mut self) {
        self.worker.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for SyslogReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn receive(sock: UnixDatagram, mut file: File, hostname: &str, format: LogFormat, shared: &Shared, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("lab syslog receiver: {e}");
                return;
            }
        };
        let at = SystemTime::now();
        let (pri, rest) = parse_datagram(&buf[..n]);
        let line = format!("{} {hostname} {rest}", timestamp(at, format));
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        if let Err(e) = file.write_all(&bytes) {
            eprintln!("lab syslog receiver: writing the log: {e}");
        }
        let written = Instant::now();
        shared.lines.lock().unwrap().push(LogLine { written, at, facility: pri >> 3, severity: pri & 7, line });
        shared.cond.notify_all();
    }
}

/// `<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG` (what glibc's syslog() sends) → (PRI, `TAG[PID]: MSG`).
/// The sender's timestamp is dropped: like rsyslog's imuxsock, the receipt time is used.
pub fn parse_datagram(d: &[u8]) -> (u8, String) {
    let s = String::from_utf8_lossy(d);
    let s = s.trim_end_matches(['\n', '\0']);
    let (pri, mut rest) = match s.strip_prefix('<').and_then(|r| r.split_once('>')) {
        Some((p, r)) => match p.parse::<u8>() {
            Ok(p) => (p, r),
            Err(_) => (13, s),
        },
        None => (13, s), // user.notice, like syslogd for a datagram without PRI
    };
    let b = rest.as_bytes();
    // "Nov 27 12:35:47 " / "Nov  7 12:35:47 "
    if b.len() >= 16 && b[3] == b' ' && b[6] == b' ' && b[9] == b':' && b[12] == b':' && b[15] == b' ' {
        rest = &rest[16..];
    }
    (pri, rest.to_string())
}

fn timestamp(at: SystemTime, format: LogFormat) -> String {
    let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    match format {
        LogFormat::Traditional => format!(
            "{} {:>2} {:02}:{:02}:{:02}",
            MONTHS[tm.tm_mon.clamp(0, 11) as usize],
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        ),
        LogFormat::Rfc3339 => {
            let off = tm.tm_gmtoff / 60;
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}{}{:02}:{:02}",
                tm.tm_year + 1900,
                tm.tm_mon + 1,
                tm.tm_mday,
                tm.tm_hour,
                tm.tm_min,
                tm.tm_sec,
                d.subsec_micros(),
                if off < 0 { '-' } else { '+' },
                off.abs() / 60,
                off.abs() % 60
            )
        }
    }
}

/// An independent reader of a log file, as a daemon following it would be: inotify
/// (IN_MODIFY) on the file, each new complete line stamped with the instant it was read.
/// Used to check that lines reach readers of the file as they are written.
pub struct LogFollower {
    shared: Arc<Shared>,
    _worker: Worker<()>,
}

impl LogFollower {
    /// Follow `path` from its current end.
    pub fn start(path: &Path) -> anyhow::Result<Self> {
        use std::{
            io::{Read as _, Seek as _},
            os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        };
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        file.seek(std::io::SeekFrom::End(0))?;
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            anyhow::bail!("inotify_init1: {}", std::io::Error::last_os_error());
        }
        let ino = unsafe { OwnedFd::from_raw_fd(fd) };
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        if unsafe { libc::inotify_add_watch(ino.as_raw_fd(), cpath.as_ptr(), libc::IN_MODIFY) } < 0 {
            anyhow::bail!("inotify_add_watch {}: {}", path.display(), std::io::Error::last_os_error());
        }
        let shared = Arc::new(Shared::default());
        let stop = Worker::<()>::flag();
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new().name("lab-follow".into()).spawn(move || {
                let mut pending = Vec::new();
                let mut ev = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd { fd: ino.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                    if unsafe { libc::poll(&mut pfd, 1, 50) } != 1 {
                        continue;
                    }
                    while unsafe { libc::read(ino.as_raw_fd(), ev.as_mut_ptr().cast(), ev.len()) } > 0 {}
                    let mut chunk = Vec::new();
                    if file.read_to_end(&mut chunk).is_err() {
                        continue;
                    }
                    let now = Instant::now();
                    let at = SystemTime::now();
                    pending.extend_from_slice(&chunk);
                    let mut lines = shared.lines.lock().unwrap();
                    while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                        let raw: Vec<u8> = pending.drain(..=nl).collect();
                        let line = String::from_utf8_lossy(&raw[..raw.len() - 1]).into_owned();
                        lines.push(LogLine { written: now, at, facility: 0, severity: 0, line });
                    }
                    drop(lines);
                    shared.cond.notify_all();
                }
            })?
        };
        Ok(Self { shared, _worker: Worker::new(stop, thread) })
    }

    /// Every line read so far; `written` is the instant the follower read it.
    pub fn lines(&self) -> Vec<LogLine> {
        self.shared.lines.lock().unwrap().clone()
    }

    /// Wait until `n` lines satisfy `pred` (fewer on timeout).
    pub fn wait_for(&self, n: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> Vec<LogLine> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.shared.lines.lock().unwrap();
        loop {
            let found: Vec<LogLine> = lines.iter().filter(|l| pred(&l.line)).cloned().collect();
            let now = Instant::now();
            if found.len() >= n || now >= deadline {
                return found;
            }
            lines = self.shared.cond.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_header_is_parsed() {
        let (pri, rest) =
            parse_datagram(b"<22>Nov  7 12:35:47 sm-mta[18868]: 6ARCZkEp018868: <x@example.com>... User unknown");
        assert_eq!(pri, 22);
        assert_eq!(rest, "sm-mta[18868]: 6ARCZkEp018868: <x@example.com>... User unknown");
        let (pri, rest) = parse_datagram(b"no header");
        assert_eq!((pri, rest.as_str()), (13, "no header"));
    }

    #[test]
    fn timestamps_have_the_classic_shapes() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456);
        let trad = timestamp(t, LogFormat::Traditional);
        assert_eq!(trad.len(), 15, "{trad}");
        assert_eq!(&trad[9..10], ":");
        let rfc = timestamp(t, LogFormat::Rfc3339);
        assert_eq!(rfc.len(), 32, "{rfc}");
        assert!(rfc.contains(".123456"), "{rfc}");
    }
}
