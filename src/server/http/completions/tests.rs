//! OpenAI's completion requests as dlm reads them: each error names its field, with dlm's code
//! and status; prompts become infill templates or lengths.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::{translate, Prompt};
use crate::server::http::errors::Refusal;
use crate::server::http::models::ModelCard;

fn card() -> ModelCard {
    ModelCard { id: "e2e".into(), created: 0, seq_len: 64 }
}

fn line(request: Value) -> (Value, Prompt, bool) {
    let t = translate(request.to_string().as_bytes(), &card(), "cmpl-1").unwrap_or_else(|r| panic!("{r:?}"));
    (serde_json::from_slice(&t.line).unwrap(), t.prompt, t.fixed_length)
}

fn refusal(request: Value) -> Refusal {
    translate(request.to_string().as_bytes(), &card(), "cmpl-1").unwrap_err()
}

#[test]
fn prompts_become_templates_and_lengths() {
    let (l, prompt, fixed) =
        line(json!({"model": "e2e", "prompt": "The Eagle is", "max_tokens": 3, "n": 2, "seed": 9}));
    assert_eq!(l, json!({"id": "cmpl-1", "num": 2, "seed": 9, "infill": "The Eagle is _ _ _"}));
    assert_eq!((prompt, fixed), (Prompt::Left(vec!["The".into(), "Eagle".into(), "is".into()]), true));
    let (l, _, _) = line(json!({"model": "e2e", "prompt": ["The Eagle"]}));
    assert_eq!(l["infill"].as_str().unwrap().split(' ').filter(|w| *w == "_").count(), 16, "OpenAI's default");
    let (l, prompt, fixed) =
        line(json!({"model": "e2e", "prompt": "The _ is _ .", "steps": 5, "content": "food=Italian"}));
    assert_eq!(l, json!({"id": "cmpl-1", "num": 1, "infill": "The _ is _ .", "steps": 5, "content": "food=Italian"}));
    assert_eq!((prompt, fixed), (Prompt::Template { held: 3 }, false));
    let (l, prompt, fixed) =
        line(json!({"model": "e2e", "prompt": "", "max_tokens": 62, "temperature": 1, "top_p": 1.0,
                                          "stop": [], "logit_bias": {}, "best_of": 1, "user": "u", "stream": false}));
    assert_eq!((l, prompt, fixed), (json!({"id": "cmpl-1", "num": 1, "length": 62}), Prompt::Free, true));
    let (l, _, fixed) = line(json!({"model": "e2e"}));
    assert_eq!((l, fixed), (json!({"id": "cmpl-1", "num": 1}), false));
    let request = json!({"model": "e2e", "stream": true, "every": 5, "stream_options": {"include_usage": true}});
    let t = translate(request.to_string().as_bytes(), &card(), "cmpl-1").unwrap();
    let l: Value = serde_json::from_slice(&t.line).unwrap();
    assert_eq!((l, t.stream), (json!({"id": "cmpl-1", "num": 1, "stream": true, "every": 5}), true));
}

#[test]
fn each_error_names_its_field_with_dlms_code_and_status() {
    let bad = StatusCode::BAD_REQUEST;
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    for (request, status, code, param, says) in [
        (json!({"model": "e2e", "colour": "red"}), bad, "bad_request", Some("colour"), "steps"),
        (json!({"model": "e2e", "length": 5}), bad, "bad_request", Some("length"), "max_tokens"),
        (json!({"prompt": "x"}), bad, "bad_request", None, "model"),
        (json!({"model": "gpt-4"}), StatusCode::NOT_FOUND, "bad_request", Some("model"), "e2e"),
        (json!({"model": "e2e", "max_tokens": "ten"}), bad, "bad_request", Some("max_tokens"), "invalid type"),
        (json!({"model": "e2e", "temperature": 0.7}), bad, "bad_request", Some("temperature"), "does not sample"),
        (json!({"model": "e2e", "top_p": 0.9}), bad, "bad_request", Some("top_p"), "does not sample"),
        (json!({"model": "e2e", "presence_penalty": 1}), bad, "bad_request", Some("presence_penalty"), "block_repeats"),
        (json!({"model": "e2e", "best_of": 4}), bad, "bad_request", Some("best_of"), "rerank"),
        (json!({"model": "e2e", "logprobs": 2}), bad, "bad_request", Some("logprobs"), "probabilities"),
        (json!({"model": "e2e", "stop": ["."]}), bad, "bad_request", Some("stop"), "whole"),
        (json!({"model": "e2e", "suffix": "near the river"}), bad, "bad_request", Some("suffix"), "infill template"),
        (
            json!({"model": "e2e", "stream_options": {"include_usage": true}}),
            bad,
            "bad_request",
            Some("stream_options"),
            "only with stream",
        ),
        (
            json!({"model": "e2e", "stream": true, "stream_options": {"x": 1}}),
            bad,
            "bad_request",
            Some("stream_options"),
            "include_usage",
        ),
        (json!({"model": "e2e", "prompt": ["a", "b"]}), bad, "bad_request", Some("prompt"), "2 prompts"),
        (json!({"model": "e2e", "prompt": [[1, 2]]}), bad, "bad_request", Some("prompt"), "token-id"),
        (json!({"model": "e2e", "prompt": []}), bad, "bad_request", Some("prompt"), "empty"),
        (json!({"model": "e2e", "steps": "many"}), bad, "bad_request", Some("steps"), "invalid type"),
        (json!({"model": "e2e", "n": 0}), invalid, "invalid_argument", Some("n"), "at least 1"),
        (json!({"model": "e2e", "max_tokens": 0}), invalid, "invalid_argument", Some("max_tokens"), "at least 1"),
        (json!({"model": "e2e", "max_tokens": 63}), invalid, "invalid_argument", Some("max_tokens"), "1..=62"),
        (
            json!({"model": "e2e", "prompt": "a b", "max_tokens": 61}),
            invalid,
            "invalid_argument",
            Some("max_tokens"),
            "1..=60",
        ),
        (
            json!({"model": "e2e", "prompt": "_ _ _", "max_tokens": 2}),
            invalid,
            "invalid_argument",
            Some("max_tokens"),
            "3 blanks",
        ),
    ] {
        let r = refusal(request.clone());
        assert_eq!((r.status, r.code.as_str(), r.param.as_deref()), (status, code, param), "{request}: {}", r.message);
        assert!(r.message.contains(says), "{request}: {}", r.message);
    }
    let long = vec!["a"; 62].join(" ");
    let r = refusal(json!({"model": "e2e", "prompt": long}));
    assert_eq!((r.status, r.param.as_deref()), (invalid, Some("prompt")), "{}", r.message);
    assert_eq!(refusal(json!([1])).status, bad);
    assert!(translate(b"{", &card(), "x").unwrap_err().message.contains("not valid JSON"));
}
