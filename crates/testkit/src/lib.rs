//! Test kit: real `slipstream` node processes on free ports in temp dirs, a small HTTP client,
//! a WebSocket client that speaks as a local app or a peer, and a deadline-based wait.
//!
//! Nodes are separate processes so that fault tests can SIGKILL them and restart them on the
//! same data folder. Every node is killed when its `TestNode` is dropped.

use std::collections::HashSet;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How a node is started.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// WebSocket URLs of peers to dial (`URL_CONFIG`).
    pub peers: Vec<String>,
    /// Extra environment variables, applied last.
    pub env: Vec<(String, String)>,
}

impl NodeOptions {
    pub fn dialing(peers: &[&TestNode]) -> Self {
        NodeOptions {
            peers: peers.iter().map(|n| n.ws_url()).collect(),
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A running node process.
pub struct TestNode {
    bin: PathBuf,
    dir: Arc<tempfile::TempDir>,
    opts: NodeOptions,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub id: String,
}

impl TestNode {
    /// Starts a node on free ports in a new temp dir. `bin` is the `slipstream` binary
    /// (`env!("CARGO_BIN_EXE_slipstream")` in the binary's tests).
    pub fn start(bin: impl Into<PathBuf>, opts: NodeOptions) -> Result<TestNode> {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("slipstream-test-")
                .tempdir()?,
        );
        let mut node = TestNode {
            bin: bin.into(),
            dir,
            opts,
            child: None,
            logs: Arc::default(),
            ws_addr: "127.0.0.1:0".parse()?,
            http_addr: "127.0.0.1:0".parse()?,
            id: String::new(),
        };
        // Ports a restart can have again (see `restartable_port`). Another test may take the
        // same one between the check and the node's bind: then other ports are tried.
        let mut tries = 0;
        loop {
            node.ws_addr.set_port(restartable_port()?);
            node.http_addr.set_port(restartable_port()?);
            match node.spawn() {
                Err(e) if tries < 5 && e.to_string().contains("Address already in use") => {
                    tries += 1;
                    node.logs.lock().unwrap().clear();
                }
                r => return r.map(|()| node),
            }
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let peers: Vec<Value> = self
            .opts
            .peers
            .iter()
            .map(|u| json!({ "url": u }))
            .collect();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .env("SLIPSTREAM_STORAGE_PATH", self.dir.path())
            .env("SLIPSTREAM_LISTEN", self.ws_addr.to_string())
            .env("METRICS_PORT", self.http_addr.port().to_string())
            .env("SLIPSTREAM_METRICS_HOST", "127.0.0.1")
            .env("SLIPSTREAM_RETRY_IN_N_SECONDS", "0.2")
            .env("SLIPSTREAM_HEARTBEAT_SECONDS", "1")
            .env("ENABLE_MESSAGE_LOGS", "false")
            .env("URL_CONFIG", serde_json::to_string(&peers)?)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let logs = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send(v);
                    }
                }
                logs.lock().unwrap().push(line);
            }
        });
        let logs = self.logs.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                logs.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        let listening = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            // Its last words (why it did not start) are read before they are reported.
            let _ = child.kill();
            let _ = child.wait();
            let _ = stderr_reader.join();
            anyhow!(
                "node did not start; its output:\n{}",
                self.logs.lock().unwrap().join("\n")
            )
        })?;
        let field = |name: &str| -> Result<String> {
            listening[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("listening line lacks {name}: {listening}"))
        };
        self.ws_addr = field("ws_addr")?.parse()?;
        self.http_addr = field("http_addr")?.parse()?;
        self.id = field("instance_id")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.ws_addr)
    }

    /// The `wss://` URL of a node serving TLS (its test certificate names `localhost`).
    pub fn wss_url(&self) -> String {
        format!("wss://localhost:{}", self.ws_addr.port())
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the process with SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        self.signal("-TERM")?;
        let mut c = self.child.take().expect("signalled, so running");
        Ok(c.wait()?.code())
    }

    /// Freezes the process with SIGSTOP: its connections stay open but it reads, answers and
    /// acknowledges nothing, as a node stalled by its machine would, until [`TestNode::resume`].
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, which: &str) -> Result<()> {
        let Some(c) = &self.child else {
            bail!("not running")
        };
        let status = Command::new("kill")
            .arg(which)
            .arg(c.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill {which} failed");
        }
        Ok(())
    }

    /// Changes how the next `restart` starts the node.
    pub fn set_options(&mut self, opts: NodeOptions) {
        self.opts = opts;
    }

    /// Starts the node again on the same data folder and the same ports.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Waits until the node has printed a line containing `needle` (its output is read by a
    /// thread, so a line written a moment ago may not be here yet).
    pub async fn wait_for_log(&self, needle: &str) {
        eventually(
            &format!("{} logs {needle:?}", self.id),
            Duration::from_secs(30),
            || async {
                if self.logs().contains(needle) {
                    Ok(())
                } else {
                    Err("not logged yet".into())
                }
            },
        )
        .await;
    }

    /// Everything the node printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub async fn http(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value)> {
        http_request(self.http_addr, method, path, body).await
    }

    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let (status, v) = self.http("GET", path, None).await?;
        if status != 200 {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    /// The stored value of a key, or `None` on 404.
    pub async fn key(&self, key: &str) -> Result<Option<Value>> {
        let (status, v) = self.http("GET", &format!("/v1/keys/{key}"), None).await?;
        match status {
            200 => Ok(Some(v)),
            404 => Ok(None),
            _ => bail!("GET key {key}: {status} {v}"),
        }
    }

    pub async fn status(&self) -> Result<Value> {
        self.get_json("/status").await
    }

    /// One sample of a Prometheus metric (name with labels exactly as printed), 0 if absent.
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        let (status, text) = http_raw(self.http_addr, "GET", "/metrics", None).await?;
        if status != 200 {
            bail!("GET /metrics: {status}");
        }
        Ok(text
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap_or(f64::NAN))
            .unwrap_or(0.0))
    }

    /// Waits until this node reports `n` connected peers.
    /// Waits until this node holds every (key, value) of `writes`.
    pub async fn wait_has_all(&self, writes: &[(String, String)]) {
        eventually(
            &format!("{} holds all {} writes", self.id, writes.len()),
            Duration::from_secs(60),
            || async {
                for (k, v) in writes {
                    match self.key(k).await.map_err(|e| e.to_string())? {
                        Some(got) if got["value"] == v.as_str() => {}
                        other => return Err(format!("{k}: {other:?}")),
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    /// This node's `/status` entry for the peer with instance id `id`.
    pub async fn peer_status(&self, id: &str) -> Result<Option<Value>> {
        let status = self.status().await?;
        Ok(status["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"] == id)
            .cloned())
    }

    /// Waits until this node reports no connection to the peer `id`.
    pub async fn wait_disconnected_from(&self, id: &str) {
        eventually(
            &format!("{} sees {id} gone", self.id),
            Duration::from_secs(60),
            || async {
                match self.peer_status(id).await.map_err(|e| e.to_string())? {
                    Some(p) if p["connected"] == true => Err("still connected".into()),
                    _ => Ok(()),
                }
            },
        )
        .await;
    }

    pub async fn wait_connected(&self, n: usize) {
        eventually(
            &format!("{} has {n} connected peers", self.id),
            Duration::from_secs(30),
            || async {
                let s = self.status().await.map_err(|e| e.to_string())?;
                let connected = s["peers"]
                    .as_array()
                    .map(|p| p.iter().filter(|p| p["connected"] == true).count())
                    .unwrap_or(0);
                if connected >= n {
                    Ok(())
                } else {
                    Err(format!("{connected} connected: {s}"))
                }
            },
        )
        .await;
    }

    /// Waits until this node's outbox is empty (every delivery acknowledged or dead).
    pub async fn wait_drained(&self) {
        eventually(
            &format!("{} outbox drained", self.id),
            Duration::from_secs(60),
            || async {
                let s = self.status().await.map_err(|e| e.to_string())?;
                if s["outboxDepth"] == 0 {
                    Ok(())
                } else {
                    Err(format!("outbox: {}", s["outboxDepth"]))
                }
            },
        )
        .await;
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    Ok(slipstream_node::http::client::request(&addr.to_string(), method, path, body, None).await?)
}

/// One HTTP/1.1 request with `Connection: close`; the body is parsed as JSON.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Value)> {
    let (status, text) = http_raw(addr, method, path, body).await?;
    let v = serde_json::from_str(&text)
        .with_context(|| format!("response to {method} {path} is not JSON: {text}"))?;
    Ok((status, v))
}

/// Polls `check` until it returns `Ok`, or panics after `timeout` with its last error.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for: {what}\nlast state: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client: a local app (`role: client`), a peer, or anything a test makes up.
pub struct WsClient {
    ws: Ws,
    /// Messages read while waiting for something else.
    pub seen: Vec<Value>,
}

impl WsClient {
    /// Connects and sends nothing.
    pub async fn connect_raw(url: &str) -> Result<WsClient> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(WsClient {
            ws,
            seen: Vec::new(),
        })
    }

    /// Connects as a local app.
    pub async fn app(url: &str) -> Result<WsClient> {
        let mut c = Self::connect_raw(url).await?;
        c.send(&json!({"type": "HELLO", "instanceId": "test-app", "role": "client", "protocolVersion": 1})).await?;
        Ok(c)
    }

    /// Connects as a peer node with the given id.
    pub async fn peer(url: &str, id: &str) -> Result<WsClient> {
        let mut c = Self::connect_raw(url).await?;
        c.send(&json!({"type": "HELLO", "instanceId": id, "role": "peer", "protocolVersion": 1, "tags": []})).await?;
        Ok(c)
    }

    pub async fn send(&mut self, v: &Value) -> Result<()> {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws
            .send(WsMessage::Text(text.to_owned().into()))
            .await?;
        Ok(())
    }

    /// The next message (frames holding arrays are split), within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Value> {
        if !self.seen.is_empty() {
            return Ok(self.seen.remove(0));
        }
        let next = async {
            loop {
                match self.ws.next().await {
                    None => bail!("connection closed"),
                    Some(Err(e)) => bail!("connection error: {e}"),
                    Some(Ok(WsMessage::Text(t))) => {
                        return Ok(serde_json::from_str::<Value>(t.as_str())?)
                    }
                    Some(Ok(WsMessage::Close(f))) => bail!("connection closed by the node: {f:?}"),
                    Some(Ok(_)) => continue,
                }
            }
        };
        let v = tokio::time::timeout(timeout, next)
            .await
            .map_err(|_| anyhow!("nothing received within {timeout:?}"))??;
        match v {
            Value::Array(items) => {
                let mut items = items.into_iter();
                let first = items.next().ok_or_else(|| anyhow!("empty array frame"))?;
                self.seen.extend(items);
                Ok(first)
            }
            v => Ok(v),
        }
    }

    /// Reads until `pick` matches; other messages are dropped.
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        pick: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.recv(left).await?;
            if pick(&v) {
                return Ok(v);
            }
        }
    }

    /// Publishes SK writes in one array frame and waits until every one is acknowledged.
    pub async fn publish(&mut self, writes: &[(String, String)]) -> Result<()> {
        let mut ids = HashSet::new();
        let msgs: Vec<Value> = writes
            .iter()
            .map(|(k, v)| {
                // Unique across every client of the test process: two writes with one id (and
                // group) are one write to the mesh, by design.
                let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let id = format!("w-{}-{n}-{k}", std::process::id());
                ids.insert(id.clone());
                json!({"type": "SK", "key": k, "value": v, "messageId": id})
            })
            .collect();
        self.send(&Value::Array(msgs)).await?;
        while !ids.is_empty() {
            let v = self.recv(Duration::from_secs(30)).await?;
            match v["type"].as_str() {
                Some("ACK") => {
                    for id in ack_ids(&v) {
                        ids.remove(&id);
                    }
                }
                // A NACK for one of these writes fails the publish; others (for earlier,
                // invalid frames) are not about them.
                Some("NACK") if v["messageId"].as_str().is_some_and(|id| ids.contains(id)) => {
                    bail!("write rejected: {v}")
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The ids an ACK acknowledges (`messageId` and `messageIds`).
pub fn ack_ids(ack: &Value) -> Vec<String> {
    let mut ids: Vec<String> = ack["messageIds"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(id) = ack["messageId"].as_str() {
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_owned());
        }
    }
    ids
}

/// A free loopback port below the kernel's range of ephemeral ports
/// (`/proc/sys/net/ipv4/ip_local_port_range`), for a process that is killed and started again
/// on the same port. A port found by binding port 0 comes from that range, and while its
/// process is down, any connection opened on the machine may be given it as its local port;
/// the restart then fails with "address already in use" (it happened to a test's node). Falls
/// back to such a port where the range leaves no room below it.
pub fn restartable_port() -> Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let from = 10_000u16;
    if low > from + 1_000 {
        for attempt in 0..200u32 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(attempt);
            let port = from + (h.finish() % u64::from(low - from)) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A real `redis-server` on a free loopback port, in a temp dir, with an append-only file
/// synced on every write (so a SIGKILL loses nothing Redis acknowledged). Killed on drop.
pub struct RedisServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> Result<RedisServer> {
        let mut last = None;
        for _ in 0..5 {
            // A free port, released and handed to Redis (which cannot pick port 0); one that a
            // restart can have again.
            let port = restartable_port()?;
            let mut server = RedisServer {
                dir: tempfile::Builder::new()
                    .prefix("slipstream-redis-")
                    .tempdir()?,
                child: None,
                port,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("redis-server did not start")))
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .args(["--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (install the Debian package redis-server)")?;
        self.child = Some(child);
        let client = redis::Client::open(self.url())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                bail!("redis-server exited: {status}");
            }
            if std::time::Instant::now() > deadline {
                self.kill();
                bail!("redis-server did not answer PING on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn connection(&self) -> Result<redis::Connection> {
        Ok(redis::Client::open(self.url())?.get_connection()?)
    }

    /// Every application key (those not under `prefix`) with its type and value, sorted.
    pub fn dump(&self, prefix: &str) -> Result<std::collections::BTreeMap<String, String>> {
        let mut c = self.connection()?;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c)?;
        let mut out = std::collections::BTreeMap::new();
        for k in keys.into_iter().filter(|k| !k.starts_with(prefix)) {
            let ty: String = redis::cmd("TYPE").arg(&k).query(&mut c)?;
            let v = match ty.as_str() {
                "string" => format!(
                    "string {}",
                    redis::cmd("GET").arg(&k).query::<String>(&mut c)?
                ),
                "list" => format!(
                    "list {:?}",
                    redis::cmd("LRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .query::<Vec<String>>(&mut c)?
                ),
                "zset" => format!(
                    "zset {:?}",
                    redis::cmd("ZRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query::<Vec<String>>(&mut c)?
                ),
                other => format!("{other} (unexpected)"),
            };
            out.insert(k, v);
        }
        Ok(out)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Certificates made at test time: a private CA, a server certificate for `localhost` and
/// `127.0.0.1`, and a client certificate, all as PEM files in a temp dir.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A new CA named `name`, with its server and client certificates.
    pub fn new(name: &str) -> Result<TestPki> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
        };
        let dir = tempfile::Builder::new()
            .prefix("slipstream-pki-")
            .tempdir()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        std::fs::write(dir.path().join("ca.pem"), ca.pem())?;
        let mut server = CertificateParams::new(vec!["localhost".to_owned()])?;
        server
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse()?));
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca)?;
        std::fs::write(dir.path().join("server.pem"), server_cert.pem())?;
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem())?;
        let mut client = CertificateParams::new(vec!["client.slipstream".to_owned()])?;
        client
            .distinguished_name
            .push(DnType::CommonName, "slipstream client");
        let client_key = KeyPair::generate()?;
        let client_cert = client.signed_by(&client_key, &ca)?;
        std::fs::write(dir.path().join("client.pem"), client_cert.pem())?;
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem())?;
        Ok(TestPki { dir })
    }

    /// Path of `ca.pem`, `server.pem`, `server.key`, `client.pem` or `client.key`.
    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// The PEM text of one of the files.
    pub fn text(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).expect("written at creation")
    }
}

