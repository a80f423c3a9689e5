//! A Slipstream node: configuration, the WebSocket mesh, store-and-forward delivery, the HTTP
//! API and the runtime that ties them together.
//!
//! Map of tasks and channels (see ARCHITECTURE.md for the path of a message):
//! - `net::listener` accepts TCP, upgrades to WebSocket and runs one `net::connection` task
//!   per socket; `net::dialer` runs one task per configured peer that dials, redials with
//!   backoff and hands each connection to the same `net::connection` code.
//! - A connection task decodes frames and hands writes to [`node::Node::ingest`], which routes
//!   them (sans-IO `slipstream_router`) and queues them on the storage writer thread; the
//!   commit's answer comes back on a oneshot and the connection sends the ACK.
//! - `delivery` runs one task per logical peer that reads its outbox rows from SQLite and
//!   sends them over the peer's active connection (an `mpsc` of frames into that
//!   connection's task), with republish, dead letters and acknowledgements.
//! - `http` serves the API on `METRICS_PORT`.
//! - Shutdown: a `CancellationToken` starts it, a `TaskTracker` confirms every task ended,
//!   then the storage writer commits what is queued and stops.

pub mod config;
pub mod delivery;
pub mod http;
pub mod net;
pub mod node;
pub mod peers;
pub mod requests;
pub mod runtime;
pub mod store;
pub mod telemetry;

pub use config::{Config, ConfigError, Forwarding, PeerConfig, RawConfig};
pub use runtime::{run, start, RunningNode, StartError};
