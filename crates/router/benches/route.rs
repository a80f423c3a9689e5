//! The routing decision for one relayed write in a three-node mesh.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slipstream_protocol::{Body, Envelope, Hlc, Message, Value};
use slipstream_router::{KnownPeer, Router, RouterConfig, Sender};

fn route(c: &mut Criterion) {
    let mut router = Router::new(RouterConfig::new("b"));
    router.upsert_peer("a", KnownPeer::default());
    router.upsert_peer(
        "c",
        KnownPeer {
            tags: vec!["aws".into()],
        },
    );
    let msg = Message {
        env: Envelope {
            message_id: Some("m".into()),
            origin_instance_id: Some("a".into()),
            source_instance_id: Some("a".into()),
            message_path: vec!["a".into()],
            hlc: Some(Hlc::new(1_700_000_000_000, 0)),
            ..Envelope::default()
        },
        body: Body::Set {
            key: "order:1".into(),
            value: Value::String("x".repeat(100)),
        },
    };
    let from = Sender::Peer("a".into());
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("route a relayed write", |b| {
        b.iter(|| {
            i += 1;
            let mut m = msg.clone();
            m.env.message_id = Some(format!("m{i}"));
            router.route(&from, m, 1_700_000_000_000 + i)
        })
    });
    g.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
