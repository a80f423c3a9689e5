//! The node's shared core: what connections and the HTTP API hand messages to.
//!
//! [`Node::ingest`] runs a message through the sans-IO router and turns its decision into
//! effects: record in SQLite (group commit), and after the commit, mark it seen, push it to
//! local apps and wake the delivery tasks of its recipients. The caller sends the ACK once
//! the returned commit future resolves, never before.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use slipstream_protocol::{Body, Message, Response};
use slipstream_router::{Decision, KnownPeer, Router, RouterConfig, Sender, URL_KEY_PREFIX};
use slipstream_storage::{now_ms, PeerCounts, PeerRow, Record, Recorded, Storage, StorageError};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::peers::{PeerView, Peers};
use crate::telemetry::{self, Metrics};

/// What the caller should do with a message it handed in.
pub enum Outcome {
    /// Acknowledge now (a loop or a duplicate: the sender can stop).
    Ack(String),
    /// Answer with a NACK.
    Nack {
        message_id: Option<String>,
        error: String,
    },
    /// Answer with this message (a `RES`).
    Reply(Box<Message>),
    /// Wait for the commit, then acknowledge (or report the failure).
    Commit(Pin<Box<dyn Future<Output = Committed> + Send>>),
}

pub enum Committed {
    /// Recorded (or found recorded already): send the ACK.
    Ack { message_id: String, duplicate: bool },
    /// Not recorded; no ACK, so a peer will republish it.
    Failed { message_id: String, error: String },
}

/// A configured peer's dialer, as `/status` shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitView {
    /// `closed` (dialling normally) or `open` (waiting out the cool-down).
    pub circuit: &'static str,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

pub struct Node {
    pub cfg: Config,
    pub id: String,
    pub storage: Storage,
    router: Mutex<Router>,
    pub peers: Peers,
    /// Every write that changed the local store, encoded, for connected local apps.
    pub clients: broadcast::Sender<Arc<str>>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Configured peer URL → its key (instance id once met, else `url:<url>`).
    url_keys: Mutex<HashMap<String, String>>,
    /// Configured peer URL → its dialer's circuit, for `/status`.
    circuits: Mutex<HashMap<String, CircuitView>>,
    next_conn: AtomicU64,
    pub started: Instant,
    pub ready: AtomicBool,
}

impl Node {
    pub async fn new(
        cfg: Config,
        storage: Storage,
        metrics: Metrics,
    ) -> Result<Arc<Node>, StorageError> {
        let id = storage.instance_id().to_owned();
        let mut rc = RouterConfig::new(id.clone());
        rc.tags = cfg.tags.clone();
        rc.cluster_group_id = cfg.cluster_group_id.clone();
        rc.max_path = cfg.limits.max_path;
        rc.dedup_ttl_ms = cfg.retention.as_millis() as u64;
        let mut router = Router::new(rc);
        if let Some(h) = storage.max_hlc().await? {
            router.observe(h);
        }
        let mut url_keys = HashMap::new();
        let known = storage.known_peers().await?;
        for p in &known {
            router.upsert_peer(
                p.id.clone(),
                KnownPeer {
                    tags: p.tags.clone(),
                },
            );
        }
        for pc in &cfg.peers {
            let key = match known
                .iter()
                .find(|p| p.url.as_deref() == Some(pc.url.as_str()))
            {
                Some(p) => p.id.clone(),
                None => format!("{URL_KEY_PREFIX}{}", pc.url),
            };
            let tags = if pc.tags.is_empty() {
                known
                    .iter()
                    .find(|p| p.id == key)
                    .map(|p| p.tags.clone())
                    .unwrap_or_default()
            } else {
                pc.tags.clone()
            };
            router.upsert_peer(key.clone(), KnownPeer { tags });
            url_keys.insert(pc.url.clone(), key);
        }
        let (clients, _) = broadcast::channel(4096);
        Ok(Arc::new(Node {
            cfg,
            id,
            storage,
            router: Mutex::new(router),
            peers: Peers::default(),
            clients,
            metrics,
            circuits: Mutex::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            url_keys: Mutex::new(url_keys),
            next_conn: AtomicU64::new(1),
            started: Instant::now(),
            ready: AtomicBool::new(false),
        }))
    }

