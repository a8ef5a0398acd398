//! Evidence across rounds: a source's distinct unknown recipients over `--memory`,
//! not only within the window, so a harvester that makes two or three guesses per
//! round and comes back later is remembered; with it the recipients that hit the
//! harvest dictionary, and which of its names it has given to the dictionary.
use serde::{Deserialize, Serialize};

use super::{
    dictionary::Name,
    memory::{Bounded, Key},
};

/// Recipients remembered per source (beyond them only the count grows).
const SLOTS: usize = 4;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Suspect {
    names: [Name; SLOTS],
    /// Bit i: `names[i]` hit the dictionary; bit 8+i: given to the dictionary.
    bits: u16,
    /// Distinct unknown recipients (guesses without a name count one each).
    distinct: u16,
    dict_hits: u16,
}

impl Suspect {
    pub fn distinct(&self) -> u32 {
        self.distinct.into()
    }

    pub fn dict_hits(&self) -> u32 {
        self.dict_hits.into()
    }

    /// Names not yet given to the dictionary (marked given now).
    pub fn uncontributed(&mut self) -> Vec<Name> {
        let mut out = Vec::new();
        for i in 0..SLOTS {
            if self.names[i].local != 0 && self.bits & (1 << (8 + i)) == 0 {
                self.bits |= 1 << (8 + i);
                out.push(self.names[i]);
            }
        }
        out
    }
}

#[derive(Debug)]
pub(super) struct Suspects {
    pub map: Bounded<Suspect>,
}

impl Suspects {
    /// At most `cap` sources, each for `memory` seconds.
    pub fn new(cap: usize, memory: u32) -> Self {
        Self { map: Bounded::new(cap, memory) }
    }

    pub fn set_memory(&mut self, memory: u32) {
        self.map.set_max_age(memory);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Note `count` guesses of source `key` at `at`, of `name` when known; `in_dictionary`:
    /// the name is a harvest-dictionary name.
    pub fn note(&mut self, key: Key, at: u32, name: Option<Name>, count: u32, in_dictionary: bool) -> &mut Suspect {
        let s = self.map.touch(key, at);
        match name {
            Some(n) => {
                let w = n.whole();
                match s.names.iter().position(|m| m.local != 0 && m.whole() == w) {
                    Some(i) => {
                        // Known recipient; it may have joined the dictionary since.
                        if in_dictionary && s.bits & (1 << i) == 0 {
                            s.bits |= 1 << i;
                            s.dict_hits += 1;
                        }
                    }
                    None => {
                        s.distinct = s.distinct.saturating_add(1);
                        let slot = s.names.iter().position(|m| m.local == 0);
                        if let Some(i) = slot {
                            s.names[i] = n;
                            if in_dictionary {
                                s.bits |= 1 << i;
                            }
                        }
                        if in_dictionary {
                            s.dict_hits = s.dict_hits.saturating_add(1);
                        }
                    }
                }
            }
            None => s.distinct = s.distinct.saturating_add(u16::try_from(count).unwrap_or(u16::MAX)),
        }
        s
    }

    pub fn forget(&mut self, key: Key) {
        self.map.remove(&key);
    }

    pub fn expire(&mut self, now: u32) {
        self.map.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_and_dictionary_table() {
        // (recipient or None, in dictionary) guesses → (distinct, dictionary hits)
        type Case<'a> = (&'a [(Option<&'a str>, bool)], (u32, u32));
        let cases: &[Case] = &[
            (&[(Some("a@x.example"), false)], (1, 0)),
            // The same recipient again (a departed employee written to twice) is one.
            (&[(Some("a@x.example"), false), (Some("<A@X.example>"), false)], (1, 0)),
            (&[(Some("a@x.example"), false), (Some("b@x.example"), true)], (2, 1)),
            // The same name at two domains: two recipients, both dictionary hits.
            (&[(Some("john@a.example"), true), (Some("john@b.example"), true)], (2, 2)),
            // A recipient that joined the dictionary later counts once.
            (&[(Some("a@x.example"), false), (Some("a@x.example"), true), (Some("a@x.example"), true)], (1, 1)),
            // sendmail's flood top-up (no name, 3 guesses).
            (&[(None, false)], (1, 0)),
        ];
        for (guesses, want) in cases {
            let mut s = Suspects::new(16, 3600);
            let mut got = (0, 0);
            for (name, dict) in *guesses {
                let n = name.and_then(Name::of);
                let x = s.note(1, 0, n, 1, *dict);
                got = (x.distinct(), x.dict_hits());
            }
            assert_eq!(got, *want, "{guesses:?}");
        }
        let mut s = Suspects::new(16, 3600);
        s.note(1, 0, Name::of("a@x.example"), 1, false);
        s.note(1, 0, Name::of("b@x.example"), 1, false);
        let x = s.note(1, 0, None, 3, false);
        assert_eq!(x.distinct(), 5);
        assert_eq!(x.uncontributed().len(), 2);
        assert!(x.uncontributed().is_empty(), "given once");
    }
}
