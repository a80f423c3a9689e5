//! The Redis store: real `redis-server` processes, one per node, read back with a Redis client.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use slipstream_testkit::{eventually, NodeOptions, RedisServer, TestNode, WsClient};

mod common;
use common::{BIN, LONG};

const PREFIX: &str = "slipstream:";

fn with_redis(opts: NodeOptions, redis: &RedisServer) -> TestNode {
    TestNode::start(BIN, opts.env("SLIPSTREAM_REDIS_URL", &redis.url())).expect("node starts")
}

async fn mesh_with_redis(extra: &[(&str, &str)]) -> (Vec<TestNode>, Vec<RedisServer>) {
    let redis: Vec<RedisServer> = (0..3).map(|_| RedisServer::start().unwrap()).collect();
    let mut nodes: Vec<TestNode> = Vec::new();
    for r in &redis {
        let mut opts = NodeOptions::dialing(&nodes.iter().collect::<Vec<_>>());
        for (k, v) in extra {
            opts = opts.env(k, v);
        }
        nodes.push(with_redis(opts, r));
    }
    for n in &nodes {
        n.wait_connected(2).await;
    }
    (nodes, redis)
}

/// Sends one message from an app and waits for its ACK.
async fn send(app: &mut WsClient, msg: Value) {
    let id = msg["messageId"].clone();
    app.send(&msg).await.unwrap();
    let ack = app
        .recv_until(LONG, |v| {
            (v["type"] == "ACK"
                && slipstream_testkit::ack_ids(v).contains(&id.as_str().unwrap().to_owned()))
                || v["type"] == "NACK"
        })
        .await
        .unwrap();
    assert_eq!(ack["type"], "ACK", "{msg} got {ack}");
}

