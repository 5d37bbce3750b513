//! `POST /v1/completions` as dlm reads it: OpenAI's completion request checked and translated
//! into the object of a generate request line (the same parser, queue and engine as every
//! other request), and the answer translated back into OpenAI's completion object. What each
//! OpenAI field means here: docs/serve.md.

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::errors::Refusal;
use super::fields::{DlmFields, DLM_FIELDS, OPENAI_FIELDS};
use super::models::ModelCard;
use crate::protocol::{ErrorCode, GenerateParams};

/// Words written after a left context when `max_tokens` is not given (OpenAI's default).
pub const DEFAULT_MAX_TOKENS: usize = 16;

/// OpenAI's completion request, with dlm's own fields beside it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// The model's id as `GET /v1/models` lists it.
    pub model: String,
    /// A left context the sentence begins with (words of the vocabulary), or, when a word is
    /// `_`, an infill template (`_` for each word to write). A list of one string is the same.
    /// Absent or empty: no constraint.
    #[schema(value_type = Option<String>)]
    pub prompt: Option<Value>,
    /// Words to write: after a left context exactly this many (default 16); without a prompt
    /// the sentence's length (default: the model chooses); with a template at least its blanks.
    pub max_tokens: Option<u64>,
    /// Completions of the prompt (dlm's `num`), default 1.
    pub n: Option<u64>,
    /// Fixes the output; without it a random seed is drawn and returned in `seed`.
    pub seed: Option<u64>,
    /// Stream OpenAI's chunks as Server-Sent Events: one per reported step (texts "", the
    /// step in `dlm_step`), then the texts with their finish reasons and the usage, then `[DONE]`.
    pub stream: Option<bool>,
    /// Return the prompt and its completion as the text.
    pub echo: Option<bool>,
    /// The end user, for the log (at debug level).
    pub user: Option<String>,
    /// Only 1: dlm does not sample from a token distribution.
    pub temperature: Option<f64>,
    /// Only 1: dlm does not sample from a token distribution.
    pub top_p: Option<f64>,
    /// Only 0 (dlm blocks repeats with `block_repeats`).
    pub presence_penalty: Option<f64>,
    /// Only 0 (dlm blocks repeats with `block_repeats`).
    pub frequency_penalty: Option<f64>,
    /// Only n (one sample per completion); best of S is dlm's `rerank`.
    pub best_of: Option<u64>,
    /// Only null: dlm gives no token probabilities.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    /// Only empty.
    #[schema(value_type = Option<Object>)]
    pub logit_bias: Option<Map<String, Value>>,
    /// Only null or empty: dlm writes the sentence whole.
    #[schema(value_type = Option<Vec<String>>)]
    pub stop: Option<Value>,
    /// Only null or "": write an infill template in `prompt` instead.
    pub suffix: Option<String>,
    /// With `stream`: only `include_usage` (the last chunk always carries the usage).
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<Value>,
    #[serde(flatten)]
    pub dlm: DlmFields,
}

/// How the prompt constrains the sentence, for reading the answer back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Prompt {
    /// No prompt: the whole sentence is the completion.
    Free,
    /// The sentence begins with these words; the completion is what follows.
    Left(Vec<String>),
    /// An infill template with this many fixed words: the completion is the whole sentence.
    Template { held: usize },
}

/// A request ready for the queue, and what reading its answer needs.
#[derive(Debug)]
pub(super) struct Translated {
    /// The generate request line.
    pub(super) line: Vec<u8>,
    pub(super) prompt: Prompt,
    pub(super) echo: bool,
    /// Whether `max_tokens` fixed the length (finish reason `length`, else `stop`).
    pub(super) fixed_length: bool,
    /// Answered as OpenAI's chunks (Server-Sent Events).
    pub(super) stream: bool,
    /// Completions asked for (`n`).
    pub(super) choices: usize,
}

