//! Every telemetry event defined once: each function here writes the log line and bumps the
//! metric for one event, with bounded label values (message types, drop reasons, configured or
//! met peer ids; never keys or message ids).
//!
//! Log levels follow SPEC §10: per-message lines go to the `slipstream::message` target (on
//! while `ENABLE_MESSAGE_LOGS`), `debug` lines need `ENABLE_DEBUG_LOGS`, and critical lines are
//! error lines with `critical = true`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeOrigin {
    pub r#type: String,
    pub origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

pub struct Metrics {
    registry: Registry,
    pub active_connections: Gauge,
    pub processed: Family<TypeOrigin, Counter>,
    pub sent: Family<TypeLabel, Counter>,
    pub acks_received: Counter,
    pub republished: Counter,
    pub dead_lettered: Counter,
    pub dropped: Family<ReasonLabel, Counter>,
    pub outbox_pending: Gauge,
    pub reconnects: Family<PeerLabel, Counter>,
    pub circuit_open: Family<PeerLabel, Gauge>,
    pub replication_latency: Histogram,
    pub commit_ops: Counter<u64, AtomicU64>,
    pub commits: Counter<u64, AtomicU64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("slipstream");
        let m = Metrics {
            active_connections: Gauge::default(),
            processed: Family::default(),
            sent: Family::default(),
            acks_received: Counter::default(),
            republished: Counter::default(),
            dead_lettered: Counter::default(),
            dropped: Family::default(),
            outbox_pending: Gauge::default(),
            reconnects: Family::default(),
            circuit_open: Family::default(),
            replication_latency: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            commit_ops: Counter::default(),
            commits: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "active_connections",
            "Open WebSocket connections (peers and local apps)",
            m.active_connections.clone(),
        );
        registry.register(
            "messages_processed",
            "Writes recorded by this node",
            m.processed.clone(),
        );
        registry.register("messages_sent", "Messages sent to peers", m.sent.clone());
        registry.register(
            "acks_received",
            "ACKs received from peers",
            m.acks_received.clone(),
        );
        registry.register(
            "messages_republished",
            "Messages sent again after no ACK",
            m.republished.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Deliveries moved to the dead-letter queue",
            m.dead_lettered.clone(),
        );
        registry.register(
            "messages_dropped",
            "Messages dropped, by reason (loop, duplicate, invalid)",
            m.dropped.clone(),
        );
        registry.register(
            "outbox_pending",
            "Delivery rows not yet acknowledged",
            m.outbox_pending.clone(),
        );
        registry.register(
            "reconnects",
            "Redials after a lost or failed connection",
            m.reconnects.clone(),
        );
        registry.register(
            "circuit_open",
            "1 while a peer's circuit is open",
            m.circuit_open.clone(),
        );
        registry.register(
            "replication_latency_seconds",
            "Origin HLC stamp to local apply",
            m.replication_latency.clone(),
        );
        registry.register("storage_commits", "SQLite commits", m.commits.clone());
        registry.register(
            "storage_commit_ops",
            "Operations carried by SQLite commits",
            m.commit_ops.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the log filter from the two switches.
pub fn log_filter(message_logs: bool, debug_logs: bool) -> String {
    let base = if debug_logs { "debug" } else { "info" };
    let messages = if message_logs { "info" } else { "off" };
    format!(
        "{base},slipstream::message={messages},hyper=warn,tungstenite=warn,tokio_tungstenite=warn"
    )
}

/// Installs the JSON line logger on stdout. Safe to call more than once (later calls are no-ops).
pub fn init_logging(message_logs: bool, debug_logs: bool) {
    let filter = tracing_subscriber::EnvFilter::new(log_filter(message_logs, debug_logs));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}

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
        .get_or_create(&TypeOrigin {
            r#type: msg_type.to_owned(),
            origin: origin.to_owned(),
        })
        .inc();
    if let Some(hlc) = applied_hlc {
        let lag_ms = now_ms().saturating_sub(hlc.millis());
        node.metrics
            .replication_latency
            .observe(lag_ms as f64 / 1000.0);
    }
    if node.cfg.message_logs {
        tracing::info!(target: "slipstream::message", instance_id = %node.id, message_id, origin, r#type = msg_type, applied = applied_hlc.is_some(), "recorded");
    }
}

/// A message was acknowledged and dropped (`loop` or `duplicate`).
pub fn dropped(node: &Node, reason: &str, message_id: &str) {
    node.metrics
        .dropped
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
    if node.cfg.message_logs {
        tracing::info!(target: "slipstream::message", instance_id = %node.id, message_id, reason, "dropped");
    }
}

/// A frame or message failed validation and got a NACK.
pub fn invalid(node: &Node, from: &Sender, reason: &str) {
    node.metrics
        .dropped
        .get_or_create(&ReasonLabel {
            reason: "invalid".to_owned(),
        })
        .inc();
    tracing::error!(instance_id = %node.id, peer = sender_name(from), reason, "invalid message");
}

/// One frame went out to a peer, carrying these counts of each message type.
pub fn frame_sent(node: &Node, peer: &str, types: &[(String, u64)]) {
    for (t, n) in types {
        node.metrics
            .sent
            .get_or_create(&TypeLabel { r#type: t.clone() })
            .inc_by(*n);
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
    node.metrics
        .circuit_open
        .get_or_create(&PeerLabel {
            peer: peer.to_owned(),
        })
        .set(1);
    tracing::error!(critical = true, instance_id = %node.id, peer, failures, cooldown_secs, "circuit open: peer unreachable, trying again after the cool-down");
}

pub fn circuit_closed(node: &Node, peer: &str) {
    node.metrics
        .circuit_open
        .get_or_create(&PeerLabel {
            peer: peer.to_owned(),
        })
        .set(0);
}

/// A dial to a peer failed or a connection was lost; it will be redialled.
pub fn reconnect(node: &Node, peer: &str, error: &str, retry_in_secs: f64) {
    node.metrics
        .reconnects
        .get_or_create(&PeerLabel {
            peer: peer.to_owned(),
        })
        .inc();
    tracing::debug!(instance_id = %node.id, peer, error, retry_in_secs, "peer connection failed; redialling");
}

/// The store failed an operation.
pub fn storage_failed(node: &Node, what: &str, error: &StorageError) {
    tracing::error!(critical = true, instance_id = %node.id, operation = what, error = %error, "store failure");
}
