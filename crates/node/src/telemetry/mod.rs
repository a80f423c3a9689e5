//! Every telemetry event defined once: each function here writes the log line and bumps the
//! metric for one event, with bounded label values (message types, drop reasons, configured or
//! met peer ids; never keys or message ids).

pub mod logging;
pub mod metrics;
pub mod process;

pub use metrics::Metrics;

use slipstream_protocol::Hlc;
use slipstream_router::Sender;
use slipstream_storage::{now_ms, StorageError};

use crate::node::Node;

fn sender_name(from: &Sender) -> &str {
    match from {
        Sender::Client => "client",
        Sender::Peer(id) => id,
    }
}

/// A write was recorded (and applied, when `applied_hlc` is set).
pub fn recorded(
    node: &Node,
    msg_type: &str,
    origin: &str,
    message_id: &str,
    applied_hlc: Option<Hlc>,
) {
    node.metrics
        .processed
        .with_label_values(&[msg_type, origin])
        .inc();
    if let Some(hlc) = applied_hlc {
        let lag_ms = now_ms().saturating_sub(hlc.millis());
        node.metrics
            .replication_latency
            .observe(lag_ms as f64 / 1000.0);
    }
    tracing::info!(target: "slipstream::message", instance_id = %node.id, message_id, origin, r#type = msg_type, applied = applied_hlc.is_some(), "recorded");
}

/// A message was acknowledged and dropped (`loop` or `duplicate`).
pub fn dropped(node: &Node, reason: &str, message_id: &str) {
    node.metrics.dropped.with_label_values(&[reason]).inc();
    tracing::info!(target: "slipstream::message", instance_id = %node.id, message_id, reason, "dropped");
}

/// A frame or message failed validation and got a NACK.
pub fn invalid(node: &Node, from: &Sender, reason: &str) {
    node.metrics.dropped.with_label_values(&["invalid"]).inc();
    tracing::error!(instance_id = %node.id, peer = sender_name(from), reason, "invalid message");
}

/// One frame went out to a peer, carrying these counts of each message type.
pub fn frame_sent(node: &Node, peer: &str, types: &[(&str, u64)], bytes: usize) {
    node.metrics.frames_sent.inc();
    node.metrics.bytes_sent.inc_by(bytes as u64);
    for (t, n) in types {
        node.metrics.sent.with_label_values(&[*t]).inc_by(*n);
    }
    tracing::debug!(instance_id = %node.id, peer, messages = types.iter().map(|(_, n)| n).sum::<u64>(), "frame sent");
}

/// A delivery ran out of attempts.
pub fn dead_lettered(node: &Node, peer: &str, message_id: &str, seq: i64, attempts: u32) {
    node.metrics.dead_lettered.inc();
    tracing::error!(critical = true, instance_id = %node.id, peer, message_id, seq, attempts, "message dead-lettered: no ACK from a connected peer");
}

/// A peer's circuit opened after consecutive failed dials.
pub fn circuit_opened(node: &Node, peer: &str, failures: u32, cooldown_secs: f64) {
    node.metrics.circuit_open.with_label_values(&[peer]).set(1);
    tracing::error!(critical = true, instance_id = %node.id, peer, failures, cooldown_secs, "circuit open: peer unreachable, trying again after the cool-down");
}

pub fn circuit_closed(node: &Node, peer: &str) {
    node.metrics.circuit_open.with_label_values(&[peer]).set(0);
}

/// A dial to a peer failed or a connection was lost; it will be redialled.
pub fn reconnect(node: &Node, peer: &str, error: &str, retry_in_secs: f64) {
    node.metrics.reconnects.with_label_values(&[peer]).inc();
    tracing::debug!(instance_id = %node.id, peer, error, retry_in_secs, "peer connection failed; redialling");
}

/// The store failed an operation.
pub fn storage_failed(node: &Node, what: &str, error: &StorageError) {
    tracing::error!(critical = true, instance_id = %node.id, operation = what, error = %error, "store failure");
}

/// A connection was refused before any message was read (`token`, `tls`, `connection_limit`).
pub fn refused(node: &Node, reason: &str, remote: &std::net::SocketAddr, detail: &str) {
    node.metrics.refused.with_label_values(&[reason]).inc();
    tracing::error!(instance_id = %node.id, remote = %remote, reason, detail, "connection refused");
}

/// A connection sent more invalid messages per second than allowed and was closed.
pub fn too_many_invalid(node: &Node, remote: &str, limit: u32) {
    node.metrics
        .refused
        .with_label_values(&["invalid_rate"])
        .inc();
    tracing::error!(instance_id = %node.id, remote, limit, "connection closed: too many invalid messages per second");
}