/// Check `body` and translate it into a generate request line with id `id`.
pub(super) fn translate(body: &[u8], card: &ModelCard, id: &str) -> Result<Translated, Refusal> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Refusal::bad(None, format!("not valid JSON: {e}")))?;
    let Value::Object(fields) = &value else {
        return Err(Refusal::bad(None, "a completion request is a JSON object, e.g. {\"model\": \"e2e\"}"));
    };
    if let Some(unknown) =
        fields.keys().find(|k| !OPENAI_FIELDS.contains(&k.as_str()) && !DLM_FIELDS.contains(&k.as_str()))
    {
        let message = format!(
            "unknown field {unknown:?}; OpenAI's fields: {}; dlm's: {}",
            OPENAI_FIELDS.join(", "),
            DLM_FIELDS.join(", ")
        );
        return Err(Refusal::bad(Some(unknown), message));
    }
    let request: CompletionRequest = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        Refusal::bad((path != ".").then_some(path.as_str()), e.to_string())
    })?;
    if request.model != card.id {
        let message = format!("no model {:?}; this server serves {:?} (GET /v1/models)", request.model, card.id);
        return Err(Refusal::new(ErrorCode::BadRequest, Some("model"), message).not_found());
    }
    unsupported(&request)?;
    if let Some(user) = &request.user {
        log::debug!("{id}: for user {user:?}"); // OpenAI's end-user id, for the operator's logs
    }
    let n = match request.n {
        Some(0) => return Err(Refusal::new(ErrorCode::InvalidArgument, Some("n"), "n must be at least 1")),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX), // over --max-samples: the engine says so
        None => 1,
    };
    let words: Vec<String> = prompt_text(request.prompt)?.split_whitespace().map(str::to_string).collect();
    let (prompt, control) = constrain(words, request.max_tokens, card)?;
    let fixed_length = match prompt {
        Prompt::Template { .. } => false,
        Prompt::Left(_) => true,
        Prompt::Free => request.max_tokens.is_some(),
    };
    let mut line = match serde_json::to_value(&request.dlm) {
        Ok(Value::Object(line)) => line,
        _ => Map::new(),
    };
    line.insert("num".into(), Value::from(n));
    if let Some(seed) = request.seed {
        line.insert("seed".into(), Value::from(seed));
    }
    if let Some((name, value)) = control {
        line.insert(name.into(), value);
    }
    let stream = request.stream.unwrap_or(false);
    if stream {
        line.insert("stream".into(), Value::Bool(true));
    }
    let mut line = Value::Object(line);
    // dlm's fields checked as the line protocol reads them, the one at fault named
    serde_path_to_error::deserialize::<_, GenerateParams>(&line).map_err(|e| {
        let path = e.path().to_string();
        Refusal::bad((path != ".").then_some(path.as_str()), e.to_string())
    })?;
    line["id"] = Value::from(id);
    let echo = request.echo.unwrap_or(false);
    Ok(Translated { line: line.to_string().into_bytes(), prompt, echo, fixed_length, stream, choices: n })
}

