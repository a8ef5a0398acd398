//! Follow log files like `tail -F`, driven by inotify.
//!
//! - Starts at the end of each file ([`FollowOptions::from_start`] reads it whole).
//! - Delivers complete lines as bytes (no UTF-8 assumption), without the `\n`; a
//!   partial last line is held until its newline arrives. A line longer than
//!   [`FollowOptions::max_line`] (1 MiB) is delivered cut to that length with
//!   [`LogLine::truncated`] set, the rest up to the newline is dropped and counted.
//! - Survives rotation:
//!   - **rename + create** and **delete + recreate**: when the path names a new file,
//!     the old one (still open) is first read to its end, then the new one is read
//!     from its start. The old file stays open and is still read for
//!     [`FollowOptions::drain_grace`] in case its writer appends before reopening.
//!   - **copytruncate**: when the file is shorter than what was already read, it is
//!     read again from offset 0.
//! - A missing file is waited for (logged once), not an error.
//!
//! Wake-ups come from an inotify watch on each file's directory (writes, creation,
//! rename, deletion of any entry), so a line is delivered within microseconds of its
//! write. A rescan every [`FollowOptions::rescan`] (5 s) is only a safety net: for
//! directories that could not be watched yet, for inotify queue overflows, and for
//! writes to an old file that was moved out of the directory. A directory that is
//! deleted and recreated is watched again at the next rescan.
//!
//! [`Follower::next`] is cancel-safe: lines are queued before it returns, so it can
//! be used in `tokio::select!`.
//!
//! **Guarantees.** Every line written to the followed path is delivered exactly once,
//! in order per file, provided that
//! - each generation of the file stays at the path long enough for the follower to
//!   open it (one wake-up: a file created and rotated away again before the follower
//!   has run is not seen — as with `tail -F`); and
//! - for copytruncate, the follower observes the truncation before the writer has
//!   written the file back past the previously read length. Lines written between
//!   the rotation tool's copy and its truncate are lost by copytruncate itself, in
//!   every tool; use rename rotation where that matters.
use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use inotify::{Inotify, WatchMask};
use tokio::io::unix::AsyncFd;

use super::{LogLine, split::Splitter};

/// How to follow.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// Read files from their beginning instead of their end (`--from-start`, tests).
    pub from_start: bool,
    /// Longest line delivered whole; longer ones are cut.
    pub max_line: usize,
    /// How long a rotated-away file is still read after its last growth.
    pub drain_grace: Duration,
    /// Safety-net rescan interval (inotify does the real work).
    pub rescan: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            from_start: false,
            max_line: 1 << 20,
            drain_grace: Duration::from_secs(10),
            rescan: Duration::from_secs(5),
        }
    }
}

/// Where the follower stands in one file (for `blocksmtp status`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FilePosition {
    pub path: PathBuf,
    /// Whether the path is currently open.
    pub open: bool,
    /// Inode of the open file.
    pub inode: Option<u64>,
    /// Bytes consumed in the open file.
    pub offset: u64,
    /// Lines delivered from this path (all generations).
    pub lines: u64,
    /// Lines cut at `max_line`.
    pub truncated_lines: u64,
    /// Rotations seen (new file at the path, or truncation).
    pub rotations: u64,
    /// Rotated-away files still being drained.
    pub draining: usize,
}

struct Open {
    file: File,
    dev: u64,
    ino: u64,
    offset: u64,
    /// Bytes read but not yet a whole line (the shared splitter of every reader).
    split: Splitter,
}

impl Open {
    fn at(path: &Path, at_end: bool, max_line: usize) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        let offset = if at_end { file.seek(SeekFrom::End(0))? } else { 0 };
        Ok(Self { file, dev: meta.dev(), ino: meta.ino(), offset, split: Splitter::new(max_line) })
    }
}

struct Tracked {
    path: PathBuf,
    source: Arc<Path>,
    cur: Option<Open>,
    /// Rotated-away files, with the time they last grew.
    retired: Vec<(Open, Instant)>,
    /// The inotify watch on the directory, once established.
    dir_watch: Option<inotify::WatchDescriptor>,
    missing_logged: bool,
    /// "cannot open" repeats on every poll while it lasts (EMFILE, EACCES): once a minute.
    open_warn: crate::logging::RateLimit,
    lines: u64,
    truncated_lines: u64,
    rotations: u64,
}

