//! One client connection: request lines in through `embedded_io::Read`, response lines out
//! through `embedded_io::Write`, whatever the byte stream underneath.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use embedded_io::{Read, Write};
use serde_json::Value;

use super::lines::{Line, LineReader};
use super::queue::{Answer, Job, Outstanding, Pending, Reply};
use super::Shared;
use crate::protocol::{parse_request, ErrorCode, Op, Rejection};

/// After the shutdown signal a reader answers lines that arrive for this long (`shutting_down`),
/// then stops, however chatty its client.
const STOP_GRACE: Duration = Duration::from_millis(200);
/// How often a reader held back by unwritten replies looks again.
const BACKPRESSURE_POLL: Duration = Duration::from_millis(5);

/// Read requests until end of input, an I/O error, an idle timeout, or shutdown (lines that
/// arrive in the grace after it are answered `shutting_down`); returns when every request read
/// has its answer written (or the client is gone), and whether the answers could be written. A client with more than `max_pending` bytes
/// of answers unread is not read from until it reads them (or is dropped after `idle`).
pub fn serve<R, W>(reader: R, writer: W, shared: &Shared, jobs: &SyncSender<Job>) -> bool
where
    R: Read,
    W: Write + Send + 'static,
{
    let (reply, replies) = mpsc::channel::<String>();
    let pending = Arc::new(Pending::default());
    let counted = pending.clone();
    let writer =
        thread::Builder::new().name("writer".into()).spawn(move || write_all_replies(writer, replies, &counted));
    let writer = match writer {
        Ok(w) => w,
        Err(e) => {
            log::error!("cannot start a writer thread: {e}");
            return false;
        }
    };
    let reply = Reply::line(reply, pending.clone());
    let mut lines = LineReader::new(reader, shared.config.max_line);
    let mut active = Instant::now();
    loop {
        if !wait_for_writer(&pending, shared) {
            log::info!("dropping a client that reads none of its answers");
            break;
        }
        let stopping = shared.stopping();
        if shared.stopping_for(STOP_GRACE) {
            break;
        }
        match lines.next_line() {
            Ok(Line::Text(bytes)) if bytes.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Line::Text(bytes)) => {
                active = Instant::now();
                dispatch(bytes, shared, jobs, &reply, stopping);
            }
            Ok(Line::TooLong { len }) => {
                active = Instant::now();
                let max = shared.config.max_line;
                let message = format!("request line of {len} bytes is over this server's limit of {max} bytes");
                shared.metrics.answered(ErrorCode::TooLarge.as_str());
                reply.send(Rejection::new(Value::Null, ErrorCode::TooLarge, message).into());
            }
            // Shutting down: stop once nothing more is waiting to be read.
            Ok(Line::Idle) if stopping => break,
            Ok(Line::Idle) if pending.bytes.load(Ordering::SeqCst) > 0 => active = Instant::now(),
            Ok(Line::Idle) if active.elapsed() >= shared.config.idle => {
                log::info!("closing a connection idle for {:?}", shared.config.idle);
                break;
            }
            Ok(Line::Idle) => continue,
            Ok(Line::Eof) => break,
            Err(e) => {
                log::info!("connection closed: read error {e:?}");
                pending.reader_failed.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    drop(reply);
    let _ = writer.join();
    !pending.writer_gone.load(Ordering::SeqCst)
}

/// Hold the reader while the replies waiting exceed the limit; false when the client has read
/// nothing for the idle time (or its writer is gone) and should be dropped.
fn wait_for_writer(pending: &Pending, shared: &Shared) -> bool {
    let since = Instant::now();
    while pending.bytes.load(Ordering::SeqCst) > shared.config.max_pending {
        if pending.writer_gone.load(Ordering::SeqCst) || since.elapsed() >= shared.config.idle {
            return false;
        }
        thread::sleep(BACKPRESSURE_POLL);
    }
    true
}

/// One request line: answered at once (health, a bad line, busy, stopping) or queued as a job.
pub(super) fn dispatch(line: &[u8], shared: &Shared, jobs: &SyncSender<Job>, reply: &Reply, stopping: bool) {
    let received = Instant::now();
    let incoming = match parse_request(line) {
        Ok(incoming) => incoming,
        Err(rejection) => {
            shared.metrics.answered(rejection.code.as_str());
            reply.send(rejection.into());
            return;
        }
    };
    let params = match incoming.op {
        Op::Health => {
            reply.send(Answer::ok(shared.health(&incoming.id)));
            return;
        }
        Op::Metrics => {
            let line = serde_json::json!({"id": incoming.id, "ok": true, "metrics": shared.metrics_text()});
            reply.send(Answer::ok(line.to_string()));
            return;
        }
        Op::Generate(params) => params,
    };
    let refuse = |code: ErrorCode, message: &str| {
        shared.metrics.answered(code.as_str());
        Answer::from(Rejection::new(incoming.id.clone(), code, message))
    };
    if stopping {
        reply.send(refuse(ErrorCode::ShuttingDown, "the server is stopping and takes no new requests"));
        return;
    }
    let outstanding = Outstanding::new(&shared.outstanding);
    let job = Job { id: incoming.id.clone(), params, received, reply: reply.clone(), outstanding };
    shared.queue_depth.fetch_add(1, Ordering::SeqCst);
    let refused = match jobs.try_send(job) {
        Ok(()) => return,
        Err(TrySendError::Full(_)) => {
            let message = format!("queue full ({} waiting); try again later", shared.config.queue);
            refuse(ErrorCode::Busy, &message)
        }
        Err(TrySendError::Disconnected(_)) => refuse(ErrorCode::Internal, "the inference thread is not running"),
    };
    shared.queue_depth.fetch_sub(1, Ordering::SeqCst);
    reply.send(refused);
}

/// Write each reply line as it comes; after a write error or timeout (client gone or not
/// reading) keep taking replies so that nobody waits on this connection, and drop them.
fn write_all_replies<W: Write>(mut writer: W, replies: mpsc::Receiver<String>, pending: &Pending) {
    for line in replies {
        if !pending.writer_gone.load(Ordering::SeqCst) {
            let written =
                writer.write_all(line.as_bytes()).and_then(|()| writer.write_all(b"\n")).and_then(|()| writer.flush());
            if let Err(e) = written {
                log::info!("client gone or not reading, dropping its replies: {e:?}");
                pending.writer_gone.store(true, Ordering::SeqCst);
            }
        }
        pending.bytes.fetch_sub(line.len() + 1, Ordering::SeqCst);
    }
}
