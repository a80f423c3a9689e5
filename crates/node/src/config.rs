//! Configuration (SPEC §2): one validated type, parsed once at start.
//!
//! Values arrive as strings (from environment variables or the matching CLI flags) and are
//! validated here, so every error names the variable an operator has to fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use slipstream_protocol::{Limits, DEFAULT_CLUSTER_GROUP};

use crate::net::tls;

/// A bad setting. The text names the variable and says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {problem}")]
    Invalid { var: &'static str, problem: String },
}

fn invalid(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        problem: problem.into(),
    }
}

/// One outgoing peer from `URL_CONFIG`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    pub url: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub cluster_group_id: Option<String>,
    #[serde(default)]
    pub auth_token: Option<String>,
    /// PEM text or a path; used once TLS is available.
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default = "default_true")]
    pub reject_unauthorized: bool,
}

fn default_true() -> bool {
    true
}

/// The raw settings, each as the string an operator gave (or `None` for the default).
/// The CLI fills it from flags and environment variables.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    pub url_config: Option<String>,
    pub storage_path: Option<String>,
    pub retry_in_n_seconds: Option<String>,
    pub connection_retry_attempts: Option<String>,
    pub max_message_republish_attempts: Option<String>,
    pub metrics_port: Option<String>,
    pub metrics_host: Option<String>,
    pub enable_message_logs: Option<String>,
    pub enable_debug_logs: Option<String>,
    pub listen: Option<String>,
    pub instance_id: Option<String>,
    pub tags: Option<String>,
    pub cluster_group_id: Option<String>,
    pub redis_url: Option<String>,
    pub auth_token: Option<String>,
    pub admin_token: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_client_ca: Option<String>,
    pub heartbeat_seconds: Option<String>,
    pub circuit_cooldown_seconds: Option<String>,
    pub retention_seconds: Option<String>,
    pub max_frame_bytes: Option<String>,
    pub redis_prefix: Option<String>,
    pub cmd_allow: Option<String>,
    pub request_timeout_seconds: Option<String>,
    pub delivery_jitter_ms: Option<String>,
    pub hold_delivery_ms: Option<String>,
    pub forwarding: Option<String>,
    pub redis_dedup: Option<String>,
    pub max_batch: Option<String>,
    pub max_path: Option<String>,
    pub max_key_bytes: Option<String>,
    pub max_value_bytes: Option<String>,
    pub max_connections: Option<String>,
    pub max_invalid_per_second: Option<String>,
    pub max_push_backlog_bytes: Option<String>,
}

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub peers: Vec<PeerConfig>,
    pub storage_path: PathBuf,
    /// Base interval of reconnect backoff and message republishing.
    pub retry_base: Duration,
    pub connection_retry_attempts: u32,
    pub max_republish_attempts: u32,
    pub http_addr: SocketAddr,
    pub message_logs: bool,
    pub debug_logs: bool,
    pub listen: SocketAddr,
    pub instance_id: Option<String>,
    pub tags: Vec<String>,
    pub cluster_group_id: String,
    pub auth_token: Option<String>,
    pub admin_token: Option<String>,
    pub heartbeat: Duration,
    pub circuit_cooldown: Duration,
    pub retention: Duration,
    pub limits: Limits,
    /// Most unacknowledged messages in flight to one peer.
    pub delivery_window: usize,
    /// The listener serves `wss://` with this.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// Incoming connections must present a client certificate (mutual TLS).
    pub tls_client_auth: bool,
    /// The TLS configuration of each `wss://` peer, in the order of `peers`.
    pub peer_tls: Vec<Option<Arc<rustls::ClientConfig>>>,
    /// Most open connections (peers and apps); more are refused.
    pub max_connections: usize,
    /// Invalid messages a connection may send per second before it is closed (1008).
    pub max_invalid_per_second: u32,
    /// Bytes of pushed writes a local app may fall behind on (pushed, not yet written to its
    /// socket) before it is disconnected (1013).
    pub max_push_backlog_bytes: u64,
    /// Apply writes to this Redis instead of the embedded store.
    pub redis_url: Option<String>,
    /// Prefix of Slipstream's own keys in Redis (versions and tombstones).
    pub redis_prefix: String,
    /// Commands this node runs (upper case).
    pub cmd_allow: Vec<String>,
    /// How long the origin relays `RES` answers of a request to the app that asked.
    pub request_timeout: Duration,
    /// Testing aid: each frame to a peer waits a random 0..this before it is sent.
    pub delivery_jitter: Duration,
    /// How long a new write's delivery rows may be held in memory before they are written to
    /// the outbox (zero: written in the write's own commit).
    pub hold_delivery: Duration,
    /// Share dedup through Redis with the other nodes of the cluster group using it.
    pub redis_dedup: bool,
    /// `SLIPSTREAM_FORWARDING`: `direct` (the origin delivers to every peer it knows itself,
    /// others forward only what it cannot reach) or `flood` (every receiver forwards to every
    /// peer not on the path).
    pub forwarding: Forwarding,
}

