//! Lines from standard input (`blocksmtp run --log -`, or a pipe from another tool),
//! and the bounded line reader that [`super::journal`] shares.
use std::{path::Path, sync::Arc};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::follow::LogLine;

/// Reads `\n`-terminated lines from any async reader, as bytes, cutting lines longer
/// than `max_line` (the rest up to the newline is dropped and the line is marked
/// truncated) so that memory stays bounded whatever the input.
pub struct LineReader<R> {
    reader: BufReader<R>,
    source: Arc<Path>,
    max_line: usize,
    lines: u64,
    truncated_lines: u64,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, source: impl AsRef<Path>, max_line: usize) -> Self {
        Self {
            reader: BufReader::with_capacity(64 * 1024, inner),
            source: Arc::from(source.as_ref()),
            max_line: max_line.max(1),
            lines: 0,
            truncated_lines: 0,
        }
    }

    /// The next line; `None` at end of input. A last line without `\n` is delivered.
    pub async fn next(&mut self) -> std::io::Result<Option<LogLine>> {
        let mut line = Vec::new();
        let mut truncated = false;
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                if line.is_empty() && !truncated {
                    return Ok(None);
                }
                break;
            }
            let (take, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(p) => (p, true),
                None => (buf.len(), false),
            };
            let room = self.max_line.saturating_sub(line.len());
            if take > room {
                truncated = true;
            }
            line.extend_from_slice(&buf[..take.min(room)]);
            self.reader.consume(if done { take + 1 } else { take });
            if done {
                break;
            }
        }
        self.lines += 1;
        self.truncated_lines += u64::from(truncated);
        Ok(Some(LogLine { source: self.source.clone(), line, truncated }))
    }

    /// Lines delivered, and how many of them were cut.
    pub fn counts(&self) -> (u64, u64) {
        (self.lines, self.truncated_lines)
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
