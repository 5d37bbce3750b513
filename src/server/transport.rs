//! Byte streams the server answers on: stdin/stdout, a Unix domain socket, TCP on a loopback
//! address, a serial line. Each stream is polled so that a reader notices shutdown, then
//! adapted to `embedded_io` and handed to [`connection::serve`].

use std::fs::File;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use embedded_io_adapters::std::FromStd;
use serialport::TTYPort;

use super::http::HttpListener;
use super::queue::Job;
use super::{connection, Shared};
pub use crate::error::TransportError;
use crate::protocol::{ErrorCode, Rejection};

/// How long a read waits before the reader looks at the shutdown flag again.
const POLL: Duration = Duration::from_millis(100);
/// How often a listener with no pending connection looks again.
const ACCEPT_IDLE: Duration = Duration::from_millis(20);
/// At shutdown, once every request has its answer: how long connections may take to write them.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// An opened transport, not yet serving.
pub enum Transport {
    Stdio,
    Tcp(TcpListener),
    /// `inode`: of the socket this server made, so that it removes only its own on exit.
    Unix {
        listener: UnixListener,
        path: PathBuf,
        inode: u64,
    },
    Serial {
        port: TTYPort,
        path: String,
    },
    Http(HttpListener),
}

impl Transport {
    pub fn tcp(addr: &str, any_address: bool) -> Result<Self, TransportError> {
        let bind = |source| TransportError::Bind { what: format!("tcp {addr}"), source };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(bind)?.collect();
        if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback() && !any_address) {
            return Err(TransportError::NotLoopback { addr: *remote, flag: "--tcp-any-address" });
        }
        let listener = TcpListener::bind(&addrs[..]).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        Ok(Self::Tcp(listener))
    }

    pub fn unix(path: &Path) -> Result<Self, TransportError> {
        let bind = |source| TransportError::Bind { what: format!("unix socket {}", path.display()), source };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(TransportError::NotASocket(path.to_path_buf()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(TransportError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(bind)?; // a stale socket of an earlier run
        }
        let listener = UnixListener::bind(path).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let inode = std::fs::symlink_metadata(path).map_err(bind)?.ino();
        Ok(Self::Unix { listener, path: path.to_path_buf(), inode })
    }

    /// A serial device in raw mode (8N1, no flow control) at `baud`.
    pub fn serial(path: &str, baud: u32) -> Result<Self, TransportError> {
        let port = serialport::new(path, baud).timeout(Duration::from_secs(5)).open_native();
        let port = port.map_err(|source| TransportError::Serial { path: path.to_string(), source })?;
        Ok(Self::Serial { port, path: path.to_string() })
    }

    /// Where this transport listens, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Stdio => "stdin/stdout".into(),
            Self::Tcp(l) => l.local_addr().map_or("tcp".into(), |a| format!("tcp {a}")),
            Self::Unix { path, .. } => format!("unix {}", path.display()),
            Self::Serial { path, .. } => format!("serial {path}"),
            Self::Http(h) => format!("http {}", h.addr),
        }
    }

    /// Serve on a thread of its own; it ends at shutdown once its connections have drained
    /// (stdin and serial lines also at end of input).
    /// The thread's result: Err(why) when a stdio or serial transport ended other than by a
    /// signal or the end of stdin (stdout closed, the serial line hung up or failed).
    pub fn spawn(self, shared: Arc<Shared>, jobs: SyncSender<Job>) -> Option<JoinHandle<Result<(), String>>> {
        let name = self.describe();
        log::info!("listening on {name}");
        if let Self::Http(listener) = &self {
            listener.open(&shared, &jobs); // before READY=1
        }
        let run = move || match self {
            Self::Stdio => match io::stdin().as_fd().try_clone_to_owned() {
                // Raw fd reads: std's buffered Stdin would hide buffered bytes from poll(2).
                Ok(fd) => match serve_stream(File::from(fd), io::stdout(), &shared, &jobs) {
                    true => Ok(()),
                    false => Err("stdout is closed: answers could not be written".to_string()),
                },
                Err(e) => Err(format!("stdin: {e}")),
            },
            Self::Serial { port, path } => {
                match port.try_clone_native() {
                    Ok(writer) => serve_stream(port, writer, &shared, &jobs),
                    Err(e) => return Err(format!("serial {path}: {e}")),
                };
                if shared.stopping() {
                    Ok(())
                } else {
                    Err(format!("serial {path}: the line hung up"))
                }
            }
            Self::Tcp(listener) => {
                let accept = || listener.accept().map(|(s, _)| s).and_then(|s| s.set_nodelay(true).map(|()| s));
                accept_loop(accept, &shared, &jobs);
                Ok(())
            }
            Self::Http(listener) => {
                drop(jobs); // the listener holds its own
                listener.serve(&shared);
                Ok(())
            }
            Self::Unix { listener, path, inode } => {
                accept_loop(|| listener.accept().map(|(s, _)| s), &shared, &jobs);
                // another server may have taken the path since: remove the socket only if still ours
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == inode) {
                    let _ = std::fs::remove_file(&path);
                }
                Ok(())
            }
        };
        match thread::Builder::new().name(name.clone()).spawn(run) {
            Ok(handle) => Some(handle),
            Err(e) => {
                log::error!("{name}: cannot start its thread: {e}");
                None
            }
        }
    }
}