/// How writes spread through the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// N−1 sends per write in a healthy full mesh; a link that is down is routed around by
    /// handing its backlog to a peer that can reach the other end.
    Direct,
    /// Every receiver relays to every peer not on the path: O(N²) sends per write, but every
    /// node also forwards every write it holds without waiting for its origin.
    Flood,
}

impl Config {
    /// A configuration for tests and the dev mesh: loopback, ephemeral ports, fast retries.
    pub fn for_local(storage_path: impl Into<PathBuf>) -> Config {
        Config {
            peers: Vec::new(),
            storage_path: storage_path.into(),
            retry_base: Duration::from_millis(500),
            connection_retry_attempts: 10,
            max_republish_attempts: 3,
            http_addr: "127.0.0.1:0".parse().expect("valid"),
            message_logs: false,
            debug_logs: false,
            listen: "127.0.0.1:0".parse().expect("valid"),
            instance_id: None,
            tags: Vec::new(),
            cluster_group_id: DEFAULT_CLUSTER_GROUP.to_owned(),
            auth_token: None,
            admin_token: None,
            heartbeat: Duration::from_secs(10),
            circuit_cooldown: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3600),
            limits: Limits::default(),
            delivery_window: 4096,
            server_tls: None,
            tls_client_auth: false,
            peer_tls: Vec::new(),
            max_connections: 1024,
            max_invalid_per_second: 100,
            max_push_backlog_bytes: 64 << 20,
            redis_url: None,
            redis_prefix: "slipstream:".to_owned(),
            cmd_allow: vec!["DEL".into(), "EXPIRE".into(), "PING".into()],
            request_timeout: Duration::from_secs(5),
            delivery_jitter: Duration::ZERO,
            hold_delivery: slipstream_storage::HOLD_FOR,
            redis_dedup: false,
            forwarding: Forwarding::Direct,
        }
    }

    pub fn from_raw(raw: &RawConfig) -> Result<Config, ConfigError> {
        let peers = match raw.url_config.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(text) => parse_url_config(text)?,
        };
        let redis_url = non_empty(&raw.redis_url);
        if let Some(url) = &redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "SLIPSTREAM_REDIS_URL",
                    "must start with redis:// or rediss://",
                ));
            }
            redis::Client::open(url.as_str()).map_err(|e| {
                invalid(
                    "SLIPSTREAM_REDIS_URL",
                    format!("is not a valid Redis URL: {e}"),
                )
            })?;
        }
        if parse_bool(&raw.redis_dedup, "SLIPSTREAM_REDIS_DEDUP", false)? && redis_url.is_none() {
            return Err(invalid(
                "SLIPSTREAM_REDIS_DEDUP",
                "needs SLIPSTREAM_REDIS_URL",
            ));
        }
        let redis_prefix = raw
            .redis_prefix
            .clone()
            .unwrap_or_else(|| "slipstream:".to_owned());
        if redis_prefix.is_empty() {
            return Err(invalid(
                "SLIPSTREAM_REDIS_PREFIX",
                "must not be empty: Slipstream's keys would mix with the application's",
            ));
        }
        let cmd_allow: Vec<String> = match &raw.cmd_allow {
            None => vec!["DEL".into(), "EXPIRE".into(), "PING".into()],
            Some(list) => parse_list(&Some(list.clone()))
                .into_iter()
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        };
        for c in &cmd_allow {
            if !matches!(c.as_str(), "DEL" | "EXPIRE" | "PING") {
                return Err(invalid(
                    "SLIPSTREAM_CMD_ALLOW",
                    format!("{c:?} is not a command Slipstream can run (DEL, EXPIRE, PING)"),
                ));
            }
        }
        let server_tls = match (non_empty(&raw.tls_cert), non_empty(&raw.tls_key)) {
            (Some(cert), Some(key)) => Some(
                tls::server_config(&cert, &key, non_empty(&raw.tls_client_ca).as_deref())
                    .map_err(|(var, e)| invalid(var, e))?,
            ),
            (None, None) if non_empty(&raw.tls_client_ca).is_some() => {
                return Err(invalid(
                    "SLIPSTREAM_TLS_CLIENT_CA",
                    "needs SLIPSTREAM_TLS_CERT and SLIPSTREAM_TLS_KEY",
                ))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "SLIPSTREAM_TLS_KEY",
                    "is required with SLIPSTREAM_TLS_CERT",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "SLIPSTREAM_TLS_CERT",
                    "is required with SLIPSTREAM_TLS_KEY",
                ))
            }
        };
        let tls_client_auth = server_tls.is_some() && non_empty(&raw.tls_client_ca).is_some();
        let mut peer_tls = Vec::with_capacity(peers.len());
        for (i, p) in peers.iter().enumerate() {
            let tls_fields =
                p.ca.is_some() || p.cert.is_some() || p.key.is_some() || !p.reject_unauthorized;
            if p.url.starts_with("wss://") {
                let c = tls::client_config(
                    p.ca.as_deref(),
                    p.cert.as_deref(),
                    p.key.as_deref(),
                    p.reject_unauthorized,
                )
                .map_err(|e| invalid("URL_CONFIG", format!("entry {i} ({}): {e}", p.url)))?;
                peer_tls.push(Some(c));
            } else if tls_fields {
                return Err(invalid("URL_CONFIG", format!("entry {i} ({}): ca, cert, key and rejectUnauthorized apply to wss:// URLs only", p.url)));
            } else {
                peer_tls.push(None);
            }
        }
        let limit =
            |v: &Option<String>, var: &'static str, default: usize| -> Result<usize, ConfigError> {
                let n = parse_num(v, var, default)?;
                if n == 0 {
                    return Err(invalid(var, "must be at least 1"));
                }
                Ok(n)
            };
        let limits = Limits {
            max_frame_bytes: 0,
            max_batch: limit(&raw.max_batch, "SLIPSTREAM_MAX_BATCH", 1000)?,
            max_path: limit(&raw.max_path, "SLIPSTREAM_MAX_PATH", 64)?,
            max_key_bytes: limit(&raw.max_key_bytes, "SLIPSTREAM_MAX_KEY_BYTES", 1024)?,
            max_value_bytes: limit(
                &raw.max_value_bytes,
                "SLIPSTREAM_MAX_VALUE_BYTES",
                512 * 1024,
            )?,
        };
        let max_connections = limit(&raw.max_connections, "SLIPSTREAM_MAX_CONNECTIONS", 1024)?;
        let max_invalid_per_second = limit(
            &raw.max_invalid_per_second,
            "SLIPSTREAM_MAX_INVALID_PER_SECOND",
            100,
        )? as u32;
        let max_push_backlog_bytes = limit(
            &raw.max_push_backlog_bytes,
            "SLIPSTREAM_MAX_PUSH_BACKLOG_BYTES",
            64 << 20,
        )? as u64;
        let metrics_port: u16 = parse_num(&raw.metrics_port, "METRICS_PORT", 8080)?;
        let metrics_host = raw.metrics_host.as_deref().unwrap_or("0.0.0.0");
        let http_addr = format!("{metrics_host}:{metrics_port}")
            .parse()
            .map_err(|_| {
                invalid(
                    "SLIPSTREAM_METRICS_HOST",
                    format!("{metrics_host:?} is not an IP address"),
                )
            })?;
        let listen_text = raw.listen.as_deref().unwrap_or("0.0.0.0:7600");
        let listen = listen_text.parse().map_err(|_| {
            invalid(
                "SLIPSTREAM_LISTEN",
                format!("{listen_text:?} is not an address like 0.0.0.0:7600"),
            )
        })?;
        let max_frame_bytes = parse_num(
            &raw.max_frame_bytes,
            "SLIPSTREAM_MAX_FRAME_BYTES",
            1024 * 1024,
        )?;
        if max_frame_bytes < 1024 {
            return Err(invalid(
                "SLIPSTREAM_MAX_FRAME_BYTES",
                "must be at least 1024",
            ));
        }
        let instance_id = non_empty(&raw.instance_id);
        if let Some(id) = &instance_id {
            if id.chars().count() > 256 {
                return Err(invalid(
                    "SLIPSTREAM_INSTANCE_ID",
                    "must be at most 256 characters",
                ));
            }
        }
        let connection_retry_attempts = parse_num(
            &raw.connection_retry_attempts,
            "SLIPSTREAM_CONNECTION_RETRY_ATTEMPTS",
            10,
        )?;
        let max_republish_attempts = parse_num(
            &raw.max_message_republish_attempts,
            "MAX_MESSAGE_REPUBLISH_ATTEMPTS",
            3,
        )?;
        if connection_retry_attempts == 0 {
            return Err(invalid(
                "SLIPSTREAM_CONNECTION_RETRY_ATTEMPTS",
                "must be at least 1",
            ));
        }
        if max_republish_attempts == 0 {
            return Err(invalid(
                "MAX_MESSAGE_REPUBLISH_ATTEMPTS",
                "must be at least 1",
            ));
        }
        Ok(Config {
            peers,
            storage_path: PathBuf::from(raw.storage_path.as_deref().unwrap_or("./slipstream-data")),
            retry_base: parse_secs(
                &raw.retry_in_n_seconds,
                "SLIPSTREAM_RETRY_IN_N_SECONDS",
                5.0,
            )?,
            connection_retry_attempts,
            max_republish_attempts,
            http_addr,
            message_logs: parse_bool(&raw.enable_message_logs, "ENABLE_MESSAGE_LOGS", true)?,
            debug_logs: parse_bool(&raw.enable_debug_logs, "ENABLE_DEBUG_LOGS", false)?,
            listen,
            instance_id,
            tags: parse_list(&raw.tags),
            cluster_group_id: non_empty(&raw.cluster_group_id)
                .unwrap_or_else(|| DEFAULT_CLUSTER_GROUP.to_owned()),
            auth_token: non_empty(&raw.auth_token),
            admin_token: non_empty(&raw.admin_token),
            heartbeat: parse_secs(&raw.heartbeat_seconds, "SLIPSTREAM_HEARTBEAT_SECONDS", 10.0)?,
            circuit_cooldown: parse_secs(
                &raw.circuit_cooldown_seconds,
                "SLIPSTREAM_CIRCUIT_COOLDOWN_SECONDS",
                60.0,
            )?,
            retention: parse_secs(
                &raw.retention_seconds,
                "SLIPSTREAM_RETENTION_SECONDS",
                86400.0,
            )?,
            limits: Limits {
                max_frame_bytes,
                ..limits
            },
            server_tls,
            tls_client_auth,
            peer_tls,
            max_connections,
            max_invalid_per_second,
            max_push_backlog_bytes,
            delivery_window: 4096,
            redis_url,
            redis_prefix,
            cmd_allow,
            request_timeout: parse_secs(
                &raw.request_timeout_seconds,
                "SLIPSTREAM_REQUEST_TIMEOUT_SECONDS",
                5.0,
            )?,
            redis_dedup: parse_bool(&raw.redis_dedup, "SLIPSTREAM_REDIS_DEDUP", false)?,
            delivery_jitter: Duration::from_millis(parse_num(
                &raw.delivery_jitter_ms,
                "SLIPSTREAM_DELIVERY_JITTER_MS",
                0,
            )?),
            hold_delivery: Duration::from_millis(parse_num(
                &raw.hold_delivery_ms,
                "SLIPSTREAM_HOLD_DELIVERY_MS",
                slipstream_storage::HOLD_FOR.as_millis() as u64,
            )?),
            forwarding: match non_empty(&raw.forwarding).map(|s| s.to_ascii_lowercase()) {
                None => Forwarding::Direct,
                Some(s) if s == "direct" => Forwarding::Direct,
                Some(s) if s == "flood" => Forwarding::Flood,
                Some(s) => {
                    return Err(invalid(
                        "SLIPSTREAM_FORWARDING",
                        format!("{s:?} is not direct or flood"),
                    ))
                }
            },
        })
    }
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn parse_list(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_num<T: std::str::FromStr>(
    v: &Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match non_empty(v) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| invalid(var, format!("{s:?} is not a whole number in range"))),
    }
}

