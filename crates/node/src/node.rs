//! The node's shared core: what connections and the HTTP API hand messages to.
//!
//! [`Node::ingest`] runs a message through the sans-IO router and turns its decision into
//! effects: record in SQLite (group commit), and after the commit, mark it seen, push it to
//! local apps and wake the delivery tasks of its recipients. The caller sends the ACK once
//! the returned commit future resolves, never before.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipstream_protocol::{Body, Hello, Hlc, Message, Response, Role, PROTOCOL_VERSION};
use slipstream_router::{
    Accepted, Decision, KnownPeer, Router, RouterConfig, Sender, URL_KEY_PREFIX,
};
use slipstream_storage::{
    now_ms, Apply, PeerCounts, PeerRow, Record, Recorded, Storage, StorageError, StoredValue,
};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Forwarding};
use crate::peers::{PeerView, Peers};
use crate::requests::{ReplySink, Requests};
use crate::store::{self, redis::RedisStore};
use crate::telemetry::{self, Metrics};

/// Writes a local app may fall behind on its pushes before it is disconnected. Bytes are
/// bounded too (`SLIPSTREAM_MAX_PUSH_BACKLOG_BYTES`): the count alone let an app that reads
/// slowly keep 16,384 values in the node, 8 GiB at the largest value size.
pub const PUSH_BACKLOG: usize = 16 * 1024;

/// Writes from all connections together that may wait for their commit before every app
/// connection pauses reading (peer connections count toward it but go on: see `serve`). Each
/// connection has its own bounds too, but many connections at those bounds could hold far
/// more than a node should: eight of them, 65,536 writes or 64 MiB of frames, and about three
/// times that in memory. As much as one connection's bound: eight apps with 2,000 writes in
/// flight each stayed under twice that, and took the node to 64–68 MiB; at this bound, to
/// 54–56 MiB, for about 2.5 % fewer writes/s (BENCHMARKS.md, 2026-12-05). One connection at
/// its own bound fills the node's too, and the other apps then wait with it, as their writes
/// would wait behind its writes for the writer anyway.
pub const NODE_PENDING_WRITES: usize = crate::net::connection::MAX_PENDING_COMMITS;
/// Bytes of the frames those writes came in, from all connections together (one connection's
/// bound). A pending write holds about three times its frame's bytes (the frame decoded, the
/// form it is recorded and forwarded in, the value to apply).
pub const NODE_PENDING_BYTES: usize = crate::net::connection::MAX_PENDING_BYTES;

/// What every connection's writes waiting for their commit take together, and the wake-up of
/// the connections that paused reading because it was full.
#[derive(Default)]
pub struct PendingIngest {
    writes: AtomicUsize,
    bytes: AtomicUsize,
    freed: tokio::sync::Notify,
}

impl PendingIngest {
    /// Whether app connections should stop reading.
    pub fn full(&self) -> bool {
        self.writes.load(Ordering::Relaxed) >= NODE_PENDING_WRITES
            || self.bytes.load(Ordering::Relaxed) >= NODE_PENDING_BYTES
    }

