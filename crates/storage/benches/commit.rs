//! Recording a batch of writes: one transaction and one fsync on a real SQLite file.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use slipstream_protocol::{Hlc, Value};
use slipstream_storage::{Apply, Record, Storage, StorageOptions};

fn record(i: u64) -> Record {
    Record {
        message_id: format!("m{i}"),
        group: "singleton".into(),
        msg_type: "SK",
        origin: "a".into(),
        hlc: Hlc::new(1_700_000_000_000 + i, 0),
        path: vec!["a".into()],
        body: format!(
            r#"{{"type":"SK","key":"k{i}","value":"{}","messageId":"m{i}"}}"#,
            "x".repeat(100)
        )
        .into(),
        apply: Some(Apply::Set {
            key: format!("k{i}"),
            value: Value::String("x".repeat(100)),
        }),
        queue_apply: false,
        recipients: vec!["b".into(), "c".into()],
        relay_to: Vec::new(),
    }
}

fn commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("storage");
    g.throughput(Throughput::Elements(100));
    g.sample_size(30);
    // Delivery rows held in memory (the default; none is acknowledged here, so each is
    // written once it is due, in a later commit), and written in the write's own commit.
    for (name, hold_for) in [
        (
            "record 100 writes with 2 deliveries each (one commit; rows held)",
            slipstream_storage::HOLD_FOR,
        ),
        (
            "record 100 writes with 2 deliveries each (one commit; rows written)",
            std::time::Duration::ZERO,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = StorageOptions {
            hold_for,
            ..StorageOptions::default()
        };
        let storage = Storage::open(dir.path(), None, opts).unwrap();
        let mut next = 0u64;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let batch: Vec<Record> = (next..next + 100).map(record).collect();
                    next += 100;
                    batch
                },
                |batch| {
                    rt.block_on(async {
                        let mut waiting = Vec::with_capacity(batch.len());
                        for r in batch {
                            waiting.push(storage.submit(r).await.unwrap());
                        }
                        for w in waiting {
                            w.await.unwrap().0.unwrap();
                        }
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
