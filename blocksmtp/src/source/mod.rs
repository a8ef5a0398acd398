//! Log sources: where lines come from.
//!
//! `file` reads whole files (plain, gzip, stdin) for `replay`; `follow` tails live
//! files through rotations; `journal` reads journald; `stdin` reads a pipe. All of them
//! cut lines with the one [`split::Splitter`], and the daemon runs the live ones through
//! one [`LineSource`] interface and one task loop.
use std::future::Future;

pub mod file;
pub mod follow;
pub mod journal;
pub mod split;
pub mod stdin;

use crate::control::SourceStatus;
pub use follow::LogLine;

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
                .map(|p| SourceStatus { name: p.path.display().to_string(), position: Some(p.offset), lines: p.lines, open: p.open })
                .collect(),
        )
    }
}

impl LineSource for journal::Journal {
    fn name(&self) -> String {
        "journal".into()
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
