//! Forwarding: a healthy full mesh sends each write once per peer (the origin delivers it
//! itself), and a link that goes down is routed around through a relay without losing a
//! write. Real node processes, real TCP, a real proxy whose link is cut.

use slipstream_testkit::{eventually, writes, NodeOptions, TcpProxy, TestNode, WsClient};

mod common;
use common::{start, LONG};

/// Waits until `node` has heard from `peer` that `peer` delivers its own writes to `to`.
async fn wait_announced(node: &TestNode, peer: &TestNode, to: &TestNode) {
    eventually("the announcement arrived", LONG, || async {
        let announced = node
            .peer_status(&peer.id)
            .await
            .map_err(|e| e.to_string())?
            .map(|p| p["deliversTo"].clone())
            .unwrap_or_default();
        let has = announced
            .as_array()
            .is_some_and(|a| a.iter().any(|id| id == to.id.as_str()));
        has.then_some(())
            .ok_or_else(|| format!("{} announced {announced}", peer.id))
    })
    .await;
}

/// a, b and c, every pair linked; a dials b directly and c through a proxy (c dials no one,
/// b dials c), so the a–c link can be cut alone. Returns once every announcement b makes
/// about c has reached a and a's about c has reached b.
async fn triangle_with_a_proxied_link(
    a_opts: NodeOptions,
) -> (TestNode, TestNode, TestNode, TcpProxy) {
    let c = start(NodeOptions::default());
    let b = start(NodeOptions::dialing(&[&c]));
    let proxy = TcpProxy::start(c.ws_addr).unwrap();
    let a = start(NodeOptions {
        peers: vec![b.ws_url(), proxy.ws_url()],
        ..a_opts
    });
    for n in [&a, &b, &c] {
        n.wait_connected(2).await;
    }
    wait_announced(&b, &a, &c).await;
    (a, b, c, proxy)
}

async fn sent(node: &TestNode) -> f64 {
    node.metric("slipstream_messages_sent_total{type=\"SK\"}")
        .await
        .unwrap_or(0.0)
}

