//! `dlm serve --http`: OpenAI's routes on the real server (models, completions through the
//! same engine as /v1/generate, OpenAI-shaped errors with dlm's codes), the served OpenAPI
//! document equal to the committed one, and `--api-key`.

mod common;

use std::process::Command;

use common::http::{free_port, http, http_with, metric, start};
use common::server::Server;
use serde_json::{json, Value};

fn post(port: u16, body: Value) -> (u16, String, Value) {
    http(port, "POST", "/v1/completions", body.to_string().as_bytes())
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

#[test]
fn models_and_completions_through_the_engine_with_usage_and_openai_errors() {
    let (_server, port) = start(&["--timeout-ms", "600000"]);
    let (status, _, list) = http(port, "GET", "/v1/models", b"");
    assert_eq!(status, 200, "{list}");
    assert_eq!((list["object"].as_str(), list["data"].as_array().map(Vec::len)), (Some("list"), Some(1)));
    let model = &list["data"][0];
    assert_eq!(
        (model["id"].as_str(), model["object"].as_str(), model["owned_by"].as_str()),
        (Some("e2e"), Some("model"), Some("dlm"))
    );
    assert!(model["created"].as_u64().is_some_and(|t| t > 1_600_000_000), "{model}");
    assert_eq!(http(port, "GET", "/v1/models/e2e", b"").2, *model);
    let (status, _, missing) = http(port, "GET", "/v1/models/gpt-4", b"");
    assert_eq!((status, missing["error"]["param"].as_str()), (404, Some("model")), "{missing}");

    // a left context: the sentence begins with it; the text is what follows, with a space
    let prompt = "The Eagle is";
    let request = json!({"model": "e2e", "prompt": prompt, "max_tokens": 5, "n": 2, "steps": 10, "seed": 3});
    let (status, head, done) = post(port, request);
    assert_eq!(status, 200, "{done}");
    assert!(head.contains("content-type: application/json"));
    assert!(done["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")), "{done}");
    assert_eq!(
        (done["object"].as_str(), done["model"].as_str(), done["seed"].as_u64()),
        (Some("text_completion"), Some("e2e"), Some(3))
    );
    let choices = done["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (k, choice) in choices.iter().enumerate() {
        let text = choice["text"].as_str().unwrap();
        assert!(text.starts_with(' ') && words(text) == 5, "{choice}");
        assert_eq!((choice["index"].as_u64(), choice["finish_reason"].as_str()), (Some(k as u64), Some("length")));
        assert!(choice["logprobs"].is_null());
    }
    assert_eq!(done["usage"], json!({"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}));
    // the same request as dlm's own: the same sentences (one engine, one path)
    let generate = json!({"infill": "The Eagle is _ _ _ _ _", "num": 2, "steps": 10, "seed": 3});
    let (_, _, same) = http(port, "POST", "/v1/generate", generate.to_string().as_bytes());
    let sentences: Vec<String> = choices.iter().map(|c| format!("{prompt}{}", c["text"].as_str().unwrap())).collect();
    assert_eq!(same["texts"], json!(sentences));
    let echoed = post(
        port,
        json!({"model": "e2e", "prompt": prompt, "max_tokens": 5, "n": 2, "steps": 10, "seed": 3, "echo": true}),
    )
    .2;
    assert_eq!(echoed["choices"][1]["text"], json!(sentences[1]));

    // an infill template: the whole sentence, its fixed words kept; dlm's controls beside it
    let template = "The Eagle is a _ _ near _ .";
    let (status, _, filled) =
        post(port, json!({"model": "e2e", "prompt": [template], "steps": 10, "content": "food=Italian", "rerank": 2}));
    assert_eq!(status, 200, "{filled}");
    let text = filled["choices"][0]["text"].as_str().unwrap();
    let kept = template.split(' ').zip(text.split(' ')).all(|(t, w)| t == "_" || t == w);
    assert!(kept && words(text) == 9, "{text:?} fills {template:?}");
    assert_eq!(filled["choices"][0]["finish_reason"], "stop");
    assert_eq!(filled["usage"], json!({"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}));

    // no prompt: max_tokens is the length; without it the model ends the sentence
    let (_, _, free) = post(
        port,
        json!({"model": "e2e", "max_tokens": 7, "steps": 10, "temperature": 1, "top_p": 1, "user": "tests"}),
    );
    let text = free["choices"][0]["text"].as_str().unwrap();
    assert_eq!((words(text), free["usage"]["completion_tokens"].as_u64()), (7, Some(7)), "{free}");
    let (_, _, free) = post(port, json!({"model": "e2e", "steps": 10}));
    let text = free["choices"][0]["text"].as_str().unwrap();
    assert_eq!(free["usage"]["completion_tokens"].as_u64(), Some(words(text) as u64), "{free}");
    assert_eq!(free["choices"][0]["finish_reason"], "stop");

    let answered = metric(port, "dlm_requests_total{code=\"bad_request\"}");
    for (body, status, code, param) in [
        (json!({"model": "e2e", "colour": "red"}), 400, "bad_request", Some("colour")),
        (json!({"model": "gpt-4"}), 404, "bad_request", Some("model")),
        (json!({"model": "e2e", "temperature": 0.7}), 400, "bad_request", Some("temperature")),
        (json!({"model": "e2e", "prompt": ["The Eagle", "The Punter"]}), 400, "bad_request", Some("prompt")),
        (json!({"model": "e2e", "max_tokens": 63}), 422, "invalid_argument", Some("max_tokens")),
        (json!({"model": "e2e", "prompt": "The Eagle", "max_tokens": 61}), 422, "invalid_argument", Some("max_tokens")),
        (
            json!({"model": "e2e", "stream_options": {"include_usage": true}}),
            400,
            "bad_request",
            Some("stream_options"),
        ),
        (json!({"model": "e2e", "steps": 0}), 422, "invalid_argument", None),
        (json!({"model": "e2e", "prompt": "The Eagel is"}), 422, "invalid_argument", None),
    ] {
        let (got, _, error) = post(port, body.clone());
        let e = &error["error"];
        assert_eq!((got, e["code"].as_str(), e["param"].as_str()), (status, Some(code), param), "{body}: {error}");
        assert_eq!(e["type"], "invalid_request_error", "{error}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    }
    assert_eq!(metric(port, "dlm_requests_total{code=\"bad_request\"}"), answered + 5.0, "each refusal counted once");
    let (status, _, not_json) = http(port, "POST", "/v1/completions", b"{");
    assert_eq!((status, not_json["error"]["code"].as_str()), (400, Some("bad_request")));
    assert_eq!(http(port, "GET", "/v1/completions", b"").0, 405);
}

#[test]
fn a_streamed_completion_is_openais_chunks_adding_up_to_the_completion() {
    let (_server, port) = start(&["--timeout-ms", "600000"]);
    let fields = json!({"model": "e2e", "prompt": "The Eagle is", "max_tokens": 4, "n": 2, "steps": 8, "seed": 5});
    let whole = post(port, fields.clone()).2;
    let mut streamed = fields;
    streamed["stream"] = json!(true);
    streamed["every"] = json!(2);
    let body = streamed.to_string();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let raw = common::http::raw(port, request.as_bytes(), std::time::Duration::from_secs(120));
    let (head, events) = raw.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") && head.to_lowercase().contains("content-type: text/event-stream"),
        "{head}"
    );
    // chunked transfer: the data lines are whole inside the chunks
    let data: Vec<&str> = events.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{events}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let (steps, last) = chunks.split_at(chunks.len() - 1);
    let reported: Vec<u64> = steps.iter().map(|c| c["dlm_step"]["step"].as_u64().unwrap()).collect();
    assert_eq!(reported, [2, 4, 6, 8], "every 2nd of 8 steps");
    for chunk in &chunks {
        assert_eq!((chunk["object"].as_str(), chunk["model"].as_str()), (Some("text_completion"), Some("e2e")));
        assert_eq!(chunk["id"], chunks[0]["id"], "one id");
    }
    assert!(steps.iter().all(|c| c["choices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|ch| ch["text"] == "" && ch["finish_reason"].is_null())));
    assert!(steps.iter().all(|c| c["dlm_step"]["texts"].as_array().is_some_and(|t| t.len() == 2)));
    for index in 0..2 {
        let text: String = chunks.iter().map(|c| c["choices"][index]["text"].as_str().unwrap()).collect();
        assert_eq!(text, whole["choices"][index]["text"].as_str().unwrap(), "the deltas add up to the completion");
    }
    assert_eq!(last[0]["choices"][1]["finish_reason"], "length");
    assert_eq!((last[0]["usage"].clone(), last[0]["seed"].as_u64()), (whole["usage"].clone(), Some(5)));
    // an error before the first step is answered whole, with its status
    let (status, _, error) = post(port, json!({"model": "e2e", "stream": true, "steps": 0}));
    assert_eq!((status, error["error"]["code"].as_str()), (422, Some("invalid_argument")), "{error}");
    let (status, _, error) = post(port, json!({"model": "e2e", "every": 2}));
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("invalid_argument")),
        "every without stream: {error}"
    );
}

#[test]
fn the_served_openapi_document_is_the_committed_one() {
    let (_server, port) = start(&[]);
    let raw = common::http::raw(
        port,
        b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(30),
    );
    let (head, served) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200") && head.to_lowercase().contains("application/json"), "{head}");
    let committed = std::fs::read_to_string(common::repo_path("docs/openapi.json")).unwrap();
    assert!(
        committed.trim_end() == served,
        "docs/openapi.json is stale: `curl -s 127.0.0.1:PORT/openapi.json > docs/openapi.json` with a server of this build"
    );
    let document: Value = serde_json::from_str(served).unwrap();
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for path in ["/v1/generate", "/health", "/v1/info", "/metrics", "/v1/models", "/v1/models/{id}", "/v1/completions"]
    {
        assert!(document["paths"].get(path).is_some(), "{path}");
    }
}

#[test]
fn an_api_key_guards_every_http_route_but_health_and_not_the_line_transports() {
    let key = "k3y-for-tests";
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = Server::start(&["--http", &addr], &[("DLM_API_KEY", key)]);
    let bearer = format!("Authorization: Bearer {key}");
    assert_eq!(http(port, "GET", "/health", b"").0, 200, "health is open to probes");
    let generate = json!({"steps": 2}).to_string();
    for (method, path, body, openai) in [
        ("POST", "/v1/generate", generate.as_str(), false),
        ("GET", "/v1/info", "", false),
        ("GET", "/openapi.json", "", false),
        ("GET", "/nowhere", "", false),
        ("GET", "/v1/models", "", true),
        ("POST", "/v1/completions", r#"{"model": "e2e", "steps": 2}"#, true),
    ] {
        for headers in [&[][..], &["Authorization: Bearer wrong"][..], &[&*format!("Authorization: Basic {key}")][..]] {
            let (status, head, answer) = http_with(port, method, path, headers, body.as_bytes());
            assert_eq!(status, 401, "{path} {headers:?}: {answer}");
            assert!(head.contains("www-authenticate: bearer"), "{head}");
            assert_eq!(answer["error"]["code"], "unauthorized");
            assert_eq!(answer["error"]["type"].is_string(), openai, "OpenAI's shape on its routes only: {answer}");
            assert!(!answer.to_string().contains(key));
        }
        let (status, _, answer) = http_with(port, method, path, &[&bearer], body.as_bytes());
        let expected = if path == "/nowhere" { 404 } else { 200 };
        assert_eq!(status, expected, "{path} with the key: {answer}");
    }
    let raw = common::http::raw(
        port,
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{bearer}\r\nConnection: close\r\n\r\n").as_bytes(),
        std::time::Duration::from_secs(30),
    );
    assert!(raw.starts_with("HTTP/1.1 200") && raw.contains("dlm_requests_total"), "{raw}");
    assert_eq!(http(port, "GET", "/metrics", b"").0, 401);
    let mut line = server.tcp();
    line.send(&json!({"id": 1, "steps": 2}));
    let answer = line.recv();
    assert_eq!(answer["ok"], true, "the line protocol has no key: {answer}");
}

#[test]
fn an_empty_unsendable_or_useless_key_is_refused_at_start_and_never_shown() {
    let dlm = env!("CARGO_BIN_EXE_dlm");
    let addr = format!("127.0.0.1:{}", free_port());
    for (args, env, says) in [
        (vec!["--http", &addr, "--api-key", ""], None, "is empty"),
        (vec!["--http", &addr], Some(""), "is empty"),
        (vec!["--http", &addr, "--api-key", "two words"], None, "visible ASCII"),
        (vec!["--stdio", "--api-key", "s3cret"], None, "no --http"),
    ] {
        let mut cmd = Command::new(dlm);
        cmd.arg("serve").args(&args).env_remove("DLM_API_KEY");
        if let Some(value) = env {
            cmd.env("DLM_API_KEY", value);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains("s3cret") && !stderr.contains("two words"), "{stderr}");
    }
    let help = Command::new(dlm).args(["serve", "--help"]).env("DLM_API_KEY", "s3cret").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("DLM_API_KEY") && !help.contains("s3cret"), "{help}");
}
