//! The Prometheus metrics (SPEC §9 and more), in the Prometheus text format.
//!
//! Label values stay bounded: message types, drop reasons, and peer keys (configured or met
//! peers), never keys or message ids. Per-peer gauges are refreshed from the node's state
//! when scraped.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub active_connections: IntGauge,
    pub processed: IntCounterVec,
    pub sent: IntCounterVec,
    pub acks_received: IntCounter,
    pub republished: IntCounter,
    pub dead_lettered: IntCounter,
    pub dropped: IntCounterVec,
    pub outbox_pending: IntGauge,
    pub dead_letters: IntGauge,
    pub peer_outbox_pending: IntGaugeVec,
    pub peer_dead_letters: IntGaugeVec,
    pub peer_connected: IntGaugeVec,
    pub peer_rtt: GaugeVec,
    pub reconnects: IntCounterVec,
    pub circuit_open: IntGaugeVec,
    pub replication_latency: Histogram,
    pub commit_batch: Histogram,
    pub wal_frames: IntGauge,
    pub uptime: Gauge,
    pub refused: IntCounterVec,
    pub frames_sent: IntCounter,
    pub read_pauses: IntCounter,
    pub ingest_pauses: IntCounter,
    pub bytes_sent: IntCounter,
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            active_connections: IntGauge::new(
                "slipstream_active_connections",
                "Open WebSocket connections (peers and local apps)",
            )
            .expect("valid metric"),
            processed: counter_vec(
                "slipstream_messages_processed_total",
                "Writes recorded by this node, by type and origin node",
                &["type", "origin"],
            ),
            sent: counter_vec(
                "slipstream_messages_sent_total",
                "Messages sent to peers, by type",
                &["type"],
            ),
            acks_received: counter(
                "slipstream_acks_received_total",
                "Message ids acknowledged by peers",
            ),
            republished: counter(
                "slipstream_messages_republished_total",
                "Messages sent again after no ACK",
            ),
            dead_lettered: counter(
                "slipstream_messages_dead_lettered_total",
                "Deliveries moved to the dead-letter queue",
            ),
            dropped: counter_vec(
                "slipstream_messages_dropped_total",
                "Messages dropped, by reason (loop, duplicate, invalid)",
                &["reason"],
            ),
            outbox_pending: IntGauge::new(
                "slipstream_outbox_pending",
                "Delivery rows not yet acknowledged, all peers",
            )
            .expect("valid metric"),
            dead_letters: IntGauge::new(
                "slipstream_dead_letters",
                "Deliveries in the dead-letter queue now",
            )
            .expect("valid metric"),
            peer_outbox_pending: gauge_vec(
                "slipstream_peer_outbox_pending",
                "Delivery rows not yet acknowledged, per peer",
                &["peer"],
            ),
            peer_dead_letters: gauge_vec(
                "slipstream_peer_dead_letters",
                "Deliveries in the dead-letter queue, per peer",
                &["peer"],
            ),
            peer_connected: gauge_vec(
                "slipstream_peer_connected",
                "1 while at least one connection to the peer is up",
                &["peer"],
            ),
            peer_rtt: GaugeVec::new(
                Opts::new(
                    "slipstream_peer_rtt_seconds",
                    "Last WebSocket ping round trip to the peer",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            reconnects: counter_vec(
                "slipstream_reconnects_total",
                "Redials after a lost or failed connection, per configured peer URL",
                &["peer"],
            ),
            circuit_open: gauge_vec(
                "slipstream_circuit_open",
                "1 while a configured peer's circuit is open",
                &["peer"],
            ),
            replication_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "slipstream_replication_latency_seconds",
                    "Origin HLC stamp to local apply",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ]),
            )
            .expect("valid metric"),
            commit_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "slipstream_commit_batch_size",
                    "Operations carried by one SQLite commit",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ]),
            )
            .expect("valid metric"),
            refused: counter_vec(
                "slipstream_connections_refused_total",
                "Connections refused or closed for cause (token, tls, connection_limit, invalid_rate)",
                &["reason"],
            ),
            frames_sent: counter("slipstream_frames_sent_total", "Frames of messages sent to peers"),
            read_pauses: counter(
                "slipstream_read_pauses_total",
                "Times a connection stopped reading because 4 MiB of its answers were not yet written (the remote reads them too slowly)",
            ),
            ingest_pauses: counter(
                "slipstream_ingest_pauses_total",
                &format!(
                    "Times an app connection stopped reading because the node's writes waiting for their commit, over all connections, reached {} writes or {} MiB of frames",
                    crate::node::NODE_PENDING_WRITES,
                    crate::node::NODE_PENDING_BYTES >> 20
                ),
            ),
            bytes_sent: counter("slipstream_bytes_sent_total", "Bytes of message frames sent to peers"),
            wal_frames: IntGauge::new(
                "slipstream_wal_frames",
                "Pages (frames) the SQLite WAL held at the checkpointer's last round",
            )
            .expect("valid metric"),
            uptime: Gauge::new(
                "slipstream_uptime_seconds",
                "Seconds since this node started",
            )
            .expect("valid metric"),
        };
        let r = &m.registry;
        let register =
            |c: Box<dyn prometheus::core::Collector>| r.register(c).expect("unique metric");
        register(Box::new(m.active_connections.clone()));
        register(Box::new(m.processed.clone()));
        register(Box::new(m.sent.clone()));
        register(Box::new(m.acks_received.clone()));
        register(Box::new(m.republished.clone()));
        register(Box::new(m.dead_lettered.clone()));
        register(Box::new(m.dropped.clone()));
        register(Box::new(m.outbox_pending.clone()));
        register(Box::new(m.dead_letters.clone()));
        register(Box::new(m.peer_outbox_pending.clone()));
        register(Box::new(m.peer_dead_letters.clone()));
        register(Box::new(m.peer_connected.clone()));
        register(Box::new(m.peer_rtt.clone()));
        register(Box::new(m.reconnects.clone()));
        register(Box::new(m.circuit_open.clone()));
        register(Box::new(m.replication_latency.clone()));
        register(Box::new(m.commit_batch.clone()));
        register(Box::new(m.wal_frames.clone()));
        register(Box::new(m.uptime.clone()));
        register(Box::new(m.refused.clone()));
        register(Box::new(m.frames_sent.clone()));
        register(Box::new(m.read_pauses.clone()));
        register(Box::new(m.ingest_pauses.clone()));
        register(Box::new(m.bytes_sent.clone()));
        #[cfg(target_os = "linux")]
        register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        m
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("text encoding")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
