//! A streaming request's answer as Server-Sent Events: `event: step` per step event as the
//! engine sends it, then `event: done` (the answer) or `event: error` (its rejection), then the
//! end of the body; or in another [`Format`] (OpenAI's completion chunks).

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

/// How a stream's events are written.
pub(super) trait Format: Send {
    /// The bytes of one step event (the engine's step object).
    fn step(&mut self, step: &str) -> Bytes;
    /// The bytes of the answer, the stream's last.
    fn answer(&mut self, answer: Answer) -> Bytes;
}

/// dlm's events: `event: step`, then `event: done` or `event: error`.
struct Dlm;

impl Format for Dlm {
    fn step(&mut self, step: &str) -> Bytes {
        event("step", step)
    }

    fn answer(&mut self, answer: Answer) -> Bytes {
        event(if answer.code.is_none() { "done" } else { "error" }, &answer.body)
    }
}

/// The events of one streaming request, from its first step (already received) to its answer.
pub(super) struct Events {
    first: Option<String>,
    streamed: Streamed,
    ended: bool,
    format: Box<dyn Format>,
    /// The handler still waits for the engine: counted for the drain at shutdown.
    _awaiting: Awaiting,
}

impl Events {
    pub(super) fn new(first: String, streamed: Streamed, front: &Arc<Front>) -> Self {
        Self::with_format(first, streamed, front, Box::new(Dlm))
    }

    pub(super) fn with_format(first: String, streamed: Streamed, front: &Arc<Front>, format: Box<dyn Format>) -> Self {
        Self { first: Some(first), streamed, ended: false, format, _awaiting: Awaiting::new(front) }
    }
}

/// One event: its name and its data (a JSON object on one line).
fn event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
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
            return Poll::Ready(Some(Ok(Frame::data(this.format.step(&first)))));
        }
        if let Poll::Ready(Some(step)) = this.streamed.steps.poll_recv(cx) {
            return Poll::Ready(Some(Ok(Frame::data(this.format.step(&step)))));
        }
        match Pin::new(&mut this.streamed.answer).poll(cx) {
            Poll::Ready(answer) => {
                this.ended = true;
                let stopped =
                    || Rejection::new(Value::Null, ErrorCode::Internal, "the inference thread stopped").into();
                let answer: Answer = answer.unwrap_or_else(|_| stopped());
                Poll::Ready(Some(Ok(Frame::data(this.format.answer(answer)))))
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