    fn router(&self) -> std::sync::MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The key under which a configured peer URL is delivered to.
    pub fn key_for_url(&self, url: &str) -> String {
        self.url_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned()
            .unwrap_or_else(|| format!("{URL_KEY_PREFIX}{url}"))
    }

    /// Known peers and their tags, as the router sees them.
    pub fn known_peers(&self) -> Vec<(String, Vec<String>)> {
        self.router()
            .peers()
            .map(|(k, p)| (k.clone(), p.tags.clone()))
            .collect()
    }

    /// A peer said who it is (HELLO, or `sourceInstanceId` from one that sends no HELLO).
    /// Remembers it durably, so it stays a recipient while down, and returns its key.
    pub async fn peer_met(&self, id: &str, hello_tags: Vec<String>, url: Option<&str>) -> String {
        let configured = url.and_then(|u| self.cfg.peers.iter().find(|p| p.url == u));
        let tags = match configured {
            Some(pc) if !pc.tags.is_empty() => pc.tags.clone(),
            _ => hello_tags,
        };
        let row = PeerRow {
            id: id.to_owned(),
            url: url.map(str::to_owned),
            tags: tags.clone(),
            last_seen: now_ms(),
        };
        let moved = match self.storage.peer_met(row).await {
            Ok(n) => n,
            Err(e) => {
                telemetry::storage_failed(self, "remember peer", &e);
                0
            }
        };
        {
            let mut router = self.router();
            if let Some(u) = url {
                router.rename_peer(&format!("{URL_KEY_PREFIX}{u}"), id);
            }
            router.upsert_peer(id, KnownPeer { tags });
        }
        if let Some(u) = url {
            self.url_keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(u.to_owned(), id.to_owned());
        }
        if moved > 0 {
            // Rows queued under the URL now carry the id with their old, lower seqs: a delivery
            // task already running for the id (the peer dialled in first) must read them too.
            self.peers.rewind(id).await;
        }
        id.to_owned()
    }

