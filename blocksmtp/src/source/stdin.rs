//! Lines from standard input (`blocksmtp run --stdin`, or a pipe from another tool),
//! and the async line reader that [`super::journal`] shares (both on [`Splitter`]).
use std::{path::Path, sync::Arc};

use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::{LogLine, split::Splitter};

/// Reads `\n`-terminated lines from any async reader, as bytes, cutting lines longer
/// than `max_line` (the rest up to the newline is dropped and the line is marked
/// truncated) so that memory stays bounded whatever the input. Cancel-safe: the bytes
/// read so far live in the splitter, not in the future.
pub struct LineReader<R> {
    reader: R,
    split: Splitter,
    source: Arc<Path>,
    eof: bool,
    lines: u64,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, source: impl AsRef<Path>, max_line: usize) -> Self {
        Self { reader: inner, split: Splitter::new(max_line), source: Arc::from(source.as_ref()), eof: false, lines: 0 }
    }

    /// The next line; `None` at end of input. A last line without `\n` is delivered.
    pub async fn next(&mut self) -> std::io::Result<Option<LogLine>> {
        loop {
            let next = match self.split.next_line() {
                Some((r, truncated)) => Some((r, truncated)),
                None if self.eof => self.split.rest().map(|r| (r, false)),
                None => {
                    let n = self.reader.read(self.split.spare()).await?;
                    if n == 0 {
                        self.eof = true;
                    }
                    self.split.filled(n);
                    continue;
                }
            };
            return Ok(next.map(|(r, truncated)| {
                self.lines += 1;
                LogLine { source: self.source.clone(), line: self.split.slice(r).to_vec(), truncated }
            }));
        }
    }

    /// Lines delivered, and how many of them were cut.
    pub fn counts(&self) -> (u64, u64) {
        (self.lines, self.split.truncated())
    }
}

/// Standard input as a log source; lines are tagged with the path `-`.
pub type StdinLines = LineReader<tokio::io::Stdin>;

/// Lines from this process's standard input.
pub fn stdin_lines() -> StdinLines {
    LineReader::new(tokio::io::stdin(), "-", 1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_bytes_cut_and_last_line() {
        let input: &[u8] = b"one\r\n\xff two\n\nxxxxxxxxxxxxxxxxxxxxyy\nlast";
        let mut r = LineReader::new(input, "-", 10);
        let mut got = Vec::new();
        while let Some(l) = r.next().await.unwrap() {
            assert_eq!(&*l.source, Path::new("-"));
            got.push((l.line, l.truncated));
        }
        assert_eq!(
            got,
            vec![
                (b"one\r".to_vec(), false),
                (b"\xff two".to_vec(), false),
                (b"".to_vec(), false),
                (b"xxxxxxxxxx".to_vec(), true),
                (b"last".to_vec(), false),
            ]
        );
        assert_eq!(r.counts(), (5, 1));
    }

    #[tokio::test]
    async fn long_line_across_reads_stays_bounded() {
        let big = vec![b'a'; 3 << 20];
        let mut input = big.clone();
        input.extend(b"\nok\n");
        let mut r = LineReader::new(&input[..], "-", 1 << 20);
        let l = r.next().await.unwrap().unwrap();
        assert!(l.truncated);
        assert_eq!(l.line.len(), 1 << 20);
        assert_eq!(r.next().await.unwrap().unwrap().line, b"ok");
        assert!(r.next().await.unwrap().is_none());
    }
}
