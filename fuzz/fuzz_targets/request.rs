//! The request parser and the line splitter on arbitrary bytes: never a panic, every
//! rejection a valid JSON line, and no line returned longer than the limit.
#![no_main]

use dlm::protocol::parse_request;
use dlm::server::lines::{Line, LineReader};
use libfuzzer_sys::fuzz_target;

struct Bytes<'a>(&'a [u8], usize);

impl embedded_io::ErrorType for Bytes<'_> {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::Read for Bytes<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        // Odd-sized reads, so lines straddle reads.
        let n = buf.len().min(self.0.len()).min(1 + self.1 % 97);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        self.1 = self.1.wrapping_mul(31).wrapping_add(7);
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    if let Err(rejection) = parse_request(data) {
        let line = rejection.to_line();
        assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok() && !line.contains('\n'));
    }
    let mut lines = LineReader::new(Bytes(data, data.len()), 64);
    loop {
        match lines.next_line() {
            Ok(Line::Text(t)) => {
                assert!(t.len() <= 64);
                let _ = parse_request(t);
            }
            Ok(Line::TooLong { len }) => assert!(len > 64),
            Ok(Line::Idle) => unreachable!("this reader never times out"),
            Ok(Line::Eof) | Err(_) => break,
        }
    }
});

