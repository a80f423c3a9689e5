//! Integration tests: real node processes, real TCP on free ports, real SQLite files in temp
//! dirs, SIGKILL for crashes.

use std::time::Duration;

use serde_json::{json, Value};
use slipstream_testkit::{eventually, NodeOptions, TestNode, WsClient};

mod common;
use common::{start, BIN, LONG};

/// Three nodes, every pair linked once (each dials the ones started before it).
async fn full_mesh(env: &[(&str, &str)]) -> (TestNode, TestNode, TestNode) {
    let with_env = |mut o: NodeOptions| {
        for (k, v) in env {
            o = o.env(k, v);
        }
        o
    };
    let a = start(with_env(NodeOptions::default()));
    let b = start(with_env(NodeOptions::dialing(&[&a])));
    let c = start(with_env(NodeOptions::dialing(&[&a, &b])));
    for n in [&a, &b, &c] {
        n.wait_connected(2).await;
    }
    (a, b, c)
}

/// The node's peak RSS so far, in MiB (`/status`).
async fn peak_rss_mib(node: &TestNode) -> f64 {
    node.status().await.unwrap()["process"]["peakRssMiB"]
        .as_f64()
        .expect("peak RSS is a number")
}

/// `n` writes of 48 KiB values, keyed `prefix:i`, each value starting with its index.
fn large_writes(prefix: &str, n: usize) -> Vec<(String, String)> {
    let filler = "x".repeat(48 * 1024);
    (0..n)
        .map(|i| (format!("{prefix}:{i}"), format!("{i}-{filler}")))
        .collect()
}

/// Publishes `all` from `app` 16 writes to a frame, each frame acknowledged before the next.
async fn publish_by_16(app: &mut WsClient, all: &[(String, String)]) {
    for chunk in all.chunks(16) {
        app.publish(chunk).await.unwrap();
    }
}

fn writes(prefix: &str, range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range
        .map(|i| (format!("{prefix}:{i}"), format!("value-{i}")))
        .collect()
}

/// Waits until `node` holds every write with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mesh_of_three_replicates_a_thousand_writes() {
    let (a, b, c) = full_mesh(&[]).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    let all = writes("order", 0..1000);
    for chunk in all.chunks(100) {
        app.publish(chunk).await.unwrap();
    }
    b.wait_has_all(&all).await;
    c.wait_has_all(&all).await;
    for n in [&b, &c] {
        assert_eq!(
            n.metric(&format!(
                "slipstream_messages_processed_total{{origin=\"{}\",type=\"SK\"}}",
                a.id
            ))
            .await
            .unwrap(),
            1000.0
        );
    }
    a.wait_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_forwards_over_two_hops() {
    let a = start(NodeOptions::default());
    let b = start(NodeOptions::dialing(&[&a]));
    let c = start(NodeOptions::dialing(&[&b]));
    b.wait_connected(2).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    let all = writes("line", 0..50);
    app.publish(&all).await.unwrap();
    c.wait_has_all(&all).await;
    let got = c.key("line:7").await.unwrap().unwrap();
    assert_eq!(got["originInstanceId"], a.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_catches_up_after_restart() {
    let (a, _b, mut c) = full_mesh(&[]).await;
    let all = writes("pay", 0..500);
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    for (i, chunk) in all.chunks(10).enumerate() {
        app.publish(chunk).await.unwrap();
        if i == 10 {
            c.kill();
        }
        if i == 30 {
            c.restart().unwrap();
        }
    }
    c.wait_has_all(&all).await;
    a.wait_drained().await;
    // Each write is recorded exactly once in C's journal, whatever route and resend it came by.
    eventually("c's journal holds each write once", LONG, || async {
        let s = c.status().await.map_err(|e| e.to_string())?;
        if s["journalMessages"] == 500 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let dlq = a.get_json("/dlq").await.unwrap();
    assert_eq!(dlq["deadLetters"], json!([]));
}

/// A node killed after its checkpointer copied part of the WAL into the database file, with
/// acknowledged writes still only in the WAL beyond that part, holds every write after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_after_a_checkpoint_keeps_every_acknowledged_write() {
    let mut a = start(NodeOptions::default());
    let db = a.data_dir().join("slipstream.db");
    let file_len = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let before = file_len();
    let first = writes("ckpt", 0..300);
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    for chunk in first.chunks(100) {
        app.publish(chunk).await.unwrap();
    }
    // Until the checkpointer's first round, everything since the start is only in the WAL.
    eventually(
        "a checkpoint copies the WAL into the database file",
        LONG,
        || async {
            match file_len() {
                n if n > before => Ok(()),
                n => Err(format!("database file {n} bytes, {before} at the start")),
            }
        },
    )
    .await;
    let second = writes("ckpt", 300..600);
    for chunk in second.chunks(100) {
        app.publish(chunk).await.unwrap();
    }
    a.kill();
    a.restart().unwrap();
    a.wait_has_all(&first).await;
    a.wait_has_all(&second).await;
    assert_eq!(a.status().await.unwrap()["journalMessages"], 600);
}

/// An origin killed while it holds the delivery rows of acknowledged writes in memory (its
/// peer is down, and rows are held for ten minutes here) writes them again from its journal
/// when it starts, and the peer gets every write once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_killed_with_delivery_rows_in_memory_still_delivers_every_write() {
    let mut a = start(NodeOptions::default().env("SLIPSTREAM_HOLD_DELIVERY_MS", "600000"));
    let mut b = start(NodeOptions::dialing(&[&a]));
    a.wait_connected(1).await;
    b.kill();
    a.wait_disconnected_from(&b.id).await;
    let all = writes("held", 0..50);
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&all).await.unwrap();
    assert_eq!(a.status().await.unwrap()["outboxDepth"], 50);
    a.kill();
    a.restart().unwrap();
    a.wait_for_log("written again from the journal").await;
    b.restart().unwrap();
    b.wait_has_all(&all).await;
    a.wait_drained().await;
}

/// A backlog whose rows do not fit one frame under the frame limit goes out over as many
/// frames as the limit needs: every write arrives, none twice. (A long retry period: a send
/// acknowledged late on a busy machine would be sent again, rightly, and arrive twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_frame_limit_goes_out_in_several_frames() {
    let opts = |o: NodeOptions| {
        o.env("SLIPSTREAM_MAX_FRAME_BYTES", "4096")
            .env("SLIPSTREAM_RETRY_IN_N_SECONDS", "60")
    };
    let a = start(opts(NodeOptions::default()));
    let mut b = start(opts(NodeOptions::dialing(&[&a])));
    a.wait_connected(1).await;
    b.kill();
    a.wait_disconnected_from(&b.id).await;
    // Three writes of about 1 KiB fill a frame of 4 KiB.
    let all: Vec<(String, String)> = (0..60)
        .map(|i| (format!("big:{i}"), format!("{i:0>900}")))
        .collect();
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    for three in all.chunks(3) {
        app.publish(three).await.unwrap();
    }
    let frames_before = a.metric("slipstream_frames_sent_total").await.unwrap();
    b.restart().unwrap();
    b.wait_has_all(&all).await;
    a.wait_drained().await;
    let frames = a.metric("slipstream_frames_sent_total").await.unwrap() - frames_before;
    assert!(
        frames >= 20.0,
        "60 writes of 1 KiB in {frames} frames of 4 KiB"
    );
    assert_eq!(
        b.metric("slipstream_messages_dropped_total{reason=\"duplicate\"}")
            .await
            .unwrap(),
        0.0,
        "no write was sent twice ({} sent again after a wait)",
        a.metric("slipstream_messages_republished_total")
            .await
            .unwrap()
    );
}

