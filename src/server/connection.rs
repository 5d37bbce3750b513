//! One client connection: request lines in through `embedded_io::Read`, response lines out
//! through `embedded_io::Write`, whatever the byte stream underneath.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender, SyncSender, TrySendError};
use std::thread;
use std::time::Instant;

use embedded_io::{Read, Write};
use serde_json::Value;

use super::engine::Job;
use super::lines::{Line, LineReader};
use super::Shared;
use crate::protocol::{parse_request, ErrorCode, Op, Rejection};

/// Read requests until end of input, an I/O error, or shutdown (then the lines already
/// received are answered `shutting_down`); returns when every request read has its answer
/// written (or the client is gone).
pub fn serve<R, W>(reader: R, writer: W, shared: &Shared, jobs: &SyncSender<Job>)
where
    R: Read,
    W: Write + Send + 'static,
{
    let (reply, replies) = mpsc::channel::<String>();
    let writer = thread::Builder::new().name("writer".into()).spawn(move || write_all_replies(writer, replies));
    let writer = match writer {
        Ok(w) => w,
        Err(e) => return log::error!("cannot start a writer thread: {e}"),
    };
    let mut lines = LineReader::new(reader, shared.config.max_line);
    loop {
        let stopping = shared.stopping();
        match lines.next_line() {
            Ok(Line::Text(bytes)) if bytes.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Line::Text(bytes)) => dispatch(bytes, shared, jobs, &reply, stopping),
            Ok(Line::TooLong { len }) => {
                let max = shared.config.max_line;
                let message = format!("request line of {len} bytes is over this server's limit of {max} bytes");
                let _ = reply.send(Rejection::new(Value::Null, ErrorCode::TooLarge, message).to_line());
            }
            // Shutting down: stop once nothing more is waiting to be read.
            Ok(Line::Idle) if stopping => break,
            Ok(Line::Idle) => continue,
            Ok(Line::Eof) => break,
            Err(e) => {
                log::info!("connection closed: read error {e:?}");
                break;
            }
        }
    }
    drop(reply);
    let _ = writer.join();
}

fn dispatch(line: &[u8], shared: &Shared, jobs: &SyncSender<Job>, reply: &Sender<String>, stopping: bool) {
    let received = Instant::now();
    let incoming = match parse_request(line) {
        Ok(incoming) => incoming,
        Err(rejection) => {
            let _ = reply.send(rejection.to_line());
            return;
        }
    };
    let params = match incoming.op {
        Op::Health => {
            let _ = reply.send(shared.health(&incoming.id));
            return;
        }
        Op::Generate(params) => params,
    };
    let refuse = |code, message: &str| Rejection::new(incoming.id.clone(), code, message).to_line();
    if stopping {
        let _ = reply.send(refuse(ErrorCode::ShuttingDown, "the server is stopping and takes no new requests"));
        return;
    }
    let job = Job { id: incoming.id.clone(), params, received, reply: reply.clone() };
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
    let _ = reply.send(refused);
}

/// Write each reply line as it comes; after a write error (client gone) keep taking replies
/// so that nobody waits on this connection, and drop them.
fn write_all_replies<W: Write>(mut writer: W, replies: mpsc::Receiver<String>) {
    let mut open = true;
    for line in replies {
        if !open {
            continue;
        }
        let written =
            writer.write_all(line.as_bytes()).and_then(|()| writer.write_all(b"\n")).and_then(|()| writer.flush());
        if let Err(e) = written {
            log::info!("client gone, dropping its replies: {e:?}");
            open = false;
        }
    }
}