    /// Handles a write or a read from a local app or a peer.
    pub async fn ingest(self: &Arc<Self>, from: &Sender, msg: Message) -> Outcome {
        match &msg.body {
            Body::Set { .. } => {}
            Body::Get { .. } => return Outcome::Reply(Box::new(self.read_local(&msg).await)),
            Body::Command { command, .. } => {
                let res = Response {
                    in_reply_to: msg.env.message_id.clone().unwrap_or_default(),
                    instance_id: Some(self.id.clone()),
                    error: Some(format!("command {command:?} refused: commands are not available in this version yet")),
                    ..Response::default()
                };
                tracing::error!(instance_id = %self.id, command = %command, "command refused: not available yet");
                return Outcome::Reply(Box::new(self.reply(res)));
            }
            _ => {
                return Outcome::Nack {
                    message_id: msg.env.message_id.clone(),
                    error: format!("{} is not a write or a read", msg.message_type().as_str()),
                }
            }
        }
        let msg_type = msg.message_type().as_str();
        let decision = self.router().route(from, msg, now_ms());
        let accepted = match decision {
            Decision::Reject(invalid) => {
                telemetry::invalid(self, from, &invalid.reason);
                return Outcome::Nack {
                    message_id: invalid.message_id,
                    error: invalid.reason,
                };
            }
            Decision::Drop { reason, message_id } => {
                telemetry::dropped(self, reason.as_str(), &message_id);
                return Outcome::Ack(message_id);
            }
            Decision::Accept(a) => a,
        };
        let body: Arc<str> = accepted.message.encode().into();
        let apply = match (&accepted.message.body, accepted.apply) {
            (Body::Set { key, value }, true) => Some((key.clone(), value.clone())),
            _ => None,
        };
        let record = Record {
            message_id: accepted.message_id.clone(),
            group: accepted.group.clone(),
            msg_type,
            origin: accepted
                .message
                .env
                .origin_instance_id
                .clone()
                .unwrap_or_default(),
            hlc: accepted.hlc,
            path: accepted.message.env.message_path.clone(),
            body,
            apply,
            recipients: accepted.recipients,
        };
        let origin = record.origin.clone();
        let message_id = record.message_id.clone();
        let group = record.group.clone();
        let applied = record.apply.is_some();
        let hlc = record.hlc;
        let push = record.body.clone();
        let committed: oneshot::Receiver<_> = match self.storage.submit(record).await {
            Ok(rx) => rx,
            Err(e) => {
                telemetry::storage_failed(self, "record", &e);
                return Outcome::Nack {
                    message_id: Some(message_id),
                    error: format!("not recorded: {e}"),
                };
            }
        };
        let node = self.clone();
        Outcome::Commit(Box::pin(async move {
            let result = committed.await.unwrap_or(Err(StorageError::Closed));
            match result {
                Ok(Recorded::New {
                    changed,
                    deliveries,
                }) => {
                    node.router().mark_seen(&message_id, &group, now_ms());
                    telemetry::recorded(
                        &node,
                        msg_type,
                        &origin,
                        &message_id,
                        applied.then_some(hlc),
                    );
                    if changed {
                        let _ = node.clients.send(push);
                    }
                    let mut last: Option<&str> = None;
                    for (peer, _) in &deliveries {
                        if last != Some(peer.as_str()) {
                            node.peers.notify(peer);
                            last = Some(peer);
                        }
                    }
                    Committed::Ack {
                        message_id,
                        duplicate: false,
                    }
                }
                Ok(Recorded::Duplicate) => {
                    node.router().mark_seen(&message_id, &group, now_ms());
                    telemetry::dropped(&node, "duplicate", &message_id);
                    Committed::Ack {
                        message_id,
                        duplicate: true,
                    }
                }
                Err(e) => {
                    telemetry::storage_failed(&node, "record", &e);
                    Committed::Failed {
                        message_id,
                        error: format!("not recorded: {e}"),
                    }
                }
            }
        }))
    }

    fn reply(&self, res: Response) -> Message {
        let mut m = Message {
            env: slipstream_protocol::Envelope::from_self(&self.id),
            body: Body::Res(res),
        };
        m.env.message_id = Some(format!("{}-{}", self.id, self.router().stamp(now_ms())));
        m
    }

    /// Answers a `GK`/`GA`/`GW` from this node's own store.
    async fn read_local(&self, msg: &Message) -> Message {
        let Body::Get { kind, key } = &msg.body else {
            unreachable!("only reads come here")
        };
        let mut res = Response {
            in_reply_to: msg.env.message_id.clone().unwrap_or_default(),
            instance_id: Some(self.id.clone()),
            ..Response::default()
        };
        match self.storage.get(key).await {
            Ok(Some(v)) if v.value.kind() == *kind => {
                res.found = true;
                res.value = Some(v.value.to_json());
                res.hlc = Some(v.hlc);
            }
            Ok(Some(v)) => {
                res.error = Some(format!(
                    "key {key:?} holds a {} value, not a {}",
                    v.value.kind().as_str(),
                    kind.as_str()
                ));
            }
            Ok(None) => {}
            Err(e) => res.error = Some(format!("read failed: {e}")),
        }
        self.reply(res)
    }

    /// A value from the local store, as `GET /v1/keys/{key}` shows it.
    pub async fn get_json(&self, key: &str) -> Result<Option<serde_json::Value>, StorageError> {
        Ok(self.storage.get(key).await?.map(|v| {
            serde_json::json!({
                "key": v.key,
                "kind": v.value.kind().as_str(),
                "value": v.value.to_json(),
                "hlc": v.hlc.to_string(),
                "originInstanceId": v.origin,
                "messageId": v.message_id,
            })
        }))
    }

