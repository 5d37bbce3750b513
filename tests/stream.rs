//! Streaming the denoising (`"stream": true`): step events, each with the rounded x0_hat of
//! every sequence, before the usual answer, on the line protocol and as Server-Sent Events.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use common::http::{free_port, http, wait_for_health};
use common::server::{code, Server, LIMIT};
use serde_json::{json, Value};

/// A server with a TCP line listener and an HTTP one: (server, HTTP port).
fn server() -> (Server, u16) {
    let port = free_port();
    let server = Server::start(&["--http", &format!("127.0.0.1:{port}")], &[]);
    (server, port)
}

/// The step events and the answer of one streaming request on a line connection.
fn stream_lines(server: &Server, request: Value) -> (Vec<Value>, Value) {
    let mut client = server.tcp();
    client.send(&request);
    let mut steps = Vec::new();
    loop {
        let line = client.recv();
        assert_eq!(line["id"], request["id"], "{line}");
        if line["event"] == "step" {
            steps.push(line);
        } else {
            return (steps, line);
        }
    }
}

#[test]
fn the_line_protocol_sends_step_events_before_the_answer_when_asked() {
    let (server, _) = server();
    let request = json!({"id": 4, "steps": 10, "num": 2, "seed": 3, "stream": true, "every": 4});
    let (steps, answer) = stream_lines(&server, request);
    assert_eq!(code(&answer), "ok", "{answer}");
    let at: Vec<(i64, i64)> = steps.iter().map(|s| (s["step"].as_i64().unwrap(), s["of"].as_i64().unwrap())).collect();
    assert_eq!(at, [(4, 10), (8, 10), (10, 10)], "every 4th step and the last");
    assert!(steps
        .iter()
        .all(|s| s["texts"].as_array().is_some_and(|t| t.len() == 2 && t.iter().all(Value::is_string))));
    assert_eq!(steps[2]["t"], 0, "the last step is at t = 0");
    // streaming changes nothing in the answer
    let mut client = server.tcp();
    client.send(&json!({"id": 5, "steps": 10, "num": 2, "seed": 3}));
    let plain = client.recv();
    assert_eq!((plain["id"].as_i64(), &plain["texts"]), (Some(5), &answer["texts"]), "no step lines without stream");
    // the default: about 20 events per request
    let (steps, _) = stream_lines(&server, json!({"id": 6, "steps": 40, "stream": true}));
    assert_eq!(steps.len(), 20);
    for (bad, says) in [
        (json!({"id": 7, "steps": 10, "stream": true, "every": 0}), "every"),
        (json!({"id": 8, "steps": 10, "stream": true, "every": 11}), "between 1 and the request's steps (10)"),
        (json!({"id": 9, "steps": 10, "every": 2}), "streaming request only"),
    ] {
        let (steps, answer) = stream_lines(&server, bad);
        assert!(steps.is_empty());
        assert_eq!(code(&answer), "invalid_argument", "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(says), "{answer}");
    }
    let mut client = server.tcp();
    client.send(&json!({"id": 10, "stream": "yes"}));
    assert_eq!(code(&client.recv()), "bad_request");
}

/// Read one Server-Sent Event (its name and data) from an answer's body.
fn next_event(reader: &mut impl BufRead) -> Option<(String, Value)> {
    let (mut name, mut data) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            data = d.to_string();
        } else if line.is_empty() && !name.is_empty() {
            return Some((name, serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data:?}"))));
        }
    }
}

/// POST /v1/generate on a kept-open connection: the head (lower case) and a reader at the body.
/// Chunked transfer: each event is one chunk, whose size lines the event reader skips.
fn post(port: u16, body: &Value) -> (String, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let body = body.to_string();
    let head = format!("POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(reader.read_line(&mut head).unwrap() > 0, "the server closed: {head:?}");
    }
    (head.to_lowercase(), reader)
}

#[test]
fn http_streams_server_sent_events_as_the_steps_are_taken() {
    let (server, port) = server();
    let (head, mut body) = post(port, &json!({"id": 1, "steps": 12, "num": 2, "seed": 9, "stream": true, "every": 3}));
    assert!(head.starts_with("http/1.1 200") && head.contains("content-type: text/event-stream"), "{head}");
    let mut events = Vec::new();
    while let Some(event) = next_event(&mut body) {
        let done = event.0 != "step";
        events.push(event);
        if done {
            break;
        }
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["step", "step", "step", "step", "done"]);
    let steps: Vec<i64> = events[..4].iter().map(|(_, s)| s["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, [3, 6, 9, 12]);
    let (_, _, plain) =
        http(port, "POST", "/v1/generate", json!({"steps": 12, "num": 2, "seed": 9}).to_string().as_bytes());
    assert_eq!(events[4].1["texts"], plain["texts"], "the done event is the usual answer");
    // an error before the first step is an ordinary answer with its status
    let (status, _, error) =
        http(port, "POST", "/v1/generate", json!({"steps": 0, "stream": true}).to_string().as_bytes());
    assert_eq!((status, error["error"]["code"].as_str()), (422, Some("invalid_argument")));
    drop(server);
}

#[test]
fn the_first_step_event_arrives_while_the_request_still_runs() {
    let (server, port) = server();
    let steps = server.steps_lasting(std::time::Duration::from_secs(3));
    let (_, mut body) = post(port, &json!({"steps": steps, "stream": true, "every": 1}));
    let (name, first) = next_event(&mut body).expect("an event");
    assert_eq!((name.as_str(), first["step"].as_i64()), ("step", Some(1)));
    // the request is still running: its sequence is in the batch
    wait_for_health(port, "the streaming request runs", LIMIT, |_, h| h["health"]["active_sequences"] == 1);
    let mut last = first;
    let done = loop {
        match next_event(&mut body).expect("the stream goes on to its answer") {
            (name, event) if name == "step" => last = event,
            (name, answer) => break (name, answer),
        }
    };
    assert_eq!(done.0, "done");
    assert_eq!(last["step"].as_u64(), Some(steps as u64));
}
