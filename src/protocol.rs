//! The `dlm serve` wire protocol: one JSON object per line each way.
//!
//! Request: `{"id": 7, "pos": "...", "content": ["food=Italian"], "steps": 50, "seed": 1}`
//! (`op` defaults to `"generate"`; `{"op": "health"}` asks for the service's state).
//! Response: `{"id": 7, "ok": true, "texts": [...], "timings": {...}}` or
//! `{"id": 7, "ok": false, "error": {"code": "busy", "message": "..."}}`; `code` is one of
//! [`ErrorCode`]'s stable names.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::controls::{ControlRequest, LengthHold};
use crate::error::{ControlError, RequestError};
use crate::overrides::{GuideOverrides, NumberOrMap, Setting, LR, STEPS, WEIGHT};
use crate::rerank::RerankBy;
use crate::sampler::Method;

/// Stable error codes; clients switch on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, an unknown field or a field of the wrong type.
    BadRequest,
    /// Well-formed, but a value the model or the server does not allow (unknown tag, steps out of range...).
    InvalidArgument,
    /// The line is longer than the server's limit; it was skipped unread.
    TooLarge,
    /// The queue is full; try again later.
    Busy,
    /// The request's deadline passed before it finished.
    Timeout,
    /// The server is stopping and takes no more work.
    ShuttingDown,
    /// A failure of the runtime itself (an ONNX Runtime error).
    Internal,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Generate(Box<GenerateParams>),
    Health,
    /// The Prometheus metrics, for clients on a line transport (a serial line has no HTTP).
    Metrics,
}

/// A parsed request: its id (any JSON value, echoed back) and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub id: Value,
    pub op: Op,
}

