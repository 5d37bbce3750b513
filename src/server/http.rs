//! HTTP beside the line protocol, on `tiny_http` (synchronous, like the rest of the server):
//! `POST /v1/generate` takes the JSON object of a request line and answers the object of a
//! response line, with the HTTP status of its code; `GET /health` (200 serving, 503 loading,
//! draining or with the inference thread dead), `GET /v1/info` and `GET /metrics`. Generate requests go through
//! the same queue and inference thread as every other transport.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use super::connection::{dispatch, Reply};
use super::engine::Job;
use super::http_front::{accept_loop, Limits};
use super::metrics::{HttpConnections, Listener};
use super::Shared;
use crate::error::TransportError;
use crate::protocol::{ErrorCode, Rejection};

/// How long the listener waits for a request before it looks at the shutdown flag again.
const POLL: Duration = Duration::from_millis(100);

/// A bound HTTP listener (bound before the model loads, so probes hear "loading").
#[derive(Clone)]
pub struct HttpListener {
    server: &'static Server,
    pub addr: String,
    /// The connection metrics every listener shares (registered when the server starts).
    pub connections: HttpConnections,
}

impl HttpListener {
    /// Bind `addr` (loopback only unless `any_address`) and start accepting under `limits`
    /// (http_front.rs): connections are relayed to tiny_http on a private abstract Unix socket.
    pub fn bind(
        addr: &str,
        any_address: bool,
        limits: Limits,
        connections: &HttpConnections,
    ) -> Result<Self, TransportError> {
        let bind = |error| TransportError::Bind { what: format!("http {addr}"), error };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(bind)?.collect();
        if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback() && !any_address) {
            return Err(TransportError::NotLoopback(*remote));
        }
        let front = TcpListener::bind(&addrs[..]).map_err(bind)?;
        let local = front.local_addr().map_err(bind)?;
        static LISTENERS: AtomicUsize = AtomicUsize::new(0); // two addresses may share a port
        let name =
            format!("dlm-http-{}-{}-{}", std::process::id(), local.port(), LISTENERS.fetch_add(1, Ordering::SeqCst));
        let inner = UnixAddr::from_abstract_name(name.as_bytes()).map_err(bind)?;
        let server = Server::from_listener(UnixListener::bind_addr(&inner).map_err(bind)?, None)
            .map_err(|e| bind(std::io::Error::other(e)))?;
        // lives as long as the process: tiny_http's Drop cannot reach an abstract socket
        let server = Box::leak(Box::new(server));
        let label = Listener { listener: addr.to_string() };
        let gauges =
            (connections.open.get_or_create(&label).clone(), connections.refused.get_or_create(&label).clone());
        thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept_loop(front, inner, limits, gauges))
            .map_err(bind)?;
        Ok(Self { server, addr: addr.to_string(), connections: connections.clone() })
    }

    /// Answer every request 503 `loading` until `ready` is set (while the model loads and warms up).
    pub fn answer_loading(&self, ready: &AtomicBool) {
        while !ready.load(Ordering::SeqCst) {
            if let Ok(Some(request)) = self.server.recv_timeout(POLL) {
                let body = json!({"ok": false, "error": {"code": "loading", "message": "the model is loading"}});
                respond(request, 503, &body.to_string(), true);
            }
        }
    }

    /// Serve until shutdown: each request in a thread of its own, at most `--max-connections`
    /// at once (more are answered 503 `busy`).
    pub fn serve(&self, shared: &Arc<Shared>, jobs: &SyncSender<Job>) {
        let running = Arc::new(AtomicUsize::new(0));
        while !shared.stopping_for(Duration::from_millis(200)) {
            let Ok(Some(request)) = self.server.recv_timeout(POLL) else { continue };
            if running.fetch_add(1, Ordering::SeqCst) >= shared.config.max_connections {
                running.fetch_sub(1, Ordering::SeqCst);
                let message = format!("{} HTTP requests in progress; try again later", shared.config.max_connections);
                respond(request, 503, &Rejection::new(Value::Null, ErrorCode::Busy, message).to_line(), true);
                continue;
            }
            let (shared, jobs) = (Arc::clone(shared), jobs.clone());
            let slot = Arc::clone(&running);
            let spawned = thread::Builder::new().name("http".into()).spawn(move || {
                handle(request, &shared, &jobs);
                slot.fetch_sub(1, Ordering::SeqCst);
            });
            if let Err(e) = spawned {
                running.fetch_sub(1, Ordering::SeqCst); // the request is dropped unanswered: its connection closes
                log::error!("cannot start an HTTP request thread: {e}");
            }
        }
    }
}

