//! `dlm serve` against clients that try to exhaust it (issue 11, findings 1, 3 and 5): one that
//! never reads its answers, one that keeps talking after SIGTERM, idle ones holding every slot.

mod common;

use common::rss_kb;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::server::{code, Server, LIMIT};
use serde_json::json;

#[test]
fn a_client_that_reads_nothing_is_held_back_then_dropped() {
    let server = Server::start(&["--max-pending", "65536", "--idle-timeout-ms", "1500"], &[]);
    let before = rss_kb(server.child.id());
    let mut flood = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    flood.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let line = format!("{}\n", json!({"op": "health", "id": "x".repeat(1000)}));
    let start = Instant::now();
    let mut sent = 0usize;
    // 6.4 MB and more of health lines, answers never read: the server stops reading us
    while sent < 20_000 && flood.write_all(line.as_bytes()).is_ok() {
        sent += 1;
    }
    assert!(sent < 20_000, "the server read all {sent} lines of a client that reads nothing");
    let grown = rss_kb(server.child.id()).saturating_sub(before);
    assert!(grown < 30_000, "server grew by {grown} kB for {sent} unread answers");
    // after the idle time the server drops that client; others are served meanwhile
    let mut other = server.tcp();
    other.send(&json!({"id": 1, "op": "health"}));
    assert_eq!(code(&other.recv()), "ok");
    // then the connection ends: its answers so far (up to what the kernel buffered), then end
    // of stream or a reset, within the idle times (a client's receive buffer may absorb a few
    // MB of answers first, letting the server read on for a while: hence no fixed sleep)
    flood.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let closed = loop {
        match flood.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break false,
            Ok(0) | Err(_) => break true,
            Ok(_) if start.elapsed() > Duration::from_secs(30) => break false,
            Ok(_) => {}
        }
    };
    assert!(closed, "the server still holds a client that read nothing for {:?}", start.elapsed());
}

#[test]
fn a_chatty_client_does_not_hold_the_shutdown() {
    let mut server = Server::start(&[], &[]);
    let mut chatty = server.tcp();
    let (lines, pause) = (200, Duration::from_millis(50));
    let talking = std::thread::spawn(move || {
        for k in 0..lines {
            if writeln!(chatty.writer, "{}", json!({"op": "health", "id": k})).is_err() {
                return;
            }
            std::thread::sleep(pause);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    // the client would talk for 10 s more whatever the machine: the server did not wait for it
    let talks_for = pause * lines - Duration::from_millis(300);
    assert!(signalled.elapsed() < talks_for, "shutdown took {:?}", signalled.elapsed());
    talking.join().unwrap();
}

#[test]
fn a_client_that_reads_nothing_does_not_hold_the_shutdown() {
    let idle = Duration::from_secs(60); // the default: a write to a client that reads nothing waits this long
    let mut server = Server::start(&["--idle-timeout-ms", &idle.as_millis().to_string()], &[]);
    let mut flood = std::os::unix::net::UnixStream::connect(server.unix_path()).unwrap();
    flood.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let line = format!("{}\n", json!({"op": "health", "id": "x".repeat(60_000)}));
    // until the server stops reading a client that reads none of its answers
    let mut sent = 0;
    while sent < 2_000 && flood.write_all(line.as_bytes()).is_ok() {
        sent += 1;
    }
    assert!(sent < 2_000, "the server read all {sent} lines");
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    let took = signalled.elapsed();
    assert!(took < idle / 2, "SIGTERM took {took:?}, the client still connected (idle time {idle:?})");
    drop(flood);
}

#[test]
fn idle_connections_are_closed_and_free_their_slots() {
    let server = Server::start(&["--max-connections", "2", "--idle-timeout-ms", "400"], &[]);
    let mut idle: Vec<_> = (0..2).map(|_| server.tcp()).collect();
    for client in &mut idle {
        client.reader.get_ref().set_read_timeout(Some(LIMIT)).unwrap();
        assert!(client.try_recv().is_none(), "an idle connection is closed without an answer");
    }
    // their slots free just after they close: a client told busy meanwhile tries again
    let start = Instant::now();
    let r = loop {
        let mut client = server.tcp();
        let _ = writeln!(client.writer, "{}", json!({"id": 7, "steps": 2})); // a refused one may be closed
        match client.try_recv() {
            Some(r) if code(&r) != "busy" => break r,
            _ => {} // busy, or closed before our line was read
        }
        assert!(start.elapsed() < LIMIT, "the idle connections' slots were not freed");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((code(&r), &r["id"]), ("ok", &json!(7)), "{r}");
}

#[test]
fn a_serial_line_that_hangs_up_is_a_failure_for_the_supervisor() {
    use std::os::fd::AsRawFd;
    let (master, slave) = serialport::TTYPort::pair().expect("a pseudo-terminal pair");
    let name = serialport::SerialPort::name(&slave).expect("the pty has a name");
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: fcntl on fds we own; the server must not inherit the master end
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }, 0);
    }
    let mut server = Server::spawn(tempfile::tempdir().unwrap(), 0, &["--serial".to_string(), name], &[]);
    drop(master); // the line hangs up
    assert_eq!(server.wait().code(), Some(1), "Restart=on-failure restarts only a non-zero exit");
    drop(slave);
}

#[test]
fn stdio_with_stdout_closed_fails_with_a_message() {
    let mut child = common::server::spawn_stdio(&[]);
    drop(child.stdout.take()); // nobody reads the answers
    child.stdin.take().unwrap().write_all(b"{\"id\":1,\"op\":\"health\"}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stdout is closed"), "{stderr}");
}
