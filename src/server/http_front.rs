//! The TCP side of `--http`: tiny_http has no connection limit and no timeouts of its own, so
//! the server accepts HTTP connections itself, with the line protocol's limits, and relays each
//! to tiny_http over a private (abstract) Unix socket:
//! - at most `--max-connections` at once per listener; one more is answered 503 `busy`, closed;
//! - a connection waiting for its next request closes after `--idle-timeout-ms` of silence;
//! - a request, from its first byte to the first byte of its answer, is given the idle time plus
//!   the longest deadline (`--timeout-ms`), so a slow client cannot hold a thread for longer
//!   (however it paces its bytes), and an answer in the making is never cut off (HTTP/1.1
//!   without pipelining: a request sent before the previous answer shares its time);
//! - an answer the client does not read for the idle time ends the connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;

use crate::protocol::{ErrorCode, Rejection};

/// The limits a relayed connection lives under.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub idle: Duration,
    pub deadline: Duration,
}

/// Refusals lingering at once; more are answered without lingering.
const MAX_REFUSING: usize = 16;

/// Accept on `front` forever, relaying each connection to `inner` (tiny_http's socket), counting
/// them in `gauges` (this listener's series of the HTTP connection metrics).
pub fn accept_loop(front: TcpListener, inner: UnixAddr, limits: Limits, gauges: (Gauge, Counter)) {
    let (open, refusing) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (open_gauge, refused) = gauges;
    for stream in front.incoming() {
        let client = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("HTTP accept failed: {e}");
                thread::sleep(Duration::from_millis(50)); // e.g. out of descriptors: do not spin
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            open.fetch_sub(1, Ordering::SeqCst);
            refused.inc();
            refuse_busy(client, limits.max_connections, &refusing);
            continue;
        }
        open_gauge.inc();
        let (inner, slot, slot_gauge) = (inner.clone(), Arc::clone(&open), open_gauge.clone());
        let spawned = thread::Builder::new().name("http-conn".into()).spawn(move || {
            if let Err(e) = relay(client, &inner, limits) {
                log::info!("HTTP connection ended: {e}");
            }
            slot_gauge.dec();
            slot.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            open.fetch_sub(1, Ordering::SeqCst); // the thread that would have freed the slot
            open_gauge.dec();
            log::error!("cannot start an HTTP connection thread: {e}");
        }
    }
}

/// 503 `busy` on a thread of its own, so that the accept loop never waits on a refused
/// client; past `MAX_REFUSING` at once, without lingering.
fn refuse_busy(client: TcpStream, max_connections: usize, refusing: &Arc<AtomicUsize>) {
    let message = format!("{max_connections} HTTP connections open; try again later");
    let body = Rejection::new(Value::Null, ErrorCode::Busy, message).to_line();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::SeqCst);
        let _ = client.set_nonblocking(true);
        let _ = (&client).write_all(format!("{head}{body}").as_bytes());
        return;
    }
    let done = Arc::clone(refusing);
    let spawned = thread::Builder::new().name("http-refuse".into()).spawn(move || {
        refuse(client, &head, &body);
        done.fetch_sub(1, Ordering::SeqCst);
    });
    if spawned.is_err() {
        refusing.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answer `head` and `body`, then read (and drop) what the client sent for a moment before
/// closing, so that its request does not turn the close into a reset that loses the answer.
fn refuse(mut client: TcpStream, head: &str, body: &str) {
    let linger = Duration::from_millis(50);
    let _ = client.set_write_timeout(Some(linger));
    if client.write_all(head.as_bytes()).and_then(|()| client.write_all(body.as_bytes())).is_err() {
        return;
    }
    let _ = client.shutdown(Shutdown::Write);
    let _ = client.set_read_timeout(Some(linger));
    let until = Instant::now() + linger;
    let mut sink = [0u8; 4096];
    while Instant::now() < until && client.read(&mut sink).is_ok_and(|n| n > 0) {}
}

/// What a connection is doing, for its timeouts.
struct Activity {
    start: Instant,
    state: Mutex<State>,
}

#[derive(Clone, Copy)]
struct State {
    /// When the request being sent or answered began (its first byte), in ms from start; None
    /// while the connection waits for its next request.
    request: Option<u64>,
    /// When an answer's bytes last went out (or the connection opened), in ms from start.
    answered: u64,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), state: Mutex::new(State { request: None, answered: 0 }) }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn update(&self, f: impl FnOnce(&mut State, u64)) {
        let now = self.now();
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()), now);
    }

    /// Request bytes came in: the first after an answer starts a request's time.
    fn got(&self) {
        self.update(|s, now| {
            s.request.get_or_insert(now);
        });
    }

    /// Answer bytes went out: the request is answered, the connection idle from now.
    fn sent(&self) {
        self.update(|s, now| {
            s.request = None;
            s.answered = now;
        });
    }

    /// How long the connection has gone past its limit's start, when over its limit: idle time
    /// waiting for a request, idle plus the deadline from a request's first byte.
    fn expired(&self, limits: &Limits) -> Option<u64> {
        let now = self.now();
        let s = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (since, allowed) = match s.request {
            Some(began) => (now.saturating_sub(began), limits.idle + limits.deadline),
            None => (now.saturating_sub(s.answered), limits.idle),
        };
        (u128::from(since) >= allowed.as_millis()).then_some(since)
    }
}

/// Relay one client: this thread reads the client (waking to look at the clock), a second
/// writes tiny_http's answers back. Returns when either side is done.
fn relay(client: TcpStream, inner: &UnixAddr, limits: Limits) -> std::io::Result<()> {
    let upstream = UnixStream::connect_addr(inner)?;
    // tiny_http writes an answer's head and body apart: without this, Nagle holds the body
    // back until the client's delayed ACK of the head (40 ms on Linux)
    client.set_nodelay(true)?;
    let slice = (limits.idle / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
    client.set_read_timeout(Some(slice))?;
    client.set_write_timeout(Some(limits.idle))?;
    let activity = Arc::new(Activity::new());

    let answers = {
        let (mut from, mut to, activity) = (upstream.try_clone()?, client.try_clone()?, Arc::clone(&activity));
        thread::Builder::new().name("http-out".into()).spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break; // the client reads nothing for the idle time, or is gone
                        }
                        activity.sent();
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        })?
    };

    let (mut from, mut to) = (client, upstream);
    let mut buf = [0u8; 16 * 1024];
    let result = loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write); // the answer to a last request still comes
                break Ok(());
            }
            Ok(n) => {
                activity.got(); // before the request can be answered
                if let Err(e) = to.write_all(&buf[..n]) {
                    break Err(e);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                if let Some(since) = activity.expired(&limits) {
                    log::info!("closing an HTTP connection: {since} ms past the start of its wait");
                    let _ = to.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                    break Ok(());
                }
            }
            Err(e) => {
                let _ = to.shutdown(Shutdown::Both);
                break Err(e);
            }
        }
    };
    let _ = answers.join();
    result
}
