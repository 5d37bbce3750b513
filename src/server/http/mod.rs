//! HTTP beside the line protocol, on hyper (HTTP/1.1) over a small tokio runtime:
//! `POST /v1/generate` takes the JSON object of a request line and answers the object of a
//! response line, with the HTTP status of its error code; `GET /health` (200 serving, 503
//! loading, draining or with the inference thread dead), `GET /v1/info` and `GET /metrics`;
//! OpenAI's `GET /v1/models[/{id}]` and `POST /v1/completions` (`openai.rs`), translated into
//! generate requests; `GET /openapi.json` (`openapi.rs`). With `--api-key`, every route but
//! `/health` needs the bearer key (`auth.rs`).
//! Generate requests go through the same queue and inference thread as every other transport,
//! and their answers come back through a oneshot channel ([`Reply::once`]); a connection that
//! closes while its request runs drops the receiver, and the engine drops the request's
//! sequences at its next iteration.
//!
//! The listener ([`HttpListener`]) binds and accepts; limits ([`accept`]): at most `--max-connections` per listener (one more takes the slot of
//! a connection that has waited a second or more for its request, or is answered 503 `busy`
//! with `Retry-After: 1` and closed); a request head must arrive whole, within 16 KiB,
//! in `--idle-timeout-ms` from the moment the connection waits for it (which also closes idle
//! connections); a body within `--max-line` bytes and `--idle-timeout-ms`; a request is
//! answered within the idle time plus `--timeout-ms`; an answer the client leaves unread for
//! the idle time ends its connection.
//!
//! [`Reply::once`]: super::queue::Reply::once

mod accept;
mod auth;
mod body;
mod chunks;
mod completion;
mod completions;
mod errors;
mod events;
mod fields;
mod io;
mod listener;
mod models;
mod openai;
mod openapi;
mod routes;
mod schemas;
mod slots;

pub use auth::ApiKey;
pub use listener::HttpListener;

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use super::queue::Job;
use super::Shared;

/// The limits an HTTP listener serves under.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// For a request head (and an idle connection), a body, an unread answer.
    pub idle: Duration,
    /// The longest deadline of a request (`--timeout-ms`).
    pub deadline: Duration,
    /// The longest request body (`--max-line`).
    pub max_body: usize,
}

/// What the inference side gives a listener once the model is loaded.
struct Serving {
    shared: Arc<Shared>,
    jobs: SyncSender<Job>,
}

/// One listener's state, shared by its connections.
struct Front {
    limits: Limits,
    /// None while the model loads (every request is answered 503 `loading`) and after the end.
    serving: RwLock<Option<Arc<Serving>>>,
    /// Set once: stop accepting, shut connections down gracefully.
    stop: watch::Sender<bool>,
    /// Requests whose handler waits for the engine's answer.
    awaiting: AtomicUsize,
    /// With `--api-key`: what every route but `/health` needs.
    api_key: Option<ApiKey>,
    open: Gauge,
    refused: Counter,
}

impl Front {
    fn serving(&self) -> Option<Arc<Serving>> {
        self.serving.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_serving(&self, serving: Option<Serving>) {
        *self.serving.write().unwrap_or_else(|e| e.into_inner()) = serving.map(Arc::new);
    }
}