    /// Waits until [`PendingIngest::full`] may have turned false. Register the wait (enable it)
    /// before checking `full`, so a release in between is not missed.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    pub fn add(&self, writes: usize, bytes: usize) {
        self.writes.fetch_add(writes, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Takes back what [`PendingIngest::add`] counted. Whichever release takes a count from
    /// its bound to below it wakes the waiting connections (they check [`PendingIngest::full`]
    /// again), so a wait cannot miss its wake-up.
    pub fn release(&self, writes: usize, bytes: usize) {
        let w = self.writes.fetch_sub(writes, Ordering::Relaxed);
        let b = self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        let crossed = |before: usize, n: usize, bound: usize| before >= bound && before - n < bound;
        if crossed(w, writes, NODE_PENDING_WRITES) || crossed(b, bytes, NODE_PENDING_BYTES) {
            self.freed.notify_waiters();
        }
    }
}

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
    /// Nothing to send back (a read from a peer: its answers travel on their own).
    Done,
    /// Wait for the commit, then acknowledge (or report the failure). The future also runs
    /// the commit's effects: it must be driven to the end, not dropped.
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
    /// Bytes of every push sent to `clients` so far, for how far behind an app is in bytes.
    pub pushed_bytes: AtomicU64,
    /// Writes from every connection waiting for their commit (see [`NODE_PENDING_WRITES`]).
    pub pending: PendingIngest,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Configured peer URL → its key (instance id once met, else `url:<url>`).
    url_keys: Mutex<HashMap<String, String>>,
    /// Configured peer URL → its dialer's circuit, for `/status`.
    circuits: Mutex<HashMap<String, CircuitView>>,
    next_conn: AtomicU64,
    /// The Redis store, when `SLIPSTREAM_REDIS_URL` is set (else the embedded store).
    pub redis: Option<Arc<RedisStore>>,
    /// Wakes the Redis applier when writes were queued.
    pub apply_wake: Arc<tokio::sync::Notify>,
    store_error: Mutex<Option<String>>,
    pub requests: Requests,
    /// Writes handed to a relay because the link to their peer is down, by message id: the
    /// peer's delivery rows they settle once the relay acknowledges them.
    handoffs: Mutex<HashMap<String, Vec<(String, i64)>>>,
    /// Per peer: the peers it announced it is linked to now (HELLO `linkedTo`).
    links: Mutex<HashMap<String, Vec<String>>>,
    /// (peer, one it delivers to): since when (Unix ms) it has announced no link to it.
    unlinked: Mutex<HashMap<(String, String), u64>>,
    pub started: Instant,
    pub ready: AtomicBool,
}

