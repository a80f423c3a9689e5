//! Operations: metrics, logs at run time, admin access, status, dead letters, shutdown.

use std::time::Duration;

use serde_json::json;
use slipstream_testkit::{eventually, writes, NodeOptions, TestNode, WsClient};

mod common;
use common::{start, BIN, LONG};

async fn metrics_text(n: &TestNode) -> String {
    let (status, text) = slipstream_node::http::client::request(
        &n.http_addr.to_string(),
        "GET",
        "/metrics",
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_and_pass_promtool() {
    let a = start(NodeOptions::default());
    let b = start(NodeOptions::dialing(&[&a]));
    a.wait_connected(1).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&writes("m", 10)).await.unwrap();
    app.send_text("{broken").await.unwrap();
    app.recv_until(LONG, |v| v["type"] == "NACK").await.unwrap();
    a.wait_drained().await;
    let a_ref = &a;
    let m = |s: String| async move { a_ref.metric(&s).await.unwrap() };
    assert_eq!(
        m(format!(
            "slipstream_messages_processed_total{{origin=\"{}\",type=\"SK\"}}",
            a.id
        ))
        .await,
        10.0
    );
    assert_eq!(
        m("slipstream_messages_sent_total{type=\"SK\"}".into()).await,
        10.0
    );
    assert_eq!(m("slipstream_acks_received_total".into()).await, 10.0);
    assert_eq!(
        m("slipstream_messages_dropped_total{reason=\"invalid\"}".into()).await,
        1.0
    );
    assert_eq!(
        m(format!("slipstream_peer_connected{{peer=\"{}\"}}", b.id)).await,
        1.0
    );
    assert_eq!(
        m(format!(
            "slipstream_peer_outbox_pending{{peer=\"{}\"}}",
            b.id
        ))
        .await,
        0.0
    );
    assert_eq!(m("slipstream_outbox_pending".into()).await, 0.0);
    assert!(m("slipstream_commit_batch_size_count".into()).await >= 1.0);
    assert!(m("process_resident_memory_bytes".into()).await > 1e6);
    // The checkpointer's first round after the writes finds them in the WAL.
    eventually(
        "a checkpoint round reports the WAL's pages",
        LONG,
        || async {
            match a.metric("slipstream_wal_frames").await {
                Ok(n) if n > 0.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        b.metric(&format!(
            "slipstream_messages_processed_total{{origin=\"{}\",type=\"SK\"}}",
            a.id
        ))
        .await
        .unwrap(),
        10.0
    );
    assert_eq!(
        b.metric("slipstream_replication_latency_seconds_count")
            .await
            .unwrap(),
        10.0
    );

    // The exposition is valid Prometheus text. CI installs promtool; without it (a developer
    // machine) this part is reported and skipped.
    let text = metrics_text(&a).await;
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("promtool is required in CI (Debian package prometheus)")
        }
        Err(_) => eprintln!("promtool not installed: exposition format not checked"),
    }
}

fn count(node: &TestNode, level: &str) -> usize {
    let needle = format!("\"level\":\"{level}\"");
    node.logs().lines().filter(|l| l.contains(&needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_changes_at_run_time() {
    let a = start(NodeOptions::default());
    let b = start(NodeOptions::dialing(&[&a]));
    a.wait_connected(1).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    let publish_and_deliver = |prefix: &'static str| {
        let (a, b) = (&a, &b);
        async move {
            let mut app = WsClient::app(&a.ws_url()).await.unwrap();
            app.publish(&writes(prefix, 3)).await.unwrap();
            eventually("b has the writes", LONG, || async {
                match b
                    .key(&format!("{prefix}:2"))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Some(_) => Ok(()),
                    None => Err("not yet".into()),
                }
            })
            .await;
            a.wait_drained().await;
        }
    };
    app.publish(&writes("quiet", 3)).await.unwrap();
    a.wait_drained().await;
    assert_eq!(count(&a, "debug"), 0, "debug logs are off by default");
    assert_eq!(count(&a, "message"), 0, "the kit turns message logs off");

    let (status, v) = a
        .http(
            "PUT",
            "/log-level",
            Some(r#"{"level":"debug","messageLogs":true}"#),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"level": "debug", "messageLogs": true}));
    assert_eq!(a.get_json("/log-level").await.unwrap(), v);
    publish_and_deliver("loud").await;
    eventually("debug and message lines appear", LONG, || async {
        if count(&a, "debug") > 0 && count(&a, "message") >= 3 {
            Ok(())
        } else {
            Err(a.logs())
        }
    })
    .await;

    let (status, _) = a
        .http(
            "PUT",
            "/log-level",
            Some(r#"{"level":"info","messageLogs":false}"#),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The node logs the change after applying it: once that line is read, every line written
    // before the change is read too, so the counts below are a true baseline.
    eventually("the revert is logged", LONG, || async {
        if a.logs().matches("log settings changed").count() >= 2 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    let (debug_before, message_before) = (count(&a, "debug"), count(&a, "message"));
    publish_and_deliver("quiet-again").await;
    assert_eq!(
        count(&a, "debug"),
        debug_before,
        "no debug lines after reverting"
    );
    assert_eq!(
        count(&a, "message"),
        message_before,
        "no message lines after reverting"
    );

    let (status, v) = a
        .http("PUT", "/log-level", Some(r#"{"level":"loud"}"#))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("loud"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_mutating_endpoints_only() {
    let a = start(NodeOptions::default().env("SLIPSTREAM_ADMIN_TOKEN", "s3cret"));
    for (method, path) in [
        ("PUT", "/log-level"),
        ("POST", "/dlq/replay"),
        ("DELETE", "/dlq"),
    ] {
        let (status, v) = a.http(method, path, Some("{}")).await.unwrap();
        assert_eq!(status, 401, "{method} {path}: {v}");
    }
    let addr = a.http_addr.to_string();
    let (status, body) =
        slipstream_node::http::client::request(&addr, "DELETE", "/dlq", None, Some("s3cret"))
            .await
            .unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"purged":0}"#));
    // Read-only endpoints stay open for scrapers.
    for path in ["/metrics", "/status", "/health", "/dlq", "/log-level"] {
        assert_eq!(
            slipstream_node::http::client::request(&addr, "GET", path, None, None)
                .await
                .unwrap()
                .0,
            200,
            "{path}"
        );
    }
    a.wait_for_log("admin request refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_to_a_returning_peer_and_purge() {
    let a = start(NodeOptions::default());
    let mut mute = WsClient::peer(&a.ws_url(), "con-x").await.unwrap();
    a.wait_connected(1).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&writes("dlq", 5)).await.unwrap();
    // The mute peer reads (answering pings) but never acknowledges.
    let dead = async {
        eventually("5 dead letters", LONG, || async {
            let n = a.get_json("/dlq").await.map_err(|e| e.to_string())?["deadLetters"]
                .as_array()
                .map(|d| d.len())
                .unwrap_or(0);
            if n == 5 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        })
        .await
    };
    tokio::select! {
        _ = dead => {}
        _ = async { loop { if mute.recv(Duration::from_secs(3600)).await.is_err() { break } } } => panic!("mute peer dropped"),
    }
    drop(mute);
    eventually("con-x disconnected", LONG, || async {
        let s = a.status().await.map_err(|e| e.to_string())?;
        if s["peers"][0]["connected"] == false {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;

    // The CLI lists them.
    let http = format!("http://{}", a.http_addr);
    let out = tokio::process::Command::new(BIN)
        .args(["dlq", "list", "--http", &http])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listed.lines().filter(|l| l.contains("peer con-x")).count(),
        5,
        "{listed}"
    );

    // The peer comes back, acknowledging this time; replaying one by message id, then the rest.
    let mut peer = WsClient::peer(&a.ws_url(), "con-x").await.unwrap();
    let first = a.get_json("/dlq").await.unwrap()["deadLetters"][0]["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = tokio::process::Command::new(BIN)
        .args(["dlq", "replay", "--http", &http, "--message-id", &first])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "replayed 1");
    let got = peer.recv_until(LONG, |v| v["type"] == "SK").await.unwrap();
    assert_eq!(got["messageId"], first.as_str());
    peer.send(&json!({"type": "ACK", "messageId": first, "sourceInstanceId": "con-x"}))
        .await
        .unwrap();
    // Two more by seq over HTTP.
    let dead = a.get_json("/dlq").await.unwrap();
    let seqs: Vec<i64> = dead["deadLetters"].as_array().unwrap()[..2]
        .iter()
        .map(|d| d["seq"].as_i64().unwrap())
        .collect();
    let replayed: Vec<String> = dead["deadLetters"].as_array().unwrap()[..2]
        .iter()
        .map(|d| d["messageId"].as_str().unwrap().to_owned())
        .collect();
    let (status, v) = a
        .http(
            "POST",
            "/dlq/replay",
            Some(&json!({ "seqs": seqs }).to_string()),
        )
        .await
        .unwrap();
    assert_eq!((status, v["replayed"].clone()), (200, json!(2)));
    // Every copy is acknowledged until both have come: a row whose ACK took longer than the
    // retry period (0.2 s here) comes again, and may come before the other one.
    let mut got = Vec::new();
    while !replayed.iter().all(|id| got.contains(id)) {
        let v = peer.recv_until(LONG, |v| v["type"] == "SK").await.unwrap();
        peer.send(
            &json!({"type": "ACK", "messageId": v["messageId"], "sourceInstanceId": "con-x"}),
        )
        .await
        .unwrap();
        got.push(v["messageId"].as_str().unwrap().to_owned());
    }
    eventually("three delivered and out of the queue", LONG, || async {
        let s = a.status().await.map_err(|e| e.to_string())?;
        if s["peers"][0]["acked"] == 3 && s["deadLetters"] == 2 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    // The last two are purged.
    let out = tokio::process::Command::new(BIN)
        .args(["dlq", "purge", "--http", &http])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "purged 2");
    assert_eq!(a.get_json("/dlq").await.unwrap()["deadLetters"], json!([]));
    let (status, v) = a.http("POST", "/dlq/replay", None).await.unwrap();
    assert_eq!((status, v["replayed"].clone()), (200, json!(0)));
    a.wait_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_prints_a_table_of_peers() {
    let a = start(NodeOptions::default().env("SLIPSTREAM_TAGS", "aws,prod"));
    let b = start(NodeOptions::dialing(&[&a]));
    b.wait_connected(1).await;
    let http = format!("http://{}", b.http_addr);
    let out = tokio::process::Command::new(BIN)
        .args(["status", "--http", &http])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with(&format!("instance {}", b.id)), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&a.id))
        .unwrap_or_else(|| panic!("no row for {}: {table}", a.id));
    assert!(
        row.contains("connected") && row.contains("outbound") && row.contains("closed"),
        "{row}"
    );
    let s = b.status().await.unwrap();
    assert_eq!(
        s["peers"][0]["tags"],
        json!(["aws", "prod"]),
        "tags learnt from HELLO"
    );
    assert_eq!(s["peers"][0]["dialer"]["circuit"], "closed");
    assert!(s["uptimeSeconds"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_across_a_sigterm_restart_under_load() {
    let mut a = start(NodeOptions::default());
    let b = start(NodeOptions::dialing(&[&a]));
    a.wait_connected(1).await;
    let url = a.ws_url();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    // A writer keeps publishing batches and keeps what was acknowledged.
    let writer = tokio::spawn(async move {
        let mut acked: Vec<(String, String)> = Vec::new();
        let Ok(mut app) = WsClient::app(&url).await else {
            return acked;
        };
        for round in 0.. {
            let batch = writes(&format!("load{round}"), 20);
            tokio::select! {
                r = app.publish(&batch) => match r {
                    Ok(()) => acked.extend(batch),
                    Err(_) => return acked,
                },
                _ = &mut stopped => return acked,
            }
        }
        acked
    });
    eventually("some writes acknowledged", LONG, || async {
        let s = a.status().await.map_err(|e| e.to_string())?;
        if s["journalMessages"].as_u64().unwrap_or(0) >= 200 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    assert_eq!(a.terminate().unwrap(), Some(0), "SIGTERM exits 0");
    let _ = stop.send(());
    let acked = writer.await.unwrap();
    assert!(acked.len() >= 200, "{}", acked.len());
    a.restart().unwrap();
    for node in [&a, &b] {
        eventually(
            &format!("{} holds every acknowledged write", node.id),
            LONG,
            || async {
                for (k, v) in &acked {
                    match node.key(k).await.map_err(|e| e.to_string())? {
                        Some(got) if got["value"] == v.as_str() => {}
                        other => return Err(format!("{k}: {other:?}")),
                    }
                }
                Ok(())
            },
        )
        .await;
    }
}
