//! The `slipstream` binary.

mod admin;
mod alloc;
mod bench;
mod client;
mod dev;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use slipstream_node::{telemetry, Config, RawConfig};

#[derive(Parser)]
#[command(
    name = "slipstream",
    version,
    about = "Keeps key/value state in sync across clouds over a durable WebSocket mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node. Every setting is an environment variable; each flag mirrors one.
    Run(Box<RunArgs>),
    /// Run a local mesh of N nodes on embedded defaults in a temporary folder, until Ctrl-C.
    Dev(dev::DevArgs),
    /// Publish one write to a node, as a local application would, and wait for its ACK.
    Publish(client::PublishArgs),
    /// Read one key from a node, as a local application would.
    Get(client::GetArgs),
    /// Show a node's peers, links, outboxes and dead letters as a table.
    Status(admin::StatusArgs),
    /// List, replay or purge a node's dead letters.
    Dlq(admin::DlqArgs),
    /// Measure replication throughput and latency on a local mesh (or running nodes).
    Bench(bench::BenchArgs),
}

/// The settings of SPEC §2. Values are validated after parsing so that an error names the
/// environment variable.
#[derive(Args)]
struct RunArgs {
    /// Outgoing peers: a JSON array of {"url", "tags", "clusterGroupId", "authToken", "ca",
    /// "cert", "key", "rejectUnauthorized"}, as base64 or plain JSON. Default: no peers.
    #[arg(long, env = "URL_CONFIG")]
    url_config: Option<String>,
    /// Folder (or .db file) of the SQLite database. Default: ./slipstream-data
    #[arg(long, env = "SLIPSTREAM_STORAGE_PATH")]
    storage_path: Option<String>,
    /// Base interval, in seconds (decimals allowed), of reconnect backoff and republishing. Default: 5
    #[arg(long, env = "SLIPSTREAM_RETRY_IN_N_SECONDS")]
    retry_in_n_seconds: Option<String>,
    /// Consecutive failed dials before a peer's circuit opens. Default: 10
    #[arg(long, env = "SLIPSTREAM_CONNECTION_RETRY_ATTEMPTS")]
    connection_retry_attempts: Option<String>,
    /// Unanswered sends to a connected peer before a message is dead-lettered. Default: 3
    #[arg(long, env = "MAX_MESSAGE_REPUBLISH_ATTEMPTS")]
    max_message_republish_attempts: Option<String>,
    /// HTTP port of metrics, health, status and the API (0 picks a free port). Default: 8080
    #[arg(long, env = "METRICS_PORT")]
    metrics_port: Option<String>,
    /// Address the HTTP port binds to. Default: 0.0.0.0
    #[arg(long, env = "SLIPSTREAM_METRICS_HOST")]
    metrics_host: Option<String>,
    /// Per-message log lines (level "message"). Default: true
    #[arg(long, env = "ENABLE_MESSAGE_LOGS")]
    enable_message_logs: Option<String>,
    /// Debug log lines. Default: false
    #[arg(long, env = "ENABLE_DEBUG_LOGS")]
    enable_debug_logs: Option<String>,
    /// WebSocket listen address for peers and local apps (port 0 picks a free port). Default: 0.0.0.0:7600
    #[arg(long, env = "SLIPSTREAM_LISTEN")]
    listen: Option<String>,
    /// This node's id. Default: generated once (con-xxxxxxxx), then kept in the database
    #[arg(long, env = "SLIPSTREAM_INSTANCE_ID")]
    instance_id: Option<String>,
    /// This node's own tags, comma separated. Default: none
    #[arg(long, env = "SLIPSTREAM_TAGS")]
    tags: Option<String>,
    /// Stamped on messages that originate here without one. Default: singleton
    #[arg(long, env = "SLIPSTREAM_CLUSTER_GROUP_ID")]
    cluster_group_id: Option<String>,
    /// Apply writes to this Redis (redis:// or rediss://, with user, password and db number:
    /// redis://:secret@host:6379/2) instead of the embedded SQLite store. Default: embedded
    #[arg(long, env = "SLIPSTREAM_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of Slipstream's own keys in Redis: versions at <prefix>v:<key>. Default: slipstream:
    #[arg(long, env = "SLIPSTREAM_REDIS_PREFIX")]
    redis_prefix: Option<String>,
    /// Commands (CMD) this node runs, comma separated, from DEL, EXPIRE, PING. Default: DEL,EXPIRE,PING
    #[arg(long, env = "SLIPSTREAM_CMD_ALLOW")]
    cmd_allow: Option<String>,
    /// Seconds the origin relays answers (RES) of a read or command to the app. Default: 5
    #[arg(long, env = "SLIPSTREAM_REQUEST_TIMEOUT_SECONDS")]
    request_timeout_seconds: Option<String>,
    /// Share dedup through Redis (SET NX with the retention as expiry) with the other nodes of
    /// the cluster group that use the same Redis. Needs SLIPSTREAM_REDIS_URL. Default: false
    #[arg(long, env = "SLIPSTREAM_REDIS_DEDUP")]
    redis_dedup: Option<String>,
    /// Testing aid: delay each frame to a peer by a random 0..N milliseconds. Default: 0
    #[arg(long, env = "SLIPSTREAM_DELIVERY_JITTER_MS")]
    delivery_jitter_ms: Option<String>,
    /// How long (ms) a new write's delivery rows may stay in memory, waiting for their ACKs,
    /// before they are written to the outbox; rows a crash loses are written again from the
    /// journal. 0 writes them in the write's own commit. Default: 1000
    #[arg(long, env = "SLIPSTREAM_HOLD_DELIVERY_MS")]
    hold_delivery_ms: Option<String>,
    /// How writes spread: `direct` (the origin sends each write to every peer itself, others
    /// forward only what it asks them to because its own link is down: N-1 sends per write) or
    /// `flood` (every node forwards every new write to every peer not on its path: O(N^2)
    /// sends, but no node waits for an origin to forward). Default: direct
    #[arg(long, env = "SLIPSTREAM_FORWARDING")]
    forwarding: Option<String>,
    /// If set, incoming WebSocket upgrades need `Authorization: Bearer <token>`; a comma list
    /// accepts several tokens (for rotation). Default: unset
    #[arg(long, env = "SLIPSTREAM_AUTH_TOKEN")]
    auth_token: Option<String>,
    /// If set, mutating admin endpoints need it as a bearer token. Default: unset
    #[arg(long, env = "SLIPSTREAM_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// PEM certificate chain (PEM text or a path): the listener serves wss://
    #[arg(long, env = "SLIPSTREAM_TLS_CERT")]
    tls_cert: Option<String>,
    /// PEM private key for SLIPSTREAM_TLS_CERT (PEM text or a path)
    #[arg(long, env = "SLIPSTREAM_TLS_KEY")]
    tls_key: Option<String>,
    /// PEM CA (text or path): incoming connections must present a client certificate it signed (mutual TLS)
    #[arg(long, env = "SLIPSTREAM_TLS_CLIENT_CA")]
    tls_client_ca: Option<String>,
    /// WebSocket ping interval in seconds; a connection silent for three is closed. Default: 10
    #[arg(long, env = "SLIPSTREAM_HEARTBEAT_SECONDS")]
    heartbeat_seconds: Option<String>,
    /// Seconds an open circuit waits before the next (half-open) dial. Default: 60
    #[arg(long, env = "SLIPSTREAM_CIRCUIT_COOLDOWN_SECONDS")]
    circuit_cooldown_seconds: Option<String>,
    /// Seconds acknowledged messages (and their dedup entries) are kept. Default: 86400
    #[arg(long, env = "SLIPSTREAM_RETENTION_SECONDS")]
    retention_seconds: Option<String>,
    /// Largest accepted frame in bytes; larger ones get a NACK. Default: 1048576
    #[arg(long, env = "SLIPSTREAM_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<String>,
    /// Most messages in one array frame. Default: 1000
    #[arg(long, env = "SLIPSTREAM_MAX_BATCH")]
    max_batch: Option<String>,
    /// Longest messagePath accepted (and forwarded). Default: 64
    #[arg(long, env = "SLIPSTREAM_MAX_PATH")]
    max_path: Option<String>,
    /// Longest key, in bytes. Default: 1024
    #[arg(long, env = "SLIPSTREAM_MAX_KEY_BYTES")]
    max_key_bytes: Option<String>,
    /// Largest value, in bytes (items summed for SA and SW). Default: 524288
    #[arg(long, env = "SLIPSTREAM_MAX_VALUE_BYTES")]
    max_value_bytes: Option<String>,
    /// Most open WebSocket connections (peers and apps); more are refused. Default: 1024
    #[arg(long, env = "SLIPSTREAM_MAX_CONNECTIONS")]
    max_connections: Option<String>,
    /// Invalid messages one connection may send per second before it is closed (1008). Default: 100
    #[arg(long, env = "SLIPSTREAM_MAX_INVALID_PER_SECOND")]
    max_invalid_per_second: Option<String>,
    /// Bytes of pushed writes a local app may fall behind on (pushed, not yet written to its
    /// socket) before it is disconnected (1013), besides 16,384 writes. Default: 67108864
    #[arg(long, env = "SLIPSTREAM_MAX_PUSH_BACKLOG_BYTES")]
    max_push_backlog_bytes: Option<String>,
}

