//! The fields `POST /v1/completions` takes: OpenAI's, and dlm's own controls beside them,
//! passed to the generate request as the line protocol reads them (and checked by its parser).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// OpenAI's fields of a completion request (their meaning here: docs/serve.md).
pub(super) const OPENAI_FIELDS: [&str; 18] = [
    "model",
    "prompt",
    "max_tokens",
    "n",
    "seed",
    "stream",
    "echo",
    "user",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "best_of",
    "logprobs",
    "logit_bias",
    "stop",
    "suffix",
    "stream_options",
];

/// dlm's fields a completion request may carry (the rest of a generate request's fields come
/// from OpenAI's: `num` from `n`, `length` from `max_tokens`, `infill` from `prompt`, `stream`
/// from `stream`).
pub(super) const DLM_FIELDS: [&str; 18] = [
    "steps",
    "sampler",
    "eta",
    "pos",
    "content",
    "span",
    "tree",
    "length_hold",
    "guide_steps",
    "guide_lambda",
    "guide_lr",
    "guide_weight",
    "mbr",
    "rerank",
    "rerank_by",
    "block_repeats",
    "timeout_ms",
    "every",
];

/// dlm's controls, as in `POST /v1/generate` (docs/generate.md).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct DlmFields {
    /// Denoising steps, 1..=T (the latency budget); default `--steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub steps: Option<Value>,
    /// `ddpm` (default) or `ddim`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub sampler: Option<Value>,
    /// DDIM's eta in [0, 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub eta: Option<Value>,
    /// One UPOS tag per word, e.g. `PROPN AUX DET ADJ NOUN`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub pos: Option<Value>,
    /// A `field=value` pair, or a list of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub content: Option<Value>,
    /// `i,j,LABEL` (words i..=j form a phrase), or a list of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub span: Option<Value>,
    /// A dependency tree, `HEAD:LABEL` per word (heads 1-based, 0 the root); fixes the length.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tree: Option<Value>,
    /// `full` (default) or `ends`: which positions a fixed length holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub length_hold: Option<Value>,
    /// Guidance steps K: a number for all controls or an object such as `{"content": 5}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub guide_steps: Option<Value>,
    /// Guidance lambda: a number or an object by control.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub guide_lambda: Option<Value>,
    /// Guidance step size: a number or an object by control.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub guide_lr: Option<Value>,
    /// Weight of a control's loss: a number or an object by control.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub guide_weight: Option<Value>,
    /// Minimum Bayes risk decoding over this many samples per completion.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub mbr: Option<Value>,
    /// Best of this many samples per completion.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub rerank: Option<Value>,
    /// `controls`, `fluency` or `both`: what rerank compares.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub rerank_by: Option<Value>,
    /// Block repeated words and 3-grams (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<bool>)]
    pub block_repeats: Option<Value>,
    /// The request's deadline in ms from its arrival, at most `--timeout-ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub timeout_ms: Option<Value>,
    /// With `stream`: a step chunk every this many steps (and at the last); default
    /// ceil(steps / 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub every: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FIELDS;

    #[test]
    fn dlm_fields_are_generate_fields_and_all_pass_through() {
        assert!(DLM_FIELDS.iter().all(|f| FIELDS.contains(f)), "each is a generate request's field");
        let every: serde_json::Map<String, Value> =
            DLM_FIELDS.iter().map(|f| (f.to_string(), Value::from(1))).collect();
        let fields: DlmFields = serde_json::from_value(Value::Object(every.clone())).unwrap();
        assert_eq!(serde_json::to_value(&fields).unwrap(), Value::Object(every), "DLM_FIELDS = DlmFields' fields");
        assert!(OPENAI_FIELDS.iter().all(|f| !DLM_FIELDS.contains(f)));
    }
}
