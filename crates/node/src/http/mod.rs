//! The HTTP API on `METRICS_PORT` (SPEC §8).
//!
//! Read-only endpoints are open (scrapers, load balancers). Mutating admin endpoints
//! (`PUT /log-level`, `POST /dlq/replay`, `DELETE /dlq`) need `SLIPSTREAM_ADMIN_TOKEN` as a
//! bearer token when it is set, and answer only loopback clients when it is not.
//! `POST /v1/messages` is the application API, open like the WebSocket listener.

// Handlers return early with a ready `Response` as the error, the usual axum shape.
#![allow(clippy::result_large_err)]

pub mod client;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use slipstream_protocol::{
    decode_frame, Body, Envelope, Message, MessageType, Response as Res, ValueKind,
};
use slipstream_router::Sender;
use tokio::net::TcpListener;

use crate::net::token_matches;
use crate::node::{Committed, Node, Outcome};
use crate::requests::ReplySink;
use crate::telemetry::logging;

pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let shutdown = node.shutdown.clone();
    let app = router(node.clone());
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(instance_id = %node.id, error = %e, "HTTP server failed");
    }
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/dlq", get(dlq).delete(purge_dlq))
        .route("/dlq/replay", post(replay_dlq))
        .route("/log-level", get(get_log_level).put(put_log_level))
        .route("/v1/messages", post(publish))
        .route("/v1/keys/{key}", get(get_key))
        .with_state(node)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response()
    };
    if !node.ready.load(Ordering::SeqCst) {
        return not_ready("starting or shutting down".into());
    }
    match node.store_error() {
        Some(reason) => not_ready(reason),
        None => Json(json!({"ready": true})).into_response(),
    }
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    Json(node.status().await).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    node.refresh_gauges().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Page {
    offset: Option<u64>,
    limit: Option<u64>,
}

async fn dlq(State(node): State<Arc<Node>>, Query(page): Query<Page>) -> Response {
    let offset = page.offset.unwrap_or(0);
    let limit = page.limit.unwrap_or(100).min(1000);
    match node.storage.dead_letters(offset, limit).await {
        Ok(rows) => {
            Json(json!({"offset": offset, "limit": limit, "deadLetters": rows})).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Publishes like a local app: one message object or an array of them. Answers after every
/// write is recorded (200), or names the first invalid message and records nothing (400).
async fn publish(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not UTF-8 text");
    };
    let single = text.trim_start().starts_with('{');
    let items = match decode_frame(text, &node.cfg.limits) {
        Ok(items) => items,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Ok(m) if matches!(m.message_type(), MessageType::Sk | MessageType::Sa | MessageType::Sw) => messages.push(m),
            Ok(m) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("message {i}: type {} cannot be published; use SK, SA or SW (read with GET /v1/keys/{{key}})", m.message_type().as_str()),
                )
            }
            Err(invalid) => return error(StatusCode::BAD_REQUEST, format!("message {i}: {}", invalid.reason)),
        }
    }
    let mut waiting = Vec::with_capacity(messages.len());
    for m in messages {
        let outcome = match node.ingest(&Sender::Client, m, None).await {
            // Each commit's effects run in a task of its own: they must happen even if this
            // request ends early (an error, or the client hung up).
            Outcome::Commit(fut) => Waiting::Commit(node.tracker.spawn(fut)),
            other => Waiting::Now(other),
        };
        waiting.push(outcome);
    }
    let mut results = Vec::with_capacity(waiting.len());
    for outcome in waiting {
        let done = match outcome {
            Waiting::Commit(task) => match task.await {
                Ok(done) => done,
                Err(e) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("commit task failed: {e}"),
                    )
                }
            },
            Waiting::Now(Outcome::Ack(id)) => Committed::Ack {
                message_id: id,
                duplicate: true,
            },
            Waiting::Now(Outcome::Nack { error: e, .. }) => {
                return error(StatusCode::BAD_REQUEST, e)
            }
            Waiting::Now(Outcome::Commit(_) | Outcome::Reply(_) | Outcome::Done) => {
                unreachable!("only writes are published, and commits are waited for above")
            }
        };
        let (id, status) = match done {
            Committed::Ack {
                message_id,
                duplicate,
            } => (message_id, if duplicate { "duplicate" } else { "recorded" }),
            Committed::Failed {
                message_id,
                error: e,
            } => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("message {message_id}: {e}"),
                )
            }
        };
        results.push(json!({"messageId": id, "status": status}));
    }
    if single {
        Json(results.pop().unwrap_or_default()).into_response()
    } else {
        Json(json!({ "results": results })).into_response()
    }
}

