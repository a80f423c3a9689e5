//! `slipstream bench`: replication throughput and latency, measured end to end.
//!
//! It starts a local full mesh of real node processes (or targets running nodes), connects one
//! local app per node that receives every write applied there (the node's push), and drives
//! writes into the first node through a window of unacknowledged writes. A write counts as
//! applied on a node when that node pushes it, which it does after its commit.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use slipstream_node::http::client;
use slipstream_node::telemetry::process;
use slipstream_protocol::{decode_frame, Body, Limits, Message};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Args)]
pub struct BenchArgs {
    /// Nodes of the local mesh (ignored with --target).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Run against running nodes instead (repeat: ws://host:port); writes go to the first.
    #[arg(long)]
    target: Vec<String>,
    /// The HTTP address (host:port) of each --target, in the same order. With it the report
    /// gives each node's CPU and peak RSS (from its /status), its commits and the traffic
    /// between nodes (from its /metrics), and the warm-up waits until every node holds its
    /// writes. A running node's peak RSS is its peak since it started, which may predate the
    /// run, and nodes sharing one process (`slipstream dev`) each report that process's CPU
    /// and memory. Without it the traffic between nodes is reported as not known.
    #[arg(long, value_name = "HOST:PORT")]
    target_http: Vec<String>,
    /// Writes to send.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Bytes of each value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Order of the written keys and message ids. `sequential` (bench:<run>:0, :1, ...)
    /// appends to the end of every SQLite index; `random` spreads them over the indexes as
    /// order ids and UUIDs would, so each write touches pages of its own.
    #[arg(long, value_enum, default_value_t = KeyOrder::Sequential)]
    keys: KeyOrder,
    /// Order of the message ids alone, when it differs from the keys' (`--keys`): payment
    /// keys come in random order, but message ids can be time-ordered (UUIDv7, ULID), which
    /// append to the journal's dedup index instead of spreading over it.
    #[arg(long = "ids", value_enum)]
    id_order: Option<KeyOrder>,
    /// Most writes sent and not yet acknowledged.
    #[arg(long, default_value_t = 2_000)]
    window: usize,
    /// Writes per frame.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Writes sent and acknowledged before the measured ones, and not counted: the first
    /// commits into a fresh database take tens of milliseconds (new files, their first
    /// fsyncs), a start-up cost rather than the steady state the figures describe. Not with
    /// --catch-up.
    #[arg(long, default_value_t = 1000)]
    warmup: usize,
    /// Fixed rate in writes per second (0: as fast as the window allows). Latency then counts
    /// from each write's scheduled time, so a write held back by a full window counts its
    /// wait; figures mean most at a rate the mesh sustains.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Catch-up run: the last node of the local mesh is killed before the writes and started
    /// again after them. Reports the origin's memory while that node's backlog grows (it
    /// lives in SQLite) and how fast the returning node catches up.
    #[arg(long)]
    catch_up: bool,
    /// Stall run: once a third of the writes are sent, the last node of the local mesh is
    /// frozen (SIGSTOP) for this many seconds, its connections left open, as a node stalled by
    /// its machine would be. Reports how far behind it fell (writes acknowledged at the
    /// origin that it had not applied yet) and how long after it resumed it was within 4,096
    /// writes of the origin again while the writes went on.
    #[arg(long, value_name = "SECONDS")]
    stall: Option<f64>,
    /// Tokio worker threads of each local node (its TOKIO_WORKER_THREADS; 0: one per core).
    /// Every node of the local mesh shares this machine, and nodes with a worker per core
    /// keep waking each other's idle workers: one each carried about a tenth more writes.
    #[arg(long, default_value_t = 1)]
    node_workers: usize,
    /// Append each local node's log lines to DIR/node-N.log (to see why a run went wrong).
    #[arg(long, value_name = "DIR")]
    logs: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    /// The order of the message ids: `--ids`, or the keys' order.
    fn ids(&self) -> KeyOrder {
        self.id_order.unwrap_or(self.keys)
    }
}

/// How the bench names its writes (`--keys`, `--ids`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum KeyOrder {
    Sequential,
    Random,
}

/// An odd multiplier, so `i * SPREAD` (mod 2^64) is a bijection: keys that look random and
/// still give back their index.
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

/// The inverse of [`SPREAD`] modulo 2^64 (Newton's iteration doubles the correct bits).
const UNSPREAD: u64 = {
    let mut inv = SPREAD;
    let mut i = 0;
    while i < 6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(SPREAD.wrapping_mul(inv)));
        i += 1;
    }
    inv
};

impl KeyOrder {
    /// The part of write `i`'s key (and message id) after its prefix.
    fn suffix(self, i: usize, out: &mut String) {
        use std::fmt::Write as _;
        let _ = match self {
            KeyOrder::Sequential => write!(out, "{i}"),
            KeyOrder::Random => write!(out, "{:016x}", (i as u64).wrapping_mul(SPREAD)),
        };
    }

    /// The index of a key's suffix, if it is one of this order's (the whole of `text` up to
    /// the closing quote).
    fn index(self, text: &str) -> Option<(usize, usize)> {
        let b = text.as_bytes();
        let len = match self {
            KeyOrder::Sequential => b.iter().take_while(|c| c.is_ascii_digit()).count(),
            KeyOrder::Random => b
                .get(..16)?
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
                .then_some(16)?,
        };
        if len == 0 || b.get(len) != Some(&b'"') {
            return None;
        }
        let index = match self {
            KeyOrder::Sequential => text[..len].parse().ok()?,
            KeyOrder::Random => {
                (u64::from_str_radix(&text[..len], 16)
                    .ok()?
                    .wrapping_mul(UNSPREAD)) as usize
            }
        };
        Some((index, len))
    }
}

