//! `dlm serve` driven as a client over loopback TCP, a Unix socket, a pseudo-terminal and
//! stdin, with the systemd notify socket played by the test.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{code, Client, Server, LIMIT};
use serde_json::{json, Value};

#[test]
fn concurrent_tcp_clients_each_get_their_answers() {
    let server = Server::start(&["--queue", "16"], &[]);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let mut client = server.tcp();
            std::thread::spawn(move || {
                for k in 0..3 {
                    client.send(&json!({"id": c * 10 + k, "steps": 5, "seed": k, "num": 2}));
                }
                client.recv_by_id(3)
            })
        })
        .collect();
    for (c, handle) in clients.into_iter().enumerate() {
        let answers = handle.join().unwrap();
        let ids: Vec<i64> = answers.keys().copied().collect();
        let c = c as i64;
        assert_eq!(ids, vec![c * 10, c * 10 + 1, c * 10 + 2]);
        for r in answers.values() {
            assert_eq!(code(r), "ok", "{r}");
            assert_eq!(r["texts"].as_array().unwrap().len(), 2);
            assert_eq!(r["timings"]["steps"], 5);
        }
    }
}

#[test]
fn a_flood_beyond_the_queue_gets_busy_and_every_request_an_answer() {
    // one sequence stepped at a time, at most 4 admitted (dlm::engine::POOL): the
    // inference thread takes no job while they are
    let server = Server::start(&["--queue", "2", "--max-batch", "1"], &[]);
    let mut client = server.tcp();
    let n = 12;
    let burst: String = (0..n).map(|k| format!("{}\n", json!({"id": k, "steps": 200}))).collect();
    client.send_raw(burst.as_bytes());
    let answers = client.recv_by_id(n);
    let ok: Vec<i64> = answers.iter().filter(|(_, r)| code(r) == "ok").map(|(k, _)| *k).collect();
    let busy = answers.values().filter(|r| code(r) == "busy").count();
    // Two wait in the queue, up to four more once the inference thread has admitted them; the
    // burst arrives far faster than a 200-step generation, so all others find the queue full.
    let most = 2 + dlm::engine::POOL;
    assert!((2..=most).contains(&ok.len()), "ok: {ok:?}");
    assert_eq!(ok[..2], [0, 1], "the first requests always find room");
    assert_eq!(ok.len() + busy, n, "every other request is busy");
}

#[test]
fn malformed_and_oversized_lines_are_rejected_and_the_connection_stays_usable() {
    let server = Server::start(&["--max-line", "1024"], &[]);
    let mut client = server.tcp();
    client.send_raw(b"this is not json\n");
    assert_eq!(code(&client.recv()), "bad_request");
    client.send(&json!({"id": 1, "steps": 5, "colour": "blue"}));
    let r = client.recv();
    assert_eq!((code(&r), &r["id"]), ("bad_request", &json!(1)));
    assert!(r["error"]["message"].as_str().unwrap().contains("colour"));
    let huge = format!("{{\"id\": 2, \"pos\": \"{}\"}}\n", "NOUN ".repeat(200_000));
    client.send_raw(huge.as_bytes());
    let r = client.recv();
    assert_eq!(code(&r), "too_large", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("1024"));
    client.send(&json!({"id": 3, "pos": "DET NOUN BOGUS"}));
    let r = client.recv();
    assert_eq!(code(&r), "invalid_argument");
    assert!(r["error"]["message"].as_str().unwrap().contains("allowed"));
    client.send(&json!({"id": 4, "steps": 5, "content": ["food=Italian"], "length": 12}));
    let r = client.recv();
    assert_eq!((code(&r), &r["id"]), ("ok", &json!(4)), "{r}");
    assert_eq!(r["results"][0]["tokens"].as_array().unwrap().len(), 12);
}

#[test]
fn deadlines_give_timeout() {
    let server = Server::start(&[], &[]);
    let mut client = server.tcp();
    client.send(&json!({"id": 1, "steps": 2000, "timeout_ms": 30}));
    let r = client.recv();
    assert_eq!(code(&r), "timeout", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("of 2000 denoising steps"));
}