/// A connected stream that can be split into a reading and a writing handle.
trait Stream: io::Read + io::Write + AsRawFd + Send + Sized + 'static {
    /// Another handle on the same connection.
    fn duplicate(&self) -> io::Result<Self>;
    /// Shut the connection down both ways: blocked reads and writes on every handle end.
    fn close(&self);
    /// Blocking, with writes that give up after `write_timeout` (a client that reads nothing).
    fn set_blocking(&self, write_timeout: Duration) -> io::Result<()>;

    fn split(self) -> io::Result<(Self, Self)> {
        Ok((self.duplicate()?, self))
    }
}

impl Stream for TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
    fn set_blocking(&self, write_timeout: Duration) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_write_timeout(Some(write_timeout))
    }
}

impl Stream for UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
    fn set_blocking(&self, write_timeout: Duration) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_write_timeout(Some(write_timeout))
    }
}

fn accept_loop<S: Stream>(mut accept: impl FnMut() -> io::Result<S>, shared: &Arc<Shared>, jobs: &SyncSender<Job>) {
    let mut connections: Vec<(JoinHandle<()>, S)> = Vec::new();
    while !shared.stopping() {
        connections.retain(|(c, _)| !c.is_finished());
        let stream = match accept() {
            Ok(stream) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(ACCEPT_IDLE);
                continue;
            }
            Err(e) => {
                log::warn!("accept failed: {e}");
                thread::sleep(ACCEPT_IDLE);
                continue;
            }
        };
        if let Err(e) = stream.set_blocking(shared.config.idle) {
            log::warn!("dropping a connection: {e}");
            continue;
        }
        if connections.len() >= shared.config.max_connections {
            let message = format!("too many connections (limit {})", shared.config.max_connections);
            let mut stream = stream;
            let _ = writeln!(stream, "{}", Rejection::new(serde_json::Value::Null, ErrorCode::Busy, message).to_line());
            continue;
        }
        let closer = match stream.duplicate() {
            Ok(closer) => closer,
            Err(e) => {
                log::warn!("dropping a connection: {e}");
                continue;
            }
        };
        let (shared, jobs) = (shared.clone(), jobs.clone());
        let spawned = thread::Builder::new().name("connection".into()).spawn(move || match stream.split() {
            Ok((reader, writer)) => {
                serve_stream(reader, writer, &shared, &jobs);
            }
            Err(e) => log::warn!("dropping a connection: {e}"),
        });
        match spawned {
            Ok(handle) => connections.push((handle, closer)),
            Err(e) => log::error!("cannot start a connection thread: {e}"),
        }
    }
    drain(connections, shared);
}

/// At shutdown: once every request taken has its answer (the engine's drain), connections
/// still open after [`CLOSE_GRACE`] (a client that reads none of its answers) are closed.
fn drain<S: Stream>(mut connections: Vec<(JoinHandle<()>, S)>, shared: &Shared) {
    let mut answered_since = None;
    loop {
        connections.retain(|(c, _)| !c.is_finished());
        if connections.is_empty() {
            return;
        }
        if shared.outstanding.load(Ordering::SeqCst) > 0 {
            answered_since = None;
        } else if answered_since.get_or_insert_with(Instant::now).elapsed() >= CLOSE_GRACE {
            break;
        }
        thread::sleep(ACCEPT_IDLE);
    }
    log::warn!(
        "stopping: closing {} connection(s) whose client has not read its answers {CLOSE_GRACE:?} after the last request was answered",
        connections.len()
    );
    for (connection, closer) in connections {
        closer.close();
        let _ = connection.join();
    }
}

/// Serve one stream; false when its answers could not all be written.
fn serve_stream<R, W>(reader: R, writer: W, shared: &Shared, jobs: &SyncSender<Job>) -> bool
where
    R: io::Read + AsRawFd,
    W: io::Write + Send + 'static,
{
    connection::serve(FromStd::new(Polled(reader)), FromStd::new(writer), shared, jobs)
}

/// A reader whose reads give up with `TimedOut` after [`POLL`] without input.
struct Polled<T>(T);

impl<T: io::Read + AsRawFd> io::Read for Polled<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut fd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, and the fd stays open while self.0 lives.
        let ready = unsafe { libc::poll(&mut fd, 1, POLL.as_millis() as libc::c_int) };
        match ready {
            0 => Err(io::ErrorKind::TimedOut.into()),
            n if n < 0 => Err(io::Error::last_os_error()),
            _ => self.0.read(buf),
        }
    }
}
