//! The network layer (SPEC §7): accepting and dialling WebSocket connections, and the task
//! that owns each connection.

pub mod backoff;
pub mod connection;
pub mod dialer;
pub mod listener;
pub mod tls;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::Config;

/// Bytes the WebSocket reader asks the socket for at a time.
const READ_BUFFER: usize = 16 * 1024;

/// WebSocket limits. The transport accepts frames somewhat larger than the protocol limit so
/// that an oversized frame is answered with a NACK naming the limit instead of a dropped
/// connection; only frames past this outer bound close the connection (code 1009).
pub fn ws_config(cfg: &Config) -> WebSocketConfig {
    let outer = (cfg.limits.max_frame_bytes * 4).max(8 * 1024 * 1024);
    WebSocketConfig::default()
        // The reader zero-fills its whole free buffer before every read; the default 128 KiB
        // made that memset a large share of the CPU per small frame. Bigger frames still
        // grow the buffer as they need.
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(outer))
        .max_frame_size(Some(outer))
}

/// Whether an incoming connection counts as authenticated (and so may send commands): it
/// presented the bearer token, or a client certificate checked under mutual TLS, or, when
/// neither is required, it comes from this machine.
pub fn is_authenticated(
    token_required: bool,
    client_cert_checked: bool,
    remote: std::net::IpAddr,
) -> bool {
    token_required || client_cert_checked || remote.is_loopback()
}

/// Compares a presented bearer token with the accepted ones in constant time per candidate.
pub fn token_matches(presented: &str, accepted: &str) -> bool {
    accepted
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .fold(false, |ok, t| {
            let same_len = t.len() == presented.len();
            let diff = t
                .bytes()
                .zip(presented.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b));
            ok | (same_len & (diff == 0))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_counts_as_authenticated() {
        let remote: std::net::IpAddr = "203.0.113.7".parse().unwrap();
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert!(
            is_authenticated(true, false, remote),
            "passed the token check"
        );
        assert!(
            is_authenticated(false, true, remote),
            "presented a checked client certificate"
        );
        assert!(
            is_authenticated(false, false, local),
            "loopback, nothing configured"
        );
        assert!(!is_authenticated(false, false, remote), "anyone else");
    }

    #[test]
    fn tokens_match_exactly_and_any_of_a_list() {
        assert!(token_matches("abc", "abc"));
        assert!(token_matches("new", "old, new"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("", "abc"));
        assert!(!token_matches("", " , "));
    }
}
