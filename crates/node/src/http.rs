//! The HTTP API on `METRICS_PORT` (SPEC §8).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use slipstream_protocol::{decode_frame, MessageType};
use slipstream_router::Sender;
use tokio::net::TcpListener;

use crate::node::{Committed, Node, Outcome};

pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let shutdown = node.shutdown.clone();
    let app = router(node.clone());
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
        .route("/dlq", get(dlq))
        .route("/v1/messages", post(publish))
        .route("/v1/keys/{key}", get(get_key))
        .with_state(node)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.ready.load(Ordering::SeqCst) {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "starting or shutting down"})),
        )
            .into_response()
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
        waiting.push(node.ingest(&Sender::Client, m).await);
    }
    let mut results = Vec::with_capacity(waiting.len());
    for outcome in waiting {
        let (id, status) = match outcome {
            Outcome::Ack(id) => (id, "duplicate"),
            Outcome::Commit(fut) => match fut.await {
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
            },
            Outcome::Nack { error: e, .. } => return error(StatusCode::BAD_REQUEST, e),
            Outcome::Reply(_) => unreachable!("only writes are published"),
        };
        results.push(json!({"messageId": id, "status": status}));
    }
    if single {
        Json(results.pop().unwrap_or_default()).into_response()
    } else {
        Json(json!({ "results": results })).into_response()
    }
}

async fn get_key(State(node): State<Arc<Node>>, Path(key): Path<String>) -> Response {
    match node.get_json(&key).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("key {key:?} not found")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