#[test]
fn the_deadline_holds_inside_guidance() {
    // 3 steps, two of them guided, K = 100 rounds of 16 spans: some 200 times the guidance
    // work of K = 1 (measured first, on this machine now); the deadline ends it within one call
    let server = Server::start(&[], &[]);
    let mut client = server.tcp();
    let spans: Vec<String> = (0..16).map(|k| format!("{k},{k},NP")).collect();
    let start = Instant::now();
    client.send(&json!({"id": 0, "steps": 3, "guide_steps": 1, "span": spans}));
    assert_eq!(code(&client.recv()), "ok");
    let one_round = start.elapsed();
    let start = Instant::now();
    client.send(&json!({"id": 1, "steps": 3, "guide_steps": 100, "span": spans, "timeout_ms": 50}));
    let r = client.recv();
    assert_eq!(code(&r), "timeout", "{r}");
    let limit = Duration::from_millis(50) + 20 * one_round;
    assert!(start.elapsed() < limit, "answered after {:?}, K = 1 took {one_round:?}", start.elapsed());
}

#[test]
fn a_live_unix_socket_is_not_taken_over_and_only_our_own_is_removed() {
    let mut server = Server::start(&[], &[]);
    let path = server.unix_path();
    let second = Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(["serve", "--model", &common::model_dir().display().to_string(), "--unix"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a server is answering on this socket"), "{stderr}");
    assert!(UnixStream::connect(&path).is_ok(), "the first server's socket is gone");
    // someone else's socket at the path now: the first server must leave it on exit
    std::fs::remove_file(&path).unwrap();
    let _theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    assert!(path.exists(), "the server removed a socket that was not its own");
}

#[test]
fn a_client_leaving_mid_request_does_not_disturb_the_others() {
    let server = Server::start(&[], &[]);
    {
        let mut leaving = server.tcp();
        leaving.send(&json!({"id": 1, "steps": 200}));
        leaving.send_raw(b"{\"id\": 2, \"steps\"");
    } // closed with one request running and half a line sent
    let mut client = server.tcp();
    client.send(&json!({"id": 3, "steps": 5}));
    assert_eq!(code(&client.recv()), "ok");
    // The departed client's request still runs to the end (its answer is dropped).
    let start = Instant::now();
    loop {
        client.send(&json!({"op": "health", "id": 4}));
        let health = client.recv();
        assert_eq!(health["health"]["engine_alive"], true);
        if health["health"]["served"].as_u64().unwrap() >= 2 {
            break;
        }
        assert!(start.elapsed() < LIMIT, "request 1 never finished: {health}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unix_socket_serves_requests_and_health() {
    let server = Server::start(&["--queue", "3"], &[]);
    let mut client = Client::new(UnixStream::connect(server.unix_path()).unwrap());
    client.send(&json!({"op": "health", "id": "h"}));
    let h = client.recv();
    assert_eq!(h["id"], "h");
    assert_eq!(h["health"]["queue_capacity"], 3);
    assert_eq!(h["health"]["model"]["provider"], "cpu");
    client.send(&json!({"id": "g", "steps": 10, "infill": "The Eagle is a _ _ _ near _ ."}));
    let r = client.recv();
    assert_eq!(code(&r), "ok", "{r}");
    let tokens = r["results"][0]["tokens"].as_array().unwrap();
    assert_eq!(tokens[..4], [json!("The"), json!("Eagle"), json!("is"), json!("a")]);
}

#[test]
fn sigterm_answers_everything_read_and_exits_zero() {
    let mut server = Server::start(&["--queue", "8"], &[]);
    let mut client = server.tcp();
    for k in 0..3 {
        client.send(&json!({"id": k, "steps": 200}));
    }
    let read =
        |h: &Value| ["queue_depth", "active_sequences", "served"].iter().map(|k| h[k].as_u64().unwrap()).sum::<u64>();
    server.wait_for("the three requests are read", |h| read(h) >= 3);
    server.signal(libc::SIGTERM);
    client.send(&json!({"id": 3, "steps": 5}));
    // every answer until the server closes: the three read before the signal ok; the one after
    // it ok or shutting_down, or unanswered when it arrived after the reader stopped
    let mut answers = std::collections::BTreeMap::new();
    while let Some(r) = client.try_recv() {
        assert!(answers.insert(r["id"].as_i64().unwrap(), r).is_none(), "an id answered twice");
    }
    for k in 0..3 {
        assert_eq!(code(&answers[&k]), "ok", "queued before the signal: {}", answers[&k]);
    }
    assert!(answers.get(&3).is_none_or(|r| ["ok", "shutting_down"].contains(&code(r))), "{:?}", answers.get(&3));
    assert!(server.note().contains("STOPPING=1"));
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!server.unix_path().exists(), "the Unix socket is removed on exit");
    assert!(TcpStream::connect(("127.0.0.1", server.port)).is_err(), "no longer listening");
}

/// The loading notes, once per graph in load order: "loading session i/n: NAME" (on the CPU).
fn loading_lines() -> Vec<String> {
    let order = common::graphs_in_load_order("fp32");
    order.iter().enumerate().map(|(i, g)| format!("loading session {}/{}: {g}", i + 1, order.len())).collect()
}

#[test]
fn loading_extends_the_start_timeout_and_names_each_graph_before_ready() {
    let server = Server::start(&[], &[]);
    let first = server.loading.first().unwrap_or_else(|| panic!("no EXTEND_TIMEOUT_USEC before READY=1"));
    assert!(first.contains("EXTEND_TIMEOUT_USEC=90000000"), "{first:?}");
    let statuses: Vec<&str> =
        server.loading.iter().flat_map(|n| n.lines()).filter_map(|l| l.strip_prefix("STATUS=")).collect();
    let mut expected = vec!["loading the model".to_string()];
    expected.extend(loading_lines());
    expected.push("warming up".into());
    assert_eq!(statuses, expected, "{:?}", server.loading);
}

#[test]
fn the_log_names_each_graph_as_it_loads() {
    let mut child = common::server::spawn_stdio(&["-v"]);
    drop(child.stdin.take()); // end of input: the server loads, warms up and exits
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let logged: Vec<&str> = stderr.lines().filter_map(|l| l.find("loading session").map(|at| &l[at..])).collect();
    assert_eq!(logged, loading_lines(), "{stderr}");
}

#[test]
fn watchdog_pings_while_the_engine_lives() {
    let server = Server::start(&[], &[("WATCHDOG_USEC", "200000")]);
    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let note = server.note();
        pings += note.contains("WATCHDOG=1") as usize;
        assert!(start.elapsed() < Duration::from_secs(5), "only {pings} watchdog pings in 5 s");
    }
}

#[test]
fn stdio_answers_every_line_then_exits_at_end_of_input() {
    let mut child = common::server::spawn_stdio(&[]);
    let input = b"{\"id\":1,\"steps\":5}\n\n{\"id\":2,\"op\":\"health\"}\n[]\n{\"id\":3,\"steps\":5,\"seed\":1}";
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    let mut codes: Vec<(String, String)> = lines.iter().map(|r| (r["id"].to_string(), code(r).to_string())).collect();
    codes.sort();
    assert_eq!(
        codes,
        [("1", "ok"), ("2", "ok"), ("3", "ok"), ("null", "bad_request")].map(|(a, b)| (a.into(), b.into()))
    );
}

#[test]
fn serial_line_on_a_pseudo_terminal() {
    let (mut master, slave) = serialport::TTYPort::pair().expect("a pseudo-terminal pair");
    let name = serialport::SerialPort::name(&slave).expect("the pty has a name");
    let args = ["--serial".to_string(), name, "--baud".into(), "115200".into()];
    let mut server = Server::spawn(tempfile::tempdir().unwrap(), 0, &args, &[]);
    serialport::SerialPort::set_timeout(&mut master, Duration::from_secs(60)).unwrap();
    writeln!(master, "{}", json!({"id": 7, "steps": 5})).unwrap();
    let mut reader = BufReader::new(master);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let r: Value = serde_json::from_str(&line).unwrap();
    assert_eq!((code(&r), &r["id"]), ("ok", &json!(7)), "{r}");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
    drop(slave);
}

#[test]
fn bad_serve_options_fail_clearly() {
    let dlm = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_dlm")).args(args).output().unwrap();
    let out = dlm(&["serve", "--model", &common::model_dir().display().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stdio, --tcp"));
    let out = dlm(&["serve", "--tcp", "8.8.8.8:7000"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    let out = dlm(&["serve", "--serial", "/dev/does-not-exist"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/does-not-exist"));
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = dlm(&["serve", "--unix", &file.display().to_string()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
}

#[test]
fn every_serve_flag_can_come_from_a_dlm_variable() {
    let server =
        Server::start(&[], &[("DLM_QUEUE", "3"), ("DLM_MAX_BATCH", "4"), ("DLM_SCHEDULE", "fifo"), ("DLM_STEPS", "7")]);
    let mut client = server.tcp();
    client.send(&json!({"op": "health", "id": 0}));
    let h = client.recv();
    assert_eq!((h["health"]["queue_capacity"].as_u64(), h["health"]["max_batch"].as_u64()), (Some(3), Some(4)), "{h}");
    client.send(&json!({"id": 1}));
    assert_eq!(client.recv()["timings"]["steps"], 7, "DLM_STEPS is the default budget");
    // a bad value is refused, naming the flag
    let out =
        Command::new(env!("CARGO_BIN_EXE_dlm")).args(["serve", "--stdio"]).env("DLM_QUEUE", "many").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--queue"), "{}", String::from_utf8_lossy(&out.stderr));
}
