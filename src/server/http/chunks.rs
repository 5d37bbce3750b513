//! `POST /v1/completions` with `stream: true`: OpenAI's completion chunks as Server-Sent
//! Events (`data: {...}` each, then `data: [DONE]`). A step event is a chunk whose choices'
//! texts are "" and whose `dlm_step` extension holds the step (`step`, `of`, `t` and the
//! rounded `texts` of every sequence); the last chunk carries each choice's text, its
//! `finish_reason` and the usage, so the texts of a choice's chunks add up to its completion.
//! An error after the first step is a chunk `{"error": {...}}` in OpenAI's shape, and the end.

use bytes::Bytes;
use serde_json::{json, Value};

use super::completion::completion;
use super::completions::Translated;
use super::errors::openai_error;
use super::events::Format;
use super::models::ModelCard;
use crate::server::queue::Answer;

/// The chunks of one completion request.
pub(super) struct Chunks {
    id: String,
    created: u64,
    card: ModelCard,
    request: Translated,
}

impl Chunks {
    pub(super) fn new(id: String, card: ModelCard, request: Translated) -> Self {
        Self { id, created: super::completion::now(), card, request }
    }

    /// A chunk of `choices`.
    fn chunk(&self, choices: Value) -> Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.card.id,
               "choices": choices})
    }
}

fn data(text: &str) -> Bytes {
    Bytes::from(format!("data: {text}\n\n"))
}

impl Format for Chunks {
    fn step(&mut self, step: &str) -> Bytes {
        let step: Value = serde_json::from_str(step).unwrap_or(Value::Null);
        let choices: Vec<Value> = (0..self.request.choices)
            .map(|index| json!({"text": "", "index": index, "logprobs": null, "finish_reason": null}))
            .collect();
        let mut chunk = self.chunk(Value::from(choices));
        chunk["dlm_step"] = json!({"step": step["step"], "of": step["of"], "t": step["t"], "texts": step["texts"]});
        data(&chunk.to_string())
    }

    fn answer(&mut self, answer: Answer) -> Bytes {
        let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        let failed = |code: &str, message: &str| data(&openai_error(code, message, None));
        if let Some(code) = answer.code {
            return failed(code.as_str(), body["error"]["message"].as_str().unwrap_or("the request failed"));
        }
        match completion(&body, &self.request, &self.card, self.id.clone()) {
            Ok(done) => {
                // the texts, finish reasons, usage and dlm's seed and timings on the last chunk
                let mut chunk = self.chunk(serde_json::to_value(&done.choices).unwrap_or_default());
                chunk["usage"] = serde_json::to_value(&done.usage).unwrap_or_default();
                chunk["seed"] = Value::from(done.seed);
                chunk["timings"] = done.timings;
                let mut last = data(&chunk.to_string()).to_vec();
                last.extend_from_slice(b"data: [DONE]\n\n");
                Bytes::from(last)
            }
            Err(why) => failed("internal", &format!("{why} (a bug: please report it)")),
        }
    }
}
