//! OpenAI's routes: `GET /v1/models`, `GET /v1/models/{id}` and `POST /v1/completions`, the
//! last through the same queue, limits and engine as `POST /v1/generate` (its request
//! translated, [`completions`]; its answer read back, [`completion`]). Errors in OpenAI's shape
//! with dlm's codes and statuses.
//!
//! [`completions`]: super::completions
//! [`completion`]: super::completion

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::chunks::Chunks;
use super::completion::{self, completion_id};
use super::completions::translate;
use super::errors::{json_response, Plain, Refusal};
use super::events::{Awaiting, Events, Format, Payload};
use super::models::{ModelCard, ModelList};
use super::slots::Slot;
use super::{body, Front, Serving};
use crate::protocol::{ErrorCode, Rejection};
use crate::server::connection::dispatch;
use crate::server::queue::{Answer, Reply};

/// `GET /v1/models`: the one model served.
pub(super) fn models(serving: &Serving) -> Plain {
    let card = ModelCard::of(serving.shared.info());
    json_response(StatusCode::OK, serde_json::to_string(&ModelList::of(&card)).unwrap_or_default())
}

/// `GET /v1/models/{id}`: the model when `id` is its id, else 404.
pub(super) fn model(serving: &Serving, id: &str) -> Plain {
    let card = ModelCard::of(serving.shared.info());
    if id != card.id {
        let message = format!("no model {id:?}; this server serves {:?}", card.id);
        return Refusal::new(ErrorCode::BadRequest, Some("model"), message).not_found().answer();
    }
    json_response(StatusCode::OK, serde_json::to_string(&card.object()).unwrap_or_default())
}

/// `POST /v1/completions`: read the body, translate it into a generate request, queue it and
/// await the engine's answer (the connection busy meanwhile: its slot is not taken). With
/// `stream`, the first step event turns the answer into OpenAI's chunks; an error before it is
/// answered whole.
pub(super) async fn completions(
    request: Request<Incoming>,
    serving: &Serving,
    front: &Arc<Front>,
    slot: &Slot,
) -> Response<Payload> {
    let shared = &serving.shared;
    let refuse = |refusal: Refusal| {
        shared.metrics.answered(refusal.code.as_str());
        whole(refusal.answer())
    };
    let body = match body::read(request, &front.limits).await {
        Ok(body) => body,
        Err(unread) => {
            return refuse(Refusal { status: unread.status, code: unread.code, message: unread.message, param: None })
        }
    };
    let card = ModelCard::of(shared.info());
    let id = completion_id();
    let translated = match translate(&body, &card, &id) {
        Ok(translated) => translated,
        Err(refusal) => return refuse(refusal),
    };
    slot.busy();
    let (reply, mut streamed) = Reply::streamed();
    dispatch(&translated.line, shared, &serving.jobs, &reply, shared.stopping());
    drop(reply);
    let awaiting = Awaiting::new(front);
    let stopped = || Rejection::new(Value::Null, ErrorCode::Internal, "the inference thread stopped").into();
    // the engine answers every job exactly once (its deadline bounds the wait), after its steps
    let answer: Answer = tokio::select! {
        biased;
        Some(first) = streamed.steps.recv(), if translated.stream => {
            drop(awaiting); // the body counts itself
            let chunks = Chunks::new(id, card, translated);
            return event_stream(Either::Right(Events::with_format(first, streamed, front, Box::new(chunks))));
        }
        answer = &mut streamed.answer => answer.unwrap_or_else(|_| stopped()),
    };
    if translated.stream && answer.code.is_none() {
        // done without a step event (none is lost before the first): the last chunk alone
        let mut chunks = Chunks::new(id, card, translated);
        return event_stream(Either::Left(Full::new(chunks.answer(answer))));
    }
    whole(completion::answer(answer, &translated, &card, id))
}

fn whole(plain: Plain) -> Response<Payload> {
    plain.map(|body| Either::Left(Full::new(Bytes::from(body))))
}

/// A 200 answer of Server-Sent Events.
fn event_stream(body: Payload) -> Response<Payload> {
    let mut response = Response::new(body);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