/// A node process started by the bench.
struct LocalNode {
    child: Child,
    ws: String,
    http: String,
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_node(
    dir: &std::path::Path,
    i: usize,
    peers: &[String],
    args: &BenchArgs,
) -> anyhow::Result<LocalNode> {
    let urls: Vec<Value> = peers.iter().map(|u| json!({ "url": u })).collect();
    let mut command = Command::new(std::env::current_exe()?);
    if args.node_workers > 0 {
        command.env("TOKIO_WORKER_THREADS", args.node_workers.to_string());
    }
    let logs = args.logs.as_deref();
    let mut child = command
        .arg("run")
        .env("SLIPSTREAM_STORAGE_PATH", dir.join(format!("node-{i}")))
        .env("SLIPSTREAM_INSTANCE_ID", format!("bench-{}", i + 1))
        .env("SLIPSTREAM_LISTEN", "127.0.0.1:0")
        .env("METRICS_PORT", "0")
        .env("SLIPSTREAM_METRICS_HOST", "127.0.0.1")
        .env("ENABLE_MESSAGE_LOGS", "false")
        .env("URL_CONFIG", serde_json::to_string(&urls)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut log = match logs {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(d.join(format!("node-{}.log", i + 1)))?,
            )
        }
        None => None,
    };
    std::thread::spawn(move || {
        // Keep reading, so the node never blocks on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "listening" {
                    let _ = tx.send(v);
                }
            }
        }
    });
    let v = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow!("node {} did not start", i + 1))?;
    let field = |k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no {k} in {v}"))
    };
    Ok(LocalNode {
        child,
        ws: format!("ws://{}", field("ws_addr")?),
        http: field("http_addr")?,
    })
}

/// How close to the origin a node counts as current again after a stall: a healthy node at
/// full speed trails the origin by 2,000–3,000 writes (a tenth of a second or two).
const CURRENT_WITHIN: u64 = 4096;

/// A node frozen mid-run (`--stall`), and how far behind the origin it falls meanwhile.
struct Stall {
    node: usize,
    seconds: f64,
    /// Thaws the node (SIGCONT) when the stall is over; answers with when.
    thaw: tokio::task::JoinHandle<anyhow::Result<Instant>>,
    /// Samples how many writes the node is behind the origin, until told to stop.
    poll: tokio::task::JoinHandle<Vec<(Instant, u64)>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Stall {
    /// Freezes the last node of the local mesh for `seconds`; `behind` counts the writes
    /// acknowledged at the origin that the node has not applied yet.
    fn start(
        local: &[LocalNode],
        seconds: f64,
        behind: impl Fn() -> u64 + Send + 'static,
    ) -> anyhow::Result<Stall> {
        let node = local.len();
        let pid = local[node - 1].child.id();
        signal(pid, "-STOP")?;
        let thaw = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            signal(pid, "-CONT")?;
            Ok(Instant::now())
        });
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let poll = tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                samples.push((Instant::now(), behind()));
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            samples
        });
        Ok(Stall {
            node,
            seconds,
            thaw,
            poll,
            stop,
        })
    }

    /// Called once the last write is sent: the figures up to then (the stall's end is awaited
    /// first if the writes ended sooner).
    async fn finish(self) -> anyhow::Result<Value> {
        let ended = Instant::now();
        let resumed = self.thaw.await??;
        let _ = self.stop.send(());
        let samples: Vec<(Instant, u64)> = self
            .poll
            .await?
            .into_iter()
            .filter(|(t, _)| *t <= ended)
            .collect();
        let within = samples
            .iter()
            .find(|(t, behind)| *t >= resumed && *behind <= CURRENT_WITHIN)
            .map(|(t, _)| t.duration_since(resumed).as_secs_f64());
        Ok(json!({
            "node": self.node,
            "seconds": self.seconds,
            "mostBehind": samples.iter().map(|s| s.1).max(),
            "currentAgainAfterSeconds": within,
            "behindAtLastWrite": samples.last().map(|s| s.1),
        }))
    }
}

/// Sends a signal to a local node (`kill -STOP`, `kill -CONT`).
fn signal(pid: u32, which: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill {which} {pid} failed");
    }
    Ok(())
}

/// Per-node CPU seconds and peak RSS (MiB).
fn proc_usage(pid: u32) -> Option<(f64, f64)> {
    process::usage(pid).map(|u| (u.cpu_seconds, u.peak_rss_mib))
}

/// A running node's CPU seconds and peak RSS (MiB), from its `/status`.
async fn status_usage(http: &str) -> (f64, f64) {
    let process = match client::request(http, "GET", "/status", None, None).await {
        Ok((200, body)) => {
            serde_json::from_str::<Value>(&body).unwrap_or_default()["process"].take()
        }
        _ => Value::Null,
    };
    let figure = |k: &str| process[k].as_f64().unwrap_or(f64::NAN);
    (figure("cpuSeconds"), figure("peakRssMiB"))
}

/// Frames, bytes and messages the nodes have sent each other so far, from their metrics;
/// `None` unless every node's metrics were read: with a node left out (a running node
/// without --target-http, or one that did not answer) the figures per write would come out
/// smaller than they are, not unknown.
async fn sent_totals(https: &[Option<String>]) -> Option<(f64, f64, f64)> {
    let (mut frames, mut bytes, mut sends) = (0.0, 0.0, 0.0);
    for h in https {
        let text = metrics_text(h.as_deref()?).await?;
        frames += metric_sum(&text, "slipstream_frames_sent_total");
        bytes += metric_sum(&text, "slipstream_bytes_sent_total");
        sends += metric_sum(&text, "slipstream_messages_sent_total");
    }
    Some((frames, bytes, sends))
}

