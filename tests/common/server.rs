//! `dlm serve` as the tests drive it: a server process with the systemd notify socket played
//! by the test, and a line-protocol client.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Long enough for any wait in a test: a hang guard, not a measure of speed.
pub const LIMIT: Duration = Duration::from_secs(120);

pub struct Server {
    pub child: Child,
    pub notify: UnixDatagram,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The notifications before READY=1 (EXTEND_TIMEOUT_USEC while loading, STATUS= per graph).
    pub loading: Vec<String>,
}

impl Server {
    /// Start `dlm serve` on a free loopback port and a Unix socket; wait for READY=1.
    pub fn start(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut args: Vec<String> = vec!["--tcp".into(), format!("127.0.0.1:{port}"), "--unix".into()];
        args.push(dir.path().join("dlm.sock").display().to_string());
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(dir, port, &args, env)
    }

    /// Start `dlm serve ARGS` with the notify socket in `dir`; wait for READY=1.
    pub fn spawn(dir: tempfile::TempDir, port: u16, args: &[String], env: &[(&str, &str)]) -> Server {
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dlm"));
        cmd.args(["serve", "--model", &super::model_dir().display().to_string()])
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut server = Server { child: cmd.spawn().unwrap(), notify, dir, port, loading: Vec::new() };
        loop {
            let note = server.note();
            if note.contains("READY=1") {
                break server;
            }
            assert!(note.contains("EXTEND_TIMEOUT_USEC=") || note.starts_with("STATUS="), "before READY=1: {note:?}");
            server.loading.push(note);
        }
    }

    /// The next notify datagram.
    pub fn note(&self) -> String {
        let mut buf = [0u8; 512];
        let n = loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => break n,
                // a stopped and continued test process sees EINTR from a recv with a timeout
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("a notification within 60 s: {e}"),
            }
        };
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    pub fn tcp(&self) -> Client<TcpStream> {
        Client::new(TcpStream::connect(("127.0.0.1", self.port)).unwrap())
    }

    /// Poll health on a connection of its own until `ready(health)` holds: the last health.
    pub fn wait_for(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let mut probe = self.tcp();
        let start = Instant::now();
        loop {
            probe.send(&json!({"op": "health", "id": 0}));
            let health = probe.recv()["health"].clone();
            if ready(&health) {
                return health;
            }
            assert!(start.elapsed() < LIMIT, "{what}: not within {LIMIT:?}; health {health}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Steps (20 to 2000) that one sequence takes about `target` to run at the speed measured
    /// now, so that a test that needs a request to outlast something sizes it by this machine.
    pub fn steps_lasting(&self, target: Duration) -> usize {
        let mut client = self.tcp();
        let start = Instant::now();
        client.send(&json!({"id": 0, "steps": 20}));
        assert_eq!(code(&client.recv()), "ok");
        let per_step = start.elapsed().as_secs_f64() / 20.0;
        // the answer goes out before health counts its sequences gone: wait, so that a test
        // that waits for its own request to run next does not see this one
        self.wait_for("the timed request leaves", |h| h["active_sequences"] == 0);
        ((target.as_secs_f64() / per_step.max(1e-6)).ceil() as usize).clamp(20, 2000)
    }

    /// One sample of the metrics (`name{labels}`), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let mut client = self.tcp();
        client.send(&json!({"op": "metrics", "id": 0}));
        let text = client.recv()["metrics"].as_str().unwrap_or_default().to_string();
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(sample));
        line.and_then(|l| l.split_whitespace().nth(1)).map_or(0.0, |v| v.parse().unwrap())
    }

    pub fn unix_path(&self) -> PathBuf {
        self.dir.path().join("dlm.sock")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "dlm serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client<S> {
    pub reader: BufReader<S>,
    pub writer: S,
}

pub trait Split: Sized {
    fn split(&self) -> Self;
}

impl Split for TcpStream {
    fn split(&self) -> Self {
        self.try_clone().unwrap()
    }
}

impl Split for UnixStream {
    fn split(&self) -> Self {
        self.try_clone().unwrap()
    }
}

impl<S: Read + Write + Split> Client<S> {
    pub fn new(stream: S) -> Self {
        Client { writer: stream.split(), reader: BufReader::new(stream) }
    }

    pub fn send(&mut self, request: &Value) {
        writeln!(self.writer, "{request}").unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn recv(&mut self) -> Value {
        self.try_recv().expect("connection closed before a response")
    }

    /// The next response, or None at the end of the stream.
    pub fn try_recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("response is not JSON ({e}): {line:?}")))
    }

    /// Responses to `n` requests, by id (each id exactly once).
    pub fn recv_by_id(&mut self, n: usize) -> BTreeMap<i64, Value> {
        let mut by_id = BTreeMap::new();
        for _ in 0..n {
            let r = self.recv();
            let id = r["id"].as_i64().unwrap_or_else(|| panic!("no integer id: {r}"));
            assert!(by_id.insert(id, r).is_none(), "id {id} answered twice");
        }
        by_id
    }
}

pub fn code(r: &Value) -> &str {
    if r["ok"] == true {
        "ok"
    } else {
        r["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code: {r}"))
    }
}

/// `dlm serve --stdio ARGS` on the bundled model with stdin, stdout and stderr piped.
pub fn spawn_stdio(extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dlm"))
        .args(["serve", "--stdio", "--model", &super::model_dir().display().to_string()])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dlm serve starts")
}
