//! dlm's own request and answer objects as OpenAPI schemas, from tables of their fields (the
//! generate request's table is checked against the parser's field list, so it cannot fall
//! behind it).

use utoipa::openapi::schema::RefBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};

/// What a field holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Any,
    Bool,
    Integer,
    Number,
    Str,
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// A string or a list of strings.
    Strings,
    /// A list of strings.
    List,
    /// A number for every control, or an object of numbers by control.
    ByControl,
    /// An object (its fields in docs/serve.md).
    Object,
    /// A component.
    Component(&'static str),
    /// A list of a component.
    ListOf(&'static str),
}

type Field = (&'static str, Kind, &'static str);

/// A generate request (`POST /v1/generate`, a request line).
const GENERATE: [Field; 25] = [
    ("id", Kind::Any, "Echoed in the answer (any JSON value)."),
    (
        "op",
        Kind::Enum(&["generate", "health", "metrics"]),
        "What to do (default generate); HTTP has routes for the others.",
    ),
    ("steps", Kind::Integer, "Denoising steps, 1..=T (the latency budget); default --steps."),
    ("seed", Kind::Integer, "Fixes the output; without it a random one is drawn and returned."),
    ("num", Kind::Integer, "Sentences, default 1."),
    ("sampler", Kind::Enum(&["ddpm", "ddim"]), "Default ddpm."),
    ("eta", Kind::Number, "DDIM's eta in [0, 1]."),
    ("pos", Kind::Str, "One UPOS tag per word, e.g. PROPN AUX DET ADJ NOUN; fixes the length."),
    ("content", Kind::Strings, "field=value pairs the sentence must express."),
    ("length", Kind::Integer, "Exactly this many words."),
    ("length_hold", Kind::Enum(&["full", "ends"]), "Which positions a fixed length holds (default full)."),
    ("infill", Kind::Str, "Words with _ for each word to write, e.g. The Eagle is a _ _ near _ ."),
    ("span", Kind::Strings, "i,j,LABEL: words i..=j form a phrase of LABEL (NP, PP)."),
    ("tree", Kind::Str, "A dependency tree, HEAD:LABEL per word (heads 1-based, 0 the root); fixes the length."),
    ("guide_steps", Kind::ByControl, "Guidance steps K, for all controls or by control."),
    ("guide_lambda", Kind::ByControl, "Guidance lambda, for all controls or by control."),
    ("guide_lr", Kind::ByControl, "Guidance step size, for all controls or by control."),
    ("guide_weight", Kind::ByControl, "Weight of a control's loss, for all controls or by control."),
    ("mbr", Kind::Integer, "Minimum Bayes risk decoding over this many samples per sentence."),
    ("rerank", Kind::Integer, "Best of this many samples per sentence."),
    ("rerank_by", Kind::Enum(&["controls", "fluency", "both"]), "What rerank compares."),
    ("block_repeats", Kind::Bool, "Block repeated words and 3-grams (default true)."),
    ("timeout_ms", Kind::Integer, "Deadline in ms from arrival, at most --timeout-ms."),
    ("stream", Kind::Bool, "Step events before the answer (HTTP: Server-Sent Events)."),
    (
        "every",
        Kind::Integer,
        "With stream: a step event every this many steps and at the last (default ceil(steps / 20)).",
    ),
];

/// A step event of a streaming generate request (`event: step`; `event: done` then carries a
/// GenerateAnswer, `event: error` an Error).
const STEP: [Field; 6] = [
    ("id", Kind::Any, "The request's id."),
    ("event", Kind::Enum(&["step"]), "step."),
    ("step", Kind::Integer, "Steps done so far, 1..=of."),
    ("of", Kind::Integer, "The request's step budget."),
    ("t", Kind::Integer, "The model timestep of this step."),
    ("texts", Kind::List, "The rounded x0_hat of every sequence the request draws, in order (null: not started)."),
];

/// A chunk of a streaming completion (each event's `data`, then `[DONE]`).
const CHUNK: [Field; 9] = [
    ("id", Kind::Str, "The completion's id, the same in every chunk."),
    ("object", Kind::Enum(&["text_completion"]), "text_completion."),
    ("created", Kind::Integer, "Unix time of the first chunk."),
    ("model", Kind::Str, "The model's id."),
    ("choices", Kind::ListOf("ChunkChoice"), "Every choice: text \"\" in step chunks, the completion in the last."),
    ("dlm_step", Kind::Object, "In step chunks: step, of, t and texts (the rounded x0_hat of every sequence)."),
    ("usage", Kind::Component("Usage"), "In the last chunk."),
    ("seed", Kind::Integer, "In the last chunk: the seed that replays the completions."),
    ("timings", Kind::Object, "In the last chunk: the request's timings."),
];

const CHUNK_CHOICE: [Field; 4] = [
    ("text", Kind::Str, "\"\" until the last chunk, which carries the completion's text."),
    ("index", Kind::Integer, "The choice."),
    ("logprobs", Kind::Any, "null."),
    ("finish_reason", Kind::Any, "null until the last chunk: length or stop."),
];

const GENERATE_ANSWER: [Field; 6] = [
    ("id", Kind::Any, "The request's id."),
    ("ok", Kind::Bool, "true."),
    ("texts", Kind::List, "The sentences."),
    ("results", Kind::ListOf("GenerateResult"), "Each sentence with its words."),
    ("seed", Kind::Integer, "The seed that replays the answer."),
    ("timings", Kind::Component("Timings"), "Where the time went."),
];

const RESULT: [Field; 3] = [
    ("text", Kind::Str, "The sentence."),
    ("tokens", Kind::List, "Its words (no START, END, PAD)."),
    ("lm_nll", Kind::Number, "Mean next-token NLL under the model's language model, when a rerank scored fluency."),
];

const TIMINGS: [Field; 7] = [
    ("queue_ms", Kind::Number, "Waiting for the inference thread."),
    ("run_ms", Kind::Number, "From its first sequence joining the batch to the answer."),
    ("total_ms", Kind::Number, "From arrival to the answer."),
    ("steps", Kind::Integer, "Denoising steps run."),
    ("denoiser_ms", Kind::Number, "Its share of the batched denoiser calls."),
    ("guidance_ms", Kind::Number, "Its share of the guidance graph calls."),
    ("host_ms", Kind::Number, "Its share of the rest of the iterations."),
];

const ERROR: [Field; 3] = [
    ("id", Kind::Any, "The request's id when it could be read, else null."),
    ("ok", Kind::Bool, "false."),
    ("error", Kind::Component("ErrorBody"), "What went wrong."),
];

const CODES: &[&str] = &[
    "bad_request",
    "invalid_argument",
    "too_large",
    "busy",
    "timeout",
    "shutting_down",
    "internal",
    "loading",
    "unauthorized",
];

const ERROR_BODY: [Field; 2] = [
    ("code", Kind::Enum(CODES), "Stable: clients switch on it (loading and unauthorized: HTTP only)."),
    ("message", Kind::Str, "What was wrong and what is allowed."),
];

const HEALTH: [Field; 4] = [
    ("id", Kind::Any, "null."),
    ("ok", Kind::Bool, "true when the state could be read (false while loading, with error)."),
    (
        "health",
        Kind::Object,
        "status, model, queue_depth, queue_capacity, busy, active_sequences, max_batch, \
                              engine_alive, served, uptime_s (docs/serve.md).",
    ),
    ("error", Kind::Component("ErrorBody"), "While loading: code loading."),
];

const INFO: [Field; 5] = [
    ("version", Kind::Str, "dlm's version."),
    ("model", Kind::Object, "dir, precision, provider, controls, seq_len, max_steps."),
    ("provider", Kind::Str, "The execution provider the denoiser runs on."),
    ("graphs", Kind::Object, "Each graph's name, role and sha256 (a list)."),
    ("controls", Kind::Object, "Each control's labels."),
];

fn schema(kind: Kind, description: &str) -> RefOr<Schema> {
    let described = |t: Type| ObjectBuilder::new().schema_type(t).description(Some(description)).into();
    let strings = || ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String));
    match kind {
        Kind::Any => ObjectBuilder::new().description(Some(description)).into(),
        Kind::Bool => described(Type::Boolean),
        Kind::Integer => described(Type::Integer),
        Kind::Number => described(Type::Number),
        Kind::Str => described(Type::String),
        Kind::Object => described(Type::Object),
        Kind::Enum(names) => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(names.iter().copied()))
            .description(Some(description))
            .into(),
        Kind::List => strings().description(Some(description)).into(),
        Kind::Strings => OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(strings())
            .description(Some(description))
            .into(),
        Kind::ByControl => OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().additional_properties(Some(ObjectBuilder::new().schema_type(Type::Number))))
            .description(Some(description))
            .into(),
        Kind::Component(name) => {
            RefBuilder::new().ref_location_from_schema_name(name).description(Some(description)).into()
        }
        Kind::ListOf(name) => {
            ArrayBuilder::new().items(Ref::from_schema_name(name)).description(Some(description)).into()
        }
    }
}