/// A published write's outcome: known at once, or its commit running in a task.
enum Waiting {
    Now(Outcome),
    Commit(tokio::task::JoinHandle<Committed>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyQuery {
    /// `local` (default) or `mesh`.
    scope: Option<String>,
    /// For `scope=mesh`: longest wait for answers, in ms (default 1000, at most the request
    /// timeout).
    timeout_ms: Option<u64>,
}

async fn get_key(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    Query(q): Query<KeyQuery>,
) -> Response {
    match q.scope.as_deref() {
        None | Some("local") => {}
        Some("mesh") => return mesh_read(node, key, q.timeout_ms).await,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("scope must be local or mesh, got {other:?}"),
            )
        }
    }
    match node.get_json(&key).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("key {key:?} not found")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `GET /v1/keys/{key}?scope=mesh`: a `GK` routed to every node, gathering the answers
/// (this node's included) until every known peer answered or the timeout passed.
async fn mesh_read(node: Arc<Node>, key: String, timeout_ms: Option<u64>) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let msg = Message {
        env: Envelope::default(),
        body: Body::Get {
            kind: ValueKind::String,
            key: key.clone(),
        },
    };
    let mut answers: Vec<Res> = Vec::new();
    match node
        .ingest(&Sender::Client, msg, Some(ReplySink::Collect(tx)))
        .await
    {
        Outcome::Reply(m) => {
            if let Body::Res(r) = m.body {
                answers.push(r);
            }
        }
        Outcome::Nack { error: e, .. } => return error(StatusCode::BAD_REQUEST, e),
        _ => {}
    }
    // No node knows the whole mesh: wait for this node's known peers, then for as long as
    // answers keep coming (nodes further away answer later), within the timeout.
    let expected = node.known_peers().len() + 1;
    let wait = timeout_ms
        .map(std::time::Duration::from_millis)
        .unwrap_or(std::time::Duration::from_secs(1))
        .min(node.cfg.request_timeout);
    let deadline = tokio::time::Instant::now() + wait;
    let quiet = std::time::Duration::from_millis(200);
    loop {
        let until = if answers.len() >= expected {
            deadline.min(tokio::time::Instant::now() + quiet)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(r)) => answers.push(r),
            _ => break,
        }
    }
    let newest = answers
        .iter()
        .filter(|a| a.found)
        .max_by_key(|a| a.hlc)
        .and_then(|a| a.instance_id.clone());
    let answers: Vec<_> = answers
        .into_iter()
        .map(|a| {
            json!({
                "instanceId": a.instance_id, "found": a.found, "value": a.value,
                "hlc": a.hlc.map(|h| h.to_string()), "error": a.error,
            })
        })
        .collect();
    Json(json!({ "key": key, "answers": answers, "newest": newest })).into_response()
}

/// Lets a mutating admin request through, or answers it with 401 or 403.
fn admin(node: &Node, headers: &HeaderMap, peer: SocketAddr) -> Result<(), Response> {
    match &node.cfg.admin_token {
        Some(expected) => {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if token_matches(presented, expected) {
                Ok(())
            } else {
                tracing::error!(instance_id = %node.id, remote = %peer, "admin request refused: missing or wrong bearer token");
                Err(error(
                    StatusCode::UNAUTHORIZED,
                    "this endpoint needs the admin bearer token",
                ))
            }
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => {
            tracing::error!(instance_id = %node.id, remote = %peer, "admin request refused: not loopback and no admin token configured");
            Err(error(
                StatusCode::FORBIDDEN,
                "admin endpoints answer loopback clients only unless SLIPSTREAM_ADMIN_TOKEN is set",
            ))
        }
    }
}

/// Parses an optional JSON body, naming what is wrong.
fn json_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))
}

async fn get_log_level() -> Response {
    match logging::current() {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this process has no logger installed",
        ),
    }
}

async fn put_log_level(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admin(&node, &headers, peer) {
        return r;
    }
    let change: logging::LogChange = match json_body(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match logging::change(change) {
        Some(s) => {
            tracing::info!(instance_id = %node.id, level = ?s.level, message_logs = s.message_logs, "log settings changed");
            Json(s).into_response()
        }
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this process has no logger installed",
        ),
    }
}

/// `POST /dlq/replay`: `{}` (or no body) replays every dead letter; `{"seqs":[…]}` or
/// `{"messageIds":[…]}` picks some.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Replay {
    seqs: Option<Vec<i64>>,
    message_ids: Option<Vec<String>>,
}

async fn replay_dlq(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admin(&node, &headers, peer) {
        return r;
    }
    let pick: Replay = match json_body(&body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let seqs = match (pick.seqs, pick.message_ids) {
        (Some(_), Some(_)) => {
            return error(StatusCode::BAD_REQUEST, "give seqs or messageIds, not both")
        }
        (Some(seqs), None) => Some(seqs),
        (None, Some(ids)) => match node.storage.dead_seqs(ids).await {
            Ok(seqs) => Some(seqs),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (None, None) => None,
    };
    match node.storage.replay_dead(seqs).await {
        Ok(peers) => {
            let mut replayed = 0;
            for (p, n) in &peers {
                replayed += n;
                node.peers.rewind(p).await;
            }
            tracing::info!(instance_id = %node.id, replayed, "dead letters replayed");
            Json(json!({ "replayed": replayed })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn purge_dlq(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin(&node, &headers, peer) {
        return r;
    }
    match node.storage.purge_dead().await {
        Ok(purged) => {
            tracing::info!(instance_id = %node.id, purged, "dead letters purged");
            Json(json!({ "purged": purged })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