/// A peer that stalls under a stream of writes (SIGSTOP: its connection stays up, it just
/// answers nothing) falls tens of thousands of writes behind, which its origin then reads back
/// from the outbox. It catches up while the writes go on, not only once they stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stalled_under_load_catches_up_while_the_writes_go_on() {
    const FRAME: usize = 1000;
    let a = start(NodeOptions::default());
    let b = start(NodeOptions::dialing(&[&a]));
    a.wait_connected(1).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    // Rows not acknowledged yet, whether still pending or marked sent (a send unanswered for
    // a retry period is marked so, which a slow machine reaches while the writes go on).
    let behind = || async {
        let p = a.peer_status(&b.id).await.unwrap().expect("b is known");
        let count = |state: &str| p[state].as_u64().expect("a count");
        count("pending") + count("sent")
    };
    b.pause().unwrap();
    let mut sent = 0;
    for _ in 0..30 {
        app.publish(&writes("stall", sent..sent + FRAME))
            .await
            .unwrap();
        sent += FRAME;
    }
    // Counted while b is still frozen: once it resumes, it takes in what its socket holds
    // at once, faster than a status read follows.
    let most = behind().await;
    assert!(most >= 20_000, "b fell behind while stalled: {most}");
    b.resume().unwrap();
    // Keep writing, a frame at a time, until b is within two frames of the stream.
    let mut now = most;
    for _ in 0..500 {
        app.publish(&writes("stall", sent..sent + FRAME))
            .await
            .unwrap();
        sent += FRAME;
        now = behind().await;
        if now < 2 * FRAME as u64 {
            break;
        }
    }
    assert!(
        now < 2 * FRAME as u64,
        "b was still {now} behind ({most} when it resumed) after {sent} writes"
    );
    b.wait_has_all(&writes("stall", sent - FRAME..sent)).await;
    a.wait_drained().await;
}