async fn mesh(forwarding: &str) -> (TestNode, TestNode, TestNode) {
    let opts = |o: NodeOptions| {
        o.env("SLIPSTREAM_FORWARDING", forwarding)
            .env("ENABLE_DEBUG_LOGS", "true")
    };
    let a = start(opts(NodeOptions::default()));
    let b = start(opts(NodeOptions::dialing(&[&a])));
    let c = start(opts(NodeOptions::dialing(&[&a, &b])));
    for n in [&a, &b, &c] {
        n.wait_connected(2).await;
    }
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_full_mesh_sends_each_write_once_per_peer() {
    let (a, b, c) = mesh("direct").await;
    wait_announced(&b, &a, &c).await;
    wait_announced(&c, &a, &b).await;
    let all = writes("direct", 50);
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&all).await.unwrap();
    b.wait_has_all(&all).await;
    c.wait_has_all(&all).await;
    a.wait_drained().await;
    assert_eq!(
        sent(&a).await,
        100.0,
        "the origin sends each write to both peers"
    );
    assert_eq!(sent(&b).await, 0.0, "b leaves c to the origin");
    assert_eq!(sent(&c).await, 0.0, "c leaves b to the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_relays_every_write_as_well() {
    let (a, b, c) = mesh("flood").await;
    let all = writes("flood", 50);
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&all).await.unwrap();
    b.wait_has_all(&all).await;
    c.wait_has_all(&all).await;
    // Each write is relayed by at least one of b and c: by both, unless one of them had it
    // from the other before the origin's copy arrived (then that copy is a duplicate).
    eventually("the relays forwarded", LONG, || async {
        let (sb, sc) = (sent(&b).await, sent(&c).await);
        (sb + sc >= 50.0)
            .then_some(())
            .ok_or(format!("b sent {sb}, c sent {sc}"))
    })
    .await;
    assert!(
        b.status().await.unwrap()["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["deliversTo"].is_null()),
        "a flooding node announces nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_is_routed_around_through_a_relay() {
    // a - b - c all linked, but a reaches c only through a proxy that is then cut.
    let (a, b, c, proxy) = triangle_with_a_proxied_link(NodeOptions::default()).await;
    wait_announced(&a, &b, &c).await;
    proxy.cut();
    a.wait_disconnected_from(&c.id).await;

    let all = writes("around", 40);
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&all).await.unwrap();
    b.wait_has_all(&all).await;
    c.wait_has_all(&all).await;
    a.wait_for_log("handing its waiting writes to a relay")
        .await;
    // a's rows for c were settled by b's acknowledgement: nothing waits for the cut link.
    eventually("a owes c nothing", LONG, || async {
        let owed = a
            .peer_status(&c.id)
            .await
            .map_err(|e| e.to_string())?
            .map(|p| p["pending"].as_u64().unwrap_or(0) + p["sent"].as_u64().unwrap_or(0));
        (owed == Some(0))
            .then_some(())
            .ok_or(format!("owed {owed:?}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_an_origin_that_dies_before_delivering_still_arrive() {
    // a reaches c only through a proxy; a's handoff waits two retry periods of 30 s, so when
    // the link is cut, a holds c's writes alone. b has them, but leaves c to a. Then a dies.
    let (mut a, b, c, proxy) = triangle_with_a_proxied_link(
        NodeOptions::default().env("SLIPSTREAM_RETRY_IN_N_SECONDS", "30"),
    )
    .await;
    proxy.cut();
    a.wait_disconnected_from(&c.id).await;
    let all = writes("orphan", 30);
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&all).await.unwrap();
    b.wait_has_all(&all).await;
    assert_eq!(
        c.key("orphan:0").await.unwrap(),
        None,
        "c cannot have it yet: only a owes it to c"
    );
    a.kill();
    c.wait_has_all(&all).await;
    b.wait_for_log("delivering its recent writes to its peers in its place")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_down_waits_at_its_origin_without_relays() {
    // c is down, not cut off: nobody is linked to it, so a keeps c's writes itself (no
    // handoff), b sends nothing, and c gets everything from a when it returns.
    let (a, b, mut c) = mesh("direct").await;
    wait_announced(&b, &a, &c).await;
    c.kill();
    a.wait_disconnected_from(&c.id).await;
    let no_relay = "no peer is linked to it";
    let rounds = |n: &TestNode| n.logs().matches(no_relay).count();
    let all = writes("waits", 30);
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&all).await.unwrap();
    let before = rounds(&a);
    b.wait_has_all(&all).await;
    // A handoff round of a's ran after the writes were recorded, and found no relay.
    eventually("a handoff round after the writes", LONG, || async {
        (rounds(&a) > before)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    c.restart().unwrap();
    c.wait_has_all(&all).await;
    assert!(
        !a.logs().contains("handing its waiting writes to a relay"),
        "no relay was linked to c"
    );
    assert_eq!(sent(&b).await, 0.0, "b relayed nothing");
}

/// A configured peer that dials in before this node's own dial to it gets through is known
/// twice for a while: by its id, and by the URL this node was given for it. Each write of
/// that while owes it a row under each. Once the dial gets through and the URL turns out to
/// be the peer's, the write keeps one row for it, and nothing stays owed to the URL. (The
/// URL's rows may still go out once on the new connection before its HELLO names the peer:
/// the peer drops that copy as a duplicate.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_known_by_id_and_by_url_at_once_is_owed_each_write_once() {
    let mut b = start(NodeOptions::default());
    let proxy = TcpProxy::start(b.ws_addr).unwrap();
    proxy.block();
    let a = start(NodeOptions {
        peers: vec![proxy.ws_url()],
        ..NodeOptions::default()
    });
    b.set_options(NodeOptions::dialing(&[&a]));
    b.restart().unwrap();
    let url_key = format!("url:{}", proxy.ws_url());
    eventually(
        "b dialled in while a's own dial is refused",
        LONG,
        || async {
            let b_in = a.peer_status(&b.id).await.map_err(|e| e.to_string())?;
            let by_url = a.peer_status(&url_key).await.map_err(|e| e.to_string())?;
            match (b_in, by_url) {
                (Some(p), Some(u)) if p["connected"] == true && u["connected"] == false => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let all = writes("twice", 20);
    let mut app = WsClient::app(&a.ws_url()).await.unwrap();
    app.publish(&all).await.unwrap();
    b.wait_has_all(&all).await;
    let by_url = a
        .peer_status(&url_key)
        .await
        .unwrap()
        .expect("still known by URL");
    assert_eq!(
        by_url["pending"], 20,
        "each write owes the URL a row too: {by_url}"
    );
    proxy.unblock();
    eventually("a's own dial got through: the URL is b's", LONG, || async {
        match a.peer_status(&url_key).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(u) => Err(format!("{u}")),
        }
    })
    .await;
    a.wait_drained().await;
    let to_b = a.peer_status(&b.id).await.unwrap().expect("b is known");
    assert_eq!(
        (to_b["acked"].as_u64(), to_b["pending"].as_u64()),
        (Some(20), Some(0)),
        "one row per write for b: {to_b}"
    );
}
