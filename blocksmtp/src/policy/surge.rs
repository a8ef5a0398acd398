//! Evidence of the moment: a surge of unknown recipients far above the host's own
//! baseline. During a surge, sources with no history of valid mail (neither the
//! address nor its network delivered any) are judged more strictly. The baseline is
//! an average over past windows (about two hours' worth), not raised by a surge
//! itself; the rate is the current window plus the overlapping part of the previous.
use serde::{Deserialize, Serialize};

use super::memory::{Bounded, Key};

/// Persisted in the state file as it is: a restart keeps the baseline and a surge on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Surge {
    bucket_start: u32,
    cur: u32,
    prev: u32,
    /// Unknown-recipient guesses per window (from sources without valid mail), averaged.
    baseline: f64,
    active: bool,
    /// Times a surge began.
    pub surges: u64,
}

/// Weight of a finished window in the average (about 12 windows: two hours at 10m).
const ALPHA: f64 = 1.0 / 12.0;

impl Surge {
    /// Count `count` guesses at `at` (unix seconds); windows of `window` seconds.
    pub fn note(&mut self, at: u32, count: u32, window: u32, factor: u32, min: u32) {
        let window = window.max(1);
        if self.bucket_start == 0 {
            self.bucket_start = at;
        }
        while at >= self.bucket_start.saturating_add(window) {
            // A finished window joins the baseline, a surge's only up to the surge
            // threshold: a lasting new level becomes normal, a short surge barely moves it.
            let seen = f64::from(self.cur).min(self.threshold(factor, min));
            self.baseline += (seen - self.baseline) * ALPHA;
            self.prev = self.cur;
            self.cur = 0;
            self.bucket_start = self.bucket_start.saturating_add(window);
            if self.prev == 0 && at >= self.bucket_start.saturating_add(window) {
                // A long quiet gap: jump, decaying the baseline once per skipped window (bounded).
                let skipped = (at - self.bucket_start) / window;
                self.baseline *= (1.0 - ALPHA).powi(skipped.min(1000) as i32);
                self.bucket_start = self.bucket_start.saturating_add(skipped.saturating_mul(window));
            }
            // At the end of u32 time (a hostile or broken timestamp) windows cannot roll
            // further: stay in the last one rather than loop or overflow.
            if self.bucket_start.checked_add(window).is_none() {
                break;
            }
        }
        self.cur = self.cur.saturating_add(count);
        let was = self.active;
        self.active = self.rate(at, window) >= self.threshold(factor, min);
        if self.active && !was {
            self.surges += 1;
        }
    }

    fn rate(&self, at: u32, window: u32) -> f64 {
        let into = f64::from(at.saturating_sub(self.bucket_start)) / f64::from(window);
        f64::from(self.cur) + f64::from(self.prev) * (1.0 - into.clamp(0.0, 1.0))
    }

    fn threshold(&self, factor: u32, min: u32) -> f64 {
        (self.baseline * f64::from(factor)).max(f64::from(min))
    }

    /// Whether a surge is on (as of the last guess counted).
    pub fn active(&self) -> bool {
        self.active
    }

    #[cfg(test)]
    pub fn baseline(&self) -> f64 {
        self.baseline
    }
}

/// Who sends valid mail: addresses and networks with accepted mail (the MTA's
/// `client=` / `nrcpts=N` lines), remembered for `--memory`.
#[derive(Debug)]
pub(super) struct Reputation {
    pub addrs: Bounded<()>,
    pub nets: Bounded<()>,
}

impl Reputation {
    /// At most `cap` senders (and a quarter as many networks), each for `memory` seconds.
    pub fn new(cap: usize, memory: u32) -> Self {
        Self { addrs: Bounded::new(cap, memory), nets: Bounded::new(cap / 4, memory) }
    }

    pub fn set_memory(&mut self, memory: u32) {
        self.addrs.set_max_age(memory);
        self.nets.set_max_age(memory);
    }

    pub fn note(&mut self, addr: Key, net: Key, at: u32) {
        self.addrs.touch(addr, at);
        self.nets.touch(net, at);
    }

    /// Whether the address itself delivered valid mail.
    pub fn address_good(&self, addr: Key, now: u32) -> bool {
        self.addrs.get(&addr, now).is_some()
    }

    /// Whether any address of the network delivered valid mail.
    pub fn network_good(&self, net: Key, now: u32) -> bool {
        self.nets.get(&net, now).is_some()
    }

    pub fn len(&self) -> usize {
        self.addrs.len() + self.nets.len()
    }

    pub fn expire(&mut self, now: u32) {
        self.addrs.expire(now);
        self.nets.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_at_the_end_of_u32_time_neither_overflow_nor_loop() {
        let mut s = Surge::default();
        for at in [u32::MAX - 700, u32::MAX - 1, u32::MAX, u32::MAX] {
            s.note(at, 3, 600, 4, 8);
        }
        let mut s = Surge::default();
        s.note(1_800_000_000, 1, 600, 4, 8);
        s.note(u32::MAX, 1, 600, 4, 8);
        assert!(!s.active());
    }

    #[test]
    fn surge_table() {
        // (guesses per minute for each minute) → is a surge on at the end? Window 600 s,
        // factor 4, minimum 12.
        let quiet: Vec<u32> = (0..240).map(|m| u32::from(m % 5 == 0)).collect(); // 2 per window
        let cases: Vec<(Vec<u32>, bool)> = vec![
            (quiet.clone(), false),
            // Twenty in two minutes after a quiet morning.
            ([quiet.clone(), vec![10, 10]].concat(), true),
            // The same twenty spread over an hour.
            ([quiet.clone(), vec![0, 0, 1, 0, 0, 0]].concat().repeat(1).into_iter().chain(std::iter::repeat_n(0, 0)).collect(), false),
            // A busy host: 30 per window is its normal; 40 is no surge, 200 is.
            ((0..240).map(|_| 3).chain([4; 10]).collect(), false),
            ((0..240).map(|_| 3).chain([20; 10]).collect(), true),
        ];
        for (i, (per_minute, want)) in cases.iter().enumerate() {
            let mut s = Surge::default();
            for (m, n) in per_minute.iter().enumerate() {
                for k in 0..*n {
                    s.note(1_800_000_000 + m as u32 * 60 + k, 1, 600, 4, 12);
                }
                if *n == 0 {
                    s.note(1_800_000_000 + m as u32 * 60, 0, 600, 4, 12);
                }
            }
            assert_eq!(s.active(), *want, "case {i}: baseline {}", s.baseline());
        }
    }

    #[test]
    fn reputation() {
        let mut r = Reputation::new(64, 3600);
        r.note(1, 100, 0);
        assert!(r.address_good(1, 3600) && r.network_good(100, 3600));
        assert!(!r.address_good(2, 0) && !r.network_good(200, 0));
        assert!(!r.address_good(1, 3601) && !r.network_good(100, 3601), "forgotten after its memory");
        r.expire(3601 + 3600 / 8);
        assert_eq!(r.len(), 0);
    }
}
