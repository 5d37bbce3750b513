//! Iteration-level batching in `dlm serve`: requests share denoiser calls, each request's
//! output is what it gets alone, and short requests do not wait behind long ones.

mod common;

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::server::{code, Server};
use serde_json::{json, Value};

/// Requests of every kind: budgets, samplers, controls (guided and held), several samples.
fn mixed_requests() -> Vec<Value> {
    vec![
        json!({"id": 0, "steps": 40, "seed": 3, "num": 2}),
        json!({"id": 1, "steps": 10, "seed": 4, "sampler": "ddim"}),
        json!({"id": 2, "steps": 25, "seed": 5, "sampler": "ddim", "eta": 0.5, "content": ["food=Italian"]}),
        json!({"id": 3, "steps": 30, "seed": 6, "span": ["1,3,NP"]}),
        json!({"id": 4, "steps": 20, "seed": 7, "infill": "The Eagle is a _ _ _ near _ ."}),
        json!({"id": 5, "steps": 15, "seed": 8, "pos": "PROPN AUX DET ADJ NOUN PUNCT", "num": 2}),
        json!({"id": 6, "steps": 35, "seed": 9, "length": 9, "content": ["area=riverside"]}),
    ]
}

#[test]
fn each_request_gets_the_same_sentences_alone_and_batched_with_others() {
    let server = Server::start(&["--queue", "16", "--max-batch", "16"], &[]);
    let mut client = server.tcp();
    let requests = mixed_requests();
    let alone: Vec<Value> = requests
        .iter()
        .map(|r| {
            client.send(r);
            client.recv()
        })
        .collect();
    for r in &requests {
        client.send(r);
    }
    let together = client.recv_by_id(requests.len());
    for (k, first) in alone.iter().enumerate() {
        let again = &together[&(k as i64)];
        assert_eq!(code(first), "ok", "{first}");
        assert_eq!(first["texts"], again["texts"], "request {k} alone and batched");
    }
}

#[test]
fn a_request_without_a_seed_gets_a_random_one_that_replays_it() {
    let server = Server::start(&[], &[]);
    let mut client = server.tcp();
    client.send(&json!({"id": 1, "steps": 15, "num": 2}));
    let first = client.recv();
    client.send(&json!({"id": 2, "steps": 15, "num": 2}));
    let second = client.recv();
    let seed = first["seed"].as_u64().expect("the response reports the seed");
    assert_ne!(Some(seed), second["seed"].as_u64(), "each request draws its own");
    client.send(&json!({"id": 3, "steps": 15, "num": 2, "seed": seed}));
    let replayed = client.recv();
    assert_eq!(replayed["seed"], seed);
    assert_eq!(replayed["texts"], first["texts"]);
}

#[test]
fn a_short_request_after_a_long_one_is_answered_first() {
    let server = Server::start(&["--timeout-ms", "600000"], &[]);
    let mut client = server.tcp();
    let steps = server.steps_lasting(Duration::from_secs(3)).max(100);
    client.send(&json!({"id": 1, "steps": steps, "num": 2}));
    server.wait_for("the long one runs", |h| h["active_sequences"] != 0);
    client.send(&json!({"id": 2, "steps": 10}));
    let first = client.recv();
    assert_eq!(first["id"], 2, "the 10-step request waits for no {steps}-step one: {first}");
    assert_eq!(code(&first), "ok");
    let second = client.recv();
    assert_eq!((second["id"].as_i64(), code(&second)), (Some(1), "ok"), "{second}");
}

#[test]
fn fifo_answers_in_arrival_order() {
    let server = Server::start(&["--schedule", "fifo"], &[]);
    let mut client = server.tcp();
    client.send(&json!({"id": 1, "steps": 200}));
    client.send(&json!({"id": 2, "steps": 10})); // read after the first: it arrives second
    assert_eq!(client.recv()["id"], 1);
    assert_eq!(client.recv()["id"], 2);
}

#[test]
fn a_deadline_in_a_shared_batch_ends_only_its_own_request() {
    let server = Server::start(&[], &[]);
    let mut client = server.tcp();
    client.send(&json!({"id": 1, "steps": 300, "num": 2}));
    client.send(&json!({"id": 2, "steps": 2000, "content": ["food=Italian"], "timeout_ms": 150}));
    let answers = client.recv_by_id(2);
    assert_eq!(code(&answers[&2]), "timeout", "{}", answers[&2]);
    assert_eq!(code(&answers[&1]), "ok", "{}", answers[&1]);
    assert_eq!(answers[&1]["texts"].as_array().unwrap().len(), 2);
}

#[test]
fn a_client_that_resets_its_connection_leaves_the_batch() {
    let server = Server::start(&["--timeout-ms", "600000"], &[]);
    let mut leaving = server.tcp();
    leaving.send(&json!({"id": 1, "steps": 2000, "num": 8}));
    server.wait_for("its sequences run", |h| h["active_sequences"] != 0);
    // SO_LINGER 0: close sends a reset, which the server reads as the client gone
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let fd = leaving.writer.as_raw_fd();
    let size = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    let set = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), size)
    };
    assert_eq!(set, 0);
    drop(leaving);
    server.wait_for("its sequences leave", |h| h["active_sequences"] == 0);
    // they left the batch: not finished (nor timed out: no deadline)
    assert_eq!(server.metric("dlm_requests_total{code=\"ok\"}"), 0.0, "the request ran to its end");
    let mut probe = server.tcp();
    probe.send(&json!({"id": 2, "steps": 5}));
    assert_eq!(code(&probe.recv()), "ok");
    let _ = TcpStream::connect(("127.0.0.1", server.port)).expect("still listening");
}