/// A peer that reads slower than its origin writes (here frozen, with far more delivery rows
/// than the sockets between them buffer) leaves delivery frames queued at the origin. The
/// origin holds only a few MiB of them (the rest waits in the outbox), and waiting there does
/// not count as an unanswered send: nothing is dead-lettered that never left the origin, and
/// no row is queued again behind its own first copy. Once the peer resumes, it reads frames
/// only while the writes waiting for their commit take a few MiB, so its memory does not
/// follow the backlog either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_reads_slowly_costs_its_origin_little_memory_and_no_false_attempts() {
    // Heartbeats far apart keep the frozen peer's connection up; sends wait 0.5 s, so three
    // unanswered ones (0.5 + 1 + 2 s) dead-letter a row. The allocator gives freed memory
    // back at once, so RSS follows what the node holds, not what it held a moment ago.
    let opts = |o: NodeOptions| {
        o.env("SLIPSTREAM_HEARTBEAT_SECONDS", "60")
            .env("SLIPSTREAM_RETRY_IN_N_SECONDS", "0.5")
            .env("MIMALLOC_PURGE_DELAY", "0")
    };
    let a = start(opts(NodeOptions::default()));
    let b = start(opts(NodeOptions::dialing(&[&a])));
    a.wait_connected(1).await;
    b.wait_connected(1).await;
    // 3,200 values of 48 KiB: about 150 MiB of delivery frames, far more than loopback
    // sockets buffer.
    let all = large_writes("big", 3200);
    // A peer, not an app: an app is pushed every write, which it would have to read too.
    let mut sender = WsClient::peer(&a.ws_url(), "con-flood").await.unwrap();
    b.pause().unwrap();
    for chunk in all.chunks(16) {
        let frame = chunk
            .iter()
            .map(|(k, v)| json!({"type": "SK", "key": k, "value": v, "messageId": k,
                "originInstanceId": "con-flood", "sourceInstanceId": "con-flood", "messagePath": ["con-flood"]}))
            .collect();
        sender.send(&Value::Array(frame)).await.unwrap();
    }
    let mut acked = std::collections::HashSet::new();
    while acked.len() < all.len() {
        let ack = sender.recv(LONG).await.unwrap();
        assert_ne!(ack["type"], "NACK", "{ack}");
        acked.extend(slipstream_testkit::ack_ids(&ack));
    }
    // Frozen past the 3.5 s in which three sends counted unanswered dead-letter a row.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak = peak_rss_mib(&a).await;
    b.resume().unwrap();
    assert!(
        peak < 80.0,
        "the origin held the frozen peer's frames in memory: peak RSS {peak} MiB"
    );
    // Every row acknowledged by b (so recorded there), and the last writes readable.
    a.wait_drained().await;
    b.wait_has_all(&all[all.len() - 16..]).await;
    // Catching up, b read the frames only as fast as it committed their writes.
    let b_peak = peak_rss_mib(&b).await;
    assert!(
        b_peak < 80.0,
        "the catching-up peer held the frames it read in memory: peak RSS {b_peak} MiB"
    );
    let dead = a.get_json("/dlq").await.unwrap();
    assert_eq!(
        dead["deadLetters"].as_array().map(Vec::len),
        Some(0),
        "rows queued here were dead-lettered: {} republished",
        a.metric("slipstream_messages_republished_total")
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_longer_than_the_republish_window_gets_everything_and_nothing_dies() {
    let a = start(NodeOptions::default());
    let mut b = start(NodeOptions::dialing(&[&a]));
    a.wait_connected(1).await;
    b.kill();
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    let all = writes("offline", 0..200);
    app.publish(&all).await.unwrap();
    // MAX_MESSAGE_REPUBLISH_ATTEMPTS (3) × 0.2 s is 0.6 s; stay down well past it, and past
    // the doubled waits too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = a.status().await.unwrap();
    assert_eq!(
        s["outboxDepth"], 200,
        "rows wait while the peer is down: {s}"
    );
    b.restart().unwrap();
    b.wait_has_all(&all).await;
    a.wait_drained().await;
    assert_eq!(a.get_json("/dlq").await.unwrap()["deadLetters"], json!([]));
    assert_eq!(
        a.metric("slipstream_messages_dead_lettered_total")
            .await
            .unwrap(),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_peer_that_never_acks_gets_its_messages_dead_lettered() {
    let a = start(NodeOptions::default());
    let mut mute = WsClient::peer(&a.ws_url(), "con-mute").await.unwrap();
    a.wait_connected(1).await;
    // The mute peer keeps reading (so the node's pings are answered and the connection stays
    // up) and counts what it gets, but never ACKs.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut copies = 0;
        loop {
            tokio::select! {
                _ = &mut stopped => return Ok(copies),
                v = mute.recv(Duration::from_secs(3600)) => match v {
                    Ok(v) if v["type"] == "SK" => copies += 1,
                    Ok(_) => {}
                    Err(e) => return Err(format!("the mute peer's connection ended: {e}")),
                },
            }
        }
    });
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&writes("doomed", 0..5)).await.unwrap();
    eventually("five dead letters on a", LONG, || {
        let a = &a;
        async move {
            let dlq = a.get_json("/dlq").await.map_err(|e| e.to_string())?;
            let n = dlq["deadLetters"].as_array().map(|d| d.len()).unwrap_or(0);
            if n == 5 {
                Ok(())
            } else {
                Err(dlq.to_string())
            }
        }
    })
    .await;
    stop.send(()).unwrap();
    let copies = reader.await.unwrap().unwrap();
    assert_eq!(
        copies, 15,
        "each of 5 messages sent MAX_MESSAGE_REPUBLISH_ATTEMPTS (3) times"
    );
    let dlq = a.get_json("/dlq").await.unwrap();
    for d in dlq["deadLetters"].as_array().unwrap() {
        assert_eq!(d["peer"], "con-mute");
        assert_eq!(d["attempts"], 3, "three unanswered sends");
        assert!(d["messageId"].as_str().unwrap().contains("doomed"));
    }
    assert_eq!(
        a.metric("slipstream_messages_dead_lettered_total")
            .await
            .unwrap(),
        5.0
    );
}

