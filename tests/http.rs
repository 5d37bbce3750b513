//! `dlm serve --http`: the same requests and answers as the line protocol over HTTP, with
//! statuses by error code, health for probes (503 while loading and draining) and info.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{free_port, http, start, steps_lasting, until_closed, wait_for_health};
use serde_json::{json, Value};

#[test]
fn generate_round_trip_and_statuses_by_error_code() {
    let (_server, port) = start(&["--max-line", "4096"]);
    let (status, head, answer) =
        http(port, "POST", "/v1/generate", json!({"id": 7, "steps": 12, "num": 2}).to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert!(head.contains("content-type: application/json"));
    assert_eq!((answer["id"].as_i64(), answer["texts"].as_array().map(Vec::len)), (Some(7), Some(2)));
    let seed = answer["seed"].as_u64().unwrap();
    let (_, _, again) =
        http(port, "POST", "/v1/generate", json!({"steps": 12, "num": 2, "seed": seed}).to_string().as_bytes());
    assert_eq!(again["texts"], answer["texts"], "the returned seed replays the answer");
    for (body, expected, code) in [
        (b"not json".to_vec(), 400, "bad_request"),
        (json!({"steps": 12, "colour": "red"}).to_string().into_bytes(), 400, "bad_request"),
        (json!({"steps": 0}).to_string().into_bytes(), 422, "invalid_argument"),
        (json!({"content": "food=Martian"}).to_string().into_bytes(), 422, "invalid_argument"),
        (vec![b' '; 5000], 413, "too_large"),
    ] {
        let (status, _, answer) = http(port, "POST", "/v1/generate", &body);
        assert_eq!((status, answer["error"]["code"].as_str()), (expected, Some(code)), "{answer}");
    }
    assert_eq!(http(port, "GET", "/nowhere", b"").0, 404);
    assert_eq!(http(port, "GET", "/v1/generate", b"").0, 405);
    let (status, _, info) = http(port, "GET", "/v1/info", b"");
    assert_eq!(status, 200);
    assert!(info["graphs"].as_array().unwrap().iter().all(|g| g["sha256"].as_str().is_some_and(|s| s.len() == 64)));
    assert!(info["controls"]["content"]["labels"].as_array().unwrap().len() > 10);
    let (status, _, health) = http(port, "GET", "/health", b"");
    assert_eq!((status, health["health"]["status"].as_str()), (200, Some("serving")));
}

/// Long enough for any test: a hang guard, not a measure of speed.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_full_queue_answers_429_with_retry_after_and_every_request_is_answered() {
    // no deadline on a busy machine: every request is answered ok or busy, never timeout
    let (_server, port) = start(&["--queue", "1", "--max-batch", "1", "--timeout-ms", "600000"]);
    // one long request runs first (it shares each iteration's single place with up to three
    // others, so it is still running when the twelve arrive): at most 3 more are admitted and
    // 1 queued, whatever the machine's speed
    let steps = steps_lasting(port, Duration::from_secs(2));
    let long = std::thread::spawn(move || {
        http(port, "POST", "/v1/generate", json!({"steps": steps}).to_string().as_bytes()).0
    });
    wait_for_health(port, "the long request runs", LIMIT, |_, h| h["health"]["active_sequences"] != 0);
    let clients: Vec<_> = (0..12)
        .map(|k| {
            std::thread::spawn(move || {
                http(port, "POST", "/v1/generate", json!({"id": k, "steps": 300}).to_string().as_bytes())
            })
        })
        .collect();
    let answers: Vec<(u16, String, Value)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let busy: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(busy.len() >= 8, "12 requests while 1 runs, with room for 3 more and 1 queued: {} busy", busy.len());
    assert!(busy.iter().all(|(_, head, a)| head.contains("retry-after: 1") && a["error"]["code"] == "busy"));
    assert!(answers.iter().all(|(s, _, _)| *s == 200 || *s == 429), "every request answered: ok or busy");
    assert_eq!(long.join().unwrap(), 200);
}

