//! The binary's command line: configuration errors and help.

use std::process::Command;

mod common;
use common::BIN;

fn run_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .env("SLIPSTREAM_STORAGE_PATH", dir.path())
        .env("SLIPSTREAM_LISTEN", "127.0.0.1:0")
        .env("METRICS_PORT", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it_and_exit_code_2() {
    for (var, value) in [
        ("URL_CONFIG", "not base64 !!"),
        ("URL_CONFIG", r#"[{"url":"http://wrong.example"}]"#),
        ("SLIPSTREAM_RETRY_IN_N_SECONDS", "soon"),
        ("METRICS_PORT", "70000"),
        ("ENABLE_DEBUG_LOGS", "perhaps"),
        ("SLIPSTREAM_LISTEN", "not-an-address"),
        ("SLIPSTREAM_MAX_CONNECTIONS", "0"),
        ("SLIPSTREAM_HOLD_DELIVERY_MS", "a second"),
    ] {
        let (code, stderr) = run_with(&[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains(var), "{var} named in {stderr:?}");
    }
}

#[test]
fn an_unreadable_certificate_is_named() {
    let (code, stderr) = run_with(&[
        ("SLIPSTREAM_TLS_CERT", "/nonexistent/cert.pem"),
        ("SLIPSTREAM_TLS_KEY", "/nonexistent/key.pem"),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("SLIPSTREAM_TLS_CERT: cannot read \"/nonexistent/cert.pem\""),
        "{stderr}"
    );
    let peers = r#"[{"url":"wss://peer.example:7600","ca":"/nonexistent/ca.pem"}]"#;
    let (code, stderr) = run_with(&[("URL_CONFIG", peers)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("URL_CONFIG: entry 0 (wss://peer.example:7600): ca: cannot read"),
        "{stderr}"
    );
}

#[test]
fn run_help_lists_every_variable() {
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "URL_CONFIG",
        "SLIPSTREAM_STORAGE_PATH",
        "SLIPSTREAM_RETRY_IN_N_SECONDS",
        "SLIPSTREAM_CONNECTION_RETRY_ATTEMPTS",
        "MAX_MESSAGE_REPUBLISH_ATTEMPTS",
        "METRICS_PORT",
        "ENABLE_MESSAGE_LOGS",
        "ENABLE_DEBUG_LOGS",
        "SLIPSTREAM_LISTEN",
        "SLIPSTREAM_INSTANCE_ID",
        "SLIPSTREAM_TAGS",
        "SLIPSTREAM_CLUSTER_GROUP_ID",
        "SLIPSTREAM_REDIS_URL",
        "SLIPSTREAM_AUTH_TOKEN",
        "SLIPSTREAM_ADMIN_TOKEN",
        "SLIPSTREAM_TLS_CERT",
        "SLIPSTREAM_TLS_KEY",
        "SLIPSTREAM_TLS_CLIENT_CA",
        "SLIPSTREAM_REDIS_PREFIX",
        "SLIPSTREAM_REDIS_DEDUP",
        "SLIPSTREAM_CMD_ALLOW",
        "SLIPSTREAM_REQUEST_TIMEOUT_SECONDS",
        "SLIPSTREAM_MAX_FRAME_BYTES",
        "SLIPSTREAM_MAX_BATCH",
        "SLIPSTREAM_MAX_PATH",
        "SLIPSTREAM_MAX_KEY_BYTES",
        "SLIPSTREAM_MAX_VALUE_BYTES",
        "SLIPSTREAM_MAX_CONNECTIONS",
        "SLIPSTREAM_MAX_INVALID_PER_SECOND",
        "SLIPSTREAM_MAX_PUSH_BACKLOG_BYTES",
    ] {
        assert!(
            help.contains(&format!("env: {var}=")) || help.contains(&format!("env: {var}]")),
            "{var} missing from run --help"
        );
    }
}