impl RunArgs {
    fn raw(self) -> RawConfig {
        RawConfig {
            url_config: self.url_config,
            storage_path: self.storage_path,
            retry_in_n_seconds: self.retry_in_n_seconds,
            connection_retry_attempts: self.connection_retry_attempts,
            max_message_republish_attempts: self.max_message_republish_attempts,
            metrics_port: self.metrics_port,
            metrics_host: self.metrics_host,
            enable_message_logs: self.enable_message_logs,
            enable_debug_logs: self.enable_debug_logs,
            listen: self.listen,
            instance_id: self.instance_id,
            tags: self.tags,
            cluster_group_id: self.cluster_group_id,
            redis_url: self.redis_url,
            auth_token: self.auth_token,
            admin_token: self.admin_token,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_client_ca: self.tls_client_ca,
            heartbeat_seconds: self.heartbeat_seconds,
            circuit_cooldown_seconds: self.circuit_cooldown_seconds,
            retention_seconds: self.retention_seconds,
            max_frame_bytes: self.max_frame_bytes,
            redis_prefix: self.redis_prefix,
            cmd_allow: self.cmd_allow,
            request_timeout_seconds: self.request_timeout_seconds,
            delivery_jitter_ms: self.delivery_jitter_ms,
            hold_delivery_ms: self.hold_delivery_ms,
            forwarding: self.forwarding,
            redis_dedup: self.redis_dedup,
            max_batch: self.max_batch,
            max_path: self.max_path,
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_connections: self.max_connections,
            max_invalid_per_second: self.max_invalid_per_second,
            max_push_backlog_bytes: self.max_push_backlog_bytes,
        }
    }
}

/// Exit code for a bad configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    alloc::tune();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is the SQLite reader (one connection) and little else; a few threads
        // suffice, and each extra thread costs the allocator an arena (tens of MiB of RSS
        // under load).
        .max_blocking_threads(4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slipstream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Publish(args) => client::publish(args).await,
            Command::Get(args) => client::get(args).await,
            Command::Status(args) => admin::status(args).await,
            Command::Dlq(args) => admin::dlq(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    })
}

async fn run(args: RunArgs) -> ExitCode {
    let cfg = match Config::from_raw(&args.raw()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("slipstream: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::logging::init(telemetry::logging::LogSettings::new(
        cfg.message_logs,
        cfg.debug_logs,
    ));
    match slipstream_node::run(cfg, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipstream: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