/// A node's `/metrics` page, or `None` if it did not answer with one.
async fn metrics_text(http: &str) -> Option<String> {
    match client::request(http, "GET", "/metrics", None, None).await {
        Ok((200, text)) => Some(text),
        _ => None,
    }
}

/// The sum of the samples of metric `name` (over all its labels) in a Prometheus text page.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A node's commits so far and the storage operations they carried, from its metrics.
async fn commit_totals(http: &str) -> Option<(f64, f64)> {
    let text = metrics_text(http).await?;
    Some((
        metric_sum(&text, "slipstream_commit_batch_size_count"),
        metric_sum(&text, "slipstream_commit_batch_size_sum"),
    ))
}

/// One node's line of the report. Commits (since `before`, from its metrics) show group
/// commit at work: how many storage operations shared each commit (and fsync).
async fn node_report(
    i: usize,
    http: &str,
    before: Option<&(f64, f64)>,
    cpu: f64,
    rss: f64,
    applied: Option<&usize>,
) -> Value {
    let mut report = json!({
        "node": i + 1,
        "cpuSeconds": cpu,
        "peakRssMiB": rss,
        "applied": applied,
    });
    if let (Some((commits, ops)), Some(before)) = (commit_totals(http).await, before) {
        let (commits, ops) = (commits - before.0, ops - before.1);
        report["commits"] = json!(commits);
        report["opsPerCommit"] = json!(if commits > 0.0 { ops / commits } else { 0.0 });
    }
    report
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn app(url: &str) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    ws.send(WsMessage::Text(
        json!({"type": "HELLO", "instanceId": "bench", "role": "client", "protocolVersion": 1})
            .to_string()
            .into(),
    ))
    .await?;
    Ok(ws)
}

/// The messages of a frame (one object or an array of them), decoded as a node decodes
/// them; anything that does not decode is skipped.
fn items(text: &str) -> Vec<Message> {
    let roomy = Limits {
        max_frame_bytes: usize::MAX,
        max_batch: usize::MAX,
        ..Limits::default()
    };
    decode_frame(text, &roomy)
        .map(|all| all.into_iter().flatten().collect())
        .unwrap_or_default()
}

/// The indexes of the bench writes pushed in a frame, found by their keys
/// (`"key":"bench:<run>:<index>"`) without decoding the frame: the watchers read every write
/// once per node, and the client shares the cores with the nodes it measures. The pattern
/// cannot occur inside a JSON string value, where quotes are escaped.
fn pushed_indexes<'a>(
    frame: &'a str,
    prefix: &str,
    order: KeyOrder,
) -> impl Iterator<Item = usize> + 'a {
    let needle = format!("\"key\":\"{prefix}");
    let mut rest = frame;
    std::iter::from_fn(move || loop {
        let at = rest.find(&needle)? + needle.len();
        rest = &rest[at..];
        // The key must end right after its suffix.
        if let Some((idx, len)) = order.index(rest) {
            rest = &rest[len..];
            return Some(idx);
        }
    })
}

/// Marks the bench writes pushed in `frame` as applied at `now` in `slots` (one per write),
/// each once, and counts them in `count`; returns how many were new.
fn record_pushes(
    frame: &str,
    prefix: &str,
    order: KeyOrder,
    now: Instant,
    slots: &Mutex<Vec<Option<Instant>>>,
    count: &AtomicUsize,
) -> usize {
    let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
    let mut new = 0;
    for idx in pushed_indexes(frame, prefix, order) {
        if let Some(slot @ None) = slots.get_mut(idx) {
            *slot = Some(now);
            new += 1;
        }
    }
    count.fetch_add(new, Ordering::Relaxed);
    new
}

