//! The TCP side of `--http`: tiny_http has no connection limit and no timeouts of its own, so
//! the server accepts HTTP connections itself, with the line protocol's limits, and relays each
//! to tiny_http over a private (abstract) Unix socket:
//! - at most `--max-connections` at once per listener; one more is answered 503 `busy`, closed;
//! - a connection waiting for its next request closes after `--idle-timeout-ms` of silence;
//! - a request still arriving (or waiting for its answer) is given the idle time plus the
//!   longest deadline (`--timeout-ms`), so a slow client cannot hold a thread for longer, and an
//!   answer in the making is never cut off;
//! - an answer the client does not read for the idle time ends the connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::protocol::{ErrorCode, Rejection};

/// The limits a relayed connection lives under.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub idle: Duration,
    pub deadline: Duration,
}

/// Accept on `front` forever, relaying each connection to `inner` (tiny_http's socket).
pub fn accept_loop(front: TcpListener, inner: UnixAddr, limits: Limits) {
    let open = Arc::new(AtomicUsize::new(0));
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
            let message = format!("{} HTTP connections open; try again later", limits.max_connections);
            let body = Rejection::new(Value::Null, ErrorCode::Busy, message).to_line();
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
                body.len()
            );
            refuse(client, &head, &body);
            continue;
        }
        let (inner, open) = (inner.clone(), Arc::clone(&open));
        let spawned = thread::Builder::new().name("http-conn".into()).spawn(move || {
            if let Err(e) = relay(client, &inner, limits) {
                log::info!("HTTP connection ended: {e}");
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            log::error!("cannot start an HTTP connection thread: {e}");
        }
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

/// When bytes last moved each way on a connection: a sequence number (which was later; never
/// ties) and the time in ms from the connection's start.
struct Activity {
    start: Instant,
    events: AtomicU64,
    last_in: (AtomicU64, AtomicU64),
    last_out: (AtomicU64, AtomicU64),
}

impl Activity {
    fn new() -> Self {
        let zero = || (AtomicU64::new(0), AtomicU64::new(0));
        Self { start: Instant::now(), events: AtomicU64::new(0), last_in: zero(), last_out: zero() }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn stamp(&self, which: &(AtomicU64, AtomicU64)) {
        which.0.store(self.events.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        which.1.store(self.now(), Ordering::SeqCst);
    }

    /// Whether the connection has been silent too long: input newer than the last answer is a
    /// request arriving or in work (no pipelining), which gets the idle time plus the deadline.
    fn expired(&self, limits: &Limits) -> Option<u64> {
        let now = self.now();
        let (got, sent) = (self.last_in.0.load(Ordering::SeqCst), self.last_out.0.load(Ordering::SeqCst));
        let (since, allowed) = if got > sent {
            (now.saturating_sub(self.last_in.1.load(Ordering::SeqCst)), limits.idle + limits.deadline)
        } else {
            (now.saturating_sub(self.last_out.1.load(Ordering::SeqCst)), limits.idle)
        };
        (u128::from(since) >= allowed.as_millis()).then_some(since)
    }
}

/// Relay one client: this thread reads the client (waking to look at the clock), a second
/// writes tiny_http's answers back. Returns when either side is done.
fn relay(client: TcpStream, inner: &UnixAddr, limits: Limits) -> std::io::Result<()> {
    let upstream = UnixStream::connect_addr(inner)?;
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
                        activity.stamp(&activity.last_out);
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
                activity.stamp(&activity.last_in); // before the request can be answered
                if let Err(e) = to.write_all(&buf[..n]) {
                    break Err(e);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                if let Some(since) = activity.expired(&limits) {
                    log::info!("closing an HTTP connection silent for {since} ms");
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