/// A request that cannot be served, with the id when one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub id: Value,
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorCode {
    /// The code as it appears in responses ("bad_request", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

impl Rejection {
    pub fn new(id: Value, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { id, code, message: message.into() }
    }

    pub fn to_line(&self) -> String {
        let error = serde_json::json!({ "code": self.code, "message": self.message });
        serde_json::json!({ "id": self.id, "ok": false, "error": error }).to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The generation fields of a request: those of `dlm generate`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    pub steps: Option<usize>,
    pub seed: Option<u64>,
    pub num: Option<usize>,
    pub sampler: Option<String>,
    pub eta: Option<f64>,
    pub pos: Option<String>,
    content: Option<OneOrMany>,
    pub length: Option<usize>,
    /// "full" (default) or "ends": which positions a fixed length holds.
    pub length_hold: Option<LengthHold>,
    pub infill: Option<String>,
    span: Option<OneOrMany>,
    /// A dependency tree, "HEAD:LABEL" per word.
    pub tree: Option<String>,
    guide_steps: Option<NumberOrMap<usize>>,
    guide_lambda: Option<NumberOrMap<f64>>,
    guide_lr: Option<NumberOrMap<f64>>,
    guide_weight: Option<NumberOrMap<f64>>,
    pub mbr: Option<usize>,
    pub rerank: Option<usize>,
    /// What rerank compares: "controls", "fluency" or "both".
    pub rerank_by: Option<RerankBy>,
    pub block_repeats: Option<bool>,
    /// Milliseconds from arrival to the answer; the server caps it.
    pub timeout_ms: Option<u64>,
    /// Send step events (the rounded x0_hat of every sequence) before the answer.
    pub stream: Option<bool>,
    /// With `stream`: a step event every this many steps (and at the last).
    pub every: Option<usize>,
}

impl GenerateParams {
    pub fn controls(&self) -> ControlRequest {
        let list = |v: &Option<OneOrMany>| match v {
            None => Vec::new(),
            Some(OneOrMany::One(c)) => vec![c.clone()],
            Some(OneOrMany::Many(c)) => c.clone(),
        };
        ControlRequest {
            pos: self.pos.clone(),
            content: list(&self.content),
            length: self.length,
            length_hold: self.length_hold.unwrap_or_default(),
            infill: self.infill.clone(),
            spans: list(&self.span),
            tree: self.tree.clone(),
        }
    }

    /// Guidance overrides: each a number for all controls or an object {"control": number}.
    pub fn guide(&self) -> Result<GuideOverrides, ControlError> {
        Ok(GuideOverrides {
            steps: Setting::from_json("guide_steps", self.guide_steps.clone(), STEPS)?,
            lambda: Setting::from_json("guide_lambda", self.guide_lambda.clone(), WEIGHT)?,
            lr: Setting::from_json("guide_lr", self.guide_lr.clone(), LR)?,
            weight: Setting::from_json("guide_weight", self.guide_weight.clone(), WEIGHT)?,
        })
    }

    pub fn method(&self) -> Result<Method, RequestError> {
        Method::parse(self.sampler.as_deref().unwrap_or("ddpm"), self.eta)
    }
}

/// Parse one request line (without its newline). Never panics, whatever the bytes.
pub fn parse_request(line: &[u8]) -> Result<Incoming, Rejection> {
    let bad = |id: Value, message: String| Rejection::new(id, ErrorCode::BadRequest, message);
    let value: Value = serde_json::from_slice(line).map_err(|e| bad(Value::Null, format!("not valid JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad(Value::Null, "a request is a JSON object, e.g. {\"id\": 1, \"steps\": 50}".into()));
    };
    let id = fields.remove("id").unwrap_or(Value::Null);
    let op = match fields.remove("op") {
        None => "generate".to_string(),
        Some(Value::String(op)) => op,
        Some(other) => return Err(bad(id, format!("op must be a string (\"generate\" or \"health\"), got {other}"))),
    };
    match op.as_str() {
        // the field at fault named ("steps: invalid type: string \"x\", expected usize")
        "generate" => match serde_path_to_error::deserialize::<_, GenerateParams>(Value::Object(fields)) {
            Ok(params) => Ok(Incoming { id, op: Op::Generate(Box::new(params)) }),
            Err(e) => Err(bad(id, format!("{e}; fields: id, op, {}", FIELDS.join(", ")))),
        },
        "health" if fields.is_empty() => Ok(Incoming { id, op: Op::Health }),
        "health" => Err(bad(id, "a health request has only id and op".into())),
        "metrics" if fields.is_empty() => Ok(Incoming { id, op: Op::Metrics }),
        "metrics" => Err(bad(id, "a metrics request has only id and op".into())),
        other => Err(bad(id, format!("unknown op {other:?}; allowed: \"generate\", \"health\", \"metrics\""))),
    }
}

/// The fields a generate request may carry, for error messages.
pub const FIELDS: [&str; 23] = [
    "steps",
    "seed",
    "num",
    "sampler",
    "eta",
    "pos",
    "content",
    "length",
    "length_hold",
    "infill",
    "span",
    "tree",
    "guide_steps",
    "guide_lambda",
    "guide_lr",
    "guide_weight",
    "mbr",
    "rerank",
    "rerank_by",
    "block_repeats",
    "timeout_ms",
    "stream",
    "every",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(line: &str) -> Rejection {
        parse_request(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_a_generate_request_with_controls() {
        let r = parse_request(br#"{"id":"a","steps":20,"content":"food=Italian","pos":"DET NOUN"}"#).unwrap();
        assert_eq!(r.id, Value::from("a"));
        let Op::Generate(p) = r.op else { panic!("not generate") };
        assert_eq!(p.steps, Some(20));
        assert_eq!(p.controls().content, vec!["food=Italian"]);
        assert_eq!(p.controls().pos.as_deref(), Some("DET NOUN"));
        let r = parse_request(br#"{"id":2,"content":["a=b","c=d"]}"#).unwrap();
        let Op::Generate(p) = r.op else { panic!("not generate") };
        assert_eq!(p.controls().content.len(), 2);
        let r = parse_request(br#"{"guide_lr":{"content":0.3},"guide_steps":5}"#).unwrap();
        let Op::Generate(p) = r.op else { panic!("not generate") };
        let g = p.guide().unwrap();
        assert_eq!((g.lr.get("content"), g.lr.get("pos"), g.steps.get("pos")), (Some(0.3), None, Some(5)));
        let r = parse_request(br#"{"guide_lr":-1}"#).unwrap();
        let Op::Generate(p) = r.op else { panic!("not generate") };
        assert!(p.guide().is_err());
    }

    #[test]
    fn health_and_bad_requests_keep_their_id() {
        assert_eq!(parse_request(br#"{"op":"health","id":9}"#).unwrap().op, Op::Health);
        assert_eq!(reject("{").code, ErrorCode::BadRequest);
        assert_eq!(reject("[1]").code, ErrorCode::BadRequest);
        let r = reject(r#"{"id":5,"stepz":3}"#);
        assert_eq!((r.id, r.code), (Value::from(5), ErrorCode::BadRequest));
        assert!(r.message.contains("stepz") && r.message.contains("timeout_ms"), "{}", r.message);
        assert_eq!(reject(r#"{"id":6,"steps":-1}"#).id, Value::from(6));
        let bad_types = [
            (r#"{"steps":"x"}"#, "steps: invalid type: string \"x\", expected"),
            (r#"{"seed":1.5}"#, "seed: invalid type: floating point"),
            (r#"{"content":[3]}"#, "content: "),
        ];
        for (line, start) in bad_types {
            let message = reject(line).message;
            assert!(message.starts_with(start), "{line}: the field at fault first, got {message}");
        }
        assert!(reject(r#"{"op":"dance"}"#).message.contains("health"));
        assert_eq!(reject(r#"{"op":"health","steps":2}"#).code, ErrorCode::BadRequest);
    }

    #[test]
    fn rerank_by_is_one_of_three_names() {
        let r = parse_request(br#"{"rerank":4,"rerank_by":"fluency"}"#).unwrap();
        let Op::Generate(p) = r.op else { panic!("not generate") };
        assert_eq!((p.rerank, p.rerank_by), (Some(4), Some(RerankBy::Fluency)));
        let m = reject(r#"{"id":1,"rerank_by":"beauty"}"#).message;
        assert!(m.contains("beauty") && m.contains("controls") && m.contains("both"), "{m}");
    }

    #[test]
    fn rejection_lines_are_json_with_a_stable_code() {
        let line = Rejection::new(Value::from(3), ErrorCode::ShuttingDown, "bye").to_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["code"], "shutting_down");
        assert_eq!(v["ok"], false);
        assert_eq!(v["id"], 3);
    }

    /// A property test beside the cargo-fuzz target (which needs a nightly compiler): 20000
    /// mutations of valid requests, each answered by a value or a rejection, never a panic.
    #[test]
    fn mutated_requests_never_panic_the_parser() {
        use rand::{Rng, SeedableRng};
        let seeds = [
            r#"{"id":1,"steps":20,"content":["food=Italian"],"span":"0,2,NP","guide_lr":{"content":0.3}}"#,
            r#"{"op":"health","id":"h"}"#,
            r#"{"id":[1,{"a":null}],"pos":"DET NOUN","num":2,"mbr":3,"rerank":1,"length_hold":"ends"}"#,
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let alphabet = b"{}[]\":,0123456789.-eE+ \\uabcdefghijklmnopqrstuvwxyz\x00\xff\n";
        for k in 0..20_000 {
            let mut line = seeds[k % seeds.len()].as_bytes().to_vec();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..=line.len());
                match rng.random_range(0..3) {
                    0 => line.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    1 if at < line.len() => {
                        line.remove(at);
                    }
                    _ => line.truncate(at),
                }
            }
            if let Ok(Incoming { op: Op::Generate(p), .. }) = parse_request(&line) {
                let _ = (p.controls(), p.guide(), p.method());
            }
        }
    }

    #[test]
    fn sampler_names_are_checked() {
        let p = |s: &str| match parse_request(s.as_bytes()).unwrap().op {
            Op::Generate(p) => p.method(),
            Op::Health | Op::Metrics => unreachable!(),
        };
        assert_eq!(p(r#"{"sampler":"ddim","eta":0.5}"#), Ok(Method::Ddim { eta: 0.5 }));
        assert!(p(r#"{"sampler":"plms"}"#).unwrap_err().to_string().contains("ddim"));
        assert!(p(r#"{"eta":0.5}"#).is_err());
    }
}