/// Follows several files; see the module documentation.
pub struct Follower {
    files: Vec<Tracked>,
    opts: FollowOptions,
    inotify: AsyncFd<Inotify>,
    queue: VecDeque<LogLine>,
    last_rescan: Instant,
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl Follower {
    /// Start following `paths`. Must be called inside a tokio runtime.
    pub fn new(paths: Vec<PathBuf>, opts: FollowOptions) -> io::Result<Self> {
        if opts.max_line == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "max_line must be > 0"));
        }
        let inotify = Inotify::init()?;
        let mut me = Self {
            files: Vec::new(),
            opts,
            // SAFETY: the inotify fd is owned by the `Inotify` inside the AsyncFd and
            // stays open for as long as it is registered.
            inotify: unsafe { AsyncFd::register(inotify) }.map_err(|e| io::Error::other(e.to_string()))?,
            queue: VecDeque::new(),
            last_rescan: Instant::now(),
        };
        for path in paths {
            let source: Arc<Path> = Arc::from(path.as_path());
            me.files.push(Tracked {
                path,
                source,
                cur: None,
                retired: Vec::new(),
                dir_watch: None,
                missing_logged: false,
                open_warn: crate::logging::RateLimit::new(Duration::from_secs(60)),
                lines: 0,
                truncated_lines: 0,
                rotations: 0,
            });
        }
        let at_end = !me.opts.from_start;
        for i in 0..me.files.len() {
            me.watch_dir(i);
            let f = &mut me.files[i];
            match Open::at(&f.path, at_end, me.opts.max_line) {
                Ok(o) => f.cur = Some(o),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    log::warn!("{}: does not exist yet; waiting for it to appear", f.path.display());
                    f.missing_logged = true;
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", f.path.display()))),
            }
        }
        Ok(me)
    }

    fn watch_dir(&mut self, i: usize) {
        if self.files[i].dir_watch.is_some() {
            return;
        }
        let dir = dir_of(&self.files[i].path);
        let mask = WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::ATTRIB
            | WatchMask::CLOSE_WRITE;
        match self.inotify.get_ref().watches().add(&dir, mask) {
            Ok(wd) => self.files[i].dir_watch = Some(wd),
            Err(e) => log::debug!("{}: cannot watch yet ({e}); rescanning", dir.display()),
        }
    }

    /// Positions of every followed path.
    pub fn positions(&self) -> Vec<FilePosition> {
        self.files
            .iter()
            .map(|f| FilePosition {
                path: f.path.clone(),
                open: f.cur.is_some(),
                inode: f.cur.as_ref().map(|o| o.ino),
                offset: f.cur.as_ref().map_or(0, |o| o.offset),
                lines: f.lines,
                truncated_lines: f.truncated_lines,
                rotations: f.rotations,
                draining: f.retired.len(),
            })
            .collect()
    }

    /// The next line from any followed file.
    pub async fn next(&mut self) -> io::Result<LogLine> {
        loop {
            if let Some(l) = self.queue.pop_front() {
                return Ok(l);
            }
            if self.poll_all()? {
                continue;
            }
            // Nothing to read: wait for inotify or the safety-net rescan.
            let wait = self.opts.rescan.saturating_sub(self.last_rescan.elapsed());
            tokio::select! {
                r = self.inotify.readable_mut() => {
                    let mut guard = r?;
                    let mut ebuf = [0u8; 4096];
                    let mut lost = Vec::new();
                    loop {
                        match guard.get_inner_mut().read_events(&mut ebuf) {
                            Ok(events) => {
                                let mut n = 0;
                                for ev in events {
                                    n += 1;
                                    // The directory went away (deleted, unmounted): its
                                    // watch is gone; re-add it when it is back.
                                    if ev.mask.contains(inotify::EventMask::IGNORED) {
                                        lost.push(ev.wd.clone());
                                    }
                                }
                                if n == 0 { break; }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                guard.clear_ready();
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    drop(guard);
                    for f in &mut self.files {
                        if f.dir_watch.as_ref().is_some_and(|w| lost.contains(w)) {
                            f.dir_watch = None;
                        }
                    }
                    for i in 0..self.files.len() {
                        self.watch_dir(i);
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    self.last_rescan = Instant::now();
                    for i in 0..self.files.len() {
                        self.watch_dir(i);
                    }
                }
            }
        }
    }

    /// Read what is available and handle rotations. `true` if anything was read or
    /// queued.
    fn poll_all(&mut self) -> io::Result<bool> {
        let mut progress = false;
        for i in 0..self.files.len() {
            progress |= self.poll_file(i)?;
        }
        Ok(progress)
    }

    fn poll_file(&mut self, i: usize) -> io::Result<bool> {
        let opts = self.opts.clone();
        let now = Instant::now();
        let f = &mut self.files[i];
        let mut progress = false;

        // Rotated-away files first: what they hold was written before the new file.
        let mut k = 0;
        while k < f.retired.len() {
            let (o, last) = &mut f.retired[k];
            let n = read_chunk(o, &f.source, &mut self.queue, &mut f.lines, &mut f.truncated_lines)?;
            if n > 0 {
                *last = now;
                progress = true;
                k += 1;
            } else if now.duration_since(*last) >= opts.drain_grace {
                let (mut o, _) = f.retired.remove(k);
                flush_partial(&mut o, &f.source, &mut self.queue, &mut f.lines);
                progress |= !self.queue.is_empty();
            } else {
                k += 1;
            }
        }
        if !f.retired.is_empty() && progress {
            return Ok(true);
        }

        if let Some(o) = f.cur.as_mut() {
            let n = read_chunk(o, &f.source, &mut self.queue, &mut f.lines, &mut f.truncated_lines)?;
            if n > 0 {
                return Ok(true);
            }
            // At the end of the open file: truncated? replaced?
            let size = o.file.metadata()?.len();
            if size < o.offset {
                log::info!("{}: truncated ({} → {size} bytes); reading from the start", f.path.display(), o.offset);
                flush_partial(o, &f.source, &mut self.queue, &mut f.lines);
                o.file.seek(SeekFrom::Start(0))?;
                o.offset = 0;
                f.rotations += 1;
                return Ok(true);
            }
        }
        match std::fs::metadata(&f.path) {
            Ok(meta) => {
                let replaced = f.cur.as_ref().is_none_or(|o| (o.dev, o.ino) != (meta.dev(), meta.ino()));
                if replaced {
                    match Open::at(&f.path, false, opts.max_line) {
                        Ok(new) => {
                            if let Some(old) = f.cur.take() {
                                log::info!("{}: rotated; draining the old file, reading the new one", f.path.display());
                                f.retired.push((old, now));
                                f.rotations += 1;
                            } else if f.missing_logged {
                                log::info!("{}: appeared; following", f.path.display());
                                f.missing_logged = false;
                            }
                            f.cur = Some(new);
                            progress = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            if let Some(n) = f.open_warn.hit() {
                                log::warn!("{}: cannot open: {e}{}", f.path.display(), crate::logging::RateLimit::suffix(n));
                            }
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if f.cur.is_none() && !f.missing_logged {
                    log::warn!("{}: gone; waiting for it to reappear", f.path.display());
                    f.missing_logged = true;
                }
            }
            Err(e) => log::debug!("{}: {e}", f.path.display()),
        }
        Ok(progress)
    }
}

/// Read one chunk from `o` and queue the complete lines in it. Returns bytes read.
fn read_chunk(
    o: &mut Open,
    source: &Arc<Path>,
    queue: &mut VecDeque<LogLine>,
    lines: &mut u64,
    truncated_lines: &mut u64,
) -> io::Result<usize> {
    let n = loop {
        match o.file.read(o.split.spare()) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    o.offset += n as u64;
    o.split.filled(n);
    while let Some((r, truncated)) = o.split.next_line() {
        queue.push_back(LogLine { source: source.clone(), line: o.split.slice(r).to_vec(), truncated });
        *lines += 1;
        *truncated_lines += u64::from(truncated);
    }
    Ok(n)
}

/// A file is being left: its unterminated last line is a line too.
fn flush_partial(o: &mut Open, source: &Arc<Path>, queue: &mut VecDeque<LogLine>, lines: &mut u64) {
    if let Some(r) = o.split.rest() {
        queue.push_back(LogLine { source: source.clone(), line: o.split.slice(r).to_vec(), truncated: false });
        *lines += 1;
    }
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("inotify_fd", &self.inotify.get_ref().as_raw_fd())
            .field("positions", &self.positions())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    async fn next_within(f: &mut Follower, ms: u64) -> Option<LogLine> {
        tokio::time::timeout(Duration::from_millis(ms), f.next()).await.ok().map(|r| r.unwrap())
    }

    #[tokio::test]
    async fn starts_at_end_holds_partial_lines_and_keeps_bytes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("maillog");
        std::fs::write(&p, b"old line\n").unwrap();
        let mut f = Follower::new(vec![p.clone()], FollowOptions::default()).unwrap();
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b"par").unwrap();
        assert_eq!(next_within(&mut f, 200).await, None, "partial line delivered early");
        w.write_all(b"tial \xff\xfe\nnext\n").unwrap();
        let l = next_within(&mut f, 2000).await.unwrap();
        assert_eq!(l.line, b"partial \xff\xfe");
        assert_eq!(&*l.source, p.as_path());
        assert_eq!(next_within(&mut f, 2000).await.unwrap().line, b"next");
        let pos = &f.positions()[0];
        assert_eq!((pos.offset, pos.lines), (9 + 3 + 8 + 5, 2));
    }

    #[tokio::test]
    async fn from_start_and_long_lines_are_cut() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut content = b"first\n".to_vec();
        content.extend(std::iter::repeat_n(b'x', 300_000));
        content.extend(b"\nafter\n");
        std::fs::write(&p, &content).unwrap();
        let opts = FollowOptions { from_start: true, max_line: 1000, ..Default::default() };
        let mut f = Follower::new(vec![p], opts).unwrap();
        assert_eq!(next_within(&mut f, 2000).await.unwrap().line, b"first");
        let long = next_within(&mut f, 2000).await.unwrap();
        assert!(long.truncated);
        assert_eq!(long.line.len(), 1000);
        let after = next_within(&mut f, 2000).await.unwrap();
        assert_eq!((after.line.as_slice(), after.truncated), (&b"after"[..], false));
        assert_eq!(f.positions()[0].truncated_lines, 1);
    }

    #[tokio::test]
    async fn missing_file_is_waited_for() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("later.log");
        let mut f = Follower::new(vec![p.clone()], FollowOptions::default()).unwrap();
        assert!(!f.positions()[0].open);
        assert_eq!(next_within(&mut f, 100).await, None);
        std::fs::write(&p, b"hello\n").unwrap();
        assert_eq!(next_within(&mut f, 2000).await.unwrap().line, b"hello");
        assert!(f.positions()[0].open);
    }

    #[tokio::test]
    async fn directory_recreated_is_watched_again() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("log");
        std::fs::create_dir(&sub).unwrap();
        let p = sub.join("maillog");
        std::fs::write(&p, b"").unwrap();
        let opts = FollowOptions { rescan: Duration::from_millis(200), ..Default::default() };
        let mut f = Follower::new(vec![p.clone()], opts).unwrap();
        std::fs::write(&p, b"before\n").unwrap();
        assert_eq!(next_within(&mut f, 2000).await.unwrap().line, b"before");
        std::fs::remove_dir_all(&sub).unwrap();
        assert_eq!(next_within(&mut f, 300).await, None);
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(&p, b"after\n").unwrap();
        assert_eq!(next_within(&mut f, 3000).await.unwrap().line, b"after");
        // Watched again: the next write arrives without waiting for a rescan.
        let t = Instant::now();
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b"again\n").unwrap();
        assert_eq!(next_within(&mut f, 3000).await.unwrap().line, b"again");
        assert!(t.elapsed() < Duration::from_millis(30), "{:?}", t.elapsed());
    }
}