fn handle(mut request: Request, shared: &Shared, jobs: &SyncSender<Job>) {
    match (request.method(), request.url()) {
        (Method::Get, "/health") => {
            let serving = !shared.stopping() && shared.engine_alive.load(Ordering::SeqCst);
            respond(request, if serving { 200 } else { 503 }, &shared.health(&Value::Null), false);
        }
        (Method::Get, "/v1/info") => respond(request, 200, &shared.info().to_string(), false),
        (Method::Get, "/metrics") => {
            let mut response = Response::from_string(shared.metrics_text());
            if let Ok(h) = Header::from_bytes(
                &b"Content-Type"[..],
                &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
            ) {
                response = response.with_header(h);
            }
            if let Err(e) = request.respond(response) {
                log::info!("HTTP client gone before its metrics: {e}");
            }
        }
        (Method::Post, "/v1/generate") => {
            let max = shared.config.max_line;
            let mut body = Vec::new();
            let read = request.as_reader().take(max as u64 + 1).read_to_end(&mut body);
            if let Err(e) = read {
                shared.metrics.answered(ErrorCode::BadRequest.as_str());
                let line =
                    Rejection::new(Value::Null, ErrorCode::BadRequest, format!("reading the body: {e}")).to_line();
                return respond(request, 400, &line, false);
            }
            if body.len() > max {
                shared.metrics.answered(ErrorCode::TooLarge.as_str());
                let message = format!("request body over this server's limit of {max} bytes");
                return respond(
                    request,
                    413,
                    &Rejection::new(Value::Null, ErrorCode::TooLarge, message).to_line(),
                    false,
                );
            }
            let (reply, answer) = Reply::detached();
            dispatch(&body, shared, jobs, &reply, shared.stopping());
            drop(reply);
            // the engine answers every job exactly once (its deadline bounds the wait)
            let line = answer.recv().unwrap_or_else(|_| {
                Rejection::new(Value::Null, ErrorCode::Internal, "the inference thread stopped").to_line()
            });
            let code =
                serde_json::from_str::<Value>(&line).ok().and_then(|v| v["error"]["code"].as_str().map(str::to_string));
            let status = code.as_deref().map_or(200, status_of);
            respond(request, status, &line, status == 429);
        }
        (_, "/health" | "/v1/info" | "/v1/generate" | "/metrics") => {
            let message = "method not allowed: GET /health, GET /v1/info, GET /metrics, POST /v1/generate";
            respond(request, 405, &Rejection::new(Value::Null, ErrorCode::BadRequest, message).to_line(), false);
        }
        (_, url) => {
            let message =
                format!("no such path {url:?}; paths: GET /health, GET /v1/info, GET /metrics, POST /v1/generate");
            respond(request, 404, &Rejection::new(Value::Null, ErrorCode::BadRequest, message).to_line(), false);
        }
    }
}

/// The HTTP status of a response line's error code.
fn status_of(code: &str) -> u16 {
    match code {
        "bad_request" => 400,
        "invalid_argument" => 422,
        "too_large" => 413,
        "busy" => 429,
        "timeout" => 504,
        "shutting_down" => 503,
        _ => 500,
    }
}

/// A JSON response; `retry` adds `Retry-After: 1`. A client gone before the answer is dropped.
fn respond(request: Request, status: u16, body: &str, retry: bool) {
    let mut response = Response::from_string(body).with_status_code(status);
    if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]) {
        response = response.with_header(h);
    }
    if retry {
        if let Ok(h) = Header::from_bytes(&b"Retry-After"[..], &b"1"[..]) {
            response = response.with_header(h);
        }
    }
    if let Err(e) = request.respond(response) {
        log::info!("HTTP client gone before its answer: {e}");
    }
}
