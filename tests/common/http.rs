//! HTTP clients for the tests of `dlm serve --http`: raw sockets, so that a test says exactly
//! which bytes go out.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::server::Server;

/// One HTTP/1.1 exchange: (status, headers in lower case, body as JSON).
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String, Value) {
    http_with(port, method, path, &[], body)
}

/// One HTTP/1.1 exchange with extra header lines (`"Authorization: Bearer KEY"`).
pub fn http_with(port: u16, method: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the HTTP listener accepts");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body); // a server refusing a large body may close early
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    (status_of(head), head.to_lowercase(), serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}")))
}

/// The status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {head:?}"))
}

/// Send `bytes` as they are, then read until the server closes (or `limit` passes).
pub fn raw(port: u16, bytes: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(bytes).unwrap();
    until_closed(&mut stream, limit).0
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `dlm serve --http 127.0.0.1:PORT EXTRA`, ready.
pub fn start(extra: &[&str]) -> (Server, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--http", &addr];
    args.extend_from_slice(extra);
    (Server::start(&args, &[]), port)
}

/// Read until the server closes the connection (or `limit` passes): what it sent, and when.
pub fn until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    (String::from_utf8_lossy(&raw).into_owned(), start.elapsed())
}

/// Whether the server closes `stream` (end of stream or a reset) within `limit`, reading and
/// dropping what it sends meanwhile.
pub fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

/// The value of one sample of `/metrics` (`name{labels}`), 0 when absent.
pub fn metric(port: u16, sample: &str) -> f64 {
    let text = raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", Duration::from_secs(30));
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(sample));
    line.and_then(|l| l.split_whitespace().nth(1)).map_or(0.0, |v| v.parse().unwrap())
}

/// Poll `GET /health` until `ready(status, health)` holds (a hang guard of `limit`, not a
/// measure of speed): the last answer.
pub fn wait_for_health(port: u16, what: &str, limit: Duration, ready: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let start = Instant::now();
    loop {
        let (status, _, body) = http(port, "GET", "/health", b"");
        if ready(status, &body) {
            return (status, body);
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}; health {status} {body}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The wall time of one generate request of `steps` steps (num 1), answered 200.
pub fn time_request(port: u16, steps: usize) -> Duration {
    let start = Instant::now();
    let (status, _, answer) = http(port, "POST", "/v1/generate", json!({"steps": steps}).to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    start.elapsed()
}

/// Steps (at most 2000) that one sequence takes about `target` to run at the speed measured
/// now: a test that needs a request to outlast something sizes it by this machine, not by a
/// guess.
pub fn steps_lasting(port: u16, target: Duration) -> usize {
    let per_step = time_request(port, 20) / 20;
    // the answer goes out before health counts its sequences gone: wait, so that a test that
    // waits for its own request to run next does not see this one
    wait_for_health(port, "the timed request leaves", Duration::from_secs(120), |_, h| {
        h["health"]["active_sequences"] == 0
    });
    let steps = target.as_secs_f64() / per_step.as_secs_f64().max(1e-6);
    (steps.ceil() as usize).clamp(20, 2000)
}
