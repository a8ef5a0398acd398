//! Evidence of one source alone: its guesses in the sliding `--window` (today's rule,
//! `--max-unknown` guesses ban).
use std::{
    collections::VecDeque,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{correlate::Attributed, parse::GuessKind};

#[derive(Debug)]
pub(super) struct Entry {
    pub at: SystemTime,
    pub kind: GuessKind,
    pub count: u32,
    pub sample: Option<crate::correlate::Sample>,
}

/// One source's guesses within the window (at most `max_unknown` entries are held).
#[derive(Debug)]
pub(super) struct Tracker {
    pub entries: VecDeque<Entry>,
    pub in_window: u32,
    pub latest: SystemTime,
}

/// What adding a guess did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Added {
    /// Older than the window relative to the source's newest guess: not counted.
    TooOld,
    /// Counted; the guesses now in the window.
    InWindow(u32),
}

impl Tracker {
    pub fn new(at: SystemTime) -> Self {
        Self { entries: VecDeque::new(), in_window: 0, latest: at }
    }

    pub fn add(&mut self, g: &Attributed, window: Duration) -> Added {
        let at = g.at;
        self.latest = self.latest.max(at);
        let cutoff = self.latest.checked_sub(window).unwrap_or(UNIX_EPOCH);
        if at < cutoff {
            return Added::TooOld;
        }
        self.entries.push_back(Entry { at, kind: g.kind, count: g.count, sample: g.sample.clone() });
        self.in_window = self.in_window.saturating_add(g.count);
        // Drop entries now outside the window.
        let mut removed = 0;
        self.entries.retain(|e| {
            let keep = e.at >= cutoff;
            if !keep {
                removed += e.count;
            }
            keep
        });
        self.in_window -= removed;
        Added::InWindow(self.in_window)
    }

    /// The window's guesses by kind: unknown recipients, VRFY, EXPN.
    pub fn kinds(entries: &[Entry]) -> [u16; 3] {
        let mut kinds = [0u16; 3];
        for e in entries {
            kinds[kind_index(e.kind)] = kinds[kind_index(e.kind)].saturating_add(u16::try_from(e.count).unwrap_or(u16::MAX));
        }
        kinds
    }
}

pub(super) fn kind_index(k: GuessKind) -> usize {
    match k {
        GuessKind::UnknownRecipient => 0,
        GuessKind::Vrfy => 1,
        GuessKind::Expn => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Mta;

    fn g(at: u64, count: u32) -> Attributed {
        Attributed {
            client: "192.0.2.66".parse().unwrap(),
            kind: GuessKind::UnknownRecipient,
            mta: Mta::Postfix,
            at: UNIX_EPOCH + Duration::from_secs(1_800_000_000 + at),
            count,
            sample: None,
        }
    }

    #[test]
    fn window_table() {
        // (guess time, count) in order → expected result, window 600 s.
        let cases: &[(&[(u64, u32)], Added)] = &[
            (&[(0, 1)], Added::InWindow(1)),
            (&[(0, 1), (599, 1)], Added::InWindow(2)),
            (&[(0, 1), (601, 1)], Added::InWindow(1)),
            (&[(0, 3), (10, 2)], Added::InWindow(5)),
            (&[(1000, 1), (100, 1)], Added::TooOld),
            (&[(1000, 1), (500, 1)], Added::InWindow(2)),
        ];
        for (guesses, want) in cases {
            let mut t = Tracker::new(g(guesses[0].0, 1).at);
            let mut last = Added::TooOld;
            for (at, n) in *guesses {
                last = t.add(&g(*at, *n), Duration::from_secs(600));
            }
            assert_eq!(&last, want, "{guesses:?}");
        }
    }
}
