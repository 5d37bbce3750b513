//! The engine's answer to a translated completion request as OpenAI's completion object (or
//! its error), with `usage` counted in the model's word-level tokens.

use std::time::{SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::completions::{Prompt, Translated};
use super::errors::{json_response, refused, status_of, Plain, Shape};
use super::models::ModelCard;
use crate::server::queue::Answer;

/// OpenAI's completion object.
#[derive(Debug, Serialize, ToSchema)]
pub struct Completion {
    /// `cmpl-` and 32 hex digits, also the id of the generate request it was answered as.
    pub id: String,
    /// Always `text_completion`.
    pub object: String,
    /// Unix time of the answer.
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
    /// dlm's: the seed that replays these completions.
    pub seed: u64,
    /// dlm's: the request's timings, as `POST /v1/generate` gives them.
    #[schema(value_type = Object)]
    pub timings: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Choice {
    /// After a left context: what follows it, with a leading space (so that prompt + text is
    /// the sentence), or with `echo` the whole sentence; otherwise the whole sentence.
    pub text: String,
    pub index: usize,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    /// `length` when `max_tokens` (or its default after a left context) fixed the length,
    /// `stop` when the model or the template ended the sentence.
    pub finish_reason: String,
}

/// Tokens of the model's word-level vocabulary: `prompt_tokens` the prompt's words (a
/// template's fixed words; each is one token, an unknown word is an error), `completion_tokens`
/// the words written, over all choices (each sentence's words less the prompt's).
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// A new completion's id.
pub(super) fn completion_id() -> String {
    format!("cmpl-{:032x}", rand::random::<u128>())
}

/// The HTTP answer of `answer`, the engine's reply to `request`.
pub(super) fn answer(answer: Answer, request: &Translated, card: &ModelCard, id: String) -> Plain {
    let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    if let Some(code) = answer.code {
        let message = body["error"]["message"].as_str().unwrap_or("the request failed");
        return refused(Shape::OpenAi, status_of(Some(code)), code.as_str(), message, None);
    }
    match completion(&body, request, card, id) {
        Ok(completion) => json_response(StatusCode::OK, serde_json::to_string(&completion).unwrap_or_default()),
        Err(why) => {
            let message = format!("{why} (a bug: please report it)");
            refused(Shape::OpenAi, StatusCode::INTERNAL_SERVER_ERROR, "internal", &message, None)
        }
    }
}

/// Unix time now, in seconds.
pub(super) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// OpenAI's completion of a generate answer (`{"results": [{"text", "tokens"}], "seed", "timings"}`).
pub(super) fn completion(
    body: &Value,
    request: &Translated,
    card: &ModelCard,
    id: String,
) -> Result<Completion, String> {
    let results = body["results"].as_array().ok_or("the engine's answer has no results")?;
    let held = match &request.prompt {
        Prompt::Free => 0,
        Prompt::Left(words) => words.len(),
        Prompt::Template { held } => *held,
    };
    let finish_reason = if request.fixed_length { "length" } else { "stop" };
    let (mut choices, mut written) = (Vec::with_capacity(results.len()), 0usize);
    for (index, result) in results.iter().enumerate() {
        let tokens: Vec<&str> = match result["tokens"].as_array() {
            Some(tokens) => tokens.iter().filter_map(Value::as_str).collect(),
            None => return Err("a result without tokens".into()),
        };
        let new = tokens.len().checked_sub(held).ok_or("a sentence shorter than its prompt")?;
        written = written.checked_add(new).ok_or("too many tokens to count")?;
        let text = match &request.prompt {
            Prompt::Left(words) if !request.echo => {
                if tokens.iter().zip(words).any(|(t, w)| t != w) {
                    return Err(format!("the sentence {:?} does not begin with the prompt", tokens.join(" ")));
                }
                let rest = tokens[held..].join(" ");
                if rest.is_empty() {
                    rest
                } else {
                    format!(" {rest}")
                }
            }
            _ => tokens.join(" "),
        };
        choices.push(Choice { text, index, logprobs: None, finish_reason: finish_reason.into() });
    }
    let created = now();
    let total = held.checked_add(written).ok_or("too many tokens to count")?;
    Ok(Completion {
        id,
        object: "text_completion".into(),
        created,
        model: card.id.clone(),
        choices,
        usage: Usage { prompt_tokens: held, completion_tokens: written, total_tokens: total },
        seed: body["seed"].as_u64().ok_or("the engine's answer has no seed")?,
        timings: body["timings"].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn translated(prompt: Prompt, echo: bool, fixed_length: bool) -> Translated {
        Translated { line: Vec::new(), prompt, echo, fixed_length, stream: false, choices: 2 }
    }

    #[test]
    fn a_left_context_is_cut_from_the_text_and_counted_once() {
        let card = ModelCard { id: "e2e".into(), created: 0, seq_len: 64 };
        let body = json!({"results": [{"text": "The Eagle is cheap .", "tokens": ["The", "Eagle", "is", "cheap", "."]},
                                      {"text": "The Eagle serves food", "tokens": ["The", "Eagle", "serves", "food"]}],
                          "seed": 7, "timings": {"steps": 3}});
        let left = translated(Prompt::Left(vec!["The".into(), "Eagle".into()]), false, true);
        let c = completion(&body, &left, &card, "cmpl-1".into()).unwrap();
        assert_eq!(c.choices.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(), [" is cheap .", " serves food"]);
        assert_eq!((c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens), (2, 5, 7));
        assert_eq!((c.choices[1].index, c.choices[0].finish_reason.as_str(), c.seed), (1, "length", 7));
        let echoed = completion(&body, &translated(left.prompt.clone(), true, true), &card, "x".into()).unwrap();
        assert_eq!(echoed.choices[0].text, "The Eagle is cheap .");
        let free = completion(&body, &translated(Prompt::Free, false, false), &card, "x".into()).unwrap();
        assert_eq!((free.usage.completion_tokens, free.choices[0].finish_reason.as_str()), (9, "stop"));
        let other = translated(Prompt::Left(vec!["A".into()]), false, true);
        assert!(completion(&body, &other, &card, "x".into()).unwrap_err().contains("does not begin"));
    }
}
