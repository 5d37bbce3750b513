//! What connections hand the inference thread and how its answers come back: a [`Job`] (one
//! generate request, counted until answered), its [`Reply`] (a line connection's writer, or
//! one HTTP request's oneshot) and the typed [`Answer`] (error code and body) from which each
//! transport derives what it sends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{ErrorCode, GenerateParams, Rejection};

/// A generate request waiting for the inference thread.
pub struct Job {
    pub id: Value,
    pub params: Box<GenerateParams>,
    pub received: Instant,
    /// Where the one response line goes (the connection's writer).
    pub reply: Reply,
    /// Counts the job in [`Shared::outstanding`](super::Shared::outstanding) until it is dropped: answered, or its client gone.
    pub outstanding: Outstanding,
}

/// One job counted as not yet answered, for as long as this lives.
pub struct Outstanding(Arc<AtomicUsize>);

impl Outstanding {
    pub fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Replies of one connection not yet written, in bytes, and whether its writer still writes
/// and its reader still reads.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) bytes: AtomicUsize,
    pub(super) writer_gone: AtomicBool,
    /// Reading failed (a reset connection): not an end of input, after which a client may
    /// still wait for its answers.
    pub(super) reader_failed: AtomicBool,
}

/// One answer, typed: its error code (None: ok) and its body, the JSON object of a response
/// line. A line connection writes the body as its line; HTTP answers it with the status of
/// the code.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub code: Option<ErrorCode>,
    pub body: String,
}

impl Answer {
    pub fn ok(body: String) -> Self {
        Self { code: None, body }
    }
}

impl From<Rejection> for Answer {
    fn from(rejection: Rejection) -> Self {
        Self { code: Some(rejection.code), body: rejection.to_line() }
    }
}

/// Where a request's answer goes.
#[derive(Clone)]
pub struct Reply(Route);

#[derive(Clone)]
enum Route {
    /// A line connection's writer, counting the bytes that wait.
    Line { sender: Sender<String>, pending: Arc<Pending> },
    /// One HTTP request: its handler awaits the answer (taken by the first send), and, when it
    /// streams, its step events before it.
    Once(Arc<Mutex<Option<oneshot::Sender<Answer>>>>, Option<mpsc::Sender<String>>),
}

/// Step events an HTTP handler may hold before a streaming request's answer; beyond them
/// (a client reading slower than the steps come) the newest are dropped, never the answer.
pub const STEPS_HELD: usize = 64;

/// What one HTTP request's handler receives: step events (a streaming request's), then the answer.
pub struct Streamed {
    pub steps: mpsc::Receiver<String>,
    pub answer: oneshot::Receiver<Answer>,
}

impl Reply {
    /// The replies of a line connection: its writer takes them from `sender`.
    pub(super) fn line(sender: Sender<String>, pending: Arc<Pending>) -> Self {
        Self(Route::Line { sender, pending })
    }

    /// A reply of its own (one HTTP request): the answer comes out of the receiver; dropping
    /// the receiver (the connection closed) tells the engine the client is gone.
    pub fn once() -> (Self, oneshot::Receiver<Answer>) {
        let (sender, answer) = oneshot::channel();
        (Self(Route::Once(Arc::new(Mutex::new(Some(sender))), None)), answer)
    }

    /// [`Reply::once`] with room for step events before the answer ([`Reply::progress`]).
    pub fn streamed() -> (Self, Streamed) {
        let (sender, answer) = oneshot::channel();
        let (steps, received) = mpsc::channel(STEPS_HELD);
        (Self(Route::Once(Arc::new(Mutex::new(Some(sender))), Some(steps))), Streamed { steps: received, answer })
    }

    /// Whether the client is gone (its connection failed to read or write, or closed while
    /// waiting for an HTTP answer): its requests can stop.
    pub fn client_gone(&self) -> bool {
        match &self.0 {
            Route::Line { pending, .. } => {
                pending.writer_gone.load(Ordering::SeqCst) || pending.reader_failed.load(Ordering::SeqCst)
            }
            Route::Once(sender, _) => {
                sender.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_none_or(|s| s.is_closed())
            }
        }
    }

    /// Send one answer; dropped (not counted) when the connection is gone.
    pub fn send(&self, answer: Answer) {
        match &self.0 {
            Route::Line { sender, pending } => {
                let len = answer.body.len() + 1;
                pending.bytes.fetch_add(len, Ordering::SeqCst);
                if sender.send(answer.body).is_err() {
                    pending.bytes.fetch_sub(len, Ordering::SeqCst);
                }
            }
            Route::Once(sender, _) => {
                if let Some(sender) = sender.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = sender.send(answer); // a receiver gone: the client left
                }
            }
        }
    }

    /// Send one step event of a streaming request, before its answer: a line of its own on a
    /// line connection; on HTTP, dropped when the handler holds [`STEPS_HELD`] unsent (or
    /// does not stream).
    pub fn progress(&self, event: String) {
        match &self.0 {
            Route::Line { .. } => self.send(Answer::ok(event)),
            Route::Once(_, Some(steps)) => {
                let _ = steps.try_send(event); // full: this step is skipped; closed: the client left
            }
            Route::Once(_, None) => {}
        }
    }
}
