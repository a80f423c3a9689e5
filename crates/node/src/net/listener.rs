//! Accepts TCP connections and upgrades them to WebSocket, for peers and local apps alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::connection::{serve, ConnCtx};
use super::{token_matches, ws_config};
use crate::node::Node;
use crate::peers::Direction;

pub async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = node.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => {
                node.tracker.spawn(inbound(node.clone(), stream, addr));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::error!(instance_id = %node.id, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn inbound(node: Arc<Node>, stream: TcpStream, addr: SocketAddr) {
    let connected_at = Instant::now();
    let _ = stream.set_nodelay(true);
    let expected = node.cfg.auth_token.clone();
    let instance_id = node.id.clone();
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let Some(expected) = &expected else {
            return Ok(resp);
        };
        let presented = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if token_matches(presented, expected) {
            Ok(resp)
        } else {
            tracing::error!(instance_id = %instance_id, remote = %addr, "WebSocket upgrade refused: missing or wrong bearer token");
            let mut refused = ErrorResponse::new(Some("missing or wrong bearer token".into()));
            *refused.status_mut() = StatusCode::UNAUTHORIZED;
            Err(refused)
        }
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(ws_config(&node.cfg)));
    // The dead-connection clock runs from the TCP connect: a client that never completes the
    // upgrade is dropped after three heartbeats.
    match tokio::time::timeout_at(connected_at + node.cfg.heartbeat * 3, handshake).await {
        Ok(Ok(ws)) => {
            let ctx = ConnCtx {
                direction: Direction::Inbound,
                remote: addr.to_string(),
                url: None,
            };
            serve(node, ws, ctx, connected_at).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(instance_id = %node.id, remote = %addr, error = %e, "WebSocket handshake failed")
        }
        Err(_) => {
            tracing::info!(instance_id = %node.id, remote = %addr, "WebSocket handshake timed out")
        }
    }
}
