//! The registry of logical peers: one entry per remote instance id (or `url:…` key for a
//! configured peer not met yet), each with its delivery task and its live connections.
//!
//! A pair of nodes configured in both directions holds two connections; both stay up (either
//! can fail on its own), but the peer's one delivery task sends each row over one of them, so
//! the peer never gets a message twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use crate::delivery::{ConnHandle, DeliveryCmd, DeliveryHandle, DeliveryTask, Outbound};
use crate::node::Node;

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnInfo {
    pub id: u64,
    pub direction: Direction,
    pub remote: String,
    /// Round trip of the last WebSocket ping on this connection.
    pub rtt_ms: Option<f64>,
}

struct Entry {
    delivery: DeliveryHandle,
    connections: Vec<ConnInfo>,
    /// Frame queues of the live connections, for messages that are not stored (reads, answers).
    senders: Vec<(u64, mpsc::Sender<Outbound>)>,
    last_seen: Option<SystemTime>,
}

#[derive(Default)]
pub struct Peers {
    map: Mutex<BTreeMap<String, Entry>>,
}

/// A peer as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    pub key: String,
    pub connected: bool,
    pub connections: Vec<ConnInfo>,
    pub last_seen_unix_ms: Option<u64>,
}

impl Peers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a connection to a peer, starting the peer's delivery task on first use.
    pub async fn attach(&self, node: &Arc<Node>, key: &str, conn: ConnHandle, info: ConnInfo) {
        let tx = {
            let mut map = self.lock();
            let entry = map.entry(key.to_owned()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(1024);
                let new_rows = Arc::new(Notify::new());
                let missed = Arc::new(AtomicBool::new(false));
                let task = DeliveryTask::new(
                    node.clone(),
                    key.to_owned(),
                    rx,
                    new_rows.clone(),
                    missed.clone(),
                );
                node.tracker.spawn(task.run());
                Entry {
                    delivery: DeliveryHandle {
                        tx,
                        new_rows,
                        missed,
                    },
                    connections: Vec::new(),
                    senders: Vec::new(),
                    last_seen: None,
                }
            });
            entry.connections.push(info);
            entry.senders.push((conn.id, conn.tx.clone()));
            entry.last_seen = Some(SystemTime::now());
            entry.delivery.tx.clone()
        };
        // The delivery task drains its queue continuously, so this wait is short.
        let _ = tx.send(DeliveryCmd::Attach(conn)).await;
    }

    pub async fn detach(&self, key: &str, conn_id: u64) {
        let tx = {
            let mut map = self.lock();
            let Some(entry) = map.get_mut(key) else {
                return;
            };
            entry.connections.retain(|c| c.id != conn_id);
            entry.senders.retain(|(id, _)| *id != conn_id);
            entry.last_seen = Some(SystemTime::now());
            entry.delivery.tx.clone()
        };
        let _ = tx.send(DeliveryCmd::Detach(conn_id)).await;
    }

    /// Sends a frame now over a live connection to the peer, if there is one and it has room.
    /// For messages that are not stored (reads and their answers): no retry.
    pub fn send_now(&self, key: &str, frame: &str) -> bool {
        let tx = self
            .lock()
            .get(key)
            .and_then(|e| e.senders.first().map(|(_, tx)| tx.clone()));
        tx.is_some_and(|tx| tx.try_send(Outbound::Frame(frame.to_owned())).is_ok())
    }

    /// Sends a frame now to every connected peer (a HELLO with news); best effort.
    pub fn broadcast(&self, frame: &str) {
        let senders: Vec<_> = self
            .lock()
            .values()
            .filter_map(|e| e.senders.first().map(|(_, tx)| tx.clone()))
            .collect();
        for tx in senders {
            let _ = tx.try_send(Outbound::Frame(frame.to_owned()));
        }
    }

    /// Records a ping round trip on one of a peer's connections.
    pub fn set_rtt(&self, key: &str, conn_id: u64, rtt_ms: f64) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.last_seen = Some(SystemTime::now());
            if let Some(c) = entry.connections.iter_mut().find(|c| c.id == conn_id) {
                c.rtt_ms = Some(rtt_ms);
            }
        }
    }

    pub async fn acked(&self, key: &str, ids: Vec<String>) {
        let tx = {
            let mut map = self.lock();
            let Some(entry) = map.get_mut(key) else {
                return;
            };
            entry.last_seen = Some(SystemTime::now());
            entry.delivery.tx.clone()
        };
        let _ = tx.send(DeliveryCmd::Acked(ids)).await;
    }

    /// Hands a peer's delivery task rows just committed, to send without reading them back.
    /// A task that cannot take them now is told to read its outbox instead.
    pub fn live(&self, key: &str, rows: Vec<slipstream_storage::Outgoing>) {
        if let Some(entry) = self.lock().get(key) {
            if entry.delivery.tx.try_send(DeliveryCmd::Live(rows)).is_err() {
                // Later rows must not be taken before these are read back (see `on_live`).
                entry.delivery.missed.store(true, Ordering::Release);
                entry.delivery.new_rows.notify_one();
            }
        }
    }

    /// Tells a peer's delivery task that new rows are waiting. A peer without a task (never
    /// connected since start) reads its rows when it connects.
    pub fn notify(&self, key: &str) {
        if let Some(entry) = self.lock().get(key) {
            entry.delivery.new_rows.notify_one();
        }
    }

    /// Rows came back or moved to this peer (a dead-letter replay, or `url:` rows moved to its id
    /// once met): it reads its outbox from the start again.
    pub async fn rewind(&self, key: &str) {
        let tx = self.lock().get(key).map(|e| e.delivery.tx.clone());
        if let Some(tx) = tx {
            let _ = tx.send(DeliveryCmd::Rewind).await;
        }
    }

    pub fn views(&self) -> Vec<PeerView> {
        self.lock()
            .iter()
            .map(|(key, e)| PeerView {
                key: key.clone(),
                connected: !e.connections.is_empty(),
                connections: e.connections.clone(),
                last_seen_unix_ms: e
                    .last_seen
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64),
            })
            .collect()
    }
}
