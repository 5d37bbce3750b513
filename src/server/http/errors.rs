//! The two shapes an HTTP error takes: dlm's (`{"id", "ok": false, "error": {"code",
//! "message"}}`, as a response line) on dlm's routes, OpenAI's (`{"error": {"message", "type",
//! "param", "code"}}`) on the OpenAI-compatible ones, with dlm's stable code in `code` either
//! way; and the HTTP status of each code.

use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::protocol::ErrorCode;

/// An answer before its body becomes the connection's body type (routes.rs does that).
pub(super) type Plain = Response<String>;

/// The codes of HTTP answers that no line transport gives: the model still loading, and a
/// request without the `--api-key` (401).
pub(super) const LOADING: &str = "loading";
pub(super) const UNAUTHORIZED: &str = "unauthorized";

/// Which error shape a path answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Dlm,
    OpenAi,
}

impl Shape {
    /// OpenAI's on `/v1/completions` and `/v1/models[/ID]`, dlm's elsewhere.
    pub(super) fn of(path: &str) -> Self {
        if path == "/v1/completions" || path == "/v1/models" || path.starts_with("/v1/models/") {
            Shape::OpenAi
        } else {
            Shape::Dlm
        }
    }
}

/// OpenAI's error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiError {
    pub error: OpenAiErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    /// What was wrong and what is allowed.
    pub message: String,
    /// OpenAI's class of error: `invalid_request_error`, `authentication_error`,
    /// `rate_limit_error`, `timeout_error`, `service_unavailable_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// dlm's stable error code (`bad_request`, `invalid_argument`, ..., `unauthorized`, `loading`).
    pub code: String,
}

/// OpenAI's class of a dlm error code.
fn kind_of(code: &str) -> &'static str {
    match code {
        "busy" => "rate_limit_error",
        "timeout" => "timeout_error",
        "shutting_down" | LOADING => "service_unavailable_error",
        "internal" => "server_error",
        UNAUTHORIZED => "authentication_error",
        _ => "invalid_request_error", // bad_request, invalid_argument, too_large
    }
}

/// The HTTP status of an answer's error code (None: ok).
pub(super) fn status_of(code: Option<ErrorCode>) -> StatusCode {
    match code {
        None => StatusCode::OK,
        Some(ErrorCode::BadRequest) => StatusCode::BAD_REQUEST,
        Some(ErrorCode::InvalidArgument) => StatusCode::UNPROCESSABLE_ENTITY,
        Some(ErrorCode::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        Some(ErrorCode::Busy) => StatusCode::TOO_MANY_REQUESTS,
        Some(ErrorCode::Timeout) => StatusCode::GATEWAY_TIMEOUT,
        Some(ErrorCode::ShuttingDown) => StatusCode::SERVICE_UNAVAILABLE,
        Some(ErrorCode::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// OpenAI's error body of `code`, `message` and the field at fault.
pub(super) fn openai_error(code: &str, message: &str, param: Option<&str>) -> String {
    let body = OpenAiErrorBody {
        message: message.to_string(),
        kind: kind_of(code),
        param: param.map(str::to_string),
        code: code.to_string(),
    };
    serde_json::to_string(&OpenAiError { error: body }).unwrap_or_default()
}

/// A request refused before it reaches the queue, in OpenAI's shape: status, dlm's code, what
/// was wrong, and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) code: ErrorCode,
    pub(super) message: String,
    pub(super) param: Option<String>,
}

impl Refusal {
    /// With the status of `code`.
    pub(super) fn new(code: ErrorCode, param: Option<&str>, message: impl Into<String>) -> Self {
        Self { status: status_of(Some(code)), code, message: message.into(), param: param.map(str::to_string) }
    }

    /// `bad_request` (400): not JSON, an unknown field, a wrong type, a value dlm has no way to honour.
    pub(super) fn bad(param: Option<&str>, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, param, message)
    }

    /// 404 with its code: what the request names does not exist (a model).
    pub(super) fn not_found(self) -> Self {
        Self { status: StatusCode::NOT_FOUND, ..self }
    }

    pub(super) fn answer(&self) -> Plain {
        refused(Shape::OpenAi, self.status, self.code.as_str(), &self.message, self.param.as_deref())
    }
}

/// An error answer in `shape`; `param` (OpenAI's shape only) names the field at fault.
pub(super) fn refused(shape: Shape, status: StatusCode, code: &str, message: &str, param: Option<&str>) -> Plain {
    let body = match shape {
        Shape::Dlm => json!({"id": null, "ok": false, "error": {"code": code, "message": message}}).to_string(),
        Shape::OpenAi => openai_error(code, message, param),
    };
    json_response(status, body)
}

/// A JSON answer; a 429 says `Retry-After: 1`.
pub(super) fn json_response(status: StatusCode, body: String) -> Plain {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_errors_carry_dlm_codes_and_openai_classes() {
        let body: serde_json::Value =
            serde_json::from_str(&openai_error("bad_request", "unknown field", Some("colour"))).unwrap();
        assert_eq!(
            body,
            json!({"error": {"message": "unknown field", "type": "invalid_request_error", "param": "colour",
                             "code": "bad_request"}})
        );
        assert_eq!(kind_of("unauthorized"), "authentication_error");
        assert_eq!(kind_of("busy"), "rate_limit_error");
        assert_eq!(Shape::of("/v1/models/e2e"), Shape::OpenAi);
        assert_eq!(Shape::of("/v1/generate"), Shape::Dlm);
        let busy = refused(Shape::Dlm, StatusCode::TOO_MANY_REQUESTS, "busy", "full", None);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
        assert_eq!(busy.body(), r#"{"error":{"code":"busy","message":"full"},"id":null,"ok":false}"#);
    }
}
