//! The one line splitter every reader shares (whole files for replay, followed files,
//! standard input, the journal): bytes in, `\n`-terminated lines out, without allocation
//! per line and within bounded memory.
//!
//! A reader reads into [`Splitter::spare`], reports how much with
//! [`Splitter::filled`], then takes lines with [`Splitter::next`] until it answers
//! `None`. Lines are ranges of the internal buffer, valid until the next `spare`. A line
//! longer than `max_line` is handed out once, cut to `max_line` bytes and marked
//! truncated; the rest of it, up to its newline, is dropped. At the end of an input (or
//! when a followed file is left) [`Splitter::rest`] gives the unterminated last line.
//! The state lives here, not in a pending future: readers built on it are cancel-safe.
use std::ops::Range;

/// Buffer to start with; grown (up to `max_line` plus room to read) only for long lines,
/// and shrunk back when it empties.
pub const INITIAL_BUFFER: usize = 64 * 1024;

#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    initial: usize,
    cap: usize,
    start: usize,
    end: usize,
    /// Bytes before this, from `start`, hold no newline.
    scanned: usize,
    /// Dropping the rest of an overlong line.
    discarding: bool,
    max_line: usize,
    truncated: u64,
}

impl Splitter {
    /// A splitter cutting lines at `max_line` bytes (at least 1).
    pub fn new(max_line: usize) -> Self {
        Self::with_buffer(max_line, INITIAL_BUFFER)
    }

    /// As [`Self::new`], starting with an `initial`-byte buffer (bulk readers read more at once).
    pub fn with_buffer(max_line: usize, initial: usize) -> Self {
        let max_line = max_line.max(1);
        let initial = initial.max(4096);
        // Always room for a whole line of max_line plus a read of at least `initial`.
        let cap = (max_line + 1 + initial).next_power_of_two();
        Self { buf: Vec::new(), initial, cap, start: 0, end: 0, scanned: 0, discarding: false, max_line, truncated: 0 }
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Lines cut at `max_line` so far.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// Room to read into (never empty). Moves pending bytes to the front first.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
            if self.buf.len() > self.initial {
                self.buf.truncate(self.initial);
                self.buf.shrink_to_fit();
            }
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
        }
        if self.buf.is_empty() {
            self.buf.resize(self.initial, 0);
        } else if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).min(self.cap).max(self.end + 1);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Self::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next line (without its `\n`) and whether it was cut; `None` until more is read.
    pub fn next(&mut self) -> Option<(Range<usize>, bool)> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..self.end]) {
                let nl = self.scanned + i;
                let line = self.start..nl;
                self.start = nl + 1;
                self.scanned = self.start;
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                if line.len() > self.max_line {
                    self.truncated += 1;
                    return Some((line.start..line.start + self.max_line, true));
                }
                return Some((line, false));
            }
            self.scanned = self.end;
            if self.end - self.start > self.max_line {
                // An overlong line: hand out its head once, skip the rest.
                let head = self.start..self.start + self.max_line;
                self.start = self.end;
                if !self.discarding {
                    self.discarding = true;
                    self.truncated += 1;
                    return Some((head, true));
                }
            }
            return None;
        }
    }

    /// At the end of the input: the unterminated last line, if any. The splitter is then
    /// empty and ready for another input.
    pub fn rest(&mut self) -> Option<Range<usize>> {
        let r = (self.start < self.end && !self.discarding).then(|| self.start..self.end);
        self.start = self.end;
        self.scanned = self.end;
        self.discarding = false;
        r
    }

    /// The bytes of a range from [`Self::next`] or [`Self::rest`].
    pub fn slice(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in chunks of `step` bytes; collect (line, truncated).
    fn split(input: &[u8], max_line: usize, step: usize) -> (Vec<(Vec<u8>, bool)>, u64) {
        let mut s = Splitter::with_buffer(max_line, 4096);
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let room = s.spare();
            let n = room.len().min(step).min(rest.len());
            room[..n].copy_from_slice(&rest[..n]);
            s.filled(n);
            rest = &rest[n..];
            while let Some((r, t)) = s.next() {
                out.push((s.slice(r).to_vec(), t));
            }
        }
        if let Some(r) = s.rest() {
            out.push((s.slice(r).to_vec(), false));
        }
        (out, s.truncated())
    }

    #[test]
    fn lines_cut_and_last_line_whatever_the_chunking() {
        let mut input = b"one\r\n\xff two\n\n".to_vec();
        input.extend(vec![b'x'; 10_000]);
        input.extend(b"\nlast");
        for step in [1, 3, 7, 100, 4096, 1 << 20] {
            let (lines, truncated) = split(&input, 10, step);
            assert_eq!(
                lines,
                vec![
                    (b"one\r".to_vec(), false),
                    (b"\xff two".to_vec(), false),
                    (b"".to_vec(), false),
                    (b"xxxxxxxxxx".to_vec(), true),
                    (b"last".to_vec(), false),
                ],
                "step {step}"
            );
            assert_eq!(truncated, 1);
        }
    }

    #[test]
    fn memory_stays_bounded_and_shrinks_back() {
        let mut s = Splitter::with_buffer(1000, 4096);
        // A newline-free stream of 10 MB.
        for _ in 0..10_000 {
            let room = s.spare();
            let n = room.len().min(1000);
            room[..n].fill(b'a');
            s.filled(n);
            while s.next().is_some() {}
            assert!(s.buf.len() <= s.cap, "{}", s.buf.len());
        }
        assert_eq!(s.truncated(), 1);
        let room = s.spare();
        room[0] = b'\n';
        s.filled(1);
        assert_eq!(s.next(), None, "the cut line's rest is dropped");
        s.spare();
        assert!(s.buf.len() <= 4096, "shrunk when empty: {}", s.buf.len());
    }
}
