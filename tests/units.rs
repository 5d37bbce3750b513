//! cross/dlm.service and cross/dlm.default: the unit passes `systemd-analyze verify` and keeps a
//! low `systemd-analyze security` exposure; the default settings start a server.

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::server::Server;
use serde_json::json;

/// The unit with ExecStart pointing at the binary under test (verify checks that it exists).
fn unit_here(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(common::repo_path("cross/dlm.service")).unwrap();
    let path = dir.join("dlm.service");
    std::fs::write(&path, unit.replace("/opt/dlm/bin/dlm", env!("CARGO_BIN_EXE_dlm"))).unwrap();
    path
}

fn analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze ({e}): install systemd (Debian: apt-get install systemd)"))
}

#[test]
fn the_unit_verifies_and_exposes_little() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_here(dir.path());
    let unit = unit.to_str().unwrap();
    let verify = analyze(&["verify", unit]);
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let security = analyze(&["security", "--offline=true", unit]);
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for dlm.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(score <= 2.5, "exposure {score} (docs/deploy.md reports 1.9)");
}

#[test]
fn the_default_settings_start_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let free = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (tcp, http) = (free(), free());
    let defaults = std::fs::read_to_string(common::repo_path("cross/dlm.default")).unwrap();
    let mut env: Vec<(String, String)> = defaults
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap())
        .filter(|(k, _)| k != "ORT_DYLIB_PATH" && k != "RUST_LOG") // the test's own library and log
        .collect();
    assert!(
        env.iter().any(|(k, _)| k == "DLM_MODEL") && env.iter().all(|(k, _)| k.starts_with("DLM_") || k == "RUST_LOG")
    );
    for (key, value) in env.iter_mut() {
        match key.as_str() {
            "DLM_MODEL" => *value = common::model_dir().display().to_string(),
            "DLM_UNIX" => *value = dir.path().join("dlm.sock").display().to_string(),
            "DLM_TCP" => *value = format!("127.0.0.1:{tcp}"),
            "DLM_HTTP" => *value = format!("127.0.0.1:{http}"),
            _ => {}
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::spawn(dir, tcp, &[], &env);
    let mut client = server.tcp();
    client.send(&json!({"op": "health", "id": 1}));
    let health = client.recv();
    assert_eq!(health["health"]["queue_capacity"], 8, "{health}");
    assert!(std::os::unix::net::UnixStream::connect(server.dir.path().join("dlm.sock")).is_ok());
    assert!(std::net::TcpStream::connect(("127.0.0.1", http)).is_ok(), "DLM_HTTP listens");
}
