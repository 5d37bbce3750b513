//! `dlm serve --http` against hostile clients (issue 21): huge declared bodies, bad lengths,
//! odd versions and headers, heads that never end, slow drippers holding every slot, clients
//! that leave mid-request; every one on the real server.

mod common;

use common::rss_kb;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{closed_within, free_port, http, metric, raw, start, status_of};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_60_byte_request_declaring_a_huge_body_leaves_the_server_answering() {
    let (mut server, port) = start(&[]);
    let answer = raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n", LIMIT);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let answer = raw(port, b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n{}", LIMIT);
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("too_large"), "{answer:?}");
    assert_eq!(http(port, "GET", "/health", b"").0, 200, "still answering");
    assert!(server.child.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn invalid_or_conflicting_content_lengths_are_refused_and_the_body_is_not_a_request() {
    let (_server, port) = start(&[]);
    for length in ["-5", "99999999999999999999999", "5\r\nContent-Length: 6", "abc"] {
        let smuggled = "GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n";
        let request = format!("POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n{smuggled}");
        let answer = raw(port, request.as_bytes(), LIMIT);
        assert!(answer.starts_with("HTTP/1.1 400"), "Content-Length {length:?}: {answer:?}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer, then the close: {answer:?}");
    }
    assert_eq!(http(port, "GET", "/health", b"").0, 200);
}

#[test]
fn odd_versions_headers_and_endless_heads_get_an_answer() {
    let (server, port) = start(&[]);
    let answer = raw(port, b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", LIMIT);
    assert!(answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 505"), "{answer:?}");
    let answer = raw(port, "GET /health HTTP/1.1\r\nHost: x\r\nX-Name: café\r\n\r\n".as_bytes(), LIMIT);
    let status = status_of(answer.split("\r\n").next().unwrap());
    assert!(status == 200 || status == 400, "{answer:?}");
    // a header line that never ends: refused once past the head limit, memory bounded
    let before = rss_kb(server.child.id());
    let mut endless = TcpStream::connect(("127.0.0.1", port)).unwrap();
    endless.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    endless.write_all(b"GET /health HTTP/1.1\r\nX-Big: ").unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < 64 << 20 && endless.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    assert!(sent < 64 << 20, "the server read all of a 64 MB header line");
    let grown = rss_kb(server.child.id()).saturating_sub(before);
    assert!(grown < 20_000, "the server grew by {grown} kB on an endless header");
    let mut answer = Vec::new();
    endless.set_read_timeout(Some(LIMIT)).unwrap();
    let _ = endless.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert_eq!(http(port, "GET", "/health", b"").0, 200);
}

#[test]
fn slow_drippers_are_closed_and_do_not_lock_others_out() {
    let (_server, port) = start(&["--max-connections", "2", "--idle-timeout-ms", "1000"]);
    let drippers: Vec<_> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut drip = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = drip.write_all(b"GET /health HTTP/1.1\r\nX-A: ");
                let start = Instant::now();
                while start.elapsed() < LIMIT && drip.write_all(b"a").is_ok() {
                    std::thread::sleep(Duration::from_millis(300));
                }
            });
            std::thread::spawn(move || closed_within(&mut stream, LIMIT))
        })
        .collect();
    // a third client is refused while both slots are held, and answered once they are freed
    let start = Instant::now();
    let mut refused = 0;
    let answered = loop {
        assert!(start.elapsed() < LIMIT, "no answer in {LIMIT:?}, {refused} refusals");
        let answer = raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", LIMIT);
        if answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("busy"), "{answer:?}");
        refused += 1;
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(answered.contains("serving"), "{answered}");
    for dripper in drippers {
        assert!(dripper.join().unwrap(), "a dripper's connection was not closed");
    }
}

