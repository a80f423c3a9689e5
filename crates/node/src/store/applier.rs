//! Applies recorded writes to Redis, in order, from the durable queue in SQLite.
//!
//! A write is recorded (and acknowledged) whether Redis is up or not; its apply waits in the
//! `apply_queue` table until Redis confirms it. While Redis is unreachable the node keeps
//! accepting and forwarding, `/ready` answers 503 with the reason, and this task retries with
//! doubling waits; once Redis is back the backlog is applied in the order it was recorded.

use std::sync::Arc;
use std::time::Duration;

use slipstream_protocol::{decode_frame, Limits, Message};
use slipstream_storage::now_ms;
use tokio::sync::Notify;

use super::apply_of;
use super::redis::RedisStore;
use crate::node::Node;
use crate::telemetry;

const BATCH: usize = 256;
const MAX_WAIT: Duration = Duration::from_secs(30);

pub async fn run(node: Arc<Node>, redis: Arc<RedisStore>, wake: Arc<Notify>) {
    let mut wait = node.cfg.retry_base;
    loop {
        if node.shutdown.is_cancelled() {
            break;
        }
        let batch = match node.storage.pending_applies(BATCH).await {
            Ok(b) => b,
            Err(e) => {
                telemetry::storage_failed(&node, "read apply queue", &e);
                Vec::new()
            }
        };
        if batch.is_empty() {
            // Idle: keep /ready truthful about Redis even when nothing waits to be applied.
            node.set_store_error(
                redis
                    .ping()
                    .await
                    .err()
                    .map(|e| format!("redis unreachable: {e}")),
            );
            tokio::select! {
                _ = node.shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut failure = None;
        for queued in &batch {
            let Some(msg) = decode_stored(&queued.body) else {
                tracing::error!(critical = true, instance_id = %node.id, seq = queued.seq, "stored message cannot be decoded; skipping its apply");
                done.push(queued.seq);
                continue;
            };
            let Ok(Some(apply)) = apply_of(&msg) else {
                done.push(queued.seq);
                continue;
            };
            let hlc = msg.env.hlc.unwrap_or_default();
            let origin = msg.env.origin_instance_id.clone().unwrap_or_default();
            let id = msg.env.message_id.clone().unwrap_or_default();
            match redis.apply(&apply, hlc, &origin, &id).await {
                Ok(changed) => {
                    done.push(queued.seq);
                    node.applied_externally(&msg, changed, hlc);
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        if !done.is_empty() {
            if let Err(e) = node.storage.applied(done).await {
                telemetry::storage_failed(&node, "mark applied", &e);
            }
        }
        match failure {
            None => {
                node.set_store_error(None);
                wait = node.cfg.retry_base;
            }
            Some(e) => {
                node.set_store_error(Some(format!("redis unreachable: {e}")));
                tokio::select! {
                    _ = node.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(MAX_WAIT);
            }
        }
    }
}

/// Prunes Redis tombstones past the retention period.
pub async fn prune(node: &Node, redis: &RedisStore) {
    let before = now_ms().saturating_sub(node.cfg.retention.as_millis() as u64);
    match redis.prune_tombstones(before).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::debug!(instance_id = %node.id, pruned = n, "pruned Redis tombstones past retention")
        }
        Err(e) => {
            tracing::debug!(instance_id = %node.id, error = %e, "tombstone pruning skipped: Redis unreachable")
        }
    }
}

fn decode_stored(body: &str) -> Option<Message> {
    let limits = Limits {
        max_frame_bytes: usize::MAX,
        max_batch: 1,
        max_path: usize::MAX,
        max_key_bytes: usize::MAX,
        max_value_bytes: usize::MAX,
    };
    decode_frame(body, &limits).ok()?.into_iter().next()?.ok()
}