async fn drained(nodes: &[TestNode]) {
    for n in nodes {
        n.wait_drained().await;
        eventually(
            &format!("{} applied everything to Redis", n.id),
            LONG,
            || async {
                let ready = n
                    .http("GET", "/ready", None)
                    .await
                    .map_err(|e| e.to_string())?;
                let metrics_backlog = n.status().await.map_err(|e| e.to_string())?;
                if ready.0 == 200 {
                    Ok(())
                } else {
                    Err(format!("{ready:?} {metrics_backlog}"))
                }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_in_every_nodes_redis_as_the_app_expects_with_versions() {
    let (nodes, redis) = mesh_with_redis(&[]).await;
    let mut app = WsClient::app(&nodes[0].ws_url()).await.unwrap();
    send(
        &mut app,
        json!({"type": "SK", "key": "order:1", "value": "paid", "messageId": "w1"}),
    )
    .await;
    send(
        &mut app,
        json!({"type": "SA", "key": "cart:1", "value": ["a", "b", "c"], "messageId": "w2"}),
    )
    .await;
    send(
        &mut app,
        json!({"type": "SW", "key": "rank", "value": {"x": 1.5, "y": -2}, "messageId": "w3"}),
    )
    .await;
    send(
        &mut app,
        json!({"type": "SK", "key": "gone", "value": "soon", "messageId": "w4"}),
    )
    .await;
    send(
        &mut app,
        json!({"type": "CMD", "command": "DEL", "args": ["gone"], "messageId": "w5"}),
    )
    .await;
    for (i, r) in redis.iter().enumerate() {
        eventually(&format!("redis {i} holds every write"), LONG, || async {
            let dump = r.dump(PREFIX).map_err(|e| e.to_string())?;
            let want: std::collections::BTreeMap<String, String> = [
                ("cart:1", r#"list ["a", "b", "c"]"#),
                ("order:1", "string paid"),
                ("rank", r#"zset ["y", "-2", "x", "1.5"]"#),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            // The delete is the last write: once its tombstone is there, everything is.
            let mut c = r.connection().map_err(|e| e.to_string())?;
            let gone: Option<String> = redis::cmd("HGET")
                .arg("slipstream:v:gone")
                .arg("kind")
                .query(&mut c)
                .map_err(|e| e.to_string())?;
            if dump == want && gone.as_deref() == Some("deleted") {
                Ok(())
            } else {
                Err(format!("{dump:?}, tombstone {gone:?}"))
            }
        })
        .await;
        let mut c = r.connection().unwrap();
        let v: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg("slipstream:v:order:1")
            .query(&mut c)
            .unwrap();
        assert_eq!(v["origin"], nodes[0].id);
        assert_eq!(v["kind"], "string");
        assert_eq!(v["msg"], "w1");
        assert_eq!(v["hlc"].len(), 16);
        let t: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg("slipstream:v:gone")
            .query(&mut c)
            .unwrap();
        assert_eq!(t["kind"], "deleted", "a delete leaves a tombstone");
    }
    // Reads go to Redis too.
    let got = nodes[2].key("cart:1").await.unwrap().unwrap();
    assert_eq!(got["value"], json!(["a", "b", "c"]));
    assert_eq!(nodes[2].key("gone").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_and_deletes_converge_to_identical_redis_databases() {
    let (nodes, redis) = mesh_with_redis(&[("SLIPSTREAM_DELIVERY_JITTER_MS", "30")]).await;
    for seed in [7u64, 42, 1234] {
        let mut rng = StdRng::seed_from_u64(seed);
        // Each node gets its own sequence of conflicting operations on a few shared keys.
        let plans: Vec<Vec<Value>> = (0..3)
            .map(|n| {
                (0..40)
                    .map(|i| {
                        let key = format!("s{seed}:k{}", rng.gen_range(0..4));
                        let id = format!("s{seed}-n{n}-{i}");
                        match rng.gen_range(0..4) {
                            0 => json!({"type": "SK", "key": key, "value": format!("v{n}-{i}"), "messageId": id}),
                            1 => json!({"type": "SA", "key": key, "value": [format!("a{n}"), format!("b{i}")], "messageId": id}),
                            2 => json!({"type": "SW", "key": key, "value": {format!("m{n}"): i, "z": n}, "messageId": id}),
                            _ => json!({"type": "CMD", "command": "DEL", "args": [key], "messageId": id}),
                        }
                    })
                    .collect()
            })
            .collect();
        let mut tasks = Vec::new();
        for (n, plan) in plans.into_iter().enumerate() {
            let url = nodes[n].ws_url();
            let pause: Vec<u64> = (0..plan.len()).map(|_| rng.gen_range(0..5)).collect();
            tasks.push(tokio::spawn(async move {
                let mut app = WsClient::app(&url).await.unwrap();
                for (msg, p) in plan.into_iter().zip(pause) {
                    send(&mut app, msg).await;
                    tokio::time::sleep(Duration::from_millis(p)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drained(&nodes).await;
        eventually(
            &format!("seed {seed}: three identical Redis databases"),
            LONG,
            || async {
                let dumps: Vec<_> = redis
                    .iter()
                    .map(|r| r.dump(PREFIX).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?;
                if dumps.windows(2).all(|w| w[0] == w[1]) {
                    Ok(())
                } else {
                    Err(format!("{dumps:#?}"))
                }
            },
        )
        .await;
        let dump = redis[0].dump(PREFIX).unwrap();
        assert!(
            dump.keys().any(|k| k.starts_with(&format!("s{seed}:"))),
            "seed {seed} left some keys: {dump:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_loses_no_write() {
    let mut redis_a = RedisServer::start().unwrap();
    let redis_b = RedisServer::start().unwrap();
    let a = with_redis(NodeOptions::default(), &redis_a);
    let b = with_redis(NodeOptions::dialing(&[&a]), &redis_b);
    a.wait_connected(1).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    let writes: Vec<(String, String)> = (0..150)
        .map(|i| (format!("o:{i}"), format!("v{i}")))
        .collect();
    app.publish(&writes[..50]).await.unwrap();
    redis_a.kill();
    // Writes are still recorded, acknowledged and forwarded while Redis is down.
    app.publish(&writes[50..100]).await.unwrap();
    eventually("a is not ready, naming Redis", LONG, || async {
        let (status, v) = a
            .http("GET", "/ready", None)
            .await
            .map_err(|e| e.to_string())?;
        if status == 503 && v["reason"].as_str().unwrap_or("").contains("redis") {
            Ok(())
        } else {
            Err(format!("{status} {v}"))
        }
    })
    .await;
    a.wait_for_log("store unavailable").await;
    app.publish(&writes[100..]).await.unwrap();
    redis_a.restart().unwrap();
    for (name, node, r) in [("a", &a, &redis_a), ("b", &b, &redis_b)] {
        eventually(
            &format!("{name}'s Redis holds all 150 writes"),
            LONG,
            || async {
                let dump = r.dump(PREFIX).map_err(|e| e.to_string())?;
                let missing: Vec<_> = writes
                    .iter()
                    .filter(|(k, v)| dump.get(k) != Some(&format!("string {v}")))
                    .map(|(k, _)| k.clone())
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} missing, e.g. {:?}",
                        missing.len(),
                        &missing[..missing.len().min(5)]
                    ))
                }
            },
        )
        .await;
        eventually(&format!("{name} is ready again"), LONG, || async {
            let (status, v) = node
                .http("GET", "/ready", None)
                .await
                .map_err(|e| e.to_string())?;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("{status} {v}"))
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_by_allow_list_and_answer_with_res() {
    let a = TestNode::start(BIN, NodeOptions::default()).unwrap();
    let b = TestNode::start(
        BIN,
        NodeOptions::dialing(&[&a]).env("SLIPSTREAM_CMD_ALLOW", "PING"),
    )
    .unwrap();
    a.wait_connected(1).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&[("victim".into(), "x".into())]).await.unwrap();
    eventually("b has victim", LONG, || async {
        b.key("victim")
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or_else(|| "no".into())
    })
    .await;

    // DEL: acknowledged, run on a (answer 1), refused on b (answer with an error).
    app.send(&json!({"type": "CMD", "command": "DEL", "args": ["victim"], "messageId": "del-1"}))
        .await
        .unwrap();
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let v = app
            .recv_until(LONG, |v| v["type"] == "RES" && v["inReplyTo"] == "del-1")
            .await
            .unwrap();
        answers.push(v);
    }
    let from = |id: &str| {
        answers
            .iter()
            .find(|r| r["instanceId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no RES from {id}: {answers:?}"))
    };
    assert_eq!(from(&a.id)["value"], 1);
    assert!(
        from(&b.id)["error"]
            .as_str()
            .unwrap()
            .contains("not allowed"),
        "{answers:?}"
    );
    assert_eq!(a.key("victim").await.unwrap(), None);
    assert!(
        b.key("victim").await.unwrap().is_some(),
        "b does not run DEL"
    );
    b.wait_for_log("command refused").await;

    // PING: every node answers PONG.
    app.send(&json!({"type": "CMD", "command": "PING", "args": [], "messageId": "ping-1"}))
        .await
        .unwrap();
    let mut pongs = Vec::new();
    while pongs.len() < 2 {
        let v = app
            .recv_until(LONG, |v| v["type"] == "RES" && v["inReplyTo"] == "ping-1")
            .await
            .unwrap();
        assert_eq!(v["value"], "PONG");
        pongs.push(v["instanceId"].as_str().unwrap().to_owned());
    }
    pongs.sort();
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    assert_eq!(pongs, want);

    // Anything else: a RES with an error, nothing recorded.
    app.send(&json!({"type": "CMD", "command": "FLUSHALL", "args": [], "messageId": "bad-1"}))
        .await
        .unwrap();
    let v = app
        .recv_until(LONG, |v| v["type"] == "RES" && v["inReplyTo"] == "bad-1")
        .await
        .unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("FLUSHALL is not allowed"),
        "{v}"
    );
    a.wait_for_log("command refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_read_gathers_every_nodes_version() {
    let a = TestNode::start(BIN, NodeOptions::default()).unwrap();
    let b = TestNode::start(BIN, NodeOptions::dialing(&[&a])).unwrap();
    let c = TestNode::start(BIN, NodeOptions::dialing(&[&b])).unwrap();
    b.wait_connected(2).await;
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&[("shared".into(), "v1".into())])
        .await
        .unwrap();
    eventually("c has it", LONG, || async {
        c.key("shared")
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or_else(|| "no".into())
    })
    .await;
    let (status, v) = a
        .http("GET", "/v1/keys/shared?scope=mesh", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    let mut ids: Vec<String> = v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["instanceId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want = vec![a.id.clone(), b.id.clone(), c.id.clone()];
    want.sort();
    assert_eq!(ids, want, "c answered over two hops: {v}");
    assert!(v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["value"] == "v1" && x["found"] == true));
    assert!(want.iter().any(|id| v["newest"] == id.as_str()), "{v}");
    // Over WebSocket: GK from the app gets a RES from every node.
    app.send(&json!({"type": "GK", "key": "shared", "messageId": "gk-1"}))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            app.recv_until(LONG, |v| v["type"] == "RES" && v["inReplyTo"] == "gk-1")
                .await
                .unwrap(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_of_a_cluster_group_sharing_redis_share_dedup() {
    let shared = RedisServer::start().unwrap();
    let own = RedisServer::start().unwrap();
    let group = |o: NodeOptions| {
        o.env("SLIPSTREAM_CLUSTER_GROUP_ID", "cluster-1")
            .env("SLIPSTREAM_REDIS_DEDUP", "true")
    };
    let n1 = with_redis(group(NodeOptions::default()), &shared);
    let n2 = with_redis(group(NodeOptions::default()), &shared);
    let c = with_redis(
        NodeOptions::dialing(&[&n1, &n2]).env("SLIPSTREAM_TAGS", "aws"),
        &own,
    );
    c.wait_connected(2).await;
    // The application sends the same payment to both nodes of its cluster group. It is for
    // c's tag only: c does not relay n1's write on to n2 (n1 and n2 are not peers), so n2
    // knows of it only through the shared dedup; a relay could reach n2 before n1 marks the
    // write in Redis after its commit.
    let pay = json!({
        "type": "SK", "key": "order:9", "value": "paid", "messageId": "pay-9",
        "targetedTags": ["aws"]
    });
    send(&mut WsClient::app(&n1.ws_url()).await.unwrap(), pay.clone()).await;
    send(&mut WsClient::app(&n2.ws_url()).await.unwrap(), pay).await;
    n1.wait_drained().await;
    c.wait_drained().await;
    eventually("c holds the payment", LONG, || async {
        match c.key("order:9").await.map_err(|e| e.to_string())? {
            Some(v) if v["value"] == "paid" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        n2.status().await.unwrap()["journalMessages"],
        0,
        "n2 saw it recorded by n1"
    );
    assert!(
        n2.metric("slipstream_messages_dropped_total{reason=\"duplicate\"}")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(c.status().await.unwrap()["journalMessages"], 1);
    assert_eq!(
        c.metric("slipstream_messages_dropped_total{reason=\"duplicate\"}")
            .await
            .unwrap(),
        0.0,
        "c received it once: n2 never forwarded a copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_pruned_after_the_retention_period() {
    let r = RedisServer::start().unwrap();
    let a = with_redis(
        NodeOptions::default().env("SLIPSTREAM_RETENTION_SECONDS", "1"),
        &r,
    );
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    send(
        &mut app,
        json!({"type": "SK", "key": "short", "value": "lived", "messageId": "t1"}),
    )
    .await;
    send(
        &mut app,
        json!({"type": "CMD", "command": "DEL", "args": ["short"], "messageId": "t2"}),
    )
    .await;
    let mut c = r.connection().unwrap();
    eventually("the tombstone is written", LONG, || async {
        let kind: Option<String> = redis::cmd("HGET")
            .arg("slipstream:v:short")
            .arg("kind")
            .query(&mut r.connection().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        if kind.as_deref() == Some("deleted") {
            Ok(())
        } else {
            Err(format!("{kind:?}"))
        }
    })
    .await;
    eventually("the tombstone is pruned", LONG, || async {
        let exists: bool = redis::cmd("EXISTS")
            .arg("slipstream:v:short")
            .query(&mut r.connection().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        if exists {
            Err("still there".into())
        } else {
            Ok(())
        }
    })
    .await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("short*").query(&mut c).unwrap();
    assert!(keys.is_empty());
}