/// A generate request's field and its value.
type Control = (&'static str, Value);

/// What the prompt's words and `max_tokens` ask of the sentence, and the generate field that
/// asks it (`infill` or `length`).
fn constrain(
    words: Vec<String>,
    max_tokens: Option<u64>,
    card: &ModelCard,
) -> Result<(Prompt, Option<Control>), Refusal> {
    let invalid = |param: &str, message: String| Refusal::new(ErrorCode::InvalidArgument, Some(param), message);
    let (max, seq_len) = (card.max_words(), card.seq_len);
    if words.iter().any(|w| w == "_") {
        let blanks = words.iter().filter(|w| *w == "_").count();
        if let Some(m) = max_tokens.filter(|&m| m < blanks as u64) {
            let message = format!("the infill template has {blanks} blanks to write; max_tokens {m} is fewer");
            return Err(invalid("max_tokens", message));
        }
        let held = words.len() - blanks;
        return Ok((Prompt::Template { held }, Some(("infill", Value::from(words.join(" "))))));
    }
    let p = words.len();
    let room = max.saturating_sub(p);
    if p > 0 && room == 0 {
        let message = format!("the prompt has {p} words; the model writes at most {max} (seq_len {seq_len} less START and END), one of them new");
        return Err(invalid("prompt", message));
    }
    let m = match max_tokens {
        Some(0) => return Err(invalid("max_tokens", "max_tokens must be at least 1".into())),
        Some(m) if m > room as u64 => {
            let after = if p > 0 { format!(" after a prompt of {p} words") } else { String::new() };
            let message = format!(
                "max_tokens {m}{after}: the model writes at most {max} words (seq_len {seq_len} less START and END); allowed 1..={room}"
            );
            return Err(invalid("max_tokens", message));
        }
        Some(m) => Some(m as usize), // at most room
        None if p > 0 => Some(DEFAULT_MAX_TOKENS.min(room)),
        None => None,
    };
    Ok(match m {
        Some(blanks) if p > 0 => {
            let template: Vec<&str> =
                words.iter().map(String::as_str).chain(std::iter::repeat_n("_", blanks)).collect();
            let infill = Value::from(template.join(" "));
            (Prompt::Left(words), Some(("infill", infill)))
        }
        Some(m) => (Prompt::Free, Some(("length", Value::from(m)))),
        None => (Prompt::Free, None),
    })
}

/// The prompt as one string: a string, or a list of one string.
fn prompt_text(prompt: Option<Value>) -> Result<String, Refusal> {
    let bad = |message: String| Refusal::bad(Some("prompt"), message);
    match prompt {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(items)) => match <[Value; 1]>::try_from(items) {
            Ok([Value::String(s)]) => Ok(s),
            Ok(_) => Err(bad("token-id prompts are not supported: give the prompt as a string of words".into())),
            Err(items) if items.is_empty() => Err(bad("an empty list: give one prompt string".into())),
            Err(items) => Err(bad(format!(
                "{} prompts: dlm completes one prompt per request (n asks for several completions of it)",
                items.len()
            ))),
        },
        Some(other) => Err(bad(format!("a string or a list of one string, got {other}"))),
    }
}

/// OpenAI's fields that dlm has no way to honour: only their neutral value is accepted.
fn unsupported(r: &CompletionRequest) -> Result<(), Refusal> {
    let no = |param: &str, why: &str| Err(Refusal::bad(Some(param), format!("{param}: {why}")));
    let sampling = "only 1 (OpenAI's default): dlm does not sample from a token distribution (a diffusion LM \
                    denoises the whole sentence); its own knobs are steps, sampler and eta";
    let penalty = "only 0: dlm blocks repeated words and 3-grams with block_repeats (default true)";
    match r {
        CompletionRequest { temperature: Some(t), .. } if *t != 1.0 => no("temperature", sampling),
        CompletionRequest { top_p: Some(p), .. } if *p != 1.0 => no("top_p", sampling),
        CompletionRequest { presence_penalty: Some(p), .. } if *p != 0.0 => no("presence_penalty", penalty),
        CompletionRequest { frequency_penalty: Some(p), .. } if *p != 0.0 => no("frequency_penalty", penalty),
        CompletionRequest { best_of: Some(b), .. } if *b != r.n.unwrap_or(1) => no(
            "best_of",
            "only n (one sample per completion): dlm's rerank S keeps the best of S samples per completion",
        ),
        CompletionRequest { logprobs: Some(_), .. } => no("logprobs", "only null: dlm gives no token probabilities"),
        CompletionRequest { logit_bias: Some(b), .. } if !b.is_empty() => {
            no("logit_bias", "only empty: dlm does not sample from token logits")
        }
        CompletionRequest { stop: Some(s), .. } if !matches!(s, Value::Array(a) if a.is_empty()) => {
            no("stop", "only null or []: dlm writes the sentence whole, there is nothing to stop")
        }
        CompletionRequest { suffix: Some(s), .. } if !s.is_empty() => no(
            "suffix",
            "only null or \"\": write an infill template in prompt instead (words, with _ for each word to write)",
        ),
        CompletionRequest { stream_options: Some(o), stream, .. }
            if *stream != Some(true) || !o.as_object().is_some_and(|o| o.keys().all(|k| k == "include_usage")) =>
        {
            no("stream_options", "only with stream true, and only include_usage (the last chunk carries the usage)")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
