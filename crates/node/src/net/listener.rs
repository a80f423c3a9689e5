//! Accepts TCP connections and upgrades them to WebSocket (over TLS when configured), for peers
//! and local apps alike. Who may connect is decided here, before any message is read: the
//! connection limit, the TLS handshake (with a client certificate under mutual TLS) and the
//! bearer token.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::connection::{serve, ConnCtx};
use super::{is_authenticated, token_matches, ws_config};
use crate::node::Node;
use crate::peers::Direction;
use crate::telemetry;

pub async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(node.cfg.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = node.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    node.tracker
                        .spawn(inbound(node.clone(), stream, addr, slot));
                }
                Err(_) => {
                    telemetry::refused(
                        &node,
                        "connection_limit",
                        &addr,
                        "SLIPSTREAM_MAX_CONNECTIONS reached",
                    );
                    drop(stream);
                }
            },
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::error!(instance_id = %node.id, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn inbound(
    node: Arc<Node>,
    stream: TcpStream,
    addr: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    let connected_at = Instant::now();
    let _ = stream.set_nodelay(true);
    // The dead-connection clock runs from the TCP connect: a client that never completes the
    // TLS and WebSocket handshakes is dropped after three heartbeats.
    let deadline = connected_at + node.cfg.heartbeat * 3;
    match node.cfg.server_tls.clone() {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    upgrade(node, tls_stream, addr, connected_at, deadline, true).await
                }
                Ok(Err(e)) => {
                    telemetry::refused(&node, "tls", &addr, &format!("TLS handshake failed: {e}"))
                }
                Err(_) => {
                    tracing::info!(instance_id = %node.id, remote = %addr, "TLS handshake timed out")
                }
            }
        }
        None => upgrade(node, stream, addr, connected_at, deadline, false).await,
    }
}

#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn upgrade<S>(
    node: Arc<Node>,
    stream: S,
    addr: SocketAddr,
    connected_at: Instant,
    deadline: Instant,
    tls: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let expected = node.cfg.auth_token.clone();
    let refusal_node = node.clone();
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
            telemetry::refused(
                &refusal_node,
                "token",
                &addr,
                "WebSocket upgrade refused: missing or wrong bearer token",
            );
            let mut refused = ErrorResponse::new(Some("missing or wrong bearer token".into()));
            *refused.status_mut() = StatusCode::UNAUTHORIZED;
            Err(refused)
        }
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(ws_config(&node.cfg)));
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(ws)) => {
            let authenticated = is_authenticated(
                node.cfg.auth_token.is_some(),
                tls && node.cfg.tls_client_auth,
                addr.ip(),
            );
            let ctx = ConnCtx {
                direction: Direction::Inbound,
                remote: addr.to_string(),
                url: None,
                authenticated,
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
