//! HTTP beside the line protocol, on hyper (HTTP/1.1) over a small tokio runtime:
//! `POST /v1/generate` takes the JSON object of a request line and answers the object of a
//! response line, with the HTTP status of its error code; `GET /health` (200 serving, 503
//! loading, draining or with the inference thread dead), `GET /v1/info` and `GET /metrics`.
//! Generate requests go through the same queue and inference thread as every other transport,
//! and their answers come back through a oneshot channel ([`Reply::once`]); a connection that
//! closes while its request runs drops the receiver, and the engine drops the request's
//! sequences at its next iteration.
//!
//! Limits ([`accept`]): at most `--max-connections` per listener (one more takes the slot of
//! a connection that has waited a second or more for its request, or is answered 503 `busy`
//! with `Retry-After: 1` and closed); a request head must arrive whole, within 16 KiB,
//! in `--idle-timeout-ms` from the moment the connection waits for it (which also closes idle
//! connections); a body within `--max-line` bytes and `--idle-timeout-ms`; a request is
//! answered within the idle time plus `--timeout-ms`; an answer the client leaves unread for
//! the idle time ends its connection.
//!
//! [`Reply::once`]: super::connection::Reply::once

mod accept;
mod io;
mod routes;
mod slots;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock, RwLock};
use std::thread;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::engine::Job;
use super::metrics::{HttpConnections, Listener};
use super::Shared;
use crate::error::TransportError;

/// After the shutdown signal a listener answers for this long (health 503, new requests
/// `shutting_down`), then stops accepting.
const STOP_GRACE: Duration = Duration::from_millis(200);

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

/// A bound HTTP listener, answering from the moment it binds (before the model loads, so that
/// probes hear "loading").
pub struct HttpListener {
    front: Arc<Front>,
    task: JoinHandle<()>,
    pub addr: String,
    /// The connection metrics every listener shares (registered when the server starts).
    pub connections: HttpConnections,
}

/// The runtime of every HTTP listener: two worker threads (the work is the engine's).
fn runtime() -> std::io::Result<&'static Runtime> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("http").enable_all().build()?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

impl HttpListener {
    /// Bind `addr` (loopback only unless `any_address`) and start accepting under `limits`.
    pub fn bind(
        addr: &str,
        any_address: bool,
        limits: Limits,
        connections: &HttpConnections,
    ) -> Result<Self, TransportError> {
        let bind = |error| TransportError::Bind { what: format!("http {addr}"), error };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(bind)?.collect();
        if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback() && !any_address) {
            return Err(TransportError::NotLoopback { addr: *remote, flag: "--http-any-address" });
        }
        let std_listener = std::net::TcpListener::bind(&addrs[..]).map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let runtime = runtime().map_err(bind)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(bind)?
        };
        let label = Listener { listener: addr.to_string() };
        let front = Arc::new(Front {
            limits,
            serving: RwLock::new(None),
            stop: watch::Sender::new(false),
            awaiting: AtomicUsize::new(0),
            open: connections.open.get_or_create(&label).clone(),
            refused: connections.refused.get_or_create(&label).clone(),
        });
        let task = runtime.spawn(accept::accept_loop(listener, Arc::clone(&front)));
        Ok(Self { front, task, addr: addr.to_string(), connections: connections.clone() })
    }

    /// Take generate requests from now on (until now, every request was answered `loading`).
    pub fn open(&self, shared: &Arc<Shared>, jobs: &SyncSender<Job>) {
        self.front.set_serving(Some(Serving { shared: Arc::clone(shared), jobs: jobs.clone() }));
    }

    /// Serve until shutdown, then stop accepting, let the answers in the making go out (a short
    /// grace for those nobody reads) and return.
    pub fn serve(self, shared: &Shared) {
        while !shared.stopping_for(STOP_GRACE) {
            thread::sleep(Duration::from_millis(20));
        }
        self.front.stop.send_replace(true);
        if let Ok(runtime) = runtime() {
            if let Err(e) = runtime.block_on(self.task) {
                log::error!("the HTTP listener {} failed: {e}", self.addr);
            }
        }
        self.front.set_serving(None); // and its queue sender with it
    }
}
