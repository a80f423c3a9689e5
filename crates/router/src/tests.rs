use slipstream_protocol::{Body, Envelope, Message, Value};

use super::*;

fn write(key: &str, value: &str) -> Message {
    Message {
        env: Envelope::default(),
        body: Body::Set {
            key: key.into(),
            value: Value::String(value.into()),
        },
    }
}

fn relayed(id: &str, path: &[&str]) -> Message {
    let mut m = write("k", "v");
    m.env.message_id = Some(id.into());
    m.env.origin_instance_id = Some(path[0].into());
    m.env.source_instance_id = Some(path[path.len() - 1].into());
    m.env.message_path = path.iter().map(|s| s.to_string()).collect();
    m.env.hlc = Some(Hlc::new(1000, 0));
    m
}

fn router(id: &str, peers: &[(&str, &[&str])]) -> Router {
    let mut r = Router::new(RouterConfig::new(id));
    for (key, tags) in peers {
        r.upsert_peer(
            *key,
            KnownPeer {
                tags: tags.iter().map(|t| t.to_string()).collect(),
            },
        );
    }
    r
}

fn accepted(d: Decision) -> Accepted {
    match d {
        Decision::Accept(a) => *a,
        other => panic!("expected Accept, got {other:?}"),
    }
}

#[test]
fn a_local_write_is_initialised_with_this_node_as_origin() {
    let mut r = router("a", &[("b", &[]), ("c", &[])]);
    let mut m = write("k", "v");
    m.env.origin_instance_id = Some("someone-else".into());
    let a = accepted(r.route(&Sender::Client, m, 5000));
    let env = &a.message.env;
    assert_eq!(env.origin_instance_id.as_deref(), Some("a"));
    assert_eq!(env.source_instance_id.as_deref(), Some("a"));
    assert_eq!(env.message_path, vec!["a"]);
    assert_eq!(env.cluster_group_id.as_deref(), Some("singleton"));
    assert_eq!(a.hlc, Hlc::new(5000, 0));
    assert_eq!(a.message_id(), format!("a-{}", Hlc::new(5000, 0)));
    assert!(a.apply);
    assert_eq!(a.recipients, vec!["b", "c"]);
}

#[test]
fn a_local_write_keeps_the_apps_message_id_group_and_hlc() {
    let mut r = router("a", &[]);
    let mut m = write("k", "v");
    m.env.message_id = Some("pay-1".into());
    m.env.cluster_group_id = Some("g".into());
    m.env.hlc = Some(Hlc::new(9000, 3));
    let a = accepted(r.route(&Sender::Client, m, 5000));
    assert_eq!(
        (a.message_id(), a.group(), a.hlc),
        ("pay-1", "g", Hlc::new(9000, 3))
    );
    // The clock moved past the app's stamp.
    assert!(r.stamp(5000) > Hlc::new(9000, 3));
}

#[test]
fn a_relayed_write_gets_this_node_appended_and_excludes_the_path() {
    let mut r = router("b", &[("a", &[]), ("c", &[]), ("d", &[])]);
    let a = accepted(r.route(&Sender::Peer("c".into()), relayed("m1", &["a", "c"]), 1));
    assert_eq!(a.message.env.message_path, vec!["a", "c", "b"]);
    assert_eq!(a.message.env.source_instance_id.as_deref(), Some("b"));
    assert_eq!(a.message.env.origin_instance_id.as_deref(), Some("a"));
    assert_eq!(a.hlc, Hlc::new(1000, 0), "the origin's stamp is kept");
    assert_eq!(a.recipients, vec!["d"]);
}

#[test]
fn loops_are_dropped() {
    let mut r = router("b", &[("a", &[])]);
    let d = r.route(&Sender::Peer("a".into()), relayed("m1", &["b", "a"]), 1);
    assert_eq!(
        d,
        Decision::Drop {
            reason: DropReason::Loop,
            message_id: "m1".into()
        }
    );
}

#[test]
fn duplicates_are_dropped_only_after_commit_and_per_group() {
    let mut r = router("b", &[]);
    let from = Sender::Peer("a".into());
    accepted(r.route(&from, relayed("m1", &["a"]), 1));
    // Not committed yet: a republish must get through.
    accepted(r.route(&from, relayed("m1", &["a"]), 2));
    r.mark_seen("m1", "singleton", 2);
    let d = r.route(&from, relayed("m1", &["a"]), 3);
    assert_eq!(
        d,
        Decision::Drop {
            reason: DropReason::Duplicate,
            message_id: "m1".into()
        }
    );
    let mut other_group = relayed("m1", &["a"]);
    other_group.env.cluster_group_id = Some("g2".into());
    accepted(r.route(&from, other_group, 4));
}

