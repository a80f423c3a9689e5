//! Frame decode and encode: the per-message cost on every hop.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slipstream_protocol::{decode_frame, encode_batch, Limits};

const SK: &str = r#"{"type":"SK","key":"order:123","value":"{...order data, about one hundred bytes of it, padded to look like a payment record....}","messageId":"msg-abc123","originInstanceId":"con-12345","sourceInstanceId":"con-12345","messagePath":["con-12345"],"targetedTags":["aws","production"],"clusterGroupId":"cluster-1","hlc":"0192f3a4b5c60001"}"#;

fn codec(c: &mut Criterion) {
    let limits = Limits::default();
    let batch = format!("[{}]", vec![SK; 100].join(","));
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode one SK", |b| {
        b.iter(|| decode_frame(std::hint::black_box(SK), &limits).unwrap())
    });
    let msg = decode_frame(SK, &limits).unwrap().remove(0).unwrap();
    g.bench_function("encode one SK", |b| {
        b.iter(|| std::hint::black_box(&msg).encode())
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("decode a batch of 100", |b| {
        b.iter(|| decode_frame(std::hint::black_box(&batch), &limits).unwrap())
    });
    let msgs: Vec<_> = decode_frame(&batch, &limits)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    g.bench_function("encode a batch of 100", |b| {
        b.iter(|| encode_batch(std::hint::black_box(&msgs)))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
