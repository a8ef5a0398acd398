//! Logging: standard error by default, syslog (facility mail) with --debug-to-syslog.
//!
//! `--debug` levels (the old daemon's 0-3): 0 bans, unbans and warnings; 1 adds the
//! daemon's decisions; 2 adds every guess and session event; 3 adds everything,
//! including aya's. `RUST_LOG` overrides.
use std::sync::atomic::{AtomicBool, Ordering};

static TO_SYSLOG: AtomicBool = AtomicBool::new(false);

pub fn init(debug: u8, to_syslog: bool) {
    let (ours, others) = match debug {
        0 => (log::LevelFilter::Info, log::LevelFilter::Warn),
        1 => (log::LevelFilter::Debug, log::LevelFilter::Warn),
        2 => (log::LevelFilter::Trace, log::LevelFilter::Info),
        _ => (log::LevelFilter::Trace, log::LevelFilter::Trace),
    };
    if to_syslog {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_MAIL,
            hostname: None,
            process: "blocksmtp".into(),
            pid: std::process::id(),
        };
        match syslog::unix(formatter) {
            Ok(logger) => {
                let max = ours.max(others);
                if log::set_boxed_logger(Box::new(syslog::BasicLogger::new(logger))).is_ok() {
                    log::set_max_level(max);
                    TO_SYSLOG.store(true, Ordering::Relaxed);
                    return;
                }
            }
            Err(e) => eprintln!("blocksmtp: no syslog ({e}); logging to standard error"),
        }
    }
    let mut b = env_logger::Builder::new();
    b.filter_level(others).filter_module("blocksmtp", ours).format_target(false);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    let _ = b.try_init();
}

/// Whether logs go to syslog (errors are then echoed on standard error too).
pub fn to_syslog() -> bool {
    TO_SYSLOG.load(Ordering::Relaxed)
}

/// At most one message per `every` for a repeating condition; the next one says how many
/// were left out. `hit` returns `Some(suppressed)` when a message should be written.
#[derive(Debug)]
pub struct RateLimit {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(every: std::time::Duration) -> Self {
        Self { every, last: None, suppressed: 0 }
    }

    pub fn hit(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }

    /// `" (N more like it not logged)"` when some were left out.
    pub fn suffix(suppressed: u64) -> String {
        if suppressed == 0 { String::new() } else { format!(" ({suppressed} more like it not logged)") }
    }
}