/// Seconds, with decimals allowed (`0.5`), greater than zero.
fn parse_secs(
    v: &Option<String>,
    var: &'static str,
    default: f64,
) -> Result<Duration, ConfigError> {
    let secs = match non_empty(v) {
        None => default,
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f > 0.0 && *f <= 365.0 * 86400.0)
            .ok_or_else(|| {
                invalid(
                    var,
                    format!("{s:?} is not a number of seconds greater than 0"),
                )
            })?,
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_bool(v: &Option<String>, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match non_empty(v).map(|s| s.to_ascii_lowercase()) {
        None => Ok(default),
        Some(s) => match s.as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(invalid(var, format!("{s:?} is not true or false"))),
        },
    }
}

/// `URL_CONFIG`: a JSON array of peer entries, as base64 or as plain JSON.
pub fn parse_url_config(text: &str) -> Result<Vec<PeerConfig>, ConfigError> {
    const VAR: &str = "URL_CONFIG";
    let json = if text.starts_with('[') {
        text.to_owned()
    } else {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .map_err(|e| {
                invalid(
                    VAR,
                    format!("is neither a JSON array nor valid base64 ({e})"),
                )
            })?;
        String::from_utf8(bytes)
            .map_err(|_| invalid(VAR, "base64 decodes to bytes that are not UTF-8 text"))?
    };
    let peers: Vec<PeerConfig> = serde_json::from_str(&json)
        .map_err(|e| invalid(VAR, format!("is not a JSON array of peer entries: {e}")))?;
    for (i, p) in peers.iter().enumerate() {
        if !(p.url.starts_with("ws://") || p.url.starts_with("wss://")) {
            return Err(invalid(
                VAR,
                format!("entry {i}: url {:?} must start with ws:// or wss://", p.url),
            ));
        }
        if p.url.len() <= "ws://".len() {
            return Err(invalid(
                VAR,
                format!("entry {i}: url {:?} has no host", p.url),
            ));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig::default()
    }

    fn err(r: RawConfig) -> String {
        Config::from_raw(&r).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::from_raw(&raw()).unwrap();
        assert!(c.peers.is_empty());
        assert_eq!(c.storage_path, PathBuf::from("./slipstream-data"));
        assert_eq!(c.retry_base, Duration::from_secs(5));
        assert_eq!(c.connection_retry_attempts, 10);
        assert_eq!(c.max_republish_attempts, 3);
        assert_eq!(c.http_addr.port(), 8080);
        assert!(c.message_logs);
        assert!(!c.debug_logs);
        assert_eq!(c.listen, "0.0.0.0:7600".parse().unwrap());
        assert_eq!(c.instance_id, None);
        assert!(c.tags.is_empty());
        assert_eq!(c.cluster_group_id, "singleton");
        assert_eq!(c.auth_token, None);
        assert_eq!(c.limits.max_frame_bytes, 1024 * 1024);
        assert_eq!(c.heartbeat, Duration::from_secs(10));
        assert_eq!(c.max_push_backlog_bytes, 64 << 20);
    }

    #[test]
    fn url_config_as_plain_json_and_base64() {
        let json = r#"[{"url":"ws://azure.example:7600","tags":["azure","production"],"clusterGroupId":"cluster-2","authToken":"t","ca":"x","cert":"y","key":"z","rejectUnauthorized":true}]"#;
        let plain = parse_url_config(json).unwrap();
        assert_eq!(plain[0].url, "ws://azure.example:7600");
        assert_eq!(plain[0].tags, vec!["azure", "production"]);
        assert_eq!(plain[0].cluster_group_id.as_deref(), Some("cluster-2"));
        assert_eq!(plain[0].auth_token.as_deref(), Some("t"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        assert_eq!(parse_url_config(&b64).unwrap(), plain);
        let only_url = parse_url_config(r#"[{"url":"ws://b:1"}]"#).unwrap();
        assert!(only_url[0].reject_unauthorized);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = err(RawConfig {
            url_config: Some("!!!".into()),
            ..raw()
        });
        assert!(
            e.starts_with("URL_CONFIG: is neither a JSON array nor valid base64"),
            "{e}"
        );
        let e = err(RawConfig {
            url_config: Some("[{\"url\":5}]".into()),
            ..raw()
        });
        assert!(
            e.starts_with("URL_CONFIG: is not a JSON array of peer entries"),
            "{e}"
        );
        let e = err(RawConfig {
            url_config: Some(r#"[{"url":"http://x"}]"#.into()),
            ..raw()
        });
        assert!(e.contains("must start with ws:// or wss://"), "{e}");
        let e = err(RawConfig {
            url_config: Some(r#"[{"url":"ws://x","colour":"red"}]"#.into()),
            ..raw()
        });
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = err(RawConfig {
            retry_in_n_seconds: Some("soon".into()),
            ..raw()
        });
        assert_eq!(
            e,
            "SLIPSTREAM_RETRY_IN_N_SECONDS: \"soon\" is not a number of seconds greater than 0"
        );
        let e = err(RawConfig {
            metrics_port: Some("99999".into()),
            ..raw()
        });
        assert!(e.starts_with("METRICS_PORT:"), "{e}");
        let e = err(RawConfig {
            enable_message_logs: Some("maybe".into()),
            ..raw()
        });
        assert!(e.starts_with("ENABLE_MESSAGE_LOGS:"), "{e}");
        let e = err(RawConfig {
            listen: Some("nowhere".into()),
            ..raw()
        });
        assert!(e.starts_with("SLIPSTREAM_LISTEN:"), "{e}");
        let e = err(RawConfig {
            redis_url: Some("http://x".into()),
            ..raw()
        });
        assert!(
            e.starts_with("SLIPSTREAM_REDIS_URL: must start with redis://"),
            "{e}"
        );
        let e = err(RawConfig {
            cmd_allow: Some("DEL,FLUSHALL".into()),
            ..raw()
        });
        assert!(
            e.starts_with("SLIPSTREAM_CMD_ALLOW:") && e.contains("FLUSHALL"),
            "{e}"
        );
        let e = err(RawConfig {
            redis_dedup: Some("true".into()),
            ..raw()
        });
        assert!(
            e.starts_with("SLIPSTREAM_REDIS_DEDUP: needs SLIPSTREAM_REDIS_URL"),
            "{e}"
        );
        let e = err(RawConfig {
            max_message_republish_attempts: Some("0".into()),
            ..raw()
        });
        assert!(e.starts_with("MAX_MESSAGE_REPUBLISH_ATTEMPTS:"), "{e}");
        let e = err(RawConfig {
            max_push_backlog_bytes: Some("lots".into()),
            ..raw()
        });
        assert!(e.starts_with("SLIPSTREAM_MAX_PUSH_BACKLOG_BYTES:"), "{e}");
    }

    #[test]
    fn lists_and_decimals() {
        let c = Config::from_raw(&RawConfig {
            tags: Some(" aws, production ,".into()),
            retry_in_n_seconds: Some("0.25".into()),
            ..raw()
        })
        .unwrap();
        assert_eq!(c.tags, vec!["aws", "production"]);
        assert_eq!(c.retry_base, Duration::from_millis(250));
    }
}