/// A frame of bench writes, written directly (the values need no escaping): keys in `order`,
/// message ids in `id_order`.
fn write_frame(
    prefix: &str,
    value: &str,
    ids: &str,
    range: std::ops::Range<usize>,
    order: KeyOrder,
    id_order: KeyOrder,
) -> String {
    let mut frame = String::with_capacity(range.len() * (value.len() + prefix.len() + 90) + 2);
    frame.push('[');
    for i in range {
        if frame.len() > 1 {
            frame.push(',');
        }
        frame.push_str(r#"{"type":"SK","key":""#);
        frame.push_str(prefix);
        order.suffix(i, &mut frame);
        frame.push_str(r#"","value":""#);
        frame.push_str(value);
        frame.push_str(r#"","messageId":""#);
        frame.push_str(ids);
        id_order.suffix(i, &mut frame);
        frame.push_str(r#""}"#);
    }
    frame.push(']');
    frame
}

/// How many writes a frame from the origin acknowledges; a `NACK` is an error.
fn acked_in(frame: &str) -> anyhow::Result<usize> {
    // The writing connection is an app too, so its node pushes it every write back: frames
    // without an ACK or NACK are those pushes, not decoded here (bench keys and values never
    // hold the text; the caller scans them for node 1's applied times).
    if !frame.contains("ACK\"") {
        return Ok(0);
    }
    let mut acked = 0;
    for m in items(frame) {
        match m.body {
            Body::Ack { message_ids } => acked += message_ids.len(),
            Body::Nack { error } => {
                let id = m.env.message_id.unwrap_or_default();
                bail!("write {id} rejected: {error}");
            }
            _ => {}
        }
    }
    Ok(acked)
}

/// Sends `--warmup` writes a frame at a time, each frame waited for, then waits until every
/// local node holds the last of them.
async fn warm_up(
    sink: &mut futures_util::stream::SplitSink<Ws, WsMessage>,
    stream: &mut futures_util::stream::SplitStream<Ws>,
    keys: &str,
    value: &str,
    ids: &str,
    https: &[Option<String>],
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let mut next = 0;
    while next < args.warmup {
        let count = args.batch.max(1).min(args.warmup - next);
        sink.send(WsMessage::Text(
            write_frame(keys, value, ids, next..next + count, args.keys, args.ids()).into(),
        ))
        .await?;
        let mut acked = 0;
        while acked < count {
            let frame = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .map_err(|_| anyhow!("no ACK within 30 s during the warm-up"))?;
            let t = match frame {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(_)) => continue,
                _ => bail!("the connection closed during the warm-up"),
            };
            acked += acked_in(t.as_str())?;
        }
        next += count;
    }
    let mut last = format!("/v1/keys/{keys}");
    args.keys.suffix(args.warmup - 1, &mut last);
    let deadline = Instant::now() + Duration::from_secs(30);
    for http in https.iter().flatten() {
        while !matches!(
            client::request(http, "GET", &last, None, None).await,
            Ok((200, _))
        ) {
            if Instant::now() > deadline {
                bail!("the warm-up writes did not reach {http} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

pub async fn run(args: BenchArgs) -> ExitCode {
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipstream bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.messages == 0 || args.window == 0 || args.batch == 0 {
        bail!("--messages, --window and --batch must be at least 1");
    }
    if let Some(secs) = args.stall {
        if !(secs.is_finite() && secs > 0.0) {
            bail!("--stall takes a number of seconds above 0");
        }
        if args.catch_up || args.nodes < 2 || !args.target.is_empty() {
            bail!(
                "--stall needs the local mesh (no --target) of at least 2 nodes, and no --catch-up"
            );
        }
    }
    if args.target.is_empty() && !args.target_http.is_empty() {
        bail!("--target-http needs --target");
    }
    let dir = tempfile::Builder::new()
        .prefix("slipstream-bench-")
        .tempdir()?;
    let mut local: Vec<LocalNode> = Vec::new();
    let (urls, https): (Vec<String>, Vec<Option<String>>) = if args.target.is_empty() {
        for i in 0..args.nodes.max(1) {
            let peers: Vec<String> = local.iter().map(|n| n.ws.clone()).collect();
            local.push(spawn_node(dir.path(), i, &peers, &args)?);
        }
        let want = local.len() - 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &local {
            loop {
                let (_, body) = client::request(&n.http, "GET", "/status", None, None).await?;
                let s: Value = serde_json::from_str(&body)?;
                let up = s["peers"]
                    .as_array()
                    .map(|p| p.iter().filter(|p| p["connected"] == true).count())
                    .unwrap_or(0);
                if up >= want {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the mesh did not connect: {s}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if args.catch_up {
            if local.len() < 2 {
                bail!("--catch-up needs at least 2 nodes");
            }
            let last = local.last_mut().expect("at least 2");
            let _ = last.child.kill();
            let _ = last.child.wait();
        }
        let live = if args.catch_up {
            &local[..local.len() - 1]
        } else {
            &local[..]
        };
        (
            live.iter().map(|n| n.ws.clone()).collect(),
            live.iter().map(|n| Some(n.http.clone())).collect(),
        )
    } else {
        if args.catch_up {
            bail!("--catch-up needs the local mesh (no --target)");
        }
        if !args.target_http.is_empty() && args.target_http.len() != args.target.len() {
            bail!(
                "--target-http is given {} times and --target {} times: give one HTTP address per target, in the same order",
                args.target_http.len(),
                args.target.len()
            );
        }
        let https = match args.target_http.is_empty() {
            true => args.target.iter().map(|_| None).collect(),
            false => args.target_http.iter().cloned().map(Some).collect(),
        };
        (args.target.clone(), https)
    };

    let n = args.messages;
    let run_id = std::process::id();
    let prefix = format!("bench:{run_id}:");
    let value = "x".repeat(args.value_size);

    // Writes applied so far on each node, and acknowledged at the origin: how far a node is
    // behind, known here without asking the nodes (a count from `/status` costs the origin a
    // scan of its outbox).
    let applied_count: Arc<Vec<AtomicUsize>> =
        Arc::new(urls.iter().map(|_| AtomicUsize::new(0)).collect());
    let acked_count = Arc::new(AtomicUsize::new(0));
    // One watcher per node: the time each write was applied there.
    let applied: Arc<Vec<Mutex<Vec<Option<Instant>>>>> =
        Arc::new(urls.iter().map(|_| Mutex::new(vec![None; n])).collect());
    let mut watchers = Vec::new();
    // Node 1's watcher is the writing connection itself (below): an app there is pushed every
    // write, and a second app would double the origin's pushes, which no real app pays for.
    for (i, url) in urls.iter().enumerate().skip(1) {
        let mut ws = app(url).await?;
        let applied = applied.clone();
        let applied_count = applied_count.clone();
        let prefix = prefix.clone();
        let order = args.keys;
        watchers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < n {
                // Pings (answered by the WebSocket layer) and other control frames are skipped.
                let t = match ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                let now = Instant::now();
                seen += record_pushes(
                    t.as_str(),
                    &prefix,
                    order,
                    now,
                    &applied[i],
                    &applied_count[i],
                );
            }
            seen
        }));
    }
    // The writer.
    let (mut sink, mut stream) = app(&urls[0]).await?.split();
    let ids = format!("b{run_id}-");
    if args.warmup > 0 && !args.catch_up {
        // Keys outside the watched prefix, ids of their own.
        let keys = format!("{prefix}warmup:");
        let warm_ids = format!("w{run_id}-");
        warm_up(
            &mut sink,
            &mut stream,
            &keys,
            &value,
            &warm_ids,
            &https,
            &args,
        )
        .await?;
    }
    // Traffic and CPU from here on. The client's own CPU (its threads only): it shares the
    // machine with the nodes.
    let sent_before = sent_totals(&https).await;
    let mut commits_before: HashMap<String, (f64, f64)> = HashMap::new();
    for h in https.iter().flatten() {
        if let Some(totals) = commit_totals(h).await {
            commits_before.insert(h.clone(), totals);
        }
    }
    let client_before = proc_usage(std::process::id()).map_or(f64::NAN, |u| u.0);
    let before_cpu: HashMap<u32, f64> = local
        .iter()
        .filter_map(|l| Some((l.child.id(), proc_usage(l.child.id())?.0)))
        .collect();
    // Running nodes (--target-http): their CPU and memory from their /status.
    let target_https: Vec<String> = match local.is_empty() {
        true => https.iter().flatten().cloned().collect(),
        false => Vec::new(),
    };
    let mut target_cpu_before = Vec::new();
    for h in &target_https {
        target_cpu_before.push(status_usage(h).await.0);
    }
    let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.window));
    // The writing connection's reader: it counts the ACKs, which free the window, and, as
    // node 1's watcher, the pushes of the writes applied there. It hands over the ACK count
    // (and when the last came) once every write is acknowledged, and goes on until every
    // write was pushed too, as the other watchers do.
    let (acks_tx, acker) = tokio::sync::oneshot::channel::<anyhow::Result<(usize, Instant)>>();
    watchers.insert(0, {
        let in_flight = in_flight.clone();
        let acked_count = acked_count.clone();
        let applied = applied.clone();
        let applied_count = applied_count.clone();
        let prefix = prefix.clone();
        let order = args.keys;
        tokio::spawn(async move {
            let mut acks_tx = Some(acks_tx);
            let (mut acked, mut last, mut seen) = (0usize, Instant::now(), 0usize);
            while acked < n || seen < n {
                let t = match stream.next().await {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                let now = Instant::now();
                let count = match acked_in(t.as_str()) {
                    Ok(count) => count,
                    Err(e) => {
                        if let Some(tx) = acks_tx.take() {
                            let _ = tx.send(Err(e));
                        }
                        break;
                    }
                };
                if count > 0 {
                    acked += count;
                    acked_count.fetch_add(count, Ordering::Relaxed);
                    in_flight.add_permits(count);
                    last = now;
                    if acked >= n {
                        if let Some(tx) = acks_tx.take() {
                            let _ = tx.send(Ok((acked, last)));
                        }
                    }
                }
                seen += record_pushes(
                    t.as_str(),
                    &prefix,
                    order,
                    now,
                    &applied[0],
                    &applied_count[0],
                );
            }
            // The connection closed first: what was acknowledged so far.
            if let Some(tx) = acks_tx.take() {
                let _ = tx.send(Ok((acked, last)));
            }
            seen
        })
    });
    let start = Instant::now();
    let show = !args.json;
    // The origin's resident memory at every tenth of the writes.
    let mut origin_rss: Vec<f64> = Vec::new();
    let mut stall: Option<Stall> = None;
    let mut next = 0;
    // How far the sends fell behind `--rate`'s schedule, at most.
    let mut behind_schedule = Duration::ZERO;
    if args.rate > 0 {
        // Latency counts from each write's scheduled time (below), so a sleep that wakes late
        // would add to it: Linux lets a sleeping thread wake up to 50 µs late unless told.
        // SAFETY: prctl with PR_SET_TIMERSLACK only sets this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    }
    while next < n {
        if let (Some(secs), None) = (args.stall, &stall) {
            if next >= n / 3 {
                let behind = {
                    let (acked, applied) = (acked_count.clone(), applied_count.clone());
                    let last = applied.len() - 1;
                    move || {
                        let acked = acked.load(Ordering::Relaxed);
                        acked.saturating_sub(applied[last].load(Ordering::Relaxed)) as u64
                    }
                };
                stall = Some(Stall::start(&local, secs, behind)?);
            }
        }
        let count = args.batch.min(n - next);
        // ACKs free the window; if they stop (the connection closed), say so instead of
        // waiting forever.
        tokio::time::timeout(
            Duration::from_secs(120),
            in_flight.acquire_many(count as u32),
        )
        .await
        .map_err(|_| anyhow!("ACKs stopped coming after {next} writes"))??
        .forget();
        let mut scheduled = None;
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(next as f64 / args.rate as f64);
            // Tokio's timer counts whole milliseconds: at 10,000 writes/s it would let ten
            // writes out together every millisecond. The last stretch before each write is
            // slept on this thread (the runtime's own, not a worker's), so the writes go out
            // evenly, as from apps publishing one at a time.
            let tick = Duration::from_millis(1);
            if due > Instant::now() + 2 * tick {
                tokio::time::sleep_until((due - tick).into()).await;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            scheduled = Some(due);
        }
        let frame = write_frame(
            &prefix,
            &value,
            &ids,
            next..next + count,
            args.keys,
            args.ids(),
        );
        let now = Instant::now();
        // At a fixed rate a write's latency counts from when it was due, not from when it
        // went out: an app publishing at that rate would have waited for the window (or a
        // socket that pushed back) too, and counting from the late send would hide that wait
        // (coordinated omission).
        let published = match scheduled {
            Some(due) => {
                behind_schedule = behind_schedule.max(now.saturating_duration_since(due));
                due.min(now)
            }
            None => now,
        };
        {
            let mut s = sent_at.lock().unwrap_or_else(|p| p.into_inner());
            for slot in &mut s[next..next + count] {
                *slot = Some(published);
            }
        }
        sink.send(WsMessage::Text(frame.into())).await?;
        if next * 10 / n != (next + count) * 10 / n {
            if let Some(u) = local.first().and_then(|l| process::usage(l.child.id())) {
                origin_rss.push(u.rss_mib);
            }
        }
        next += count;
        if show && next % (n / 20).max(1) < count {
            let bar = "#".repeat(next * 30 / n);
            eprint!("\r[{bar:<30}] {next}/{n} sent");
            let _ = std::io::stderr().flush();
        }
    }
    let stall = match stall {
        Some(s) => s.finish().await?,
        None => Value::Null,
    };
    let (acked, last_ack) = tokio::time::timeout(Duration::from_secs(120), acker)
        .await
        .map_err(|_| anyhow!("ACKs stopped coming"))?
        .map_err(|_| anyhow!("the writing connection's reader ended"))??;
    if acked < n {
        bail!("the origin closed the connection after {acked} of {n} acknowledgements");
    }
    let acked_secs = last_ack.duration_since(start).as_secs_f64();
    let mut complete = true;
    let mut seen_per_node = Vec::new();
    for (i, w) in watchers.into_iter().enumerate() {
        // A watcher that gave up or timed out still counted what it saw.
        let counted = || applied_count[i].load(Ordering::Relaxed);
        let seen = tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .map(|r| r.unwrap_or_else(|_| counted()))
            .unwrap_or_else(|_| counted());
        complete &= seen == n;
        seen_per_node.push(seen);
    }
    if show {
        eprintln!(
            "\r[{:<30}] {n}/{n} applied everywhere: {complete}",
            "#".repeat(30)
        );
    }

    let sent = sent_at.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut latencies = Vec::with_capacity(n);
    // Publish to applied on each node: splits the latency into the origin's commit and the
    // replicas' hop.
    let mut per_node: Vec<Vec<f64>> = vec![Vec::with_capacity(n); applied.len()];
    let mut last_applied = start;
    for (i, published) in sent.iter().enumerate() {
        let everywhere = applied
            .iter()
            .map(|a| a.lock().unwrap_or_else(|p| p.into_inner())[i])
            .collect::<Option<Vec<_>>>();
        if let (Some(p), Some(times)) = (published, everywhere) {
            let ms = |t: Instant| t.duration_since(*p).as_secs_f64() * 1000.0;
            for (node, t) in per_node.iter_mut().zip(&times) {
                node.push(ms(*t));
            }
            let done = times.into_iter().max().unwrap_or(*p);
            last_applied = last_applied.max(done);
            latencies.push(ms(done));
        }
    }
    let by_rank = |a: &f64, b: &f64| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal);
    latencies.sort_by(by_rank);
    for l in &mut per_node {
        l.sort_by(by_rank);
    }
    let applied_secs = last_applied.duration_since(start).as_secs_f64();
    // Per write; `None` when some node's metrics are not known (see `sent_totals`).
    let traffic = match (sent_before, sent_totals(&https).await) {
        (Some(b), Some(a)) => Some((
            (a.0 - b.0) / n as f64,
            (a.1 - b.1) / n as f64,
            (a.2 - b.2) / n as f64,
        )),
        _ => None,
    };
    // The run's own figures, taken before any catch-up: the catch-up has its own (below).
    let client_cpu = proc_usage(std::process::id()).map_or(f64::NAN, |u| u.0) - client_before;
    let mut nodes: Vec<Value> = Vec::new();
    for (i, h) in target_https.iter().enumerate() {
        let (cpu, rss) = status_usage(h).await;
        let cpu = cpu - target_cpu_before[i];
        let before = commits_before.get(h);
        nodes.push(node_report(i, h, before, cpu, rss, seen_per_node.get(i)).await);
    }
    for (i, l) in local.iter().enumerate() {
        let (cpu, rss) = proc_usage(l.child.id()).unwrap_or((f64::NAN, f64::NAN));
        let cpu = cpu - before_cpu.get(&l.child.id()).copied().unwrap_or(0.0);
        let before = commits_before.get(&l.http);
        nodes.push(node_report(i, &l.http, before, cpu, rss, seen_per_node.get(i)).await);
    }
    for (i, l) in per_node.iter().enumerate() {
        let figures = json!({"p50": percentile(l, 0.50), "p99": percentile(l, 0.99)});
        match nodes.get_mut(i) {
            Some(node) => node["appliedLatencyMs"] = figures,
            None => nodes.push(json!({"node": i + 1, "applied": seen_per_node.get(i), "appliedLatencyMs": figures})),
        }
    }
    // Catch-up: the killed node starts again on its data and fetches what it missed.
    let catch_up = if args.catch_up {
        let i = local.len() - 1;
        let outbox = match client::request(&local[0].http, "GET", "/status", None, None).await {
            Ok((_, body)) => serde_json::from_str::<Value>(&body)
                .map(|s| s["outboxDepth"].clone())
                .unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if show {
            eprintln!("restarting node {} to catch up on {n} writes", i + 1);
        }
        let peers: Vec<String> = local[..i].iter().map(|l| l.ws.clone()).collect();
        let began = Instant::now();
        local[i] = spawn_node(dir.path(), i, &peers, &args)?;
        let deadline = began + Duration::from_secs(600);
        // Polled with a read of the last write's key, which costs the node next to nothing;
        // its journal is counted (a scan of a million rows, which would slow the very catch-up
        // being measured) only once that key is there, to make sure nothing before it is
        // missing.
        let mut last_key = format!("/v1/keys/{prefix}");
        args.keys.suffix(n - 1, &mut last_key);
        let mut have = 0;
        loop {
            let last_there = matches!(
                client::request(&local[i].http, "GET", &last_key, None, None).await,
                Ok((200, _))
            );
            if last_there {
                have = match client::request(&local[i].http, "GET", "/status", None, None).await {
                    Ok((_, body)) => serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|s| s["journalMessages"].as_u64())
                        .unwrap_or(0),
                    Err(_) => 0,
                };
                if have >= n as u64 {
                    break;
                }
            }
            if Instant::now() > deadline {
                match last_there {
                    true => bail!(
                        "node {} caught up on {have} of {n} writes in 10 minutes",
                        i + 1
                    ),
                    false => bail!("node {} did not get the last write in 10 minutes", i + 1),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let secs = began.elapsed().as_secs_f64();
        json!({
            "writes": n,
            "originOutboxBeforeRestart": outbox,
            "originRssMiBWhileBacklogGrew": origin_rss,
            "seconds": secs,
            "writesPerSecond": n as f64 / secs,
            // From its start: start-up, then the catch-up.
            "returningNodeCpuSeconds": proc_usage(local[i].child.id()).map(|u| u.0),
        })
    } else {
        Value::Null
    };
    let report = json!({
        // The mesh's nodes, the one a catch-up run kills included.
        "nodes": urls.len().max(local.len()),
        "messages": n,
        "valueSize": args.value_size,
        "keys": args.keys.to_possible_value().map(|v| v.get_name().to_owned()),
        "ids": args.ids().to_possible_value().map(|v| v.get_name().to_owned()),
        "window": args.window,
        "batch": args.batch,
        "rate": args.rate,
        // Running nodes run with the workers they were started with.
        "nodeWorkers": if local.is_empty() { Value::Null } else { json!(args.node_workers) },
        "warmup": if args.catch_up { 0 } else { args.warmup },
        "acked": acked,
        "ackedPerSecond": n as f64 / acked_secs,
        "appliedOnAllPerSecond": n as f64 / applied_secs,
        "latencyMs": {
            "p50": percentile(&latencies, 0.50), "p99": percentile(&latencies, 0.99),
            "p999": percentile(&latencies, 0.999), "max": latencies.last().copied().unwrap_or(f64::NAN),
        },
        // With --rate: how late the latest write went out against its schedule (the window
        // was full, or the origin's socket pushed back); its wait is in the latency figures.
        "behindScheduleMsMax": if args.rate > 0 { json!(behind_schedule.as_secs_f64() * 1000.0) } else { Value::Null },
        "framesPerWrite": traffic.map(|t| t.0),
        "messagesSentPerWrite": traffic.map(|t| t.2),
        "bytesPerWrite": traffic.map(|t| t.1),
        "perNode": nodes,
        "clientCpuSeconds": client_cpu,
        "catchUp": catch_up,
        "stall": stall,
        "everyNodeHoldsEveryWrite": complete,
    });
    if args.json {
        println!("{report}");
    } else {
        let l = &report["latencyMs"];
        println!(
            "nodes {}  workers per node {}  writes {} of {} bytes, {} keys, {} ids  window {}  batch {}  rate {}",
            report["nodes"],
            match report["nodeWorkers"].as_u64() {
                None => "as started".to_owned(),
                Some(0) => "default".to_owned(),
                Some(w) => w.to_string(),
            },
            n,
            args.value_size,
            report["keys"].as_str().unwrap_or_default(),
            report["ids"].as_str().unwrap_or_default(),
            args.window,
            args.batch,
            if args.rate == 0 {
                "max".into()
            } else {
                args.rate.to_string()
            }
        );
        println!(
            "acknowledged at the origin   {:>10.0} writes/s",
            report["ackedPerSecond"].as_f64().unwrap_or(0.0)
        );
        println!(
            "applied on every node        {:>10.0} writes/s",
            report["appliedOnAllPerSecond"].as_f64().unwrap_or(0.0)
        );
        println!(
            "publish to applied on all    p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            l["p50"].as_f64().unwrap_or(f64::NAN),
            l["p99"].as_f64().unwrap_or(f64::NAN),
            l["p999"].as_f64().unwrap_or(f64::NAN),
            l["max"].as_f64().unwrap_or(f64::NAN)
        );
        if let Some(late) = report["behindScheduleMsMax"].as_f64() {
            println!(
                "sent behind the rate's schedule by at most {late:.2} ms (latency counts from each write's scheduled time)"
            );
        }
        match traffic {
            Some((frames, bytes, sends)) => println!(
                "sent between nodes per write: {sends:.2} messages in {frames:.3} frames, {bytes:.0} bytes"
            ),
            None => println!(
                "sent between nodes per write: not known (every node's metrics are needed: --target-http for each --target)"
            ),
        }
        for node in &nodes {
            let mut line = format!("node {}:", node["node"]);
            let l = &node["appliedLatencyMs"];
            if let (Some(p50), Some(p99)) = (l["p50"].as_f64(), l["p99"].as_f64()) {
                line += &format!(" applied p50 {p50:.2} ms p99 {p99:.2} ms;");
            }
            match (node["cpuSeconds"].as_f64(), node["peakRssMiB"].as_f64()) {
                (Some(cpu), Some(rss)) => {
                    line += &format!(" cpu {cpu:.2} s, peak RSS {rss:.1} MiB,");
                }
                _ => line += " cpu and memory not known (running node without --target-http);",
            }
            if let Some(commits) = node["commits"].as_f64() {
                line += &format!(
                    " {commits} commits of {:.1} operations",
                    node["opsPerCommit"].as_f64().unwrap_or(0.0)
                );
            }
            println!("{}", line.trim_end_matches([',', ';']));
        }
        println!("bench client: cpu {client_cpu:.2} s");
        println!(
            "every node holds every write: {}",
            if complete { "yes" } else { "NO" }
        );
        let c = &report["catchUp"];
        if !c.is_null() {
            println!(
                "catch-up: {} writes in {:.1} s = {:.0} writes/s; origin outbox before: {}; origin RSS while the backlog grew (MiB): {}",
                c["writes"],
                c["seconds"].as_f64().unwrap_or(f64::NAN),
                c["writesPerSecond"].as_f64().unwrap_or(f64::NAN),
                c["originOutboxBeforeRestart"],
                c["originRssMiBWhileBacklogGrew"]
            );
        }
    }
    let st = &report["stall"];
    if show && !st.is_null() {
        let caught_up = match st["currentAgainAfterSeconds"].as_f64() {
            Some(secs) => format!("{secs:.1} s after it resumed"),
            None => "not while the writes went on".into(),
        };
        println!(
            "stall: node {} frozen {} s; at most {} writes behind; within {CURRENT_WITHIN} writes of the origin again {caught_up}; {} behind when the last write was sent",
            st["node"], st["seconds"], st["mostBehind"], st["behindAtLastWrite"]
        );
    }
    if !complete {
        bail!("not every node applied every write: {seen_per_node:?} of {n}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_summed_over_its_labels_and_not_confused_with_a_longer_name() {
        let page = "# HELP slipstream_frames_sent_total Frames\n\
            # TYPE slipstream_frames_sent_total counter\n\
            slipstream_frames_sent_total{peer=\"a\"} 3\n\
            slipstream_frames_sent_total{peer=\"b\"} 4.5\n\
            slipstream_frames_sent_total_extra 100\n\
            slipstream_commit_batch_size_sum 7\n\
            slipstream_commit_batch_size_count 2\n";
        assert_eq!(metric_sum(page, "slipstream_frames_sent_total"), 7.5);
        assert_eq!(metric_sum(page, "slipstream_commit_batch_size_count"), 2.0);
        assert_eq!(metric_sum(page, "slipstream_bytes_sent_total"), 0.0);
    }

    #[test]
    fn percentiles_pick_the_right_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 500.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn pushed_writes_are_found_by_key_and_written_frames_decode() {
        let seq = KeyOrder::Sequential;
        let frame = write_frame("bench:7:", "xx", "b7-", 40..43, seq, seq);
        let decoded = items(&frame);
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[2].key(), Some("bench:7:42"));
        assert_eq!(decoded[2].env.message_id.as_deref(), Some("b7-42"));
        assert_eq!(
            pushed_indexes(&frame, "bench:7:", seq).collect::<Vec<_>>(),
            vec![40, 41, 42]
        );
        // Another run's keys, a longer key and a quoted pattern inside a value do not count.
        let other = r#"[{"key":"bench:8:1"},{"key":"bench:7:5x"},{"value":"\"key\":\"bench:7:9\""},{"key":"bench:7:6"}]"#;
        assert_eq!(
            pushed_indexes(other, "bench:7:", seq).collect::<Vec<_>>(),
            vec![6]
        );
        let ack = r#"{"type":"ACK","messageIds":["a","b"]}"#;
        let sk = r#"{"type":"SK","key":"bench:7:3","value":"v"}"#;
        assert_eq!(items(&format!("[{ack},{sk}]")).len(), 2);
        assert_eq!(items(sk)[0].key(), Some("bench:7:3"));
        assert!(items(r#"{"a":1}"#).is_empty());
    }

    #[test]
    fn random_keys_are_out_of_order_and_give_back_their_index() {
        let random = KeyOrder::Random;
        let frame = write_frame("bench:7:", "xx", "b7-", 0..1000, random, random);
        let decoded = items(&frame);
        let keys: Vec<&str> = decoded.iter().filter_map(|m| m.key()).collect();
        assert_eq!(keys.len(), 1000);
        // Neither the keys nor the message ids come in sorted order, and none repeats.
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
        assert_ne!(sorted, keys);
        let ids: Vec<&str> = decoded
            .iter()
            .filter_map(|m| m.env.message_id.as_deref())
            .collect();
        assert!(ids.windows(2).any(|w| w[0] > w[1]));
        assert_eq!(
            pushed_indexes(&frame, "bench:7:", random).collect::<Vec<_>>(),
            (0..1000).collect::<Vec<_>>()
        );
        // Too few digits (a sequential key) or upper-case ones are not a random key's suffix;
        // any 16 lower-case hex digits are.
        let other = r#"[{"key":"bench:7:42"},{"key":"bench:7:00000000000000AB"},{"key":"bench:7:0000000000000001"}]"#;
        assert_eq!(
            pushed_indexes(other, "bench:7:", random).collect::<Vec<_>>(),
            vec![UNSPREAD as usize]
        );
        assert_eq!(SPREAD.wrapping_mul(UNSPREAD), 1);
    }

    /// `--ids sequential` with random keys: the keys stay out of order and are still found,
    /// the message ids count up.
    #[test]
    fn message_ids_can_be_ordered_apart_from_the_keys() {
        let (random, seq) = (KeyOrder::Random, KeyOrder::Sequential);
        let frame = write_frame("bench:7:", "xx", "b7-", 8..12, random, seq);
        let decoded = items(&frame);
        let ids: Vec<&str> = decoded
            .iter()
            .filter_map(|m| m.env.message_id.as_deref())
            .collect();
        assert_eq!(ids, ["b7-8", "b7-9", "b7-10", "b7-11"]);
        let keys: Vec<&str> = decoded.iter().filter_map(|m| m.key()).collect();
        assert!(
            keys.iter().all(|k| k.len() == "bench:7:".len() + 16),
            "{keys:?}"
        );
        assert_eq!(
            pushed_indexes(&frame, "bench:7:", random).collect::<Vec<_>>(),
            vec![8, 9, 10, 11]
        );
    }
}
