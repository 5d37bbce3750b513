//! What each HTTP request is answered: the routes, the body limits, statuses by error code.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use tokio::time::timeout;

use super::errors::{refused, status_of, Plain, Shape, LOADING};
use super::events::{Awaiting, Events, Payload};
use super::slots::Slot;
use super::{auth, openai, openapi, Front, Serving};
use crate::protocol::{ErrorCode, Rejection};
use crate::server::connection::dispatch;
use crate::server::queue::{Answer, Reply};

pub(super) type Answered = Response<Payload>;

const PATHS: &str = "GET /health, GET /v1/info, GET /metrics, POST /v1/generate, GET /v1/models, \
                     GET /v1/models/{id}, POST /v1/completions, GET /openapi.json";

/// The paths routed (and `/v1/models/{id}`), for 405 against 404.
const KNOWN: [&str; 7] =
    ["/health", "/v1/info", "/metrics", "/v1/generate", "/v1/models", "/v1/completions", "/openapi.json"];

/// Answer one request: 401 without the `--api-key` (but `/health`), 503 `loading` until the
/// model is loaded, then by route, each within the idle time plus the longest deadline.
pub(super) async fn answer(request: Request<Incoming>, front: &Arc<Front>, slot: &Slot) -> Answered {
    let shape = Shape::of(request.uri().path());
    if let Some(refusal) = auth::refusal(front.api_key.as_ref(), request.uri().path(), request.headers()) {
        return full(refusal);
    }
    let Some(serving) = front.serving() else {
        let mut loading = refused(shape, StatusCode::SERVICE_UNAVAILABLE, LOADING, "the model is loading", None);
        loading.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return full(loading);
    };
    let limit = front.limits.idle + front.limits.deadline;
    match timeout(limit, route(request, &serving, front, slot)).await {
        Ok(answered) => answered,
        Err(_) => {
            let message = format!("no answer within {} ms", limit.as_millis());
            full(refused(shape, StatusCode::GATEWAY_TIMEOUT, ErrorCode::Timeout.as_str(), &message, None))
        }
    }
}

async fn route(request: Request<Incoming>, serving: &Serving, front: &Arc<Front>, slot: &Slot) -> Answered {
    let shared = &serving.shared;
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/health") => {
            let serving = !shared.stopping() && shared.engine_alive.load(Ordering::SeqCst);
            let status = if serving { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            respond(status, shared.health(&Value::Null), false)
        }
        (&Method::GET, "/v1/info") => respond(StatusCode::OK, shared.info().to_string(), false),
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Either::Left(Full::new(Bytes::from(shared.metrics_text()))));
            let kind = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
            response.headers_mut().insert(CONTENT_TYPE, kind);
            response
        }
        (&Method::POST, "/v1/generate") => generate(request, serving, front, slot).await,
        (&Method::GET, "/v1/models") => full(openai::models(serving)),
        (&Method::GET, path) if path.starts_with("/v1/models/") => {
            full(openai::model(serving, &path["/v1/models/".len()..]))
        }
        (&Method::POST, "/v1/completions") => openai::completions(request, serving, front, slot).await,
        (&Method::GET, "/openapi.json") => respond(StatusCode::OK, openapi::document().to_string(), false),
        (_, path) if KNOWN.contains(&path) || path.starts_with("/v1/models/") => {
            let message = format!("method not allowed: {PATHS}");
            full(refused(
                Shape::of(path),
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadRequest.as_str(),
                &message,
                None,
            ))
        }
        (_, path) => {
            let message = format!("no such path {path:?}; paths: {PATHS}");
            full(refused(Shape::of(path), StatusCode::NOT_FOUND, ErrorCode::BadRequest.as_str(), &message, None))
        }
    }
}

/// Read the body (at most `--max-line` bytes, within the idle time), queue it as a request
/// line, and await the engine's answer (the connection busy meanwhile: its slot is not taken).
/// A streaming request's first step event turns the answer into Server-Sent Events; an answer
/// before any step (an error, or a request that does not stream) is answered whole.
async fn generate(request: Request<Incoming>, serving: &Serving, front: &Arc<Front>, slot: &Slot) -> Answered {
    let shared = &serving.shared;
    let refuse = |status: StatusCode, code: ErrorCode, message: String| {
        shared.metrics.answered(code.as_str());
        rejected(status, Rejection::new(Value::Null, code, message))
    };
    let max = front.limits.max_body;
    let too_large = || format!("request body over this server's limit of {max} bytes");
    if request.body().size_hint().lower() > max as u64 {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, too_large());
    }
    let idle = front.limits.idle;
    let body = match timeout(idle, Limited::new(request.into_body(), max).collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, too_large());
        }
        Ok(Err(e)) => return refuse(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, format!("reading the body: {e}")),
        Err(_) => {
            let message = format!("the body did not arrive within {} ms", idle.as_millis());
            return refuse(StatusCode::REQUEST_TIMEOUT, ErrorCode::Timeout, message);
        }
    };
    slot.busy();
    let (reply, mut streamed) = Reply::streamed();
    dispatch(&body, shared, &serving.jobs, &reply, shared.stopping());
    drop(reply);
    let awaiting = Awaiting::new(front);
    // the engine answers every job exactly once (its deadline bounds the wait), after its steps
    let answer = tokio::select! {
        biased;
        Some(first) = streamed.steps.recv() => {
            drop(awaiting); // the body counts itself
            return event_stream(Events::new(first, streamed, front));
        }
        answer = &mut streamed.answer => answer,
    };
    let answer = answer
        .unwrap_or_else(|_| Rejection::new(Value::Null, ErrorCode::Internal, "the inference thread stopped").into());
    let status = status_of(answer.code);
    respond(status, answer.body, status == StatusCode::TOO_MANY_REQUESTS)
}

/// A 200 answer of Server-Sent Events.
fn event_stream(events: Events) -> Answered {
    let mut response = Response::new(Either::Right(events));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// An answer of the HTTP modules as the connection's body.
pub(super) fn full(plain: Plain) -> Answered {
    plain.map(|body| Either::Left(Full::new(Bytes::from(body))))
}

fn rejected(status: StatusCode, rejection: Rejection) -> Answered {
    let Answer { body, .. } = rejection.into();
    respond(status, body, false)
}

/// A JSON response; `retry` adds `Retry-After: 1`.
fn respond(status: StatusCode, body: String, retry: bool) -> Answered {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if retry {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
