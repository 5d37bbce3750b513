//! A property run against the real `dlm serve --http` (issue 21, item 5): requests built from
//! mutated parts (methods, targets, versions, header names and values, lengths, chunking,
//! line endings, truncation, pipelining) from a seeded generator. Every connection gets at
//! most one well-formed answer per request it sent, then a close; the server stays up and its
//! memory bounded. DLM_FUZZ_CASES (default 240) and DLM_FUZZ_SEED (default 21) scale it.

mod common;

use common::rss_kb;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::{http, start};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn pick<'a>(rng: &mut ChaCha8Rng, options: &[&'a str]) -> &'a str {
    options[rng.random_range(0..options.len())]
}

/// One request, from mutated parts.
struct Sent {
    bytes: Vec<u8>,
    /// Answers it may get: 2 when its Content-Length stops short of its body, whose rest is
    /// then read as one more request.
    answers: usize,
}

fn request(rng: &mut ChaCha8Rng) -> Sent {
    let method = pick(rng, &["GET", "POST", "POST", "PUT", "HEAD", "get", "", "G\0T", "DELETE", "OPTIONS"]);
    let long_path = format!("/{}", "p".repeat(20_000));
    let target = pick(
        rng,
        &[
            "/health",
            "/v1/generate",
            "/v1/generate",
            "/v1/info",
            "/metrics",
            "/nowhere",
            "*",
            "http://x/health",
            "/%00",
        ],
    );
    let target = if rng.random_bool(0.03) { long_path.as_str() } else { target };
    let version = pick(rng, &["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.2", ""]);
    let eol = if rng.random_bool(0.9) { "\r\n" } else { "\n" };
    let body = pick(
        rng,
        &[r#"{"steps": 1}"#, r#"{"steps": 3, "num": 2}"#, r#"{"op": "health"}"#, "not json", "", r#"{"steps": 0}"#],
    );
    let mut head = format!("{method} {target} {version}{eol}");
    if rng.random_bool(0.9) {
        head += &format!("Host: localhost{eol}");
    }
    let chunked = rng.random_bool(0.15);
    let short = rng.random_range(0..10);
    let length = match short {
        0 => "-5".to_string(),
        1 => "99999999999999999999999".to_string(),
        2 => format!("{}, {}", body.len(), body.len() + 1),
        3 => (body.len() + rng.random_range(1..50)).to_string(),
        4 => body.len().saturating_sub(1).to_string(),
        5 => "100000000000".to_string(),
        _ => body.len().to_string(),
    };
    if !chunked || rng.random_bool(0.2) {
        head += &format!("Content-Length: {length}{eol}");
    }
    if rng.random_bool(0.1) {
        head += &format!("Content-Length: {}{eol}", body.len());
    }
    if chunked {
        head += &format!("Transfer-Encoding: {}{eol}", pick(rng, &["chunked", "chunked", "gzip, chunked", "x"]));
    }
    for _ in 0..rng.random_range(0..4) {
        let name = pick(rng, &["X-A", "Connection", "Expect", "X B", "X:C", "Ä", "", "Accept"]);
        let value = pick(rng, &["close", "keep-alive", "100-continue", "café", "a\rb", "a\0b", "", "x"]);
        head += &format!("{name}: {value}{eol}");
    }
    if rng.random_bool(0.02) {
        head += &format!("X-Big: {}{eol}", "b".repeat(40_000));
    }
    head += eol;
    let mut bytes = head.into_bytes();
    if chunked {
        let size = pick(rng, &["", "zz", "ffffffffffffffffff"]);
        let size = if size.is_empty() { format!("{:x}", body.len()) } else { size.to_string() };
        if body.is_empty() && size == "0" {
            bytes.extend(b"0\r\n\r\n");
        } else {
            bytes.extend(format!("{size}\r\n{body}\r\n0\r\n\r\n").as_bytes());
        }
    } else {
        bytes.extend(body.as_bytes());
    }
    if rng.random_bool(0.1) {
        bytes.truncate(rng.random_range(0..bytes.len().max(1)));
    }
    let answers = if short == 4 && !chunked && !body.is_empty() { 2 } else { 1 };
    Sent { bytes, answers }
}

/// The responses in `raw`, each whole (status line, headers, the body its Content-Length
/// says, or, when a HEAD was sent, none if the next response or the end follows the head);
/// interim 1xx answers are not counted. Err: bytes that are not such a response.
fn answers(raw: &[u8], head_sent: bool) -> Result<usize, String> {
    let (mut rest, mut count) = (raw, 0);
    while !rest.is_empty() {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n").ok_or("a response head cut short")?;
        let head = std::str::from_utf8(&rest[..end]).map_err(|e| e.to_string())?;
        let status: u16 = head
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| head.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not a status line: {head:?}"))?;
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
            .map_or(Ok(0), |v| v.trim().parse::<usize>().map_err(|e| e.to_string()))?;
        rest = &rest[end + 4..];
        if status >= 200 {
            let bodiless = head_sent && (rest.is_empty() || rest.starts_with(b"HTTP/1."));
            let length = if bodiless { 0 } else { length };
            let body = rest.get(..length).ok_or("a response body cut short")?;
            if length > 0 && head.to_ascii_lowercase().contains("content-type: application/json") {
                serde_json::from_slice::<serde_json::Value>(body).map_err(|e| format!("{e}: {body:?}"))?;
            }
            rest = &rest[length..];
            count += 1;
        }
    }
    Ok(count)
}

#[test]
fn mutated_requests_get_at_most_one_answer_each_then_a_close() {
    let var = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (cases, seed) = (var("DLM_FUZZ_CASES", 240), var("DLM_FUZZ_SEED", 21));
    let (server, port) = start(&["--idle-timeout-ms", "300", "--max-line", "4096"]);
    let _ = http(port, "GET", "/health", b""); // the first answers allocate what later ones reuse
    let before = rss_kb(server.child.id());
    let workers: Vec<_> = (0..8)
        .map(|w| {
            std::thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(seed * 1000 + w);
                for case in (0..cases).filter(|c| c % 8 == w) {
                    let requests: Vec<Sent> = (0..rng.random_range(1..=3)).map(|_| request(&mut rng)).collect();
                    let bytes: Vec<u8> = requests.iter().flat_map(|r| r.bytes.iter().copied()).collect();
                    let most: usize = requests.iter().map(|r| r.answers).sum();
                    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the server is up");
                    let _ = stream.write_all(&bytes); // a server refusing early may close first
                    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let start = Instant::now();
                    let mut raw = Vec::new();
                    let read = stream.read_to_end(&mut raw);
                    let shown: String = String::from_utf8_lossy(&bytes).chars().take(600).collect();
                    let what = format!("seed {seed}, case {case}: sent {shown:?}");
                    assert!(start.elapsed() < Duration::from_secs(60), "no close within a minute; {what}");
                    if let Err(e) = read {
                        // a reset after the answers (the server closed with bytes unread)
                        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}; {what}");
                    }
                    let got = answers(&raw, bytes.windows(5).any(|w| w == b"HEAD ")).unwrap_or_else(|e| {
                        let raw: String = String::from_utf8_lossy(&raw).chars().take(600).collect();
                        panic!("{e}; {what}; got {raw:?}")
                    });
                    assert!(got <= most, "{got} answers to {} requests; {what}", requests.len());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(http(port, "GET", "/health", b"").0, 200, "still answering");
    let grown = rss_kb(server.child.id()).saturating_sub(before);
    assert!(grown < 30_000, "the server grew by {grown} kB over {cases} cases");
}