async fn expect_nack(c: &mut WsClient, frame: &str, needle: &str) {
    c.send_text(frame).await.unwrap();
    let v = c
        .recv_until(Duration::from_secs(10), |v| v["type"] == "NACK")
        .await
        .unwrap();
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains(needle),
        "NACK for {:.60}: {err:?} should mention {needle:?}",
        frame
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_nacks_and_the_connection_keeps_working() {
    let a = start(NodeOptions::default());
    let mut bystander = WsClient::app(&a.ws_url()).await.unwrap();
    let mut c = WsClient::app(&a.ws_url()).await.unwrap();
    expect_nack(&mut c, "{this is not json", "not valid JSON").await;
    expect_nack(
        &mut c,
        r#"{"type":"SK","key":42,"value":"v"}"#,
        "field `key` must be a string",
    )
    .await;
    expect_nack(
        &mut c,
        r#"{"type":"SA","key":"k","value":"not-an-array"}"#,
        "field `value` must be an array",
    )
    .await;
    expect_nack(
        &mut c,
        r#"{"type":"ZZ","key":"k"}"#,
        "field `type` has unknown value \"ZZ\"",
    )
    .await;
    expect_nack(
        &mut c,
        r#"{"type":"SK","value":"v"}"#,
        "field `key` is required",
    )
    .await;
    let huge = format!(
        r#"{{"type":"SK","key":"big","value":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    expect_nack(&mut c, &huge, "exceeds the limit of 1048576 bytes").await;
    // The same connection carries valid messages afterwards, and so does the other one.
    c.publish(&[("after".into(), "ok".into())]).await.unwrap();
    bystander
        .publish(&[("bystander".into(), "ok".into())])
        .await
        .unwrap();
    assert_eq!(a.key("after").await.unwrap().unwrap()["value"], "ok");
    assert_eq!(a.key("big").await.unwrap(), None);
    assert!(
        a.metric("slipstream_messages_dropped_total{reason=\"invalid\"}")
            .await
            .unwrap()
            >= 6.0
    );
    a.wait_for_log("invalid message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_key_converge_on_all_nodes() {
    let (a, b, c) = full_mesh(&[]).await;
    let mut at_a = WsClient::app(&a.ws_url()).await.unwrap();
    let mut at_b = WsClient::app(&b.ws_url()).await.unwrap();
    let ws_a: Vec<_> = (0..50)
        .map(|i| ("contested".to_string(), format!("a-{i}")))
        .collect();
    let ws_b: Vec<_> = (0..50)
        .map(|i| ("contested".to_string(), format!("b-{i}")))
        .collect();
    let (ra, rb) = tokio::join!(
        async {
            for w in &ws_a {
                at_a.publish(std::slice::from_ref(w)).await?;
            }
            anyhow::Ok(())
        },
        async {
            for w in &ws_b {
                at_b.publish(std::slice::from_ref(w)).await?;
            }
            anyhow::Ok(())
        }
    );
    ra.unwrap();
    rb.unwrap();
    for n in [&a, &b, &c] {
        n.wait_drained().await;
    }
    eventually("all three hold the same version", LONG, || async {
        let mut seen: Vec<Value> = Vec::new();
        for n in [&a, &b, &c] {
            let v = n
                .key("contested")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("missing")?;
            seen.push(json!([v["value"], v["hlc"], v["originInstanceId"]]));
        }
        if seen.windows(2).all(|w| w[0] == w[1]) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_configured_both_ways_never_delivers_twice() {
    let mut a = start(NodeOptions::default());
    let b = start(NodeOptions::dialing(&[&a]));
    // Restart a, now dialling b as well: two connections between them.
    a.set_options(NodeOptions::dialing(&[&b]));
    a.restart().unwrap();
    eventually("a holds two connections to b", LONG, || async {
        let s = a.status().await.map_err(|e| e.to_string())?;
        let conns = s["peers"][0]["connections"]
            .as_array()
            .map(|c| c.len())
            .unwrap_or(0);
        if conns == 2 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    let all = writes("both", 0..100);
    app.publish(&all).await.unwrap();
    b.wait_has_all(&all).await;
    a.wait_drained().await;
    let processed = b
        .metric(&format!(
            "slipstream_messages_processed_total{{origin=\"{}\",type=\"SK\"}}",
            a.id
        ))
        .await
        .unwrap();
    assert_eq!(processed, 100.0);
    assert_eq!(
        b.metric("slipstream_messages_dropped_total{reason=\"duplicate\"}")
            .await
            .unwrap(),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_completes_its_handshake_is_closed() {
    use tokio::io::AsyncReadExt;
    let a = start(NodeOptions::default());
    let mut raw = tokio::net::TcpStream::connect(a.ws_addr).await.unwrap();
    let mut buf = [0u8; 64];
    // Heartbeat is 1 s in the kit: the node closes after three, counted from the TCP connect.
    let n = tokio::time::timeout(LONG, raw.read(&mut buf))
        .await
        .expect("node closes the silent socket")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_opens_its_circuit_and_the_node_keeps_serving() {
    // A port below the ephemeral range, where nothing listens: a port freed by a listener here
    // could be taken by a node of another test running at the same time.
    let closed_port: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert!(
        std::net::TcpStream::connect(closed_port).is_err(),
        "this test needs nothing listening on {closed_port}"
    );
    let opts = NodeOptions {
        peers: vec![format!("ws://{closed_port}")],
        env: vec![],
    }
    .env("SLIPSTREAM_CONNECTION_RETRY_ATTEMPTS", "2")
    .env("ENABLE_DEBUG_LOGS", "true");
    let a = start(opts);
    eventually("a critical circuit-open line", LONG, || async {
        if a.logs()
            .lines()
            .any(|l| l.contains("circuit open") && l.contains("\"level\":\"critical\""))
        {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    let sample = format!("slipstream_circuit_open{{peer=\"ws://{closed_port}\"}}");
    assert_eq!(a.metric(&sample).await.unwrap(), 1.0);
    // Writes for the unreachable peer wait in the outbox; the node keeps serving.
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&writes("waiting", 0..3)).await.unwrap();
    assert_eq!(a.status().await.unwrap()["outboxDepth"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_auth_token_only_peers_that_present_it_connect() {
    let a = start(NodeOptions::default().env("SLIPSTREAM_AUTH_TOKEN", "old-token, new-token"));
    let err = WsClient::connect_raw(&a.ws_url())
        .await
        .err()
        .expect("refused without a token");
    assert!(err.to_string().contains("401"), "{err}");
    let url_config = json!([{ "url": a.ws_url(), "authToken": "new-token" }]).to_string();
    let b = start(NodeOptions::default().env("URL_CONFIG", &url_config));
    b.wait_connected(1).await;
    let mut app = WsClient::app(&b.ws_url()).await.unwrap();
    let all = writes("auth", 0..5);
    app.publish(&all).await.unwrap();
    a.wait_has_all(&all).await;
    a.wait_for_log("bearer token").await;
    assert_eq!(
        a.metric("slipstream_connections_refused_total{reason=\"token\"}")
            .await
            .unwrap(),
        1.0,
        "and counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_a_restart_resumes() {
    let mut a = start(NodeOptions::default());
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    let all = writes("term", 0..20);
    app.publish(&all).await.unwrap();
    assert_eq!(a.terminate().unwrap(), Some(0));
    a.restart().unwrap();
    a.wait_has_all(&all).await;
}

/// An app that does not read its pushes is disconnected (close code 1013: reconnect and
/// re-read) once the writes pushed to it and not yet written to its socket take
/// `SLIPSTREAM_MAX_PUSH_BACKLOG_BYTES` (here 16 MiB), however few writes that is: the node
/// does not keep large values for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_does_not_read_its_pushes_is_cut_off_before_they_fill_memory() {
    // The allocator gives freed memory back at once: RSS follows what the node holds.
    // Heartbeats far apart: an app that reads nothing answers no ping either, and would be
    // closed for that after three heartbeats.
    let a = start(
        NodeOptions::default()
            .env("MIMALLOC_PURGE_DELAY", "0")
            .env("SLIPSTREAM_HEARTBEAT_SECONDS", "60")
            .env("SLIPSTREAM_MAX_PUSH_BACKLOG_BYTES", &(16 << 20).to_string()),
    );
    let mut idle = WsClient::app(&a.ws_url()).await.unwrap();
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    // 3,200 values of 48 KiB: about 150 MiB pushed to each app (loopback sockets can buffer
    // over 30 MiB of it), far fewer writes than the 16,384 an app may otherwise fall behind on.
    let all = large_writes("push", 3200);
    publish_by_16(&mut app, &all).await;
    // Without the bound the node peaks at 190–195 MiB, about all that was pushed to the idle
    // app; with it, 70–94 MiB on the machines measured so far (the publishing app's frames in
    // flight and its own pushes are the rest, and their share depends on the machine's speed).
    let peak = peak_rss_mib(&a).await;
    assert!(
        peak < 140.0,
        "the node held the idle app's pushes: peak RSS {peak} MiB"
    );
    a.wait_for_log("local app too slow for pushed writes").await;
    // The idle app now reads what reached its socket, then the end of the connection (a
    // reset: with its socket full, the close frame could not be written either).
    let mut pushed = 0;
    let end = loop {
        match idle.recv(LONG).await {
            Ok(_) => pushed += 1,
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        !end.contains("nothing received"),
        "{end} after {pushed} pushes"
    );
    assert!(pushed < all.len(), "every write reached the idle app");
    // The app that reads is still served.
    app.publish(&writes("after", 0..1)).await.unwrap();
}

/// Apps that fall behind on their pushes share the node's one copy of the writes they have not
/// taken yet: a connection makes frames of pushes for its app only while little of what it
/// made is unwritten. Eight apps that do not read, each 48 MiB behind (under the 64 MiB that
/// would close them), would otherwise hold eight copies of it; each still gets every write, in
/// order, once it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_behind_on_their_pushes_share_one_copy_of_them() {
    let a = start(
        NodeOptions::default()
            .env("MIMALLOC_PURGE_DELAY", "0")
            .env("SLIPSTREAM_HEARTBEAT_SECONDS", "60"),
    );
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(WsClient::app(&a.ws_url()).await.unwrap());
    }
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    let all = large_writes("shared", 1000);
    publish_by_16(&mut app, &all).await;
    let peak = peak_rss_mib(&a).await;
    assert!(
        peak < 150.0,
        "the node held a copy of the pushes for each app: peak RSS {peak} MiB"
    );
    let last = idle.last_mut().expect("eight apps");
    for (i, (key, _)) in all.iter().enumerate() {
        let pushed = last.recv_until(LONG, |v| v["type"] == "SK").await.unwrap();
        assert_eq!(pushed["key"], key.as_str(), "push {i}");
    }
}

/// Writes waiting for their commit are bounded over all of a node's connections, not only
/// per connection. Another process holds the node's database locked for writing, so nothing
/// commits meanwhile (the node waits up to its 5 s busy timeout), while eight apps send 12 MiB
/// of writes each without waiting for their ACKs: every connection pauses reading once the
/// node holds 8 MiB of such frames (as much as each alone may hold). A peer is still read
/// meanwhile (it carries the ACKs of this node's deliveries). Once the lock goes, every write
/// is recorded and acknowledged. (The writes are for another cloud's tags, so nothing is
/// applied or pushed here, and no peer is owed them: what the node holds is what it read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_apps_writing_at_once_share_one_bound_on_what_waits_for_its_commit() {
    // Heartbeats far apart: an app blocked in its send answers no ping.
    let a = start(
        NodeOptions::default()
            .env("MIMALLOC_PURGE_DELAY", "0")
            .env("SLIPSTREAM_HEARTBEAT_SECONDS", "60"),
    );
    let filler = "x".repeat(48 * 1024);
    // Made before the lock is taken, so the apps send as fast as the node reads, and the
    // commits wait for less than the busy timeout.
    let mut apps = Vec::new();
    for n in 0..8 {
        let app = WsClient::app(&a.ws_url()).await.unwrap();
        let frames: Vec<String> = (0..16)
            .map(|f| {
                let writes: Vec<Value> = (0..16)
                    .map(|i| {
                        let id = format!("bounded:{n}:{}", f * 16 + i);
                        json!({"type": "SK", "key": id, "value": filler, "messageId": id,
                            "targetedTags": ["elsewhere"]})
                    })
                    .collect();
                Value::Array(writes).to_string()
            })
            .collect();
        apps.push((app, frames));
    }
    // Met before the lock: meeting a peer is recorded too.
    let mut peer = WsClient::peer(&a.ws_url(), "con-peer").await.unwrap();
    a.wait_connected(1).await;
    let db = rusqlite::Connection::open(a.data_dir().join("slipstream.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let apps: Vec<_> = apps
        .into_iter()
        .map(|(mut app, frames)| {
            tokio::spawn(async move {
                for frame in &frames {
                    app.send_text(frame).await.unwrap();
                }
                let mut acked = std::collections::HashSet::new();
                while acked.len() < 16 * 16 {
                    let ack = app.recv(LONG).await.unwrap();
                    assert_ne!(ack["type"], "NACK", "{ack}");
                    acked.extend(slipstream_testkit::ack_ids(&ack));
                }
            })
        })
        .collect();
    eventually("connections paused on the node's bound", LONG, || async {
        let pauses = a
            .metric("slipstream_ingest_pauses_total")
            .await
            .map_err(|e| e.to_string())?;
        (pauses > 0.0)
            .then_some(())
            .ok_or(format!("{pauses} pauses"))
    })
    .await;
    let peak = peak_rss_mib(&a).await;
    // Twice: a connection idle when the node filled up reads the frame it was waiting for
    // before it looks at the bound again.
    for _ in 0..2 {
        peer.send_text("{not json").await.unwrap();
        let nack = peer
            .recv_until(LONG, |v| v["type"] == "NACK")
            .await
            .expect("a peer is read while apps wait");
        assert!(
            nack["error"].as_str().unwrap_or("").contains("JSON"),
            "{nack}"
        );
    }
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    for app in apps {
        app.await.unwrap();
    }
    assert!(
        peak < 120.0,
        "the node read far past its bound on writes waiting for their commit: peak RSS {peak} MiB"
    );
}

/// A write whose transaction does not commit (here another process holds the database locked
/// past the node's 5 s busy timeout, as a full or failing disk would also fail it) is answered
/// with a NACK that says the commit failed, not that data is corrupt. Nothing of it is
/// recorded, and the same write sent again once the lock is gone is recorded and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_commit_fails_is_nacked_and_goes_through_when_sent_again() {
    let a = start(NodeOptions::default().env("SLIPSTREAM_HEARTBEAT_SECONDS", "60"));
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&writes("before", 0..1)).await.unwrap();
    let write = json!({"type": "SK", "key": "locked:1", "value": "paid", "messageId": "locked-1"});
    let db = rusqlite::Connection::open(a.data_dir().join("slipstream.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    app.send(&write).await.unwrap();
    let nack = app
        .recv_until(LONG, |v| v["type"] == "NACK" || v["type"] == "ACK")
        .await
        .unwrap();
    let error = nack["error"].as_str().unwrap_or_default();
    assert!(
        nack["type"] == "NACK" && error.contains("commit failed") && error.contains("locked"),
        "{nack}"
    );
    assert!(!error.contains("corrupt"), "{nack}");
    assert_eq!(a.key("locked:1").await.unwrap(), None, "nothing recorded");
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    app.send(&write).await.unwrap();
    let ack = app
        .recv_until(LONG, |v| v["type"] == "NACK" || v["type"] == "ACK")
        .await
        .unwrap();
    assert!(
        slipstream_testkit::ack_ids(&ack).contains(&"locked-1".to_string()),
        "{ack}"
    );
    assert_eq!(a.key("locked:1").await.unwrap().unwrap()["value"], "paid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_apps_are_pushed_writes_applied_on_their_node() {
    let a = start(NodeOptions::default());
    let b = start(NodeOptions::dialing(&[&a]));
    b.wait_connected(1).await;
    let mut watcher = WsClient::app(&b.ws_url()).await.unwrap();
    // The HELLO exchange is done once the node answers this read.
    watcher
        .send(&json!({"type": "GK", "key": "nothing", "messageId": "r0"}))
        .await
        .unwrap();
    let res = watcher
        .recv_until(LONG, |v| v["type"] == "RES")
        .await
        .unwrap();
    assert_eq!(res["found"], false);
    let mut writer = WsClient::app(&a.ws_url()).await.unwrap();
    writer
        .publish(&[("pushed".into(), "hello".into())])
        .await
        .unwrap();
    let pushed = watcher
        .recv_until(LONG, |v| v["type"] == "SK")
        .await
        .unwrap();
    assert_eq!(pushed["key"], "pushed");
    assert_eq!(pushed["value"], "hello");
    assert_eq!(pushed["originInstanceId"], a.id.as_str());
    watcher
        .send(&json!({"type": "GK", "key": "pushed", "messageId": "r1"}))
        .await
        .unwrap();
    let res = watcher
        .recv_until(LONG, |v| v["type"] == "RES" && v["inReplyTo"] == "r1")
        .await
        .unwrap();
    assert_eq!(
        (res["found"].clone(), res["value"].clone()),
        (json!(true), json!("hello"))
    );
    assert_eq!(b.http("GET", "/health", None).await.unwrap().0, 200);
    assert_eq!(b.http("GET", "/ready", None).await.unwrap().0, 200);
}

/// One connection's writes commit in the order it sent them, and apps are pushed them in that
/// order, however the commits fall: here frames follow each other without waiting for their
/// ACKs, so the node reads later writes while earlier ones commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_come_in_the_order_the_writes_were_committed() {
    let a = start(NodeOptions::default());
    let mut watcher = WsClient::app(&a.ws_url()).await.unwrap();
    // The HELLO exchange is done once the node answers this read.
    watcher
        .send(&json!({"type": "GK", "key": "nothing", "messageId": "r0"}))
        .await
        .unwrap();
    watcher
        .recv_until(LONG, |v| v["type"] == "RES")
        .await
        .unwrap();
    let mut writer = WsClient::app(&a.ws_url()).await.unwrap();
    let (frames, per_frame) = (40, 50);
    let filler = "v".repeat(2048);
    for f in 0..frames {
        let frame: Vec<Value> = (0..per_frame)
            .map(|i| {
                let n = f * per_frame + i;
                json!({"type": "SK", "key": format!("ordered:{n}"), "value": filler, "messageId": format!("ordered-{n}")})
            })
            .collect();
        writer.send(&Value::Array(frame)).await.unwrap();
    }
    let mut order = Vec::new();
    while order.len() < frames * per_frame {
        let pushed = watcher
            .recv_until(LONG, |v| v["type"] == "SK")
            .await
            .unwrap();
        let key = pushed["key"].as_str().unwrap();
        order.push(key["ordered:".len()..].parse::<usize>().unwrap());
    }
    let out_of_order: Vec<_> = order.windows(2).filter(|w| w[0] > w[1]).collect();
    assert!(
        out_of_order.is_empty(),
        "pushed out of order: {out_of_order:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_records_before_answering_and_rejects_bad_input() {
    let a = start(NodeOptions::default());
    let (status, v) = a
        .http(
            "POST",
            "/v1/messages",
            Some(r#"{"type":"SW","key":"w","value":{"x":2}}"#),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "recorded");
    let got = a.key("w").await.unwrap().unwrap();
    assert_eq!(
        (got["kind"].clone(), got["value"].clone()),
        (json!("weighted"), json!({"x": 2.0}))
    );
    let (status, v) = a
        .http(
            "POST",
            "/v1/messages",
            Some(r#"[{"type":"SK","key":"ok","value":"1"},{"type":"SK","key":"bad","value":7}]"#),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("message 1: field `value` must be a string"),
        "{v}"
    );
    assert_eq!(
        a.key("ok").await.unwrap(),
        None,
        "nothing recorded from a rejected request"
    );
    assert_eq!(a.http("GET", "/v1/keys/absent", None).await.unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_and_get_commands_talk_to_a_node_as_an_app() {
    let a = start(NodeOptions::default());
    let b = start(NodeOptions::dialing(&[&a]));
    b.wait_connected(1).await;
    let out = tokio::process::Command::new(BIN)
        .args([
            "publish",
            "--url",
            &a.ws_url(),
            "--message-id",
            "cli-1",
            "order:9",
            "shipped",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"messageId": "cli-1", "status": "recorded"}));
    eventually("b has order:9", LONG, || async {
        let out = tokio::process::Command::new(BIN)
            .args(["get", "--url", &b.ws_url(), "order:9"])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        if out.status.success() && v["value"] == "shipped" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_peer_that_sends_no_hello_is_served_and_remembered() {
    let a = start(NodeOptions::default());
    let mut old = WsClient::connect_raw(&a.ws_url()).await.unwrap();
    old.send(&json!({
        "type": "SK", "key": "legacy", "value": "v", "messageId": "old-1",
        "originInstanceId": "con-old", "sourceInstanceId": "con-old", "messagePath": ["con-old"],
    }))
    .await
    .unwrap();
    let ack = old.recv_until(LONG, |v| v["type"] == "ACK").await.unwrap();
    assert_eq!(ack["messageId"], "old-1");
    assert_eq!(
        a.key("legacy").await.unwrap().unwrap()["originInstanceId"],
        "con-old"
    );
    // It became a known peer, learnt from sourceInstanceId: a local write is delivered to it.
    a.wait_connected(1).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&[("to-old".into(), "x".into())]).await.unwrap();
    let got = old
        .recv_until(LONG, |v| v["type"] == "SK" && v["key"] == "to-old")
        .await
        .unwrap();
    assert_eq!(got["messagePath"], json!([a.id]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_an_app_that_disconnects_before_its_acks_are_still_delivered() {
    let a = start(NodeOptions::default());
    let b = start(NodeOptions::dialing(&[&a]));
    a.wait_connected(1).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    let batch: Vec<Value> = (0..500).map(|i| json!({"type": "SK", "key": format!("gone:{i}"), "value": "v", "messageId": format!("gone-{i}")})).collect();
    app.send(&Value::Array(batch)).await.unwrap();
    drop(app);
    // Whatever a recorded, b gets, although nobody waited for the ACKs.
    eventually("b holds everything a recorded", LONG, || async {
        let (sa, sb) = (
            a.status().await.map_err(|e| e.to_string())?,
            b.status().await.map_err(|e| e.to_string())?,
        );
        let recorded = sa["journalMessages"].as_u64().unwrap_or(0);
        if recorded > 0 && sa["outboxDepth"] == 0 && sb["journalMessages"] == recorded {
            Ok(())
        } else {
            Err(format!("a {sa}\nb {sb}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_reads_only_after_writing_everything_is_served() {
    // The app sends 10,000 writes of 4 KB before it reads anything: about 40 MB of pushes
    // come back, far more than the sockets buffer. (The heartbeat is long enough that only a
    // stall, not the app's slowness to read, would end the connection.) The node must keep reading while its answers wait for the app to read; a node
    // that stops reading while it writes would leave both ends waiting until the heartbeat
    // timeout closed the connection.
    let a = start(NodeOptions::default().env("SLIPSTREAM_HEARTBEAT_SECONDS", "30"));
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    let n = 10_000;
    let value = "x".repeat(4000);
    for chunk in 0..n / 100 {
        let batch: Vec<Value> = (chunk * 100..chunk * 100 + 100)
            .map(|i| json!({"type": "SK", "key": format!("flood:{i}"), "value": value, "messageId": format!("flood-{i}")}))
            .collect();
        tokio::time::timeout(Duration::from_secs(20), app.send(&Value::Array(batch)))
            .await
            .expect("the node kept reading")
            .unwrap();
    }
    let mut acked = std::collections::HashSet::new();
    while acked.len() < n {
        let m = app.recv(LONG).await.unwrap();
        if m["type"] == "ACK" {
            acked.extend(slipstream_testkit::ack_ids(&m));
        }
    }
    assert_eq!(acked.len(), n);
}

/// An app that asks for large values and does not read the replies: once 4 MiB of replies
/// wait unwritten, counting those already in the socket writer's queue, the node stops reading
/// from that app (and counts the pause), so what it holds for it stays bounded. What the app
/// sends next waits in its socket; other apps are served meanwhile; the app gets every reply
/// once it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_does_not_read_its_replies_is_not_read_past_4_mib_of_them() {
    let a = start(NodeOptions::default().env("SLIPSTREAM_HEARTBEAT_SECONDS", "30"));
    let value = "v".repeat(256 * 1024);
    let mut other = WsClient::app(&a.ws_url()).await.unwrap();
    other
        .publish(&[("big".into(), value.clone())])
        .await
        .unwrap();
    // 240 reads of 256 KiB, 60 MiB of replies in fewer frames than the writer's queue holds
    // (256): only the count of their bytes makes the node stop taking them.
    let n = 240;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    for i in 0..n {
        app.send(&json!({"type": "GK", "key": "big", "messageId": format!("read-{i}")}))
            .await
            .unwrap();
    }
    app.send(&json!({"type": "SK", "key": "after", "value": "x", "messageId": "after-1"}))
        .await
        .unwrap();
    let pauses = || async {
        match a.metric("slipstream_read_pauses_total").await {
            Ok(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    eventually("the node pauses reading from the app", LONG, pauses).await;
    // Paused, the node holds 4 MiB of replies and the sockets a few more: far from the 240
    // before the write, which stays unread while the app reads nothing.
    assert_eq!(a.key("after").await.unwrap(), None);
    other
        .publish(&[("other".into(), "y".into())])
        .await
        .unwrap();
    let mut replies = 0;
    loop {
        let m = app.recv(LONG).await.unwrap();
        match m["type"].as_str() {
            Some("RES") => {
                assert_eq!(m["inReplyTo"], format!("read-{replies}"), "in order");
                assert_eq!(m["value"].as_str().map(str::len), Some(value.len()));
                replies += 1;
            }
            Some("ACK") => break,
            _ => {}
        }
    }
    assert_eq!(replies, n, "every reply, then the write's ACK");
    assert!(a.key("after").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_a_peer_is_acknowledged_in_acks_within_the_batch_limit() {
    // A peer sends 3,000 writes in full frames as fast as it can; many commit together. The
    // node once acknowledged everything committed in one ACK, naming more ids than the batch
    // limit its peers' decoders accept (the limit on messages per frame, here 20): the peer
    // rejected the ACK and every write in it was sent again.
    let limit = 20;
    let a = start(NodeOptions::default().env("SLIPSTREAM_MAX_BATCH", &limit.to_string()));
    let mut peer = WsClient::peer(&a.ws_url(), "burst-peer").await.unwrap();
    let n = 3_000;
    for chunk in 0..n / limit {
        let batch: Vec<Value> = (chunk * limit..chunk * limit + limit)
            .map(|i| json!({"type": "SK", "key": format!("burst:{i}"), "value": "v", "messageId": format!("burst-{i}"),
                "originInstanceId": "burst-peer", "sourceInstanceId": "burst-peer", "messagePath": ["burst-peer"]}))
            .collect();
        peer.send(&Value::Array(batch)).await.unwrap();
    }
    let mut acked = std::collections::HashSet::new();
    let mut most = 0;
    while acked.len() < n {
        let m = peer.recv(LONG).await.unwrap();
        assert_ne!(m["type"], "NACK", "{m}");
        if m["type"] == "ACK" {
            let ids = slipstream_testkit::ack_ids(&m);
            most = most.max(ids.len());
            acked.extend(ids);
        }
    }
    assert_eq!(acked.len(), n);
    assert!(most <= limit, "an ACK named {most} ids");
}
