//! Log sources: where lines come from.
//!
//! `file` reads whole files (plain, gzip, stdin) for `replay`; `follow` tails live
//! files through rotations; `journal` reads journald; `stdin` reads a pipe. All of them
//! cut lines with the one [`split::Splitter`], and the daemon runs the live ones through
//! one [`LineSource`] interface and one task loop.
use std::{
    future::Future,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

pub mod file;
pub mod follow;
pub mod journal;
pub mod split;
pub mod stdin;

use crate::{control::SourceStatus, logging::RateLimit};

/// One line from a source: every source (followed files, journald, stdin) makes these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Where it came from: the followed path (as given, not the rotated name),
    /// `journal`, `stdin`.
    pub source: std::sync::Arc<std::path::Path>,
    /// The line without its `\n` (a trailing `\r` is kept).
    pub line: Vec<u8>,
    /// The line was longer than the source's limit and was cut.
    pub truncated: bool,
}

/// A live source of log lines, as the daemon runs it.
pub trait LineSource: Send + 'static {
    /// For `status` and the log: the followed paths, `journal`, `stdin`.
    fn name(&self) -> String;

    /// The next line; `Ok(None)` when the source has ended for good (standard input
    /// closed). Must be cancel-safe: it is raced against status requests.
    fn next_line(&mut self) -> impl Future<Output = std::io::Result<Option<LogLine>>> + Send;

    /// Whether an error is passing (retry after a pause: a followed file) rather than
    /// the end of the source (journalctl exited).
    fn transient_errors(&self) -> bool {
        false
    }

    /// Detailed positions (a follower's files), or `None` for one line with the count.
    fn positions(&self) -> Option<Vec<SourceStatus>> {
        None
    }

    /// Whether a line's origin is vouched for (journald's trusted fields), and how:
    /// a log file or a pipe holds whatever any local program managed to write there.
    fn trust(&self) -> (bool, &'static str) {
        (false, crate::control::TRUST_FILE)
    }
}

impl LineSource for follow::Follower {
    fn name(&self) -> String {
        self.positions().iter().map(|p| p.path.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    async fn next_line(&mut self) -> std::io::Result<Option<LogLine>> {
        self.next().await.map(Some)
    }

    fn transient_errors(&self) -> bool {
        true
    }

    fn positions(&self) -> Option<Vec<SourceStatus>> {
        Some(
            follow::Follower::positions(self)
                .into_iter()
                .map(|p| SourceStatus {
                    name: p.path.display().to_string(),
                    position: Some(p.offset),
                    lines: p.lines,
                    open: p.open,
                    trusted: false,
                    trust: crate::control::TRUST_FILE.into(),
                })
                .collect(),
        )
    }
}

impl LineSource for journal::Journal {
    fn name(&self) -> String {
        "journal".into()
    }

    fn trust(&self) -> (bool, &'static str) {
        (true, crate::control::TRUST_JOURNAL)
    }

    async fn next_line(&mut self) -> std::io::Result<Option<LogLine>> {
        self.next().await.map(Some)
    }
}

impl LineSource for stdin::StdinLines {
    fn name(&self) -> String {
        "stdin".into()
    }

    async fn next_line(&mut self) -> std::io::Result<Option<LogLine>> {
        self.next().await
    }
}

/// A running log source task, and how to ask it where it is.
pub struct SourceHandle {
    pub name: String,
    pub positions: mpsc::Sender<oneshot::Sender<Vec<SourceStatus>>>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Run a source in its own task: lines go to the daemon's loop, position requests are
/// answered in between. A passing error (a followed file) is retried after a pause, with
/// its message rate-limited; the end of a source is logged once and the daemon runs on.
pub fn spawn<S: LineSource>(mut src: S, tx: &mpsc::Sender<(LogLine, Instant)>) -> SourceHandle {
    let name = src.name();
    let (ptx, mut prx) = mpsc::channel::<oneshot::Sender<Vec<SourceStatus>>>(4);
    let tx = tx.clone();
    let task_name = name.clone();
    let task = tokio::spawn(async move {
        let name = task_name;
        let mut lines = 0u64;
        let mut open = true;
        let mut errors = RateLimit::new(Duration::from_secs(60));
        loop {
            tokio::select! {
                r = src.next_line(), if open => match r {
                    Ok(Some(line)) => {
                        lines += 1;
                        if tx.send((line, Instant::now())).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        log::info!("{name} ended after {lines} lines; still running (bans expire, control socket open)");
                        open = false;
                    }
                    Err(e) if src.transient_errors() => {
                        if let Some(n) = errors.hit() {
                            log::error!("reading {name}: {e}{}", RateLimit::suffix(n));
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        log::error!("{name}: {e}");
                        open = false;
                    }
                },
                Some(reply) = prx.recv() => {
                    let status = src.positions().unwrap_or_else(|| {
                        let (trusted, trust) = src.trust();
                        vec![SourceStatus { name: name.clone(), position: None, lines, open, trusted, trust: trust.into() }]
                    });
                    let _ = reply.send(status);
                }
            }
        }
    });
    SourceHandle { name, positions: ptx, task }
}