#[test]
fn an_app_retrying_with_the_same_message_id_is_a_duplicate() {
    let mut r = router("a", &[]);
    let mut m = write("k", "v");
    m.env.message_id = Some("pay-1".into());
    accepted(r.route(&Sender::Client, m.clone(), 1));
    r.mark_seen("pay-1", "singleton", 1);
    assert!(matches!(
        r.route(&Sender::Client, m, 2),
        Decision::Drop {
            reason: DropReason::Duplicate,
            ..
        }
    ));
}

#[test]
fn tag_targeting_selects_peers_and_decides_apply() {
    let mut r = router(
        "a",
        &[("aws", &["aws", "prod"]), ("gcp", &["gcp"]), ("plain", &[])],
    );
    let mut m = write("k", "v");
    m.env.targeted_tags = vec!["prod".into()];
    let a = accepted(r.route(&Sender::Client, m, 1));
    assert_eq!(
        a.recipients,
        vec!["aws"],
        "match only; untagged peer excluded"
    );
    assert!(!a.apply, "node a has no tags");
    let mut m = write("k", "v");
    m.env.targeted_tags = vec!["azure".into()];
    assert!(
        accepted(r.route(&Sender::Client, m, 2))
            .recipients
            .is_empty(),
        "no match"
    );
}

#[test]
fn peer_messages_without_origin_are_rejected() {
    let mut r = router("a", &[]);
    let d = r.route(&Sender::Peer("b".into()), write("k", "v"), 1);
    assert!(matches!(d, Decision::Reject(i) if i.reason.contains("messageId")));
}

#[test]
fn a_full_path_is_recorded_but_not_forwarded() {
    let mut cfg = RouterConfig::new("z");
    cfg.max_path = 3;
    let mut r = Router::new(cfg);
    r.upsert_peer("y", KnownPeer::default());
    let a = accepted(r.route(&Sender::Peer("b".into()), relayed("m", &["a", "b"]), 1));
    assert!(a.recipients.is_empty());
}

#[test]
fn a_configured_peer_keyed_by_url_is_renamed_when_met() {
    let mut r = router("a", &[("url:ws://b:7600", &["aws"])]);
    r.rename_peer("url:ws://b:7600", "b");
    let keys: Vec<_> = r
        .peers()
        .map(|(k, p)| (k.clone(), p.tags.clone()))
        .collect();
    assert_eq!(keys, vec![("b".to_string(), vec!["aws".to_string()])]);
}

#[test]
fn peers_the_origin_delivers_to_itself_are_left_to_it() {
    let mut r = router("b", &[("a", &[]), ("c", &["aws"]), ("d", &["aws"])]);
    r.set_coverage("a", Some(vec!["b".into(), "c".into()]));
    let a = accepted(r.route(&Sender::Peer("a".into()), relayed("m1", &["a"]), 1));
    assert_eq!(
        a.recipients,
        vec!["d"],
        "c is covered by the origin, d is not"
    );

    // A targeted write is forwarded as before: the origin may know c's tags differently.
    let mut targeted = relayed("m2", &["a"]);
    targeted.env.targeted_tags = vec!["aws".into()];
    let a = accepted(r.route(&Sender::Peer("a".into()), targeted, 1));
    assert_eq!(a.recipients, vec!["c", "d"]);

    // Asked to relay to c (the origin's link to it is down): c is a recipient again, and the
    // forwarded form does not carry the request on.
    let mut relay = relayed("m3", &["a"]);
    relay.env.relay_to = vec!["c".into()];
    let a = accepted(r.route(&Sender::Peer("a".into()), relay.clone(), 1));
    assert_eq!(a.recipients, vec!["c", "d"]);
    assert_eq!(a.relay_to, vec!["c"]);
    assert!(a.message.env.relay_to.is_empty());
    // Even once seen: the journal adds the delivery to the write it holds.
    r.mark_seen("m3", "singleton", 1);
    assert!(matches!(
        r.route(&Sender::Peer("a".into()), relay, 2),
        Decision::Accept(_)
    ));

    // An origin that withdrew its announcement (or never made one) is flooded for.
    r.set_coverage("a", None);
    let a = accepted(r.route(&Sender::Peer("a".into()), relayed("m4", &["a"]), 1));
    assert_eq!(a.recipients, vec!["c", "d"]);
    assert!(!r.covers("a", "c"));
}

#[test]
fn a_local_app_cannot_ask_for_a_relay() {
    let mut r = router("a", &[("b", &[])]);
    let mut m = write("k", "v");
    m.env.relay_to = vec!["b".into()];
    let a = accepted(r.route(&Sender::Client, m, 1));
    assert!(a.message.env.relay_to.is_empty());
}