#[test]
fn health_is_503_while_loading_and_while_draining() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let model = common::model_dir().display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(["serve", "--model", &model, "--http", &addr, "--timeout-ms", "600000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    while seen.last() != Some(&200) {
        assert!(start.elapsed() < LIMIT, "no 200 from /health: {seen:?}");
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (status, _, body) = http(port, "GET", "/health", b"");
            if status == 503 {
                assert_eq!(body["error"]["code"], "loading");
            }
            seen.push(status);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen.first(), Some(&503), "bound before the model loads, answering loading: {seen:?}");
    // draining: a long request runs (about 3 s at this machine's speed now), SIGTERM, then
    // health says 503 while it runs, and it is answered
    let steps = steps_lasting(port, Duration::from_secs(3));
    let long =
        std::thread::spawn(move || http(port, "POST", "/v1/generate", json!({"steps": steps}).to_string().as_bytes()));
    wait_for_health(port, "the long request runs", LIMIT, |_, h| h["health"]["active_sequences"] != 0);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for_health(port, "503 after SIGTERM", LIMIT, |status, _| status == 503);
    assert!(!long.is_finished(), "health was 503 only after the request of {steps} steps was answered");
    assert_eq!(long.join().unwrap().0, 200, "the request read before SIGTERM is answered");
    assert!(child.wait().unwrap().success());
}

#[test]
fn connections_are_capped_idle_and_slow_ones_closed_and_long_answers_still_delivered() {
    let (_server, port) = start(&["--max-connections", "2", "--idle-timeout-ms", "300", "--timeout-ms", "600000"]);
    let mut silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(50));
    let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (refused, _) = until_closed(&mut third, LIMIT);
    assert!(refused.starts_with("HTTP/1.1 503") && refused.contains("Retry-After: 1"), "{refused}");
    assert!(refused.contains("\"busy\""), "{refused}");
    for stream in &mut silent {
        let (sent, after) = until_closed(stream, LIMIT);
        assert!(sent.is_empty() && after < LIMIT, "an idle connection closed: {sent:?} after {after:?}");
    }
    // their slots free just after they close: a metrics request refused meanwhile is counted
    let (mut metrics, mut refused) = (String::new(), 1);
    let since = Instant::now();
    while !metrics.starts_with("HTTP/1.1 200") {
        assert!(since.elapsed() < LIMIT, "the idle connections' slots were not freed: {metrics}");
        if !metrics.is_empty() {
            refused += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        metrics = until_closed(&mut stream, Duration::from_secs(5)).0;
    }
    let listener = format!("listener=\"127.0.0.1:{port}\"");
    let refusals = format!("dlm_http_connections_refused_total{{{listener}}} {refused}\n");
    assert!(metrics.contains(&refusals), "{metrics}");
    assert!(metrics.contains(&format!("dlm_http_connections_open{{{listener}}} 1\n")), "this request's: {metrics}");
    // a request whose answer takes longer than the idle time is answered on the same connection
    // (sized to take 1.5 s at this machine's speed now; more sequences if it still did not)
    let steps = steps_lasting(port, Duration::from_millis(1500));
    let outlasted = [1, 4, 16].into_iter().any(|num| {
        let started = Instant::now();
        let (status, _, answer) =
            http(port, "POST", "/v1/generate", json!({"steps": steps, "num": num}).to_string().as_bytes());
        assert_eq!(status, 200, "{answer}");
        started.elapsed() > Duration::from_millis(300)
    });
    assert!(outlasted, "no request outlasted the idle time");
    // a client that sends half a request head, then a byte every 100 ms, is closed once the
    // idle time has passed since the connection began waiting for it, however it paces its bytes
    let (_server, port) = start(&["--idle-timeout-ms", "200", "--timeout-ms", "300"]);
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut drip = slow.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = drip.write_all(b"POST /v1/generate HTTP/1.1\r\nHost: localhost\r\nX-Slow: ");
        for _ in 0..300 {
            std::thread::sleep(Duration::from_millis(100));
            if drip.write_all(b"s").is_err() {
                break;
            }
        }
    });
    let (_, after) = until_closed(&mut slow, Duration::from_secs(30));
    assert!(after >= Duration::from_millis(150) && after < Duration::from_secs(30), "closed after {after:?}");
}
