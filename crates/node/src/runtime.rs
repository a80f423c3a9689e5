//! Starting and stopping a node.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use slipstream_storage::{now_ms, Storage, StorageError, StorageOptions};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::node::Node;
use crate::store::redis::RedisStore;
use crate::telemetry::Metrics;
use crate::{http, net, store, telemetry};

/// How long shutdown waits for tasks before giving up on them.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("SLIPSTREAM_STORAGE_PATH: cannot open the database: {0}")]
    Storage(#[from] StorageError),
    #[error("SLIPSTREAM_LISTEN: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("SLIPSTREAM_REDIS_URL: {0}")]
    Redis(String),
    #[error("METRICS_PORT: cannot listen on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started node.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

/// Opens the database, binds both listeners, dials the configured peers, and returns once
/// the node serves.
pub async fn start(cfg: Config) -> Result<RunningNode, StartError> {
    let metrics = Metrics::new();
    let batch = metrics.commit_batch.clone();
    // Delivery rows of each commit go straight from the writer thread to the peers' delivery
    // tasks; they read the database only for a backlog. The node is made after the storage,
    // so the writer reaches it through a weak handle set below; rows of a commit before that
    // (there are no delivery tasks yet) are found in the outbox.
    let live_to: Arc<OnceLock<Weak<Node>>> = Arc::new(OnceLock::new());
    let writer_live_to = live_to.clone();
    let changed_to = live_to.clone();
    let opts = StorageOptions {
        on_commit: Some(Arc::new(move |ops| batch.observe(ops as f64))),
        on_deliveries: Some(Arc::new(move |rows| {
            if let Some(node) = writer_live_to.get().and_then(Weak::upgrade) {
                hand_live_rows(&node, rows);
            }
        })),
        // Pushed to local apps from the writer thread right after each commit, so they go in
        // the order the writes were committed. Pushed from each write's own effects, they
        // went in the order those futures happened to be polled, which a connection reading
        // new frames while earlier ones commit mixes up (a test saw 164 before 161).
        on_changed: Some(Arc::new(move |bodies| {
            if let Some(node) = changed_to.get().and_then(Weak::upgrade) {
                for body in bodies {
                    node.push(body);
                }
            }
        })),
        hold_for: cfg.hold_delivery,
        ..StorageOptions::default()
    };
    let storage = Storage::open(&cfg.storage_path, cfg.instance_id.as_deref(), opts)?;
    let ws = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let http_listener =
        TcpListener::bind(cfg.http_addr)
            .await
            .map_err(|source| StartError::Http {
                addr: cfg.http_addr,
                source,
            })?;
    let ws_addr = ws.local_addr().map_err(|source| StartError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| StartError::Http {
            addr: cfg.http_addr,
            source,
        })?;
    let redis = match &cfg.redis_url {
        Some(url) => Some(Arc::new(
            RedisStore::new(url, &cfg.redis_prefix, cfg.retry_base)
                .map_err(|e| StartError::Redis(e.to_string()))?,
        )),
        None => None,
    };
    let node = Node::new(cfg, storage, metrics, redis.clone()).await?;
    let _ = live_to.set(Arc::downgrade(&node));
    if let Some(redis) = redis {
        node.tracker.spawn(store::applier::run(
            node.clone(),
            redis,
            node.apply_wake.clone(),
        ));
    }
    node.tracker
        .spawn(net::listener::accept_loop(node.clone(), ws));
    node.tracker.spawn(http::serve(node.clone(), http_listener));
    for (i, peer) in node.cfg.peers.clone().into_iter().enumerate() {
        if !peer.reject_unauthorized {
            tracing::warn!(instance_id = %node.id, peer = %peer.url, "rejectUnauthorized is false: this peer's certificate is not checked; anyone on the path can pose as it");
        }
        let tls = node.cfg.peer_tls.get(i).cloned().flatten();
        node.tracker
            .spawn(net::dialer::dial_loop(node.clone(), peer, tls));
    }
    node.tracker.spawn(prune_loop(node.clone()));
    node.ready.store(true, Ordering::SeqCst);
    tracing::info!(
        instance_id = %node.id,
        ws_addr = %ws_addr,
        http_addr = %http_addr,
        peers = node.cfg.peers.len(),
        storage = %node.storage.path().display(),
        "listening"
    );
    Ok(RunningNode {
        node,
        ws_addr,
        http_addr,
    })
}

impl RunningNode {
    /// Two-phase shutdown: cancel (stop accepting, let connections finish their in-flight
    /// commits and send close frames), wait for every task, then let the storage writer commit
    /// what is queued and stop.
    pub async fn shutdown(self) {
        let node = self.node;
        node.ready.store(false, Ordering::SeqCst);
        node.shutdown.cancel();
        node.tracker.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, node.tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(instance_id = %node.id, "some tasks did not stop in time");
        }
        node.storage.close().await;
        tracing::info!(instance_id = %node.id, "stopped");
    }
}

/// Runs a node until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let running = start(cfg).await?;
    shutdown.await;
    running.shutdown().await;
    Ok(())
}

/// Prunes acknowledged messages past the retention period.
async fn prune_loop(node: Arc<Node>) {
    let every = (node.cfg.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let before = now_ms().saturating_sub(node.cfg.retention.as_millis() as u64);
        match node.storage.prune(before).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(instance_id = %node.id, pruned = n, "pruned delivered messages past retention")
            }
            Err(e) => telemetry::storage_failed(&node, "prune", &e),
        }
        if let Some(redis) = &node.redis {
            store::applier::prune(&node, redis).await;
        }
    }
}

/// Hands one commit's delivery rows to their peers' delivery tasks. Runs on the writer thread
/// right after the commit, so commits hand their rows over in order; a task that is behind,
/// or whose queue is full, reads them from the outbox instead.
fn hand_live_rows(node: &Node, by_peer: Vec<(String, Vec<slipstream_storage::Outgoing>)>) {
    for (peer, rows) in by_peer {
        node.peers.live(&peer, rows);
    }
}
