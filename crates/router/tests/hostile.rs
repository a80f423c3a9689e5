//! Property test: random and mutated frames through decode and route. Nothing panics, and a
//! message that is rejected or dropped leaves the router's state (clock, seen cache, peers)
//! as it was.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slipstream_protocol::{decode_frame, Limits};
use slipstream_router::{Decision, KnownPeer, Router, RouterConfig, Sender};

const SEEDS: [&str; 8] = [
    r#"{"type":"SK","key":"order:123","value":"{...order data...}","messageId":"msg-abc123","originInstanceId":"con-12345","sourceInstanceId":"con-12345","messagePath":["con-12345"],"targetedTags":["aws","production"],"clusterGroupId":"cluster-1"}"#,
    r#"{"type":"SA","key":"k","value":["a","b"],"messageId":"m2","originInstanceId":"o","messagePath":["o"],"hlc":"0192f3a4b5c60001"}"#,
    r#"{"type":"SW","key":"k","value":{"a":1.5},"messageId":"m3","originInstanceId":"o","messagePath":["o","p"]}"#,
    r#"{"type":"ACK","messageId":"msg-abc123","originInstanceId":"con-67890","sourceInstanceId":"con-67890","messagePath":["con-67890"]}"#,
    r#"{"type":"CMD","command":"DEL","args":["k"],"messageId":"c1","originInstanceId":"o","messagePath":["o"]}"#,
    r#"{"type":"HELLO","instanceId":"n1","tags":["aws"],"role":"peer","protocolVersion":1}"#,
    r#"[{"type":"GK","key":"a","messageId":"g","originInstanceId":"o","messagePath":["o"]},{"type":"RES","inReplyTo":"g","found":true}]"#,
    r#"{"type":"SK","key":"k","value":"v","messageId":"loop","originInstanceId":"o","messagePath":["o","me"]}"#,
];

fn mutate(rng: &mut StdRng, seed: &str) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    for _ in 0..rng.gen_range(1..6) {
        if b.is_empty() {
            b.push(b'{');
        }
        let i = rng.gen_range(0..b.len());
        match rng.gen_range(0..6) {
            0 => b[i] = rng.gen(),
            1 => b.truncate(i),
            2 => b.insert(i, *b"{}[]\":,0-e\\".get(rng.gen_range(0..11)).unwrap()),
            3 => {
                b.remove(i);
            }
            4 => {
                let j = rng.gen_range(0..b.len());
                b.swap(i, j);
            }
            _ => {
                let chunk: Vec<u8> = b[i..].iter().take(rng.gen_range(1..32)).copied().collect();
                b.splice(i..i, chunk);
            }
        }
    }
    b
}

fn random(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.gen_range(0..256)).map(|_| rng.gen()).collect()
}

#[test]
fn ten_thousand_random_and_mutated_frames_never_panic_or_change_state_when_invalid() {
    let mut rng = StdRng::seed_from_u64(2026);
    let limits = Limits::default();
    let mut router = Router::new(RouterConfig::new("me"));
    router.upsert_peer("p", KnownPeer::default());
    router.upsert_peer(
        "q",
        KnownPeer {
            tags: vec!["aws".into()],
        },
    );
    let peers_before: Vec<_> = router
        .peers()
        .map(|(k, p)| (k.clone(), p.clone()))
        .collect();
    let (mut frames, mut decoded, mut rejected) = (0, 0, 0);
    for i in 0..12_000 {
        let seed = SEEDS[rng.gen_range(0..SEEDS.len())];
        let bytes = if i % 4 == 0 {
            random(&mut rng)
        } else {
            mutate(&mut rng, seed)
        };
        frames += 1;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let Ok(items) = decode_frame(text, &limits) else {
            continue;
        };
        for msg in items.into_iter().flatten() {
            if !msg.message_type().is_write() {
                continue;
            }
            decoded += 1;
            let (clock, seen) = (router.last_stamp(), router.seen_len());
            match router.route(&Sender::Peer("p".into()), msg, 1_000_000 + i) {
                Decision::Reject(_) | Decision::Drop { .. } => {
                    rejected += 1;
                    assert_eq!(
                        (router.last_stamp(), router.seen_len()),
                        (clock, seen),
                        "frame {i}: {text}"
                    );
                }
                Decision::Accept(a) => {
                    assert_eq!(
                        a.message.env.message_path.last().map(String::as_str),
                        Some("me")
                    );
                    assert!(
                        !a.recipients.contains(&"p".to_string()),
                        "never back to the sender"
                    );
                }
            }
        }
    }
    let peers_after: Vec<_> = router
        .peers()
        .map(|(k, p)| (k.clone(), p.clone()))
        .collect();
    assert_eq!(
        peers_before, peers_after,
        "routing never changes the peer table"
    );
    assert!(frames >= 10_000);
    assert!(
        decoded > 100 && rejected > 10,
        "the mutations exercised both paths: {decoded} decoded, {rejected} rejected"
    );
}
