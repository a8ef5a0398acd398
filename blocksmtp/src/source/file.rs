//! Reading a log file line by line: plain files, gzip-compressed files (rotated
//! `mail.log.2.gz`, recognised by their magic bytes, several members allowed) and `-`
//! for standard input.
//!
//! Lines are handed out as byte slices of the shared [`Splitter`]'s buffer — no
//! allocation per line, no UTF-8 requirement. A line longer than
//! [`LineReader::max_line`] is cut there (the first `max_line` bytes are returned once,
//! the rest of it is skipped), so a newline-free stream cannot make memory grow without
//! bound.
use std::{
    fs::File,
    io::{self, Read},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use flate2::read::MultiGzDecoder;

use super::split::Splitter;

/// Default longest line kept whole: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;
const MIN_BUFFER: usize = 256 * 1024;

/// Where lines come from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    /// `-` is standard input; anything else a path.
    pub fn from_arg(p: &Path) -> Self {
        if p.as_os_str() == "-" { Input::Stdin } else { Input::File(p.to_path_buf()) }
    }
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Stdin => f.write_str("standard input"),
            Input::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Where an input's bytes come from.
enum Source {
    /// A plain file or standard input: blocks are read straight into the caller's
    /// buffer, one `read` each (`read_to_end` through a `dyn Read` restarted at 8 KiB
    /// every call: 16 syscalls a block).
    Fd(File),
    /// Anything else: gzip-compressed data, a reader given by a caller.
    Reader(Box<dyn Read + Send>),
}

impl Source {
    /// Append up to `want` bytes to `out` (at least one unless at the end).
    fn read_into(&mut self, out: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        match self {
            Source::Fd(f) => {
                out.reserve(want);
                loop {
                    match rustix::io::read(&*f, rustix::buffer::spare_capacity(out)) {
                        Ok(n) => return Ok(n),
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Source::Reader(r) => (&mut **r).take(want as u64).read_to_end(out),
        }
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Fd(f) => f.read(buf),
            Source::Reader(r) => r.read(buf),
        }
    }
}

/// Lines of one input.
pub struct LineReader {
    src: Source,
    /// Bytes read to tell gzip from plain text, not yet handed out.
    head: Vec<u8>,
    split: Splitter,
    eof: bool,
    gzip: bool,
}

impl std::fmt::Debug for LineReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader").field("gzip", &self.gzip).field("truncated", &self.split.truncated()).finish_non_exhaustive()
    }
}

impl LineReader {
    /// Open `input` (a file, or standard input).
    pub fn open(input: &Input) -> io::Result<Self> {
        match input {
            // Standard input's descriptor itself: nothing has been read through
            // io::stdin()'s buffer.
            Input::Stdin => Self::of_file(File::from(io::stdin().as_fd().try_clone_to_owned()?), DEFAULT_MAX_LINE),
            Input::File(p) => {
                let f = File::open(p)?;
                if f.metadata()?.is_dir() {
                    return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
                }
                Self::of_file(f, DEFAULT_MAX_LINE)
            }
        }
    }

    fn of_file(f: File, max_line: usize) -> io::Result<Self> {
        Self::sniffed(f, max_line, Source::Fd)
    }

    /// Lines of `r`, decompressed if its first bytes are gzip's magic; plain data is
    /// read through `plain(r)`.
    fn sniffed<R: Read + Send + 'static>(mut r: R, max_line: usize, plain: impl FnOnce(R) -> Source) -> io::Result<Self> {
        let head = peek_head(&mut r)?;
        let gzip = is_gzip(&head);
        let (src, head) = if gzip {
            (Source::Reader(Box::new(MultiGzDecoder::new(io::Cursor::new(head).chain(r)))), Vec::new())
        } else {
            (plain(r), head)
        };
        Ok(Self { src, head, split: Splitter::with_buffer(max_line, MIN_BUFFER), eof: false, gzip })
    }

    /// Lines of any reader; gzip data is decompressed.
    pub fn new(r: impl Read + Send + 'static) -> io::Result<Self> {
        Self::with_max_line(r, DEFAULT_MAX_LINE)
    }

    /// As [`Self::new`] with a chosen longest line (at least 1 byte).
    pub fn with_max_line(r: impl Read + Send + 'static, max_line: usize) -> io::Result<Self> {
        Self::sniffed(r, max_line, |r| Source::Reader(Box::new(r)))
    }

    /// Whether the input was gzip-compressed.
    pub fn is_gzip(&self) -> bool {
        self.gzip
    }

    pub fn max_line(&self) -> usize {
        self.split.max_line()
    }

    /// Lines cut at `max_line` so far.
    pub fn truncated(&self) -> u64 {
        self.split.truncated()
    }

    /// The next line without its `\n`, or `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            if let Some((line, _)) = self.split.next_line() {
                return Ok(Some(self.split.slice(line)));
            }
            if self.eof {
                return Ok(self.split.rest().map(|r| self.split.slice(r)));
            }
            if !self.head.is_empty() {
                let n = self.head.len();
                self.split.spare()[..n].copy_from_slice(&self.head);
                self.split.filled(n);
                self.head.clear();
                continue;
            }
            match self.src.read(self.split.spare()) {
                Ok(0) => self.eof = true,
                Ok(k) => self.split.filled(k),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The first bytes of an input, enough to tell gzip's magic.
fn peek_head(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 2];
    let mut n = 0;
    while n < 2 {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(head[..n].to_vec())
}

fn is_gzip(head: &[u8]) -> bool {
    head == [0x1f, 0x8b]
}

/// Bytes a [`Blocks`] reader aims at per block. 256 KiB (about 2,000 lines): the
/// in-order thread starts sooner and the last block drains sooner than with 1 MiB (a
/// 300,000-line replay 8% faster on two CPUs; 128 KiB and less cost more per block).
pub const BLOCK: usize = 1 << 18;

/// An input read in blocks of whole lines, for parsing on several threads: each block
/// ends at a newline (the last one of an input may not). A line longer than
/// `max_line` with no newline in sight is cut here as [`LineReader`] cuts it (its head,
/// then a newline, the rest dropped); longer lines inside a block are left for the
/// consumer to cut at `max_line` ([`block_lines`]).
pub struct Blocks {
    src: Source,
    max_line: usize,
    carry: Vec<u8>,
    discarding: bool,
    eof: bool,
    truncated: u64,
    /// This block's size: small at first, so that the consumer starts on the first
    /// block early, doubling up to [`BLOCK`].
    size: usize,
}

/// The first block's size.
const FIRST_BLOCK: usize = 1 << 14;

impl LineReader {
    /// Read the rest of the input in blocks (nothing must have been read as lines yet).
    pub fn into_blocks(self) -> Blocks {
        Blocks {
            src: self.src,
            max_line: self.split.max_line(),
            carry: self.head,
            discarding: false,
            eof: false,
            truncated: 0,
            size: FIRST_BLOCK,
        }
    }
}

impl Blocks {
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Lines this reader cut (those cut by [`block_lines`] are counted there).
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// Fill `out` with the next block; `false` at the end of the input.
    pub fn next_block(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        out.append(&mut self.carry);
        let mut last_nl = memchr::memrchr(b'\n', out);
        loop {
            if self.discarding {
                match memchr::memchr(b'\n', out) {
                    Some(i) => {
                        out.drain(..=i);
                        self.discarding = false;
                        last_nl = memchr::memrchr(b'\n', out);
                        continue;
                    }
                    None => {
                        out.clear();
                        last_nl = None;
                    }
                }
            } else if let Some(nl) = last_nl
                && out.len() >= self.size
            {
                self.carry.extend_from_slice(&out[nl + 1..]);
                out.truncate(nl + 1);
                self.size = (self.size * 2).min(BLOCK);
                return Ok(true);
            } else if last_nl.is_none() && out.len() > self.max_line {
                // One line longer than max_line and no end in sight: its head, once.
                out.truncate(self.max_line);
                out.push(b'\n');
                self.truncated += 1;
                self.discarding = true;
                return Ok(true);
            }
            if self.eof {
                let any = !out.is_empty() && !self.discarding;
                if !any {
                    out.clear();
                }
                return Ok(any);
            }
            let n0 = out.len();
            // The rest of the block in one read; past its size (a long line) a quarter.
            match self.src.read_into(out, self.size.saturating_sub(n0).max(self.size / 4)) {
                Ok(0) => self.eof = true,
                Ok(_) => {
                    if let Some(i) = memchr::memrchr(b'\n', &out[n0..]) {
                        last_nl = Some(n0 + i);
                    }
                }
                Err(e) => {
                    out.truncate(n0);
                    return Err(e);
                }
            }
        }
    }
}

/// The lines of a block from [`Blocks::next_block`], each without its `\n` and cut at
/// `max_line` (`cut` counts those), as [`LineReader::next_line`] hands them out.
pub fn block_lines<'a>(block: &'a [u8], max_line: usize, cut: &'a mut u64) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = block;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        if line.len() > max_line {
            *cut += 1;
            return Some(&line[..max_line]);
        }
        Some(line)
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::{Compression, write::GzEncoder};

    use super::*;

    fn lines(mut r: LineReader) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            v.push(l.to_vec());
        }
        v
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn plain_lines_with_and_without_final_newline() {
        let r = LineReader::new(io::Cursor::new(b"a\nbb\n\nccc".to_vec())).unwrap();
        assert_eq!(lines(r), vec![b"a".to_vec(), b"bb".to_vec(), vec![], b"ccc".to_vec()]);
        let r = LineReader::new(io::Cursor::new(b"a\n".to_vec())).unwrap();
        assert_eq!(lines(r), vec![b"a".to_vec()]);
        assert!(lines(LineReader::new(io::empty()).unwrap()).is_empty());
        let r = LineReader::new(io::Cursor::new(b"x".to_vec())).unwrap();
        assert_eq!(lines(r), vec![b"x".to_vec()]);
    }

    #[test]
    fn gzip_single_and_multi_member() {
        let mut data = gz(b"one\ntwo\n");
        data.extend(gz(b"three\n"));
        let r = LineReader::new(io::Cursor::new(data)).unwrap();
        assert!(r.is_gzip());
        assert_eq!(lines(r), vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        // Corrupt gzip is an error, not a hang.
        let mut bad = gz(b"one\ntwo\n");
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        bad.truncate(n - 4);
        let mut r = LineReader::new(io::Cursor::new(bad)).unwrap();
        let mut err = false;
        for _ in 0..10 {
            match r.next_line() {
                Err(_) => {
                    err = true;
                    break;
                }
                Ok(None) => break,
                Ok(Some(_)) => {}
            }
        }
        assert!(err);
    }

    #[test]
    fn overlong_lines_are_cut_and_binary_passes() {
        let mut data = vec![b'x'; 10_000];
        data.push(b'\n');
        data.extend_from_slice(b"\x00\xff\xfe\n");
        data.extend(std::iter::repeat_n(b'y', 5000));
        let r = LineReader::with_max_line(io::Cursor::new(data), 100).unwrap();
        let v = lines(r);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], vec![b'x'; 100]);
        assert_eq!(v[1], b"\x00\xff\xfe");
        assert_eq!(v[2], vec![b'y'; 100]);
    }

    #[test]
    fn lines_across_buffer_refills() {
        // Many lines of varied length spanning several buffer fills.
        let mut data = Vec::new();
        let mut want = Vec::new();
        for i in 0..100_000u32 {
            let l = format!("line {i} {}", "z".repeat((i % 97) as usize));
            data.extend_from_slice(l.as_bytes());
            data.push(b'\n');
            want.push(l.into_bytes());
        }
        let r = LineReader::new(io::Cursor::new(data)).unwrap();
        assert_eq!(lines(r), want);
    }

    /// Lines through blocks, as `lines` gives them, and the cut count.
    fn block_lines_of(r: LineReader) -> (Vec<Vec<u8>>, u64) {
        let mut b = r.into_blocks();
        let (mut v, mut cut, mut buf) = (Vec::new(), 0, Vec::new());
        while b.next_block(&mut buf).unwrap() {
            let max = b.max_line();
            v.extend(block_lines(&buf, max, &mut cut).map(<[u8]>::to_vec));
        }
        (v, cut + b.truncated())
    }

    #[test]
    fn blocks_give_the_same_lines() {
        let mut big = Vec::new();
        for i in 0..300_000u32 {
            big.extend_from_slice(format!("line {i} {}\n", "z".repeat((i % 97) as usize)).as_bytes());
        }
        let mut long = vec![b'x'; 3 * BLOCK];
        long.extend_from_slice(b"\nafter\n");
        long.extend(vec![b'y'; 150]);
        long.extend_from_slice(b"\n\nend");
        let cases: Vec<(Vec<u8>, usize)> = vec![
            (b"a\nbb\n\nccc".to_vec(), 100),
            (b"a\n".to_vec(), 100),
            (Vec::new(), 100),
            (b"x".to_vec(), 100),
            (b"\n\n".to_vec(), 100),
            (big, DEFAULT_MAX_LINE),
            (long.clone(), 100),
            (long.clone(), DEFAULT_MAX_LINE),
            (long[..3 * BLOCK].to_vec(), 100),
        ];
        for (data, max) in cases {
            let want = LineReader::with_max_line(io::Cursor::new(data.clone()), max).unwrap();
            let mut want_lines = Vec::new();
            let mut w = want;
            while let Some(l) = w.next_line().unwrap() {
                want_lines.push(l.to_vec());
            }
            let got = block_lines_of(LineReader::with_max_line(io::Cursor::new(data.clone()), max).unwrap());
            assert_eq!(got, (want_lines.clone(), w.truncated()), "{} bytes, max {max}", data.len());
            // A file is read by descriptor (straight into the block), as lines and as blocks.
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&data).unwrap();
            let file = |f: &File| {
                let mut f = f.try_clone().unwrap();
                io::Seek::rewind(&mut f).unwrap();
                LineReader::of_file(f, max).unwrap()
            };
            assert!(matches!(file(&f).src, Source::Fd(_)));
            assert_eq!(lines(file(&f)), want_lines, "file, {} bytes, max {max}", data.len());
            assert_eq!(block_lines_of(file(&f)), (want_lines, w.truncated()), "file blocks, {} bytes, max {max}", data.len());
            let got = block_lines_of(LineReader::with_max_line(io::Cursor::new(gz(&data)), max).unwrap());
            assert_eq!(got.0.len(), { let mut w = LineReader::with_max_line(io::Cursor::new(data.clone()), max).unwrap(); let mut n = 0; while w.next_line().unwrap().is_some() { n += 1 } n });
        }
    }

    #[test]
    fn files_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mail.log.2.gz");
        std::fs::write(&p, gz(b"hello\n")).unwrap();
        let r = LineReader::open(&Input::from_arg(&p)).unwrap();
        assert_eq!(lines(r), vec![b"hello".to_vec()]);
        assert!(LineReader::open(&Input::File(dir.path().join("missing"))).is_err());
        assert!(LineReader::open(&Input::File(dir.path().to_path_buf())).is_err());
        assert_eq!(Input::from_arg(Path::new("-")), Input::Stdin);
        assert_eq!(Input::Stdin.to_string(), "standard input");
    }
}
