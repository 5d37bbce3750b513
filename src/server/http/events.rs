//! A streaming request's answer as Server-Sent Events: `event: step` per step event as the
//! engine sends it, then `event: done` (the answer) or `event: error` (its rejection), then the
//! end of the body.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame};
use serde_json::Value;

use super::Front;
use crate::protocol::{ErrorCode, Rejection};
use crate::server::queue::{Answer, Streamed};

/// What an HTTP answer's body is: whole, or a stream of events.
pub(super) type Payload = Either<Full<Bytes>, Events>;

/// The events of one streaming request, from its first step (already received) to its answer.
pub(super) struct Events {
    first: Option<String>,
    streamed: Streamed,
    ended: bool,
    /// The handler still waits for the engine: counted for the drain at shutdown.
    _awaiting: Awaiting,
}

impl Events {
    pub(super) fn new(first: String, streamed: Streamed, front: &Arc<Front>) -> Self {
        Self { first: Some(first), streamed, ended: false, _awaiting: Awaiting::new(front) }
    }
}

/// One event: its name and its data (a JSON object on one line).
fn event(name: &str, data: &str) -> Frame<Bytes> {
    Frame::data(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    /// Step events in the order sent; the answer once it has come and every step sent before it
    /// is out (the engine sends a request's steps before its answer).
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(event("step", &first))));
        }
        if let Poll::Ready(Some(step)) = this.streamed.steps.poll_recv(cx) {
            return Poll::Ready(Some(Ok(event("step", &step))));
        }
        match Pin::new(&mut this.streamed.answer).poll(cx) {
            Poll::Ready(answer) => {
                this.ended = true;
                let stopped =
                    || Rejection::new(Value::Null, ErrorCode::Internal, "the inference thread stopped").into();
                let answer: Answer = answer.unwrap_or_else(|_| stopped());
                let name = if answer.code.is_none() { "done" } else { "error" };
                Poll::Ready(Some(Ok(event(name, &answer.body))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// A handler (or an event stream) waiting for the engine, counted for the drain at shutdown.
pub(super) struct Awaiting(Arc<Front>);

impl Awaiting {
    pub(super) fn new(front: &Arc<Front>) -> Self {
        front.awaiting.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(front))
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.0.awaiting.fetch_sub(1, Ordering::SeqCst);
    }
}