    /// Records the state of a configured peer's dialer.
    pub fn set_circuit(&self, url: &str, view: CircuitView) {
        self.circuits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.to_owned(), view);
    }

    /// Every known peer with its connections, delivery counts and circuit.
    pub async fn peer_statuses(&self) -> Vec<PeerStatus> {
        let counts: HashMap<String, PeerCounts> = self
            .storage
            .peer_counts()
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let views: HashMap<String, PeerView> = self
            .peers
            .views()
            .into_iter()
            .map(|v| (v.key.clone(), v))
            .collect();
        let urls: HashMap<String, String> = self
            .url_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(url, key)| (key.clone(), url.clone()))
            .collect();
        let circuits = self
            .circuits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.known_peers()
            .into_iter()
            .map(|(key, tags)| {
                let view = views.get(&key);
                let url = urls.get(&key).cloned();
                PeerStatus {
                    counts: counts.get(&key).cloned().unwrap_or_default(),
                    connected: view.is_some_and(|v| v.connected),
                    rtt_ms: view.and_then(|v| v.connections.iter().find_map(|c| c.rtt_ms)),
                    connections: view.map(|v| v.connections.clone()).unwrap_or_default(),
                    last_seen_unix_ms: view.and_then(|v| v.last_seen_unix_ms),
                    dialer: url.as_ref().and_then(|u| circuits.get(u).cloned()),
                    url,
                    tags,
                    id: key,
                }
            })
            .collect()
    }

    /// `/status`: who this node is and how each peer is doing.
    pub async fn status(&self) -> serde_json::Value {
        let peers = self.peer_statuses().await;
        let dead: u64 = peers.iter().map(|p| p.counts.dead).sum();
        let outbox: u64 = peers.iter().map(|p| p.counts.pending + p.counts.sent).sum();
        let journal = self.storage.message_count().await.unwrap_or(0);
        serde_json::json!({
            "instanceId": self.id,
            "tags": self.cfg.tags,
            "clusterGroupId": self.cfg.cluster_group_id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSeconds": self.started.elapsed().as_secs(),
            "outboxDepth": outbox,
            "journalMessages": journal,
            "deadLetters": dead,
            "peers": peers,
        })
    }

    /// Sets the gauges that mirror state (per-peer outbox, dead letters, connection, RTT),
    /// just before a scrape.
    pub async fn refresh_gauges(&self) {
        let m = &self.metrics;
        let peers = self.peer_statuses().await;
        m.outbox_pending.set(
            peers
                .iter()
                .map(|p| (p.counts.pending + p.counts.sent) as i64)
                .sum(),
        );
        m.dead_letters
            .set(peers.iter().map(|p| p.counts.dead as i64).sum());
        for p in &peers {
            let peer = [p.id.as_str()];
            m.peer_outbox_pending
                .with_label_values(&peer)
                .set((p.counts.pending + p.counts.sent) as i64);
            m.peer_dead_letters
                .with_label_values(&peer)
                .set(p.counts.dead as i64);
            m.peer_connected
                .with_label_values(&peer)
                .set(i64::from(p.connected));
            if let Some(rtt) = p.rtt_ms {
                m.peer_rtt.with_label_values(&peer).set(rtt / 1000.0);
            }
        }
        m.uptime.set(self.started.elapsed().as_secs_f64());
    }
}

/// One peer in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// Instance id, or `url:<url>` for a configured peer not met yet.
    pub id: String,
    pub url: Option<String>,
    pub tags: Vec<String>,
    pub connected: bool,
    pub connections: Vec<crate::peers::ConnInfo>,
    pub last_seen_unix_ms: Option<u64>,
    pub rtt_ms: Option<f64>,
    #[serde(flatten)]
    pub counts: PeerCounts,
    /// The dialer of a configured peer: its circuit.
    pub dialer: Option<CircuitView>,
}
