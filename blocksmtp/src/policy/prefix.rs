//! Evidence of a network: guesses from many addresses of one prefix (IPv4 /24, IPv6
//! /48 by default), each address staying under the per-address threshold. Counted per
//! network over `--prefix-window`: guesses and distinct sources (IPv4 addresses, IPv6
//! /64s), with thresholds of their own.
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::memory::{Bounded, Key};

/// Guesses held per network: beyond this the oldest go (a network past it has long
/// crossed any sane threshold).
const ENTRIES: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct NetWindow {
    /// (unix seconds, source key folded to 32 bits, guesses)
    entries: VecDeque<(u32, u32, u16)>,
}

/// A network's count within the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PrefixCount {
    pub guesses: u32,
    pub addrs: u16,
    pub first: u32,
}

#[derive(Debug)]
pub(super) struct Prefixes {
    pub nets: Bounded<NetWindow>,
}

fn fold(k: Key) -> u32 {
    let x = (k ^ (k >> 64)) as u64;
    ((x ^ (x >> 32)) as u32).max(1)
}

impl Prefixes {
    /// At most `cap` networks; a network idle for a whole `window` (seconds) starts afresh.
    pub fn new(cap: usize, window: u32) -> Self {
        Self { nets: Bounded::new(cap, window) }
    }

    pub fn set_window(&mut self, window: u32) {
        self.nets.set_max_age(window);
    }

    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// Count `count` guesses of source `src` in network `net` at `at` (unix seconds),
    /// within the window.
    pub fn add(&mut self, net: Key, src: Key, at: u32, count: u32) -> PrefixCount {
        let cutoff = at.saturating_sub(self.nets.max_age());
        let w = self.nets.touch(net, at);
        w.entries.push_back((at, fold(src), u16::try_from(count).unwrap_or(u16::MAX)));
        w.entries.retain(|e| e.0 >= cutoff);
        while w.entries.len() > ENTRIES {
            w.entries.pop_front();
        }
        let mut srcs: Vec<u32> = w.entries.iter().map(|e| e.1).collect();
        srcs.sort_unstable();
        srcs.dedup();
        PrefixCount {
            guesses: w.entries.iter().map(|e| u32::from(e.2)).sum(),
            addrs: srcs.len() as u16,
            first: w.entries.iter().map(|e| e.0).min().unwrap_or(at),
        }
    }

    /// `src` was banned on its own: it is answered, and its guesses no longer speak for
    /// its network (a network ban is for harvesters that each stay under the
    /// per-address threshold, not for neighbours of harvesters already cut off).
    pub fn answered(&mut self, net: Key, src: Key) {
        let src = fold(src);
        if let Some(w) = self.nets.get_mut(&net) {
            w.entries.retain(|e| e.1 != src);
        }
    }

    /// Start the network's count afresh (after its ban).
    pub fn forget(&mut self, net: Key) {
        self.nets.remove(&net);
    }

    pub fn expire(&mut self, now: u32) {
        self.nets.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_table() {
        // (source, at) guesses in one network → (guesses, distinct sources), window 3600 s.
        type Case<'a> = (&'a [(u128, u32)], (u32, u16));
        let cases: &[Case] = &[
            (&[(1, 0)], (1, 1)),
            (&[(1, 0), (1, 10)], (2, 1)),
            (&[(1, 0), (2, 10), (3, 20), (3, 30)], (4, 3)),
            // The first two fall out of the window.
            (&[(1, 0), (2, 10), (3, 4000), (4, 4001)], (2, 2)),
        ];
        for (guesses, want) in cases {
            let mut p = Prefixes::new(16, 3600);
            let mut last = None;
            for (src, at) in *guesses {
                last = Some(p.add(7, *src, *at, 1));
            }
            let c = last.unwrap();
            assert_eq!((c.guesses, c.addrs), *want, "{guesses:?}");
        }
        let mut p = Prefixes::new(16, 3600);
        for i in 0..500u32 {
            p.add(7, u128::from(i), i, 1);
        }
        let c = p.add(7, 1, 500, 1);
        assert_eq!(c.guesses as usize, ENTRIES, "bounded per network");
        p.forget(7);
        assert_eq!(p.add(7, 1, 501, 1).guesses, 1);
        // An address banned on its own leaves its network's count.
        let mut p = Prefixes::new(16, 3600);
        for (src, at) in [(1u128, 0u32), (1, 1), (2, 2), (3, 3)] {
            p.add(7, src, at, 1);
        }
        p.answered(7, 1);
        assert_eq!(p.add(7, 4, 4, 1), PrefixCount { guesses: 3, addrs: 3, first: 2 });
    }
}