impl Node {
    pub async fn new(
        cfg: Config,
        storage: Storage,
        metrics: Metrics,
        redis: Option<Arc<RedisStore>>,
    ) -> Result<Arc<Node>, StorageError> {
        let request_timeout = cfg.request_timeout;
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
        let (clients, _) = broadcast::channel(PUSH_BACKLOG);
        Ok(Arc::new(Node {
            cfg,
            id,
            storage,
            router: Mutex::new(router),
            peers: Peers::default(),
            clients,
            pushed_bytes: AtomicU64::new(0),
            pending: PendingIngest::default(),
            metrics,
            circuits: Mutex::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            url_keys: Mutex::new(url_keys),
            next_conn: AtomicU64::new(1),
            redis,
            apply_wake: Arc::default(),
            store_error: Mutex::new(None),
            requests: Requests::new(request_timeout),
            handoffs: Mutex::default(),
            links: Mutex::default(),
            unlinked: Mutex::default(),
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

    /// This node's HELLO. Under `direct` forwarding it names the peers this node delivers the
    /// writes of its local apps to itself (`deliversTo`), so receivers do not forward those
    /// writes to them again.
    pub fn hello(&self) -> Message {
        let delivers_to = (self.cfg.forwarding == Forwarding::Direct).then(|| {
            self.router()
                .peers()
                .map(|(k, _)| k)
                .filter(|k| !k.starts_with(URL_KEY_PREFIX))
                .cloned()
                .collect()
        });
        let linked_to = delivers_to.is_some().then(|| {
            self.peers
                .views()
                .into_iter()
                .filter(|v| v.connected && !v.key.starts_with(URL_KEY_PREFIX))
                .map(|v| v.key)
                .collect()
        });
        Message::hello(Hello {
            instance_id: self.id.clone(),
            tags: self.cfg.tags.clone(),
            cluster_group_id: Some(self.cfg.cluster_group_id.clone()),
            role: Role::Peer,
            protocol_version: PROTOCOL_VERSION,
            delivers_to,
            linked_to,
        })
    }

    /// Sends this node's current HELLO to every connected peer: what it announces changed
    /// (a peer met, a link up or down).
    pub fn announce(&self) {
        if self.cfg.forwarding == Forwarding::Direct {
            self.peers.broadcast(&self.hello().encode());
        }
    }

    /// A peer's HELLO (first or later) announced which peers it delivers its writes to and
    /// which it is linked to now.
    pub fn set_coverage(&self, hello: &Hello) {
        self.router()
            .set_coverage(&hello.instance_id, hello.delivers_to.clone());
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let mut unlinked = self.unlinked.lock().unwrap_or_else(|p| p.into_inner());
        let origin = &hello.instance_id;
        unlinked.retain(|(o, _), _| o != origin || hello.linked_to.is_some());
        if let (Some(now), Some(covered)) = (&hello.linked_to, &hello.delivers_to) {
            // Since when it holds writes for a peer it delivers to but has no link to.
            for peer in covered {
                let key = (origin.clone(), peer.clone());
                if now.contains(peer) {
                    unlinked.remove(&key);
                } else {
                    unlinked.entry(key).or_insert_with(now_ms);
                }
            }
        }
        match &hello.linked_to {
            Some(l) => links.insert(origin.clone(), l.clone()),
            None => links.remove(origin),
        };
    }

    /// Whether `relay` can take writes for `to` that this node cannot deliver itself: it
    /// announced it delivers to `to` (it knows it and will store and forward) and that it is
    /// linked to it now.
    pub fn can_relay(&self, relay: &str, to: &str) -> bool {
        let linked = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(relay)
            .is_some_and(|l| l.iter().any(|p| p == to));
        linked && self.router().covers(relay, to)
    }

    /// Remembers that the delivery row `seq` to `peer` went to a relay as `message_id`.
    pub fn handed_off(&self, message_id: &str, peer: &str, seq: i64) {
        let mut h = self.handoffs.lock().unwrap_or_else(|p| p.into_inner());
        let rows = h.entry(message_id.to_owned()).or_default();
        if !rows.iter().any(|(p, s)| p == peer && *s == seq) {
            rows.push((peer.to_owned(), seq));
        }
    }

    /// A relay acknowledged writes its delivery task did not send: those handed to it for a
    /// peer this node cannot reach. It holds them durably now, so the rows are settled here.
    pub async fn handoffs_acked(&self, relay: &str, ids: Vec<String>) {
        let mut settled: Vec<(String, i64)> = Vec::new();
        {
            let mut h = self.handoffs.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                if let Some(rows) = h.get_mut(&id) {
                    if let Some(row) = rows.pop() {
                        settled.push(row);
                    }
                    if rows.is_empty() {
                        h.remove(&id);
                    }
                }
            }
        }
        if settled.is_empty() {
            return;
        }
        for (peer, _) in &settled {
            tracing::debug!(instance_id = %self.id, relay, peer = %peer, "write handed to a relay");
        }
        let seqs = settled.into_iter().map(|(_, s)| s).collect();
        if let Err(e) = self
            .storage
            .mark_acked(seqs, Some("relayed: handed to a peer that reaches it"))
            .await
        {
            telemetry::storage_failed(self, "mark relayed", &e);
        }
    }

    /// `origin` went away at `gone_at` (Unix ms) and stayed away. It announced it delivers
    /// its writes to some peers itself, so this node did not forward them; it may have died
    /// before it did. This node now delivers to those peers (that it knows) the writes it
    /// received from `origin`:
    /// - for a peer `origin` was linked to at its last announcement, those of the last moments
    ///   before `gone_at` (three heartbeats, how long a dead link can go unnoticed, plus five
    ///   seconds): older ones it had delivered;
    /// - for a peer it was not linked to, every one since it announced that link down: it
    ///   was holding them for that peer.
    ///
    /// A peer that had them already acknowledges the copies as duplicates.
    pub async fn take_over(&self, origin: &str, gone_at: u64) {
        let recent = gone_at.saturating_sub((self.cfg.heartbeat * 3).as_millis() as u64 + 5000);
        let mut by_since: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
        {
            let router = self.router();
            let Some(covered) = router.coverage(origin) else {
                return;
            };
            let unlinked = self.unlinked.lock().unwrap_or_else(|p| p.into_inner());
            for (k, _) in router.peers() {
                if k == origin || !covered.contains(k) {
                    continue;
                }
                let since = unlinked
                    .get(&(origin.to_owned(), k.clone()))
                    .map_or(recent, |&at| at.min(recent));
                by_since.entry(since).or_default().push(k.clone());
            }
        }
        for (since, peers) in by_since {
            match self.storage.take_over(origin, since, peers).await {
                Ok(added) if !added.is_empty() => {
                    let writes: i64 = added.iter().map(|(_, n)| n).sum();
                    tracing::warn!(instance_id = %self.id, origin, writes, since_unix_ms = since, peers = ?added.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), "origin unreachable: delivering its recent writes to its peers in its place");
                    for (peer, _) in &added {
                        self.peers.notify(peer);
                    }
                }
                Ok(_) => {}
                Err(e) => telemetry::storage_failed(self, "take over", &e),
            }
        }
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
        let new_peer = {
            let mut router = self.router();
            let new_peer = !router.peers().any(|(k, _)| k == id);
            if let Some(u) = url {
                router.rename_peer(&format!("{URL_KEY_PREFIX}{u}"), id);
            }
            router.upsert_peer(id, KnownPeer { tags });
            new_peer
        };
        if new_peer {
            // Tell every connected peer it may leave this one to us from now on.
            self.announce();
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

    /// Handles a write, a read or a command from a local app or a peer. `reply` is where the
    /// answers (`RES`) of a local app's read or command go.
    pub async fn ingest(
        self: &Arc<Self>,
        from: &Sender,
        msg: Message,
        reply: Option<ReplySink>,
    ) -> Outcome {
        let command = match &msg.body {
            Body::Set { .. } | Body::Get { .. } => None,
            Body::Command { command, .. } => Some(command.to_ascii_uppercase()),
            _ => {
                return Outcome::Nack {
                    message_id: msg.env.message_id.clone(),
                    error: format!(
                        "{} is not a write, a read or a command",
                        msg.message_type().as_str()
                    ),
                }
            }
        };
        // A command this node does not run (unknown, or off its allow-list) is answered with a
        // RES error, not a NACK: the message itself is well formed.
        let allowed = command
            .as_ref()
            .is_none_or(|c| self.cfg.cmd_allow.contains(c));
        // A write's key and value are moved into its apply once it is encoded (`record`).
        let planned = match &msg.body {
            Body::Set { .. } => Ok(None),
            _ => store::apply_of(&msg),
        };
        let apply = match planned {
            Ok(a) => a,
            Err(_) if !allowed => None,
            Err(e) => {
                telemetry::invalid(self, from, &e);
                return Outcome::Nack {
                    message_id: msg.env.message_id.clone(),
                    error: e,
                };
            }
        };
        if !allowed && *from == Sender::Client {
            let error = self.refuse_command(
                command.as_deref().unwrap_or_default(),
                msg.env.message_id.as_deref(),
            );
            return Outcome::Reply(Box::new(self.refusal(&msg, &error)));
        }
        let is_request = matches!(msg.body, Body::Get { .. }) || command.as_deref() == Some("PING");
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
            // Reads are not acknowledged; a looping or repeated one is simply dropped.
            Decision::Drop { reason, .. } if is_request => {
                telemetry::dropped(self, reason.as_str(), "");
                return Outcome::Done;
            }
            Decision::Drop { reason, message_id } => {
                telemetry::dropped(self, reason.as_str(), &message_id);
                return Outcome::Ack(message_id);
            }
            Decision::Accept(a) => a,
        };
        // Only reads and commands are answered (RES); a plain write needs no reply route.
        let answered = is_request || command.is_some();
        if let (Sender::Client, Some(sink), true) = (from, reply, answered) {
            self.requests.expect(accepted.message_id().to_owned(), sink);
        }
        if is_request {
            return self.request(from, *accepted, command.is_some()).await;
        }
        self.record(
            *accepted,
            msg_type,
            apply.filter(|_| allowed),
            command,
            allowed,
        )
        .await
    }

    /// A read or a `PING`: not stored; forwarded at once to the connected recipients and
    /// answered here when it applies here.
    async fn request(self: &Arc<Self>, from: &Sender, a: Accepted, ping: bool) -> Outcome {
        self.router().mark_seen(a.message_id(), a.group(), now_ms());
        let frame = a.message.encode();
        for peer in &a.recipients {
            self.peers.send_now(peer, &frame);
        }
        if !a.apply {
            return Outcome::Done;
        }
        let res = if ping {
            Response {
                found: true,
                value: Some(serde_json::Value::String("PONG".into())),
                ..Response::default()
            }
        } else {
            self.read_local(&a.message).await
        };
        match from {
            Sender::Client => {
                let res = Response {
                    in_reply_to: a.message_id().to_owned(),
                    instance_id: Some(self.id.clone()),
                    ..res
                };
                Outcome::Reply(Box::new(self.res_message(vec![self.id.clone()], res)))
            }
            Sender::Peer(_) => {
                self.answer(&a.message, res);
                Outcome::Done
            }
        }
    }

    /// A write (`SK`, `SA`, `SW`, `DEL`, `EXPIRE`): recorded durably, then acknowledged,
    /// applied and delivered.
    async fn record(
        self: &Arc<Self>,
        accepted: Accepted,
        msg_type: &'static str,
        apply: Option<Apply>,
        command: Option<String>,
        allowed: bool,
    ) -> Outcome {
        let queued = self.redis.is_some();
        // Shared dedup: nodes of one cluster group sharing a Redis skip what another recorded.
        // SQLite stays the truth; Redis is only asked when reachable, and marked after commit.
        let shared_dedup = self.redis.clone().filter(|_| self.cfg.redis_dedup);
        if let Some(r) = &shared_dedup {
            let check = r.seen(accepted.group(), accepted.message_id());
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_millis(200), check).await {
                self.router()
                    .mark_seen(accepted.message_id(), accepted.group(), now_ms());
                telemetry::dropped(self, "duplicate", accepted.message_id());
                return Outcome::Ack(accepted.message_id().to_owned());
            }
        }
        let body = accepted.message.encode().into();
        // The journal takes the write's fields instead of copies: afterwards only a command's
        // answer reads the request, and only its id and path (the way back).
        let mut request = accepted.message;
        let apply = match accepted.apply {
            true => apply.or_else(|| store::take_set(&mut request)),
            false => None,
        };
        let (path, message_id, group) = match command {
            Some(_) => (
                request.env.message_path.clone(),
                request.env.message_id.clone(),
                request.env.group().to_owned(),
            ),
            None => (
                std::mem::take(&mut request.env.message_path),
                request.env.message_id.take(),
                match request.env.cluster_group_id.take() {
                    Some(g) => g,
                    None => request.env.group().to_owned(),
                },
            ),
        };
        let record = Record {
            message_id: message_id.unwrap_or_default(),
            group,
            msg_type,
            origin: request.env.origin_instance_id.take().unwrap_or_default(),
            hlc: accepted.hlc,
            path,
            body,
            apply,
            queue_apply: queued,
            recipients: accepted.recipients,
            relay_to: accepted.relay_to,
        };
        // The record comes back with the answer (its origin and group are read from it
        // then); the id is copied for the answer in case the writer is gone.
        let message_id = record.message_id.clone();
        let applied_now = record.apply.is_some() && !queued;
        let has_apply = record.apply.is_some();
        let hlc = record.hlc;
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
        // The effects after the commit (seen, waking deliveries, answers) run in the
        // returned future, on the task that waits for the ACK: a spawned task per write cost
        // the origin about a third of its CPU (BENCHMARKS.md). Whoever holds the future must drive it to the end even
        // once the answer no longer matters (a connection that closes hands its unfinished
        // commits to a task), so the effects happen even if the sender went away.
        //
        // The wait is outside tokio's cooperative budget: a frame's writes use the budget up,
        // and a commit wait polled then reports itself not ready and wakes at once, so each
        // was polled about five times per write (BENCHMARKS.md, "counted in instructions").
        // It only waits for the writer's answer, so it cannot keep the task from yielding.
        let effects = async move {
            let (result, record) = match tokio::task::unconstrained(committed).await {
                Ok((result, record)) => (result, Some(record)),
                Err(_) => (Err(StorageError::Closed), None),
            };
            let (origin, group) = match &record {
                Some(r) => (r.origin.as_str(), r.group.as_str()),
                None => ("", ""),
            };
            match result {
                // The delivery rows reached their tasks already: the writer hands every
                // commit's rows over (see `runtime::hand_live_rows`).
                Ok(Recorded::New { changed, .. }) => {
                    node.router().mark_seen(&message_id, group, now_ms());
                    if let Some(r) = &shared_dedup {
                        let mark = r.mark_seen(group, &message_id, node.cfg.retention);
                        let _ = tokio::time::timeout(Duration::from_millis(200), mark).await;
                    }
                    telemetry::recorded(
                        &node,
                        msg_type,
                        origin,
                        &message_id,
                        applied_now.then_some(hlc),
                    );
                    // A write that changed the store was pushed to local apps by the
                    // writer's hook, in commit order.
                    if queued && has_apply {
                        node.apply_wake.notify_one();
                    }
                    if let Some(c) = &command {
                        if !allowed {
                            let error = node.refuse_command(c, Some(&message_id));
                            node.answer(
                                &request,
                                Response {
                                    error: Some(error),
                                    ..Response::default()
                                },
                            );
                        } else if !queued || !has_apply {
                            node.answer(&request, command_result(changed));
                        }
                    }
                    Committed::Ack {
                        message_id,
                        duplicate: false,
                    }
                }
                Ok(Recorded::Relayed { deliveries }) => {
                    // A write held already, now also owed to peers its origin cannot reach.
                    node.router().mark_seen(&message_id, group, now_ms());
                    for (peer, _) in &deliveries {
                        node.peers.notify(peer);
                    }
                    tracing::debug!(instance_id = %node.id, message_id = %message_id, peers = ?deliveries.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), "relaying a write for its origin");
                    Committed::Ack {
                        message_id,
                        duplicate: true,
                    }
                }
                Ok(Recorded::Duplicate) => {
                    node.router().mark_seen(&message_id, group, now_ms());
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
        };
        Outcome::Commit(Box::pin(effects))
    }

    /// Logs a command this node does not run; returns the error for its `RES`.
    fn refuse_command(&self, command: &str, message_id: Option<&str>) -> String {
        tracing::error!(instance_id = %self.id, command, message_id, "command refused: not on this node's allow-list");
        format!(
            "command {command} is not allowed on {} (SLIPSTREAM_CMD_ALLOW)",
            self.id
        )
    }

    /// A `RES` refusing a request, for the app that sent it.
    pub fn refusal(&self, request: &Message, error: &str) -> Message {
        let res = Response {
            in_reply_to: request.env.message_id.clone().unwrap_or_default(),
            instance_id: Some(self.id.clone()),
            error: Some(error.to_owned()),
            ..Response::default()
        };
        self.res_message(vec![self.id.clone()], res)
    }

    /// A `RES` travelling along `path` (the answering node first, the asking one last).
    fn res_message(&self, path: Vec<String>, res: Response) -> Message {
        let mut env = slipstream_protocol::Envelope::from_self(&self.id);
        env.message_path = path;
        env.message_id = Some(format!("{}-{}", self.id, self.router().stamp(now_ms())));
        Message {
            env,
            body: Body::Res(res),
        }
    }

    /// Answers a request (in the form this node recorded or received it, its path ending
    /// here): the `RES` goes back along the reversed path to the origin.
    pub fn answer(&self, request: &Message, res: Response) {
        let mut path = request.env.message_path.clone();
        path.reverse();
        let res = Response {
            in_reply_to: request.env.message_id.clone().unwrap_or_default(),
            instance_id: Some(self.id.clone()),
            ..res
        };
        self.route_res(self.res_message(path, res));
    }

    /// Passes a `RES` one hop on along its path, or to the local app that asked.
    pub fn route_res(&self, res: Message) {
        let path = &res.env.message_path;
        let Some(i) = path.iter().position(|p| *p == self.id) else {
            tracing::debug!(instance_id = %self.id, "RES not for this node dropped");
            return;
        };
        let delivered = match path.get(i + 1) {
            None => self.requests.deliver(&res),
            Some(next) => self.peers.send_now(next, &res.encode()),
        };
        if !delivered {
            tracing::debug!(instance_id = %self.id, "RES dropped: the asker is gone or timed out");
        }
    }

    /// Pushes a write that changed the store to the connected local apps. Writes applied in
    /// the commit push from the writer's hook, in commit order (see `runtime::start`); writes
    /// applied to Redis push from the applier, in apply order.
    pub(crate) fn push(&self, body: Arc<str>) {
        if self.clients.receiver_count() > 0 {
            self.pushed_bytes
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            let _ = self.clients.send(body);
        }
    }

    /// A write was applied to Redis by the applier.
    pub fn applied_externally(&self, msg: &Message, changed: bool, hlc: Hlc) {
        let lag_ms = now_ms().saturating_sub(hlc.millis());
        self.metrics
            .replication_latency
            .observe(lag_ms as f64 / 1000.0);
        if changed {
            self.push(msg.encode().into());
        }
        if matches!(msg.body, Body::Command { .. }) {
            self.answer(msg, command_result(changed));
        }
    }

    /// Records whether the store is reachable (`None`) or why not, for `/ready`.
    pub fn set_store_error(&self, error: Option<String>) {
        let mut current = self.store_error.lock().unwrap_or_else(|p| p.into_inner());
        match (&*current, &error) {
            (None, Some(e)) => {
                tracing::error!(critical = true, instance_id = %self.id, error = %e, "store unavailable: writes are recorded and their applies wait")
            }
            (Some(_), None) => tracing::info!(instance_id = %self.id, "store available again"),
            _ => {}
        }
        *current = error;
    }

    /// Why the store is unavailable, if it is.
    pub fn store_error(&self) -> Option<String> {
        self.store_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A key from the local store (embedded or Redis).
    pub async fn get_value(&self, key: &str) -> Result<Option<StoredValue>, String> {
        match &self.redis {
            Some(r) => r.get(key).await.map_err(|e| format!("redis: {e}")),
            None => self.storage.get(key).await.map_err(|e| e.to_string()),
        }
    }

    /// Answers a `GK`/`GA`/`GW` from this node's own store. Every read returns the value
    /// stored under the key, whatever its kind.
    async fn read_local(&self, msg: &Message) -> Response {
        let Some(key) = msg.key() else {
            return Response::default();
        };
        let mut res = Response::default();
        match self.get_value(key).await {
            Ok(Some(v)) => {
                res.found = true;
                res.value = Some(v.value.to_json());
                res.hlc = Some(v.hlc);
            }
            Ok(None) => {}
            Err(e) => res.error = Some(format!("read failed: {e}")),
        }
        res
    }

    /// A value from the local store, as `GET /v1/keys/{key}` shows it.
    pub async fn get_json(&self, key: &str) -> Result<Option<serde_json::Value>, String> {
        Ok(self.get_value(key).await?.map(|v| {
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

    /// Every known peer with its connections, delivery counts and circuit. Counting the
    /// acknowledged rows (`with_acked`) scans the outbox: `/status` does, metrics do not.
    pub async fn peer_statuses(&self, with_acked: bool) -> Vec<PeerStatus> {
        let counts: HashMap<String, PeerCounts> = self
            .storage
            .peer_counts(with_acked)
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
                    delivers_to: self.router().coverage(&key),
                    url,
                    tags,
                    id: key,
                }
            })
            .collect()
    }

    /// `/status`: who this node is and how each peer is doing.
    pub async fn status(&self) -> serde_json::Value {
        let peers = self.peer_statuses(true).await;
        let dead: u64 = peers.iter().map(|p| p.counts.dead).sum();
        let outbox: u64 = peers.iter().map(|p| p.counts.pending + p.counts.sent).sum();
        let journal = self.storage.message_count().await.unwrap_or(0);
        serde_json::json!({
            "instanceId": self.id,
            "tags": self.cfg.tags,
            "clusterGroupId": self.cfg.cluster_group_id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSeconds": self.started.elapsed().as_secs(),
            "process": crate::telemetry::process::usage(std::process::id()),
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
        let peers = self.peer_statuses(false).await;
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
        let wal = self.storage.stats().wal_frames.load(Ordering::Relaxed);
        m.wal_frames.set(i64::try_from(wal).unwrap_or(i64::MAX));
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
    /// The peers it announced it delivers its own writes to (HELLO `deliversTo`); this node
    /// does not forward its writes to them. `None`: it announced nothing (it is flooded for).
    pub delivers_to: Option<Vec<String>>,
}

/// The answer of a `DEL` or `EXPIRE`: 1 when it changed the store, else 0 (as Redis answers).
fn command_result(changed: bool) -> Response {
    Response {
        found: true,
        value: Some(serde_json::json!(i32::from(changed))),
        ..Response::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_waiting_for_room_is_woken_by_the_release_that_makes_it() {
        let pending = PendingIngest::default();
        pending.add(NODE_PENDING_WRITES - 1, 100);
        assert!(!pending.full());
        pending.add(1, 100);
        assert!(pending.full(), "full at the bound on writes");
        let waiting = pending.freed();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        // A release that leaves the count at its bound wakes no one.
        pending.add(1, 0);
        pending.release(1, 0);
        assert!(pending.full());
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        pending.release(1, 0);
        assert!(!pending.full());
        assert!(futures_util::poll!(waiting.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn bytes_alone_fill_the_bound_and_their_release_wakes_the_waiting() {
        let pending = PendingIngest::default();
        pending.add(1, NODE_PENDING_BYTES);
        assert!(pending.full(), "one write of 16 MiB fills it");
        let waiting = pending.freed();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        pending.release(1, NODE_PENDING_BYTES);
        assert!(!pending.full());
        assert!(futures_util::poll!(waiting.as_mut()).is_ready());
    }
}
