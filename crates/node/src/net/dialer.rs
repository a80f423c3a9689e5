//! Dials one configured peer, forever: redials after loss with exponential backoff and
//! jitter, opens the circuit after `SLIPSTREAM_CONNECTION_RETRY_ATTEMPTS` consecutive failures
//! and half-opens after the cool-down. A node never gives a peer up.

use std::sync::Arc;

use rand::Rng;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::backoff::{Backoff, Circuit};
use super::connection::{serve, ConnCtx};
use super::ws_config;
use crate::config::PeerConfig;
use crate::node::{CircuitView, Node};
use crate::peers::Direction;
use crate::telemetry;

pub async fn dial_loop(node: Arc<Node>, peer: PeerConfig, tls: Option<Arc<rustls::ClientConfig>>) {
    let cfg = &node.cfg;
    let mut backoff = Backoff::new(
        cfg.retry_base,
        cfg.connection_retry_attempts,
        cfg.circuit_cooldown,
    );
    loop {
        let result = dial(&node, &peer, tls.clone()).await;
        let wait = match &result {
            Ok(()) => {
                // Connected, served, and lost (or shutting down).
                if backoff.succeeded() {
                    telemetry::circuit_closed(&node, &peer.url);
                }
                if node.shutdown.is_cancelled() {
                    break;
                }
                let wait = backoff.after_loss(rand::thread_rng().gen());
                telemetry::reconnect(&node, &peer.url, "connection lost", wait.as_secs_f64());
                wait
            }
            Err(error) => {
                let after = backoff.failed(rand::thread_rng().gen());
                if after.opened {
                    telemetry::circuit_opened(
                        &node,
                        &peer.url,
                        backoff.failures(),
                        after.wait.as_secs_f64(),
                    );
                }
                telemetry::reconnect(&node, &peer.url, error, after.wait.as_secs_f64());
                after.wait
            }
        };
        node.set_circuit(
            &peer.url,
            CircuitView {
                circuit: match backoff.circuit() {
                    Circuit::Closed => "closed",
                    Circuit::Open => "open",
                },
                consecutive_failures: backoff.failures(),
                last_error: result.err(),
            },
        );
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One dial. `Ok` once a connection was established and has ended.
async fn dial(
    node: &Arc<Node>,
    peer: &PeerConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(), String> {
    let mut request = peer
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad url: {e}"))?;
    if let Some(token) = &peer.auth_token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "authToken is not a valid header value".to_owned())?;
        request.headers_mut().insert("authorization", value);
    }
    let host = request
        .uri()
        .host()
        .ok_or("url has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let limit = node.cfg.heartbeat * 3;
    let connected_at;
    let stream = tokio::select! {
        _ = node.shutdown.cancelled() => return Ok(()),
        r = tokio::time::timeout(limit, TcpStream::connect((host.as_str(), port))) => {
            connected_at = Instant::now();
            r.map_err(|_| "TCP connect timed out".to_owned())?.map_err(|e| format!("TCP connect: {e}"))?
        }
    };
    let _ = stream.set_nodelay(true);
    let remote = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| peer.url.clone());
    let ctx = ConnCtx {
        direction: Direction::Outbound,
        remote,
        url: Some(peer.url.clone()),
        authenticated: true,
    };
    let Some(tls) = tls else {
        return upgrade(node, request, stream, ctx, connected_at).await;
    };
    if !peer.reject_unauthorized {
        tracing::warn!(instance_id = %node.id, peer = %peer.url, "rejectUnauthorized is false: connecting without checking the peer's certificate");
    }
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("bad TLS server name {host:?}: {e}"))?;
    let connect = tokio_rustls::TlsConnector::from(tls).connect(name, stream);
    let tls_stream = tokio::time::timeout_at(connected_at + limit, connect)
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    upgrade(node, request, tls_stream, ctx, connected_at).await
}

/// The WebSocket handshake over a (TLS or plain) stream, then the connection until it ends.
async fn upgrade<S>(
    node: &Arc<Node>,
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: S,
    ctx: ConnCtx,
    connected_at: Instant,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshake =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config(&node.cfg)));
    let (ws, _) = tokio::time::timeout_at(connected_at + node.cfg.heartbeat * 3, handshake)
        .await
        .map_err(|_| "WebSocket handshake timed out".to_owned())?
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let url = ctx.url.clone().unwrap_or_default();
    node.set_circuit(
        &url,
        CircuitView {
            circuit: "closed",
            consecutive_failures: 0,
            last_error: None,
        },
    );
    serve(node.clone(), ws, ctx, connected_at).await;
    Ok(())
}
