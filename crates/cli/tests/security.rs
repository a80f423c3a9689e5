//! Security: TLS, mutual TLS, tokens, limits, trust boundaries, hostile input over real
//! connections. Certificates are made at test time.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use slipstream_testkit::{eventually, NodeOptions, TestNode, TestPki, WsClient};

mod common;
use common::{start, LONG};

fn tls_server(pki: &TestPki) -> NodeOptions {
    NodeOptions::default()
        .env("SLIPSTREAM_TLS_CERT", &pki.path("server.pem"))
        .env("SLIPSTREAM_TLS_KEY", &pki.path("server.key"))
}

fn dialing(peers: Value) -> NodeOptions {
    NodeOptions::default().env("URL_CONFIG", &peers.to_string())
}

/// Waits until the node's dialer for its only peer reports an error containing `needle`.
async fn dial_error(node: &TestNode, needle: &str) {
    eventually(
        &format!("{} fails to dial with {needle:?}", node.id),
        LONG,
        || async {
            let s = node.status().await.map_err(|e| e.to_string())?;
            let err = s["peers"][0]["dialer"]["lastError"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            if err.contains(needle) {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    )
    .await;
}

async fn replicates(from: &TestNode, to: &TestNode, key: &str) {
    // Over HTTP, which stays plain on METRICS_PORT whether the WebSocket listener is TLS or not.
    let body = json!({"type": "SK", "key": key, "value": "secret"}).to_string();
    let (status, v) = from
        .http("POST", "/v1/messages", Some(&body))
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    eventually(&format!("{key} reaches {}", to.id), LONG, || async {
        match to.key(key).await.map_err(|e| e.to_string())? {
            Some(v) if v["value"] == "secret" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_mesh_replicates_and_a_server_from_an_unknown_ca_is_refused() {
    let pki = TestPki::new("mesh").unwrap();
    let stranger = TestPki::new("stranger").unwrap();
    let a = start(tls_server(&pki));
    // b trusts the private CA (given as PEM text), c trusts another CA (given as a path).
    let b = start(dialing(
        json!([{ "url": a.wss_url(), "ca": pki.text("ca.pem") }]),
    ));
    let c = start(dialing(
        json!([{ "url": a.wss_url(), "ca": stranger.path("ca.pem") }]),
    ));
    b.wait_connected(1).await;
    replicates(&b, &a, "tls:1").await;
    replicates(&a, &b, "tls:2").await;
    dial_error(&c, "UnknownIssuer").await;
    assert_eq!(
        a.status().await.unwrap()["peers"].as_array().unwrap().len(),
        1,
        "only b got in"
    );
    // A plain ws:// client cannot talk to a TLS listener either.
    assert!(WsClient::connect_raw(&a.ws_url()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_a_client_without_a_certificate_is_refused() {
    let pki = TestPki::new("mtls").unwrap();
    let a = start(tls_server(&pki).env("SLIPSTREAM_TLS_CLIENT_CA", &pki.path("ca.pem")));
    let without = start(dialing(
        json!([{ "url": a.wss_url(), "ca": pki.path("ca.pem") }]),
    ));
    let with = start(dialing(json!([{
        "url": a.wss_url(), "ca": pki.path("ca.pem"), "cert": pki.path("client.pem"), "key": pki.path("client.key")
    }])));
    with.wait_connected(1).await;
    replicates(&with, &a, "mtls:1").await;
    dial_error(&without, "CertificateRequired").await;
    assert!(
        a.metric("slipstream_connections_refused_total{reason=\"tls\"}")
            .await
            .unwrap()
            >= 1.0
    );
    a.wait_for_log("connection refused").await;
    let peers = a.status().await.unwrap()["peers"].clone();
    assert_eq!(peers.as_array().unwrap().len(), 1, "{peers}");
    assert_eq!(peers[0]["id"], with.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_unauthorized_false_connects_with_a_loud_warning() {
    let pki = TestPki::new("lax").unwrap();
    let a = start(tls_server(&pki));
    let b = start(dialing(
        json!([{ "url": a.wss_url(), "rejectUnauthorized": false }]),
    ));
    b.wait_connected(1).await;
    // One at start and one per connect.
    eventually("two warnings about rejectUnauthorized", LONG, || async {
        let warnings = b
            .logs()
            .lines()
            .filter(|l| {
                l.contains("rejectUnauthorized is false") && l.contains("\"level\":\"warn\"")
            })
            .count();
        if warnings >= 2 {
            Ok(())
        } else {
            Err(b.logs())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_and_the_node_keeps_serving() {
    let a = start(NodeOptions::default().env("SLIPSTREAM_MAX_CONNECTIONS", "2"));
    let mut one = WsClient::app(&a.ws_url()).await.unwrap();
    let _two = WsClient::app(&a.ws_url()).await.unwrap();
    assert!(
        WsClient::connect_raw(&a.ws_url()).await.is_err(),
        "a third connection is refused"
    );
    assert_eq!(
        a.metric("slipstream_connections_refused_total{reason=\"connection_limit\"}")
            .await
            .unwrap(),
        1.0
    );
    one.publish(&[("still".into(), "works".into())])
        .await
        .unwrap();
    drop(one);
    eventually("a slot is free again", LONG, || async {
        match WsClient::connect_raw(&a.ws_url()).await {
            Ok(mut c) => {
                c.send(&json!({"type": "GK", "key": "still", "messageId": "r"}))
                    .await
                    .map_err(|e| e.to_string())?;
                c.recv_until(Duration::from_secs(5), |v| v["type"] == "RES")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limits_are_enforced_with_nacks_naming_them() {
    let a = start(
        NodeOptions::default()
            .env("SLIPSTREAM_MAX_KEY_BYTES", "8")
            .env("SLIPSTREAM_MAX_VALUE_BYTES", "16")
            .env("SLIPSTREAM_MAX_BATCH", "3")
            .env("SLIPSTREAM_MAX_PATH", "2"),
    );
    let mut c = WsClient::app(&a.ws_url()).await.unwrap();
    for (frame, needle) in [
        (
            json!({"type": "SK", "key": "much-too-long", "value": "v"}),
            "`key` is 13 bytes, more than the limit of 8",
        ),
        (
            json!({"type": "SK", "key": "k", "value": "x".repeat(17)}),
            "`value` is 17 bytes, more than the limit of 16",
        ),
        (
            json!([{"type": "GK", "key": "a"}, {"type": "GK", "key": "a"}, {"type": "GK", "key": "a"}, {"type": "GK", "key": "a"}]),
            "batch of 4 messages exceeds the limit of 3",
        ),
        (
            json!({"type": "SK", "key": "k", "value": "v", "messagePath": ["x", "y", "z"]}),
            "`messagePath` has 3 entries, more than the limit of 2",
        ),
    ] {
        c.send(&frame).await.unwrap();
        let nack = c.recv_until(LONG, |v| v["type"] == "NACK").await.unwrap();
        assert!(
            nack["error"].as_str().unwrap().contains(needle),
            "{nack} should say {needle}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_invalid_messages_close_the_connection_with_1008_and_others_keep_working() {
    let a = start(NodeOptions::default().env("SLIPSTREAM_MAX_INVALID_PER_SECOND", "5"));
    let mut good = WsClient::app(&a.ws_url()).await.unwrap();
    let mut bad = WsClient::app(&a.ws_url()).await.unwrap();
    for _ in 0..20 {
        if bad.send_text("not json").await.is_err() {
            break;
        }
    }
    let closed = loop {
        match bad.recv(LONG).await {
            Ok(_) => continue,
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        closed.contains("Policy") || closed.contains("1008"),
        "closed with 1008: {closed}"
    );
    assert_eq!(
        a.metric("slipstream_connections_refused_total{reason=\"invalid_rate\"}")
            .await
            .unwrap(),
        1.0
    );
    good.publish(&[("after".into(), "ok".into())])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_app_cannot_pose_as_another_node() {
    let a = start(NodeOptions::default());
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.send(&json!({
        "type": "SK", "key": "forged", "value": "v", "messageId": "f1",
        "originInstanceId": "con-victim", "sourceInstanceId": "con-victim", "messagePath": ["con-victim"],
        "hlc": "ffffffffffff0000"
    }))
    .await
    .unwrap();
    app.recv_until(LONG, |v| v["type"] == "ACK").await.unwrap();
    let got = a.key("forged").await.unwrap().unwrap();
    assert_eq!(
        got["originInstanceId"],
        a.id.as_str(),
        "the node stamps itself as origin"
    );
    let peers = a.status().await.unwrap()["peers"].clone();
    assert_eq!(peers, json!([]), "the app did not become a peer");
}

/// Frames an attacker might send: broken JSON, wrong shapes and types, unknown types,
/// oversized and deeply nested input, loops and spoofed HELLOs, random bytes.
fn hostile(rng: &mut StdRng, i: usize) -> String {
    match i % 12 {
        0 => "{".repeat(rng.gen_range(1..5000)),
        1 => format!("[{}]", "[".repeat(200) + &"]".repeat(200)),
        2 => json!({"type": "SK", "key": rng.gen::<u64>(), "value": "v"}).to_string(),
        3 => json!({"type": format!("X{}", rng.gen::<u16>()), "key": "k"}).to_string(),
        4 => json!({"type": "SW", "key": "k", "value": {"m": "NaN"}}).to_string(),
        5 => json!({"type": "ACK"}).to_string(),
        6 => json!({"type": "SK", "key": "k", "value": "v", "hlc": "zzzz"}).to_string(),
        7 => (0..rng.gen_range(1..200))
            .map(|_| rng.gen_range(0x20u8..0x7f) as char)
            .collect(),
        8 => json!({"type": "HELLO"}).to_string(),
        9 => json!({"type": "RES", "inReplyTo": 7}).to_string(),
        10 => format!(
            r#"{{"type":"SK","key":"k","value":"{}"}}"#,
            "x".repeat(600 * 1024)
        ),
        _ => json!([1, "two", null, {"type": "CMD", "command": ""}]).to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_hostile_frames_cost_the_node_nothing() {
    // The bystander reads nothing while the attack runs, so it answers no pings: the heartbeat
    // is long enough that the node does not close it as dead meanwhile.
    let a = start(
        NodeOptions::default()
            .env("SLIPSTREAM_MAX_INVALID_PER_SECOND", "1000000")
            .env("SLIPSTREAM_HEARTBEAT_SECONDS", "30"),
    );
    let b = start(NodeOptions::dialing(&[&a]));
    a.wait_connected(1).await;
    let mut bystander = WsClient::app(&a.ws_url()).await.unwrap();
    bystander
        .publish(&[("before".into(), "1".into())])
        .await
        .unwrap();
    let mut attacker = WsClient::app(&a.ws_url()).await.unwrap();
    let mut rng = StdRng::seed_from_u64(99);
    let n = 3000;
    for i in 0..n {
        attacker.send_text(&hostile(&mut rng, i)).await.unwrap();
    }
    // Every hostile frame is answered (NACK for the invalid ones); then the same connection
    // still carries a valid write.
    attacker
        .publish(&[("after-attack".into(), "ok".into())])
        .await
        .unwrap();
    bystander
        .publish(&[("during".into(), "2".into())])
        .await
        .unwrap();
    for key in ["before", "during", "after-attack"] {
        eventually(&format!("b has {key}"), LONG, || async {
            b.key(key)
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .ok_or_else(|| "missing".to_string())
        })
        .await;
    }
    assert!(
        a.metric("slipstream_messages_dropped_total{reason=\"invalid\"}")
            .await
            .unwrap()
            >= n as f64 * 0.8
    );
    assert_eq!(a.http("GET", "/health", None).await.unwrap().0, 200);
    let s = a.status().await.unwrap();
    assert_eq!(
        s["journalMessages"], 3,
        "only the three valid writes were recorded: {s}"
    );
}