/// `n` distinct writes `(prefix:i, value-i)` for tests to publish and look for.
pub fn writes(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{prefix}:{i}"), format!("value-{i}")))
        .collect()
}

/// A TCP proxy on a free port in front of one address: a link between two nodes that a test
/// can cut (`cut`), closing every connection through it and refusing new ones, while the
/// nodes and their other links keep running.
pub struct TcpProxy {
    addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    /// While set, new connections are closed at once (see [`TcpProxy::block`]).
    blocked: Arc<std::sync::atomic::AtomicBool>,
    streams: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl TcpProxy {
    pub fn start(target: SocketAddr) -> Result<TcpProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (c, b, s) = (cut.clone(), blocked.clone(), streams.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(inbound) = inbound else { continue };
                if b.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = inbound.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let pairs = [
                    (inbound.try_clone(), outbound.try_clone()),
                    (outbound.try_clone(), inbound.try_clone()),
                ];
                {
                    let mut all = s.lock().unwrap_or_else(|p| p.into_inner());
                    all.extend(inbound.try_clone());
                    all.extend(outbound.try_clone());
                }
                for pair in pairs {
                    if let (Ok(mut from), Ok(mut to)) = pair {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        Ok(TcpProxy {
            addr,
            cut,
            blocked,
            streams,
        })
    }

    /// Closes new connections at once, as a link that is not up yet (open ones are kept),
    /// until [`TcpProxy::unblock`].
    pub fn block(&self) {
        self.blocked
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn unblock(&self) {
        self.blocked
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// `ws://` URL of the proxied node.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Cuts the link: open connections are closed and new ones refused.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and closes the listening socket.
        let _ = std::net::TcpStream::connect(self.addr);
        for s in self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port the kernel might give an outgoing connection could be taken while its node is
    /// down; these cannot be.
    #[test]
    fn restartable_ports_lie_below_the_ephemeral_range_and_are_free() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        assert!(
            low > 11_000,
            "this machine leaves no room below its range: {range}"
        );
        let mut seen = HashSet::new();
        for _ in 0..20 {
            let port = restartable_port().unwrap();
            assert!((10_000..low).contains(&port), "{port} against {range}");
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            seen.insert(port);
        }
        assert!(seen.len() > 10, "picked at random: {seen:?}");
    }
}