#[test]
fn requests_are_counted_before_they_are_answered() {
    let (_server, port) = start(&[]);
    for k in 1..=10 {
        let (status, _, answer) = http(port, "POST", "/v1/generate", json!({"steps": 1}).to_string().as_bytes());
        assert_eq!(status, 200, "{answer}");
        assert_eq!(metric(port, "dlm_requests_total{code=\"ok\"}"), f64::from(k), "after answer {k}");
    }
}

/// Send a generate request that would run for minutes and wait until its sequences run.
fn start_long_request(port: u16) -> TcpStream {
    let body = json!({"steps": 2000, "num": 64}).to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!("POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let start = Instant::now();
    while http(port, "GET", "/health", b"").2["health"]["active_sequences"] == 0 {
        assert!(start.elapsed() < LIMIT, "the long request never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    stream
}

#[test]
fn a_client_that_leaves_mid_request_cancels_it() {
    let (_server, port) = start(&["--timeout-ms", "600000"]);
    for reset in [false, true] {
        let stream = start_long_request(port);
        if reset {
            // SO_LINGER 0: the close sends a reset
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            let size = std::mem::size_of::<libc::linger>() as libc::socklen_t;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let set = unsafe {
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), size)
            };
            assert_eq!(set, 0);
        }
        drop(stream);
        // 64 sequences of 2000 steps take minutes; a cancelled request leaves at the next iteration
        let start = Instant::now();
        while http(port, "GET", "/health", b"").2["health"]["active_sequences"] != 0 {
            assert!(start.elapsed() < LIMIT, "still running {LIMIT:?} after its client left (reset: {reset})");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(metric(port, "dlm_requests_total{code=\"ok\"}"), 0.0, "neither request finished");
    assert_eq!(metric(port, "dlm_requests_total{code=\"timeout\"}"), 0.0, "nor timed out");
}

#[test]
fn a_short_request_passes_one_that_asks_for_every_slot() {
    let (_server, port) = start(&["--timeout-ms", "600000"]);
    let mut big = start_long_request(port);
    let (status, _, answer) = http(port, "POST", "/v1/generate", json!({"steps": 1}).to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    // the big request is still running: nothing to read on its connection yet
    big.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(big.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock), "the big one answered first");
    assert_ne!(http(port, "GET", "/health", b"").2["health"]["active_sequences"], 0);
}

#[test]
fn a_non_loopback_http_address_is_refused_naming_its_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(["serve", "--model", &common::model_dir().display().to_string()])
        .args(["--http", &format!("0.0.0.0:{}", free_port())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--http-any-address") && !stderr.contains("--tcp-any-address"), "{stderr}");
}

#[test]
fn drippers_holding_every_slot_at_the_defaults_do_not_keep_a_new_client_waiting() {
    // the defaults: 64 connections, 60 s to send a head; 64 drippers at a byte per 0.9 s
    let (_server, port) = start(&[]);
    let mut drippers: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.write_all(b"GET /health HTTP/1.1\r\nX-A: ").unwrap();
            stream
        })
        .collect();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::clone(&answered);
    let dripping = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < LIMIT && !done.load(std::sync::atomic::Ordering::SeqCst) {
            for stream in &mut drippers {
                let _ = stream.write_all(b"a");
            }
            std::thread::sleep(Duration::from_millis(900));
        }
        drippers
    });
    let start = Instant::now();
    loop {
        let answer = raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", LIMIT);
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(start.elapsed() < LIMIT, "no answer in {LIMIT:?} (the head timeout is 60 s): {answer:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    answered.store(true, std::sync::atomic::Ordering::SeqCst);
    // the new client took the slot of a dripper, whose connection the server closed
    let mut drippers = dripping.join().unwrap();
    let closed = |s: &mut TcpStream| {
        s.set_nonblocking(true).unwrap();
        !matches!(s.read(&mut [0u8; 256]), Err(e) if e.kind() == ErrorKind::WouldBlock)
    };
    let start = Instant::now();
    while !drippers.iter_mut().any(closed) {
        assert!(start.elapsed() < LIMIT, "no dripper was closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}
