//! Accepting HTTP connections: at most `--max-connections` per listener (one more takes the
//! slot of a connection that has long waited for its request, see [`Slots`], or is answered
//! 503 `busy` and closed before any of its request is read), each served by hyper's HTTP/1
//! connection with a timer, so that a head must arrive whole in the idle time (hyper 1.4 and
//! later start that clock when the connection waits for a request, before its first byte), and
//! closed with a lingering read so that what the client still sends does not turn the close
//! into a reset that loses its answer. At shutdown: stop accepting, close idle connections,
//! let answers in the making go out, then give the rest a short grace.

use std::convert::Infallible;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};

use super::io::WriteTimeout;
use super::slots::{AnswerBody, Held, Slots};
use super::{routes, Front};
use crate::protocol::{ErrorCode, Rejection};

/// The longest request head (request line and headers), in bytes.
const MAX_HEAD: usize = 16 * 1024;
/// How long, and how many bytes, a closed connection goes on reading (and dropping) of what
/// its client still sends.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;
/// Connections lingering at once; more are closed at once.
const MAX_LINGERING: usize = 64;
/// How long a refusal may take to write.
const REFUSE_WRITE: Duration = Duration::from_millis(50);
/// At shutdown, once no answer is awaited from the engine: how long the connections still
/// open (an answer nobody reads, a request half sent) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Accept until the listener is told to stop, then shut its connections down.
pub(super) async fn accept_loop(listener: TcpListener, front: Arc<Front>) {
    let slots = Arc::new(Slots::new(front.limits.max_connections));
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
    let mut stop = front.stop.subscribe();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match slots.take() {
                    Some(held) => {
                        connections.spawn(connection(stream, Arc::clone(&front), held, Arc::clone(&lingering)));
                    }
                    None => {
                        front.refused.inc();
                        tokio::spawn(refuse(stream, front.limits.max_connections, Arc::clone(&lingering)));
                    }
                },
                Err(e) => {
                    log::warn!("HTTP accept failed: {e}");
                    sleep(Duration::from_millis(50)).await; // e.g. out of descriptors: do not spin
                }
            },
            Some(_) = connections.join_next() => {}
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    drain(connections, &front).await;
}

/// Once the listener is told to stop (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Wait for the answers the engine still owes, then give the connections left a short grace.
async fn drain(mut connections: JoinSet<()>, front: &Front) {
    while !connections.is_empty() && front.awaiting.load(Ordering::SeqCst) > 0 {
        let _ = timeout(Duration::from_millis(20), connections.join_next()).await;
    }
    let grace = Instant::now() + CLOSE_GRACE;
    while !connections.is_empty() {
        if tokio::time::timeout_at(grace, connections.join_next()).await.is_err() {
            log::warn!(
                "stopping: closing {} HTTP connection(s) still open {CLOSE_GRACE:?} after the last answer",
                connections.len()
            );
            break;
        }
    }
    connections.shutdown().await;
}

/// One connection counted in the open gauge for as long as this lives.
struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn builder(front: &Front) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(front.limits.idle)
        .max_buf_size(MAX_HEAD.max(8192))
        .max_header_size(MAX_HEAD)
        .half_close(false)
        .keep_alive(true);
    builder
}

async fn connection(stream: TcpStream, front: Arc<Front>, held: Held, lingering: Arc<Semaphore>) {
    front.open.inc();
    let open = Open(front.open.clone());
    // answers go out whole at once: no Nagle delay behind the client's delayed ACK
    let _ = stream.set_nodelay(true);
    // a second descriptor of the socket, for the lingering close after hyper is done with it
    let spare = stream.as_fd().try_clone_to_owned().map(std::net::TcpStream::from);
    let io = TokioIo::new(WriteTimeout::new(stream, front.limits.idle));
    let (handler, slot) = (Arc::clone(&front), Arc::clone(&held.slot));
    let service = service_fn(move |request| {
        let (front, slot) = (Arc::clone(&handler), Arc::clone(&slot));
        async move {
            let answer = routes::answer(request, &front, &slot).await;
            Ok::<_, Infallible>(answer.map(|body| AnswerBody::new(body, slot)))
        }
    });
    let conn = builder(&front).serve_connection(io, service);
    tokio::pin!(conn);
    let mut stop = front.stop.subscribe();
    let mut stopping = false;
    let ended = loop {
        tokio::select! {
            ended = conn.as_mut() => break ended.map_err(|e| e.to_string()),
            () = stopped(&mut stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown(); // idle: closed now; busy: after its answer
            }
            () = held.slot.evicted.notified() => break Err("its slot went to a new connection".into()),
        }
    };
    if let Err(e) = ended {
        log::info!("HTTP connection ended: {e}");
    }
    drop((open, held));
    if let Ok(spare) = spare {
        if let Ok(spare) = TcpStream::from_std(spare) {
            linger(spare, &lingering).await;
        }
    }
}

/// 503 `busy`, written without reading the request, then a lingering close.
async fn refuse(mut stream: TcpStream, max_connections: usize, lingering: Arc<Semaphore>) {
    let message = format!("{max_connections} HTTP connections open and none idle; try again later");
    let body = Rejection::new(Value::Null, ErrorCode::Busy, message).to_line();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if matches!(timeout(REFUSE_WRITE, stream.write_all(answer.as_bytes())).await, Ok(Ok(()))) {
        linger(stream, &lingering).await;
    }
}

/// Close the sending side, then read and drop what the client still sends for [`LINGER`] (up
/// to [`LINGER_BYTES`], or until it closes too), so that its unread bytes do not reset the
/// connection before it has read its answer.
async fn linger(mut stream: TcpStream, lingering: &Semaphore) {
    let Ok(_lingering) = lingering.try_acquire() else { return };
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut dropped = 0;
    let _ = timeout(LINGER, async {
        while dropped < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(n) if n > 0 => dropped += n,
                _ => break,
            }
        }
    })
    .await;
}
