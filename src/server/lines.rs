//! Newline-delimited input with a size limit, over any `embedded_io::Read`: a line longer than
//! the limit is skipped as it streams by, never held in memory whole.

use embedded_io::{Error as _, ErrorKind, Read};

const CHUNK: usize = 4096;

/// What one call to [`LineReader::next_line`] found.
#[derive(Debug, PartialEq)]
pub enum Line<'a> {
    /// A complete line, without its `\n` (and without a trailing `\r`).
    Text(&'a [u8]),
    /// A line of `len` bytes, over the limit; its bytes were dropped as they came.
    TooLong { len: usize },
    /// The reader timed out before a complete line arrived; poll what you need and call again.
    Idle,
    /// End of input (a last line without `\n` comes back as Text first).
    Eof,
}

pub struct LineReader<R> {
    reader: R,
    max_line: usize,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` returned by the previous call.
    consumed: usize,
    /// Inside an oversized line: how many of its bytes were dropped so far.
    skipped: Option<usize>,
    eof: bool,
}

impl<R: Read> LineReader<R> {
    pub fn new(reader: R, max_line: usize) -> Self {
        let buf = Vec::with_capacity(max_line.min(64 * 1024) + CHUNK);
        Self { reader, max_line, buf, consumed: 0, skipped: None, eof: false }
    }

    /// The next line. Blocks in the reader; a reader timeout comes back as [`Line::Idle`].
    pub fn next_line(&mut self) -> Result<Line<'_>, R::Error> {
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        loop {
            let newline = self.buf.iter().position(|&b| b == b'\n');
            match (self.skipped, newline) {
                (Some(skipped), Some(end)) => {
                    self.skipped = None;
                    self.consumed = end + 1;
                    return Ok(Line::TooLong { len: skipped + end });
                }
                (Some(skipped), None) => {
                    self.skipped = Some(skipped + self.buf.len());
                    self.buf.clear();
                }
                (None, Some(end)) if end > self.max_line => {
                    self.consumed = end + 1;
                    return Ok(Line::TooLong { len: end });
                }
                (None, Some(end)) => {
                    self.consumed = end + 1;
                    return Ok(Line::Text(trim_cr(&self.buf[..end])));
                }
                (None, None) if self.buf.len() > self.max_line => {
                    self.skipped = Some(self.buf.len());
                    self.buf.clear();
                }
                (None, None) => {}
            }
            if self.eof {
                self.consumed = self.buf.len();
                return Ok(match self.skipped.take() {
                    Some(len) => Line::TooLong { len },
                    None if self.buf.is_empty() => Line::Eof,
                    None => Line::Text(trim_cr(&self.buf)),
                });
            }
            let start = self.buf.len();
            self.buf.resize(start + CHUNK, 0);
            let read = self.reader.read(&mut self.buf[start..]);
            self.buf.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => return Ok(Line::Idle),
                Err(e) => return Err(e),
            }
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its input in pieces of `step` bytes, with a timeout between pieces.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
        timed_out: bool,
    }

    impl embedded_io::ErrorType for Trickle {
        type Error = ErrorKind;
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
            self.timed_out = !self.timed_out;
            if self.timed_out {
                return Err(ErrorKind::TimedOut);
            }
            let n = self.step.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn lines(input: &str, step: usize, max_line: usize) -> Vec<String> {
        let trickle = Trickle { data: input.as_bytes().to_vec(), at: 0, step, timed_out: false };
        let mut reader = LineReader::new(trickle, max_line);
        let mut out = Vec::new();
        loop {
            match reader.next_line().unwrap() {
                Line::Text(t) => out.push(String::from_utf8_lossy(t).into_owned()),
                Line::TooLong { len } => out.push(format!("<too long: {len}>")),
                Line::Idle => {}
                Line::Eof => return out,
            }
        }
    }

    #[test]
    fn splits_lines_whatever_the_read_sizes() {
        for step in [1, 3, 7, 4096] {
            assert_eq!(lines("a\r\nbc\n\nlast", step, 10), ["a", "bc", "", "last"], "step {step}");
        }
    }

    #[test]
    fn oversized_lines_are_skipped_and_reading_goes_on() {
        let long = "x".repeat(20_000);
        for step in [1, 5, 4096] {
            let input = format!("ok\n{}\nafter\n{}", &long[..12], long);
            assert_eq!(lines(&input, step, 10), ["ok", "<too long: 12>", "after", "<too long: 20000>"], "step {step}");
        }
        assert_eq!(lines("0123456789\n", 4096, 10), ["0123456789"]);
    }

    #[test]
    fn memory_stays_bounded_by_the_limit() {
        let input = format!("{}\nend\n", "y".repeat(1 << 20));
        let trickle = Trickle { data: input.into_bytes(), at: 0, step: 4096, timed_out: false };
        let mut reader = LineReader::new(trickle, 100);
        let mut biggest = 0;
        loop {
            let line = reader.next_line().unwrap();
            let done = line == Line::Eof;
            biggest = biggest.max(reader.buf.capacity());
            if done {
                break;
            }
        }
        assert!(biggest <= 100 + 2 * CHUNK, "buffer grew to {biggest}");
    }
}