fn object(fields: &[Field], required: &[&str], description: &str) -> Schema {
    let mut object = ObjectBuilder::new().schema_type(Type::Object).description(Some(description));
    for (name, kind, about) in fields {
        object = object.property(*name, schema(*kind, about));
    }
    for name in required {
        object = object.required(*name);
    }
    object.into()
}

/// dlm's schemas by component name.
pub(super) fn dlm() -> Vec<(&'static str, Schema)> {
    vec![
        ("GenerateRequest", object(&GENERATE, &[], "A generate request (docs/generate.md); unknown fields are errors")),
        (
            "GenerateAnswer",
            object(&GENERATE_ANSWER, &["id", "ok", "texts", "results", "seed", "timings"], "A generate answer"),
        ),
        ("GenerateResult", object(&RESULT, &["text", "tokens"], "One sentence")),
        ("Timings", object(&TIMINGS, &[], "A request's timings")),
        ("Error", object(&ERROR, &["id", "ok", "error"], "dlm's error answer")),
        ("ErrorBody", object(&ERROR_BODY, &["code", "message"], "An error's code and message")),
        ("Health", object(&HEALTH, &["ok"], "The service's state")),
        ("Info", object(&INFO, &[], "The version, the model and its graphs")),
        ("StepEvent", object(&STEP, &["id", "event", "step", "of", "t", "texts"], "A step event")),
        (
            "CompletionChunk",
            object(&CHUNK, &["id", "object", "created", "model", "choices"], "A streaming completion's chunk"),
        ),
        ("ChunkChoice", object(&CHUNK_CHOICE, &["text", "index", "logprobs", "finish_reason"], "A chunk's choice")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, FIELDS};

    #[test]
    fn the_generate_request_has_the_parsers_fields_and_the_codes_are_dlms() {
        let names: Vec<&str> = GENERATE.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(names[..2], ["id", "op"]);
        assert_eq!(names[2..], FIELDS, "a field added to the protocol is added here");
        let codes = [
            ErrorCode::BadRequest,
            ErrorCode::InvalidArgument,
            ErrorCode::TooLarge,
            ErrorCode::Busy,
            ErrorCode::Timeout,
            ErrorCode::ShuttingDown,
            ErrorCode::Internal,
        ];
        assert_eq!(codes.map(ErrorCode::as_str)[..], CODES[..7]);
        // a code added to the protocol does not compile here until it is listed above
        let _listed = |code: ErrorCode| match code {
            ErrorCode::BadRequest
            | ErrorCode::InvalidArgument
            | ErrorCode::TooLarge
            | ErrorCode::Busy
            | ErrorCode::Timeout
            | ErrorCode::ShuttingDown
            | ErrorCode::Internal => (),
        };
    }
}
