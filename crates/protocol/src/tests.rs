use super::*;

fn one(text: &str) -> Result<Message, Invalid> {
    let mut out = decode_frame(text, &Limits::default()).expect("frame decodes");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn reason(text: &str) -> String {
    one(text).expect_err("message must be rejected").reason
}

#[test]
fn accepts_the_spec_sk_example_exactly() {
    let text = r#"{"type":"SK","key":"order:123","value":"{...order data...}","messageId":"msg-abc123","originInstanceId":"con-12345","sourceInstanceId":"con-12345","messagePath":["con-12345"],"targetedTags":["aws","production"],"clusterGroupId":"cluster-1"}"#;
    let m = one(text).unwrap();
    assert_eq!(m.message_type(), MessageType::Sk);
    assert_eq!(m.env.message_id.as_deref(), Some("msg-abc123"));
    assert_eq!(m.env.origin_instance_id.as_deref(), Some("con-12345"));
    assert_eq!(m.env.message_path, vec!["con-12345"]);
    assert_eq!(m.env.targeted_tags, vec!["aws", "production"]);
    assert_eq!(m.env.group(), "cluster-1");
    assert_eq!(
        m.body,
        Body::Set {
            key: "order:123".into(),
            value: Value::String("{...order data...}".into())
        }
    );
    m.check_from_peer().unwrap();
    // Re-encoding and decoding again gives the same message.
    assert_eq!(one(&m.encode()).unwrap(), m);
}

#[test]
fn accepts_the_spec_ack_example_exactly() {
    let text = r#"{"type":"ACK","messageId":"msg-abc123","originInstanceId":"con-67890","sourceInstanceId":"con-67890","messagePath":["con-67890"]}"#;
    let m = one(text).unwrap();
    assert_eq!(
        m.body,
        Body::Ack {
            message_ids: vec!["msg-abc123".into()]
        }
    );
    assert_eq!(m.env.source_instance_id.as_deref(), Some("con-67890"));
}

#[test]
fn ack_with_many_ids_round_trips() {
    let m = Message::ack("n1", vec!["a".into(), "b".into(), "c".into()]);
    let back = one(&m.encode()).unwrap();
    assert_eq!(
        back.body,
        Body::Ack {
            message_ids: vec!["a".into(), "b".into(), "c".into()]
        }
    );
}

/// An ACK that names its ids only in `messageIds` decodes with its first id as `messageId`,
/// as it is encoded, on both decoding paths (a field the fast path does not know sends the
/// frame to the general one): decoding it again after encoding gives the same message.
#[test]
fn an_ack_with_only_message_ids_round_trips_on_both_paths() {
    for text in [
        r#"{"type":"ACK","messageIds":["a","b"]}"#,
        r#"{"type":"ACK","messageIds":["a","b"],"unknownField":1}"#,
    ] {
        let m = one(text).unwrap();
        assert_eq!(m.env.message_id.as_deref(), Some("a"), "{text}");
        assert_eq!(one(&m.encode()).unwrap(), m, "{text}");
    }
    // The ids in `messageIds` follow the rule of `messageId`.
    let long = "x".repeat(257);
    for text in [
        format!(r#"{{"type":"ACK","messageIds":["{long}","b"]}}"#),
        r#"{"type":"ACK","messageIds":["a",""]}"#.to_owned(),
    ] {
        assert!(
            reason(&text).contains("field `messageIds` must hold ids of 1 to 256 characters"),
            "{text}: {}",
            reason(&text)
        );
    }
}

#[test]
fn decodes_sa_sw_and_gets() {
    let m = one(r#"{"type":"SA","key":"k","value":["a","b"]}"#).unwrap();
    assert_eq!(
        m.body,
        Body::Set {
            key: "k".into(),
            value: Value::Array(vec!["a".into(), "b".into()])
        }
    );
    let m = one(r#"{"type":"SW","key":"k","value":{"x":1.5,"y":-2}}"#).unwrap();
    let Body::Set {
        value: Value::Weighted(w),
        ..
    } = &m.body
    else {
        panic!("{m:?}")
    };
    assert_eq!(w["x"], 1.5);
    assert_eq!(w["y"], -2.0);
    assert_eq!(one(&m.encode()).unwrap(), m);
    for (t, kind) in [
        ("GK", ValueKind::String),
        ("GA", ValueKind::Array),
        ("GW", ValueKind::Weighted),
    ] {
        let m = one(&format!(r#"{{"type":"{t}","key":"k"}}"#)).unwrap();
        assert_eq!(
            m.body,
            Body::Get {
                kind,
                key: "k".into()
            }
        );
        assert_eq!(m.message_type().as_str(), t);
    }
}

#[test]
fn decodes_cmd_res_and_hello() {
    let m = one(r#"{"type":"CMD","command":"DEL","args":["k"],"messageId":"c1"}"#).unwrap();
    assert_eq!(
        m.body,
        Body::Command {
            command: "DEL".into(),
            args: vec!["k".into()]
        }
    );
    let m = one(r#"{"type":"RES","inReplyTo":"g1","instanceId":"n2","found":true,"value":"v","hlc":"0192f3a4b5c60001"}"#).unwrap();
    let Body::Res(r) = &m.body else { panic!() };
    assert_eq!(r.in_reply_to, "g1");
    assert!(r.found);
    assert_eq!(r.hlc, Some("0192f3a4b5c60001".parse().unwrap()));
    assert_eq!(one(&m.encode()).unwrap(), m);
    let m = one(r#"{"type":"HELLO","instanceId":"n1","tags":["aws"],"clusterGroupId":"g","role":"client","protocolVersion":1}"#).unwrap();
    let Body::Hello(h) = &m.body else { panic!() };
    assert_eq!(h.role, Role::Client);
    assert_eq!(h.tags, vec!["aws"]);
    assert_eq!(h.cluster_group_id.as_deref(), Some("g"));
    assert_eq!(one(&m.encode()).unwrap(), m);
}

#[test]
fn rejections_name_the_field() {
    assert!(reason(r#"{"key":"k","value":"v"}"#).contains("`type` is required"));
    assert!(reason(r#"{"type":"XX"}"#).contains("unknown value \"XX\""));
    assert!(reason(r#"{"type":"SK","value":"v"}"#).contains("`key` is required"));
    assert!(reason(r#"{"type":"SK","key":5,"value":"v"}"#)
        .contains("`key` must be a string, got a number"));
    assert!(reason(r#"{"type":"SK","key":"k","value":{"a":1}}"#)
        .contains("`value` must be a string for SK"));
    assert!(reason(r#"{"type":"SA","key":"k","value":["a",1]}"#)
        .contains("`value[1]` must be a string"));
    assert!(reason(r#"{"type":"SW","key":"k","value":{"a":"x"}}"#)
        .contains("`value.a` must be a finite number"));
    assert!(
        reason(r#"{"type":"SK","key":"k","value":"v","messagePath":"n1"}"#)
            .contains("`messagePath` must be an array")
    );
    assert!(reason(r#"{"type":"SK","key":"k","value":"v","hlc":"zz"}"#)
        .contains("`hlc` must be 16 lowercase hex"));
    assert!(
        reason(r#"{"type":"SK","key":"k","value":"v","messageId":""}"#)
            .contains("`messageId` must be 1 to 256")
    );
    assert!(reason(r#"{"type":"ACK"}"#).contains("`messageId` or `messageIds`"));
    assert!(reason(r#"{"type":"HELLO"}"#).contains("`instanceId` is required"));
    assert!(reason(r#"{"type":"HELLO","instanceId":"a","role":"boss"}"#).contains("`role` must be"));
    // The NACK can name the message even when another field is wrong.
    assert_eq!(
        one(r#"{"type":"SK","messageId":"m7"}"#)
            .unwrap_err()
            .message_id
            .as_deref(),
        Some("m7")
    );
}

#[test]
fn enforces_limits() {
    let limits = Limits {
        max_frame_bytes: 100,
        max_batch: 2,
        max_path: 2,
        max_key_bytes: 4,
        max_value_bytes: 8,
    };
    let big = format!(r#"{{"type":"SK","key":"k","value":"{}"}}"#, "x".repeat(200));
    assert!(matches!(
        decode_frame(&big, &limits),
        Err(FrameError::TooLarge { .. })
    ));
    let batch = r#"[{"type":"GK","key":"a"},{"type":"GK","key":"a"},{"type":"GK","key":"a"}]"#;
    assert_eq!(
        decode_frame(batch, &limits),
        Err(FrameError::BatchTooLarge { size: 3, limit: 2 })
    );
    let r = |t: &str| {
        decode_frame(t, &limits)
            .unwrap()
            .remove(0)
            .unwrap_err()
            .reason
    };
    assert!(r(r#"{"type":"SK","key":"toolong","value":"v"}"#).contains("limit of 4"));
    assert!(r(r#"{"type":"SK","key":"k","value":"123456789"}"#).contains("limit of 8"));
    assert!(
        r(r#"{"type":"SK","key":"k","value":"v","messagePath":["a","b","c"]}"#)
            .contains("limit of 2")
    );
}

#[test]
fn frame_level_errors() {
    let l = Limits::default();
    assert!(matches!(
        decode_frame("{not json", &l),
        Err(FrameError::Json(_))
    ));
    assert_eq!(
        decode_frame("42", &l),
        Err(FrameError::NotAMessage("a number"))
    );
    assert_eq!(decode_frame("[]", &l), Err(FrameError::EmptyBatch));
}

#[test]
fn a_batch_keeps_good_messages_beside_bad_ones() {
    let out = decode_frame(
        r#"[{"type":"GK","key":"a"}, 7, {"type":"SK"}]"#,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(out.len(), 3);
    assert!(out[0].is_ok());
    assert!(out[1]
        .as_ref()
        .unwrap_err()
        .reason
        .contains("batch element 1"));
    assert!(out[2].is_err());
}

#[test]
fn peer_messages_must_carry_their_origin() {
    let m = one(r#"{"type":"SK","key":"k","value":"v"}"#).unwrap();
    assert!(m
        .check_from_peer()
        .unwrap_err()
        .reason
        .contains("messageId"));
    let m = one(r#"{"type":"SK","key":"k","value":"v","messageId":"m","originInstanceId":"a"}"#)
        .unwrap();
    assert!(m
        .check_from_peer()
        .unwrap_err()
        .reason
        .contains("messagePath"));
}

#[test]
fn join_encoded_builds_object_or_array_frames() {
    let a = Message::ack("n", vec!["1".into()]).encode();
    let b = Message::ack("n", vec!["2".into()]).encode();
    assert_eq!(join_encoded(std::slice::from_ref(&a)), a);
    let both = decode_frame(&join_encoded(&[a, b]), &Limits::default()).unwrap();
    assert_eq!(both.len(), 2);
}

#[test]
fn last_writer_wins_by_hlc_then_origin() {
    let v = |ms, origin: &str| Version {
        hlc: Hlc::new(ms, 0),
        origin: origin.into(),
    };
    assert!(v(2, "a").supersedes(Some(&v(1, "z"))));
    assert!(!v(1, "z").supersedes(Some(&v(2, "a"))));
    assert!(
        v(1, "b").supersedes(Some(&v(1, "a"))),
        "tie broken by origin id"
    );
    assert!(
        !v(1, "a").supersedes(Some(&v(1, "a"))),
        "the same write again changes nothing"
    );
    assert!(v(1, "a").supersedes(None));
}

#[test]
fn weights_round_trip_exactly() {
    // Found by fuzzing: a weight must decode to the same number on every node, including
    // after this node re-encodes it for forwarding.
    let text = r#"{"type":"SW","key":"k","value":{"a":133333333333333333333333333333333333333333333333333333333333333333333333333333333333333.5,"b":0.1,"c":-1e-300}}"#;
    let m = one(text).unwrap();
    assert_eq!(one(&m.encode()).unwrap(), m);
}

#[test]
fn delivers_to_and_relay_to_round_trip_and_stay_optional() {
    let hello = one(r#"{"type":"HELLO","instanceId":"a","deliversTo":["b","c"],"linkedTo":["b"]}"#)
        .unwrap();
    let Body::Hello(h) = &hello.body else {
        panic!("not a HELLO")
    };
    assert_eq!(h.delivers_to, Some(vec!["b".to_string(), "c".to_string()]));
    assert_eq!(h.linked_to, Some(vec!["b".to_string()]));
    assert_eq!(one(&hello.encode()).unwrap(), hello);
    let plain = one(r#"{"type":"HELLO","instanceId":"a"}"#).unwrap();
    assert!(matches!(&plain.body, Body::Hello(h) if h.delivers_to.is_none()));
    assert!(!plain.encode().contains("deliversTo"));

    let m =
        one(r#"{"type":"SK","key":"k","value":"v","messagePath":["a"],"relayTo":["c"]}"#).unwrap();
    assert_eq!(m.env.relay_to, vec!["c"]);
    assert_eq!(one(&m.encode()).unwrap(), m);
    assert!(reason(r#"{"type":"SK","key":"k","value":"v","relayTo":"c"}"#).contains("relayTo"));
}

#[test]
fn acks_are_split_to_stay_within_the_receivers_limits() {
    let limits = Limits {
        max_batch: 4,
        max_frame_bytes: 400,
        ..Limits::default()
    };
    let mut ids: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    ids.push("x".repeat(40));
    let frames = encode_acks("n1", ids.clone(), &limits);
    assert!(frames.len() >= 3, "{frames:?}");
    let mut back = Vec::new();
    for frame in &frames {
        assert!(frame.len() <= limits.max_frame_bytes, "{frame}");
        for m in decode_frame(frame, &limits).expect("the frame decodes") {
            match m.expect("every ACK is within the limit").body {
                Body::Ack { message_ids } => back.extend(message_ids),
                other => panic!("not an ACK: {other:?}"),
            }
        }
    }
    assert_eq!(back, ids);
    // Within the limits: one ACK, as before.
    assert_eq!(encode_acks("n1", ids[..3].to_vec(), &limits).len(), 1);
    // Unsplit, the receiver rejects it: the failure this guards against.
    let whole = Message::ack("n1", ids).encode();
    assert!(
        decode_frame(&whole, &limits).is_err()
            || decode_frame(&whole, &limits).unwrap()[0].is_err()
    );
}

#[test]
fn json_strings_are_what_serde_writes() {
    for list in [
        vec![],
        vec!["a".to_owned()],
        vec![
            "n1".to_owned(),
            "q\"uote".to_owned(),
            "\u{1} é".to_owned(),
            String::new(),
        ],
    ] {
        assert_eq!(
            crate::json_strings(&list),
            serde_json::to_string(&list).unwrap()
        );
    }
}

#[test]
fn json_text_of_a_value_is_its_json_printed() {
    let weights: std::collections::BTreeMap<String, f64> =
        [("b".to_owned(), 2.5), ("a".to_owned(), -1.0)].into();
    for v in [
        Value::String("q\"uote\n".into()),
        Value::String(String::new()),
        Value::String("plain".into()),
        Value::String("\\ \u{1} \u{1f} \t \u{7f} é 😀".into()),
        Value::Array(vec!["x".into(), "é".into()]),
        Value::Array(vec!["q\"".into()]),
        Value::Array(Vec::new()),
        Value::Weighted(weights),
    ] {
        assert_eq!(v.to_json_text(), v.to_json().to_string());
        assert_eq!(
            Value::from_json(v.kind(), serde_json::from_str(&v.to_json_text()).unwrap()),
            Some(v)
        );
    }
}

#[test]
fn every_type_parses_from_its_name_and_nothing_else_does() {
    for t in MessageType::ALL {
        assert_eq!(MessageType::parse(t.as_str()), Some(t));
        assert_eq!(MessageType::parse(&t.as_str().to_lowercase()), None);
    }
    assert_eq!(MessageType::parse(""), None);
}

#[test]
fn an_ack_names_each_id_once_in_order() {
    let text = r#"{"type":"ACK","messageId":"b","messageIds":["a","b","c","a","d"]}"#;
    assert_eq!(
        one(text).unwrap().body,
        Body::Ack {
            message_ids: vec!["b".into(), "a".into(), "c".into(), "d".into()]
        }
    );
    // The general path gives the same.
    let general = crate::codec::decode_frame_general(text, &Limits::default()).unwrap();
    assert_eq!(general[0].as_ref().unwrap().body, one(text).unwrap().body);
}
