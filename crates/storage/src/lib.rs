//! Durable storage on SQLite: the message journal (also the dedup record), the delivery outbox,
//! known peers and the embedded key/value store.
//!
//! [`Storage`] is a cheap, cloneable handle. All writes go to one writer thread that groups
//! whatever has queued up into one transaction and one fsync (WAL, `synchronous=FULL`): under
//! load many messages share a commit, and each caller hears back only after its commit is on
//! disk, which is when the node may send its ACK. Reads use a separate connection off the async
//! threads, so they never wait behind a commit; the counts for `/status` and `/metrics` use a
//! third, and a checkpointer thread a fourth (`checkpointer.rs`).

mod checkpointer;
mod clock_mark;
mod held;
mod journal;
mod raw;
mod schema;
mod seq_queue;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use slipstream_protocol::{Hlc, MessageType, Value, ValueKind};
use tokio::sync::{mpsc, oneshot};

use checkpointer::{Checkpointer, Pace, WAL_BOUND_PAGES};
pub use held::{PeerHeld, HOLD_FOR, MAX_HELD, MAX_HELD_PER_PEER};
pub use seq_queue::SeqQueue;
pub use writer::DEFER_MARKS;
use writer::{Writer, WriterOp};

/// Errors callers can match.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the storage folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the storage writer has stopped")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The transaction holding the write did not commit (the disk is full or failing, or
    /// another process holds the database locked past the busy timeout): nothing of it was
    /// recorded, and the sender may send it again.
    #[error("commit failed: {0}")]
    CommitFailed(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// The answer to [`Storage::submit`], once the write's commit is over: what happened, and the
/// record itself. The caller's follow-up reads the record's fields instead of copies made
/// before submitting, and the record is freed on the caller's thread, where it was allocated
/// (a free from the writer's thread costs the allocator more).
pub type Submitted = oneshot::Receiver<(Result<Recorded>, Box<Record>)>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A write to record: the message as it is forwarded, plus its local apply and deliveries.
#[derive(Debug, Clone)]
pub struct Record {
    pub message_id: String,
    pub group: String,
    pub msg_type: &'static str,
    pub origin: String,
    pub hlc: Hlc,
    pub path: Vec<String>,
    /// The encoded message in its forwarded form (shared with the push to local apps).
    pub body: Arc<str>,
    /// Set when the write applies here.
    pub apply: Option<Apply>,
    /// Queue the apply for an external store (Redis) instead of applying it to the embedded
    /// store in the same transaction.
    pub queue_apply: bool,
    pub recipients: Vec<String>,
    /// Peers a sender asked this node to relay to: when the write is already in the journal,
    /// deliveries to them are added to it (unless one is still open) instead of nothing.
    pub relay_to: Vec<String>,
}

/// What a write does to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Apply {
    /// Set a value; the last writer wins by version (hlc, origin).
    Set { key: String, value: Value },
    /// Delete, leaving a tombstone with the write's version, so a delete and a concurrent set
    /// resolve the same way on every node.
    Delete { key: String },
    /// Expire the key this many seconds after the write is applied here. Not versioned.
    Expire { key: String, seconds: u64 },
}

impl Apply {
    pub fn key(&self) -> &str {
        match self {
            Apply::Set { key, .. } | Apply::Delete { key } | Apply::Expire { key, .. } => key,
        }
    }
}

/// A write waiting to be applied to an external store.
#[derive(Debug, Clone)]
pub struct QueuedApply {
    pub seq: i64,
    /// The recorded message.
    pub body: String,
}

/// What recording did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Committed. `changed` says whether the embedded store took the value (an older write
    /// loses to a newer one already stored); `deliveries` are the (peer, seq) rows created.
    New {
        changed: bool,
        deliveries: Vec<(String, i64)>,
    },
    /// Its (`messageId`, `clusterGroupId`) is in the journal already.
    Duplicate,
    /// In the journal already, and the deliveries asked for by `relay_to` were added to it.
    Relayed { deliveries: Vec<(String, i64)> },
}

/// A delivery row ready to send. The body and path are shared: a commit hands one row per
/// recipient of each write, and copying them for every recipient cost the writer thread.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub seq: i64,
    /// Shared with the delivery task's bookkeeping of what is in flight.
    pub message_id: Arc<str>,
    pub msg_type: &'static str,
    pub path: Arc<[String]>,
    pub body: Arc<str>,
    pub attempts: u32,
}

/// A value in the embedded store, with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredValue {
    pub key: String,
    pub value: Value,
    pub hlc: Hlc,
    pub origin: String,
    pub message_id: String,
}

/// A peer this node has met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    pub id: String,
    pub url: Option<String>,
    pub tags: Vec<String>,
    pub last_seen: u64,
}

/// A dead-lettered delivery.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub seq: i64,
    pub peer: String,
    pub message_id: String,
    pub msg_type: String,
    pub attempts: u32,
    pub dead_at: u64,
    pub note: Option<String>,
    pub body: String,
}

/// Delivery counts for one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerCounts {
    pub pending: u64,
    pub sent: u64,
    pub acked: u64,
    pub dead: u64,
}

/// Counters the writer keeps: how many commits, and how many operations they carried.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub commits: std::sync::atomic::AtomicU64,
    pub ops: std::sync::atomic::AtomicU64,
    /// Frames the WAL held at the checkpointer's last round (`checkpointer.rs`). It stays
    /// large only if checkpoints cannot keep up, for example behind a read that holds an old
    /// snapshot, so the WAL cannot start again.
    pub wal_frames: std::sync::atomic::AtomicU64,
}

/// Called after each commit with the number of operations it carried.
pub type CommitObserver = Arc<dyn Fn(usize) + Send + Sync>;

/// Called after each commit with the delivery rows it created for new writes, per peer and in
/// seq order, so they can be sent without being read back from the database.
pub type DeliveryObserver = Arc<dyn Fn(Vec<(String, Vec<Outgoing>)>) + Send + Sync>;

/// Called after each commit with the encoded writes that changed the store, in the order they
/// were committed (for the pushes to local apps).
pub type ChangeObserver = Arc<dyn Fn(Vec<Arc<str>>) + Send + Sync>;

/// Tuning for the writer.
#[derive(Clone)]
pub struct StorageOptions {
    /// Told the size of every commit (for a batch-size histogram).
    pub on_commit: Option<CommitObserver>,
    /// Handed the delivery rows of every commit.
    pub on_deliveries: Option<DeliveryObserver>,
    /// Handed the writes of every commit that changed the store.
    pub on_changed: Option<ChangeObserver>,
    /// Most operations grouped into one transaction.
    pub max_batch: usize,
    /// Capacity of the writer's queue; callers wait when it is full (backpressure).
    pub queue: usize,
    /// How long delivery marks alone may wait to commit with the next write
    /// ([`DEFER_MARKS`]); zero commits them at once.
    pub defer_marks: std::time::Duration,
    /// How long a delivery row may be held in memory before it is written to the outbox
    /// ([`HOLD_FOR`]).
    pub hold_for: std::time::Duration,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            on_commit: None,
            on_deliveries: None,
            on_changed: None,
            max_batch: 1024,
            queue: 16 * 1024,
            defer_marks: DEFER_MARKS,
            hold_for: HOLD_FOR,
        }
    }
}

/// The handle. Cloning it is cheap; the writer thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct Storage {
    tx: mpsc::Sender<WriterOp>,
    /// Delivery rows the writer holds in memory, per peer (see `held.rs`).
    held: held::HeldCounts,
    reader: Arc<Mutex<Connection>>,
    /// A connection of its own for counts that scan (`/status`, `/metrics`): with a large
    /// backlog a count takes long enough that, on the reader, it held up the outbox reads that
    /// serve a peer catching up.
    monitor: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
    instance_id: Arc<str>,
    stats: Arc<WriterStats>,
    writer_thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Resolves `SLIPSTREAM_STORAGE_PATH`: a folder (the database is `slipstream.db` inside) or a
/// path ending in `.db`.
pub fn database_file(path: &Path) -> PathBuf {
    if path.extension().is_some_and(|e| e == "db") {
        path.to_path_buf()
    } else {
        path.join("slipstream.db")
    }
}

impl Storage {
    /// Opens (or creates) the database and starts the writer thread. `instance_id` overrides
    /// the stored id; without it the id stored at first start is used, or a new one generated.
    pub fn open(path: &Path, instance_id: Option<&str>, opts: StorageOptions) -> Result<Storage> {
        let file = database_file(path);
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = open_writer_conn(&file)?;
        conn.execute_batch(schema::SCHEMA)?;
        journal::migrate(&conn)?;
        let stored: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'instance_id'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let id = match (instance_id, stored) {
            (Some(given), _) => given.to_owned(),
            (None, Some(stored)) => stored,
            (None, None) => generate_instance_id(),
        };
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('instance_id', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![id],
        )?;
        let held_counts = held::HeldCounts::default();
        let mut held = held::Held::open(&conn, held_counts.clone())?;
        held.hold_for = opts.hold_for;
        let clock = clock_mark::ClockMark::open(&conn)?;
        let reader = open_conn(&file)?;
        let monitor = open_conn(&file)?;
        // Counting walks index pages once; a small cache is enough.
        monitor.pragma_update(None, "cache_size", -512)?;
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let stats = Arc::new(WriterStats::default());
        let mut writer = Writer::new(
            conn,
            rx,
            opts.max_batch.max(1),
            stats.clone(),
            writer::Observers {
                on_commit: opts.on_commit.clone(),
                on_deliveries: opts.on_deliveries.clone(),
                on_changed: opts.on_changed.clone(),
            },
            held,
        )?;
        writer.defer_marks = opts.defer_marks;
        writer.set_clock_mark(clock);
        let checkpoints = Checkpointer::start(open_conn(&file)?, stats.clone(), Pace::DEFAULT)
            .map_err(|e| StorageError::CreateDir {
                path: file.clone(),
                source: e,
            })?;
        writer.checkpointer = Some(checkpoints);
        let handle = std::thread::Builder::new()
            .name("slipstream-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StorageError::CreateDir {
                path: file.clone(),
                source: e,
            })?;
        Ok(Storage {
            tx,
            held: held_counts,
            reader: Arc::new(Mutex::new(reader)),
            monitor: Arc::new(Mutex::new(monitor)),
            path: Arc::new(file),
            instance_id: id.into(),
            stats,
            writer_thread: Arc::new(Mutex::new(Some(handle))),
        })
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Commit counters of the writer.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriterOp,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Queues a write for the next commit and returns at once; the answer arrives on the
    /// returned receiver after the commit is on disk. Waits only while the queue is full.
    pub async fn submit(&self, record: Record) -> Result<Submitted> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriterOp::Record(Box::new(record), reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        Ok(rx)
    }

    /// Records a write and waits for its commit.
    pub async fn record(&self, record: Record) -> Result<Recorded> {
        self.submit(record)
            .await?
            .await
            .map_err(|_| StorageError::Closed)?
            .0
    }

    /// Queues an operation without waiting for its commit (a failed commit is logged by the
    /// writer). Waits only while the queue is full.
    async fn queue<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriterOp,
    ) -> Result<()> {
        let (reply, _) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StorageError::Closed)
    }

    /// Marks rows handed to a connection as sent. Does not wait for the commit: the state is
    /// bookkeeping, and the delivery task must not stall a frame per fsync.
    pub async fn mark_sent(&self, seqs: Vec<i64>) -> Result<()> {
        self.queue(|r| WriterOp::MarkSent(seqs, r)).await
    }

    /// Marks rows acknowledged by their peer, without waiting for the commit: a row whose mark
    /// is lost in a crash is sent once more and acknowledged again as a duplicate.
    pub async fn mark_acked(&self, seqs: Vec<i64>, note: Option<&'static str>) -> Result<()> {
        self.queue(|r| WriterOp::MarkAcked(seqs, note, r)).await
    }

    /// The oldest writes waiting for the external store, in apply order.
    pub async fn pending_applies(&self, limit: usize) -> Result<Vec<QueuedApply>> {
        self.read(move |c| {
            let queued: Vec<(i64, i64)> = c
                .prepare_cached("SELECT seq, msg FROM apply_queue ORDER BY seq LIMIT ?1")?
                .query_map(params![limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<_, _>>()?;
            let mut journal = journal::Reader::new(c);
            let mut out = Vec::with_capacity(queued.len());
            for (seq, msg) in queued {
                // Pruning keeps every write with a queued apply; one gone all the same is left
                // out, as a join would leave it, rather than holding up the writes behind it.
                if let Some(entry) = journal.get(msg)? {
                    out.push(QueuedApply {
                        seq,
                        body: entry.body.to_owned(),
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// How many writes wait for the external store.
    pub async fn apply_backlog(&self) -> Result<u64> {
        self.read(|c| {
            Ok(c.query_row("SELECT COUNT(*) FROM apply_queue", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
        })
        .await
    }

    /// The external store confirmed these applies; waits for the commit.
    pub async fn applied(&self, seqs: Vec<i64>) -> Result<()> {
        self.call(|r| WriterOp::Applied(seqs, r)).await
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) -> Result<()> {
        self.call(WriterOp::Flush).await
    }

    /// Counts one unanswered send against each row, and marks it `sent` (if it was not
    /// already): a row is marked sent when a send of it went unanswered for the retry period,
    /// not on every send, because most are acknowledged sooner and the mark would cost a row
    /// update per delivery.
    pub async fn count_attempt(&self, seqs: Vec<i64>) -> Result<()> {
        self.call(|r| WriterOp::CountAttempt(seqs, r)).await
    }

    /// Moves rows to the dead-letter queue.
    pub async fn mark_dead(&self, seqs: Vec<i64>, note: String) -> Result<()> {
        self.call(|r| WriterOp::MarkDead(seqs, note, r)).await
    }

    /// Returns dead rows to `pending` with their attempts reset; `None` replays all. Returns
    /// the peers whose rows came back, with how many.
    pub async fn replay_dead(&self, seqs: Option<Vec<i64>>) -> Result<Vec<(String, u64)>> {
        self.call(|r| WriterOp::ReplayDead(seqs, r)).await
    }

    /// Deletes dead rows; returns how many.
    pub async fn purge_dead(&self) -> Result<u64> {
        self.call(WriterOp::PurgeDead).await
    }

    /// Remembers a peer met through HELLO (or learnt from `sourceInstanceId`). When it was
    /// configured by `url`, rows queued under its `url:` key move to its id; returns how many.
    pub async fn peer_met(&self, peer: PeerRow) -> Result<u64> {
        self.call(|r| WriterOp::PeerMet(peer, r)).await
    }

    /// The origin of some writes went away: this node delivers to `peers` the untargeted
    /// writes it received from `origin` since `since_ms` that it holds no delivery of yet (the
    /// origin may have died before delivering them itself). Returns, per peer, how many rows
    /// were added.
    pub async fn take_over(
        &self,
        origin: &str,
        since_ms: u64,
        peers: Vec<String>,
    ) -> Result<Vec<(String, i64)>> {
        let origin = origin.to_owned();
        self.call(|r| WriterOp::TakeOver(origin, since_ms, peers, r))
            .await
    }

    /// Deletes messages received before `before_ms` that every recipient acknowledged, with
    /// their acknowledged rows (and tombstones and expired keys older than that). Returns how
    /// many messages went.
    pub async fn prune(&self, before_ms: u64) -> Result<u64> {
        self.call(|r| WriterOp::Prune(before_ms, r)).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        Self::read_on(self.reader.clone(), f).await
    }

    /// A read on the monitoring connection (counts for `/status` and `/metrics`).
    async fn count<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        Self::read_on(self.monitor.clone(), f).await
    }

    async fn read_on<T: Send + 'static>(
        reader: Arc<Mutex<Connection>>,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|_| StorageError::Closed)?
    }

    /// Has the writer put the delivery rows it holds in memory (all, or one peer's) into the
    /// outbox, so that a read finds them.
    async fn write_held(&self, peer: Option<&str>) -> Result<()> {
        let any = {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            match peer {
                Some(p) => held.get(p).is_some_and(|c| c.held > 0),
                None => held.values().any(|c| c.held > 0),
            }
        };
        if any {
            let peer = peer.map(str::to_owned);
            self.call(|r| WriterOp::WriteHeld(peer, r)).await?;
        }
        Ok(())
    }

    /// Open rows for a peer after `after_seq`, in send order.
    pub async fn open_deliveries(
        &self,
        peer: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<Outgoing>> {
        self.open_deliveries_within(peer, after_seq, limit, usize::MAX)
            .await
    }

    /// Open rows for a peer after `after_seq`, in send order: at most `limit` rows, and no
    /// more once their bodies reach `max_bytes` (the row that reaches it is the last). Fewer
    /// than `limit` rows with fewer than `max_bytes` bytes means the outbox holds no more.
    pub async fn open_deliveries_within(
        &self,
        peer: &str,
        after_seq: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Outgoing>> {
        self.write_held(Some(peer)).await?;
        let peer = peer.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "{OUTGOING} WHERE peer = ?1 AND seq > ?2 AND state IN ('pending', 'sent') ORDER BY seq LIMIT ?3"
            ))?;
            let mut journal = journal::Reader::new(c);
            let mut out = Vec::new();
            let mut bytes = 0;
            for row in st.query_map(params![peer, after_seq, limit as i64], delivery_row)? {
                let Some(row) = outgoing(&mut journal, row?)? else {
                    continue;
                };
                bytes += row.body.len();
                out.push(row);
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    /// These rows, those still open, in seq order (for sending them again).
    pub async fn open_deliveries_by_seq(&self, seqs: Vec<i64>) -> Result<Vec<Outgoing>> {
        self.write_held(None).await?;
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "{OUTGOING} WHERE seq = ?1 AND state IN ('pending', 'sent')"
            ))?;
            let mut journal = journal::Reader::new(c);
            let mut out = Vec::with_capacity(seqs.len());
            for seq in seqs {
                for row in st.query_map(params![seq], delivery_row)? {
                    out.extend(outgoing(&mut journal, row?)?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// A key from the embedded store.
    pub async fn get(&self, key: &str) -> Result<Option<StoredValue>> {
        let key = key.to_owned();
        self.read(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT kind, value, hlc, origin, message_id FROM kv
                     WHERE key = ?1 AND kind != 'deleted' AND (expires_at IS NULL OR expires_at > ?2)",
                )?
                .query_row(params![key, now_ms() as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .optional()?;
            let Some((kind, value, hlc, origin, message_id)) = row else {
                return Ok(None);
            };
            let corrupt = |what: &str| StorageError::Corrupt(format!("{what} of key {key}"));
            let kind = ValueKind::parse(&kind).ok_or_else(|| corrupt("kind"))?;
            let json = serde_json::from_str(&value).map_err(|_| corrupt("value"))?;
            let value = Value::from_json(kind, json).ok_or_else(|| corrupt("value"))?;
            let hlc = hlc.parse().map_err(|_| corrupt("hlc"))?;
            Ok(Some(StoredValue {
                key,
                value,
                hlc,
                origin,
                message_id,
            }))
        })
        .await
    }

    /// Peers met before, to route to while they are down.
    pub async fn known_peers(&self) -> Result<Vec<PeerRow>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, url, tags, last_seen FROM peers ORDER BY id")?;
            let rows = st.query_map([], |r| {
                let tags: String = r.get(2)?;
                Ok(PeerRow {
                    id: r.get(0)?,
                    url: r.get(1)?,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                    last_seen: r.get::<_, i64>(3)? as u64,
                })
            })?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })
        .await
    }

    /// Dead letters, oldest first, paged.
    pub async fn dead_letters(&self, offset: u64, limit: u64) -> Result<Vec<DeadLetter>> {
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT seq, peer, msg, attempts, updated_at, note FROM deliveries
                 WHERE state = 'dead' ORDER BY seq LIMIT ?1 OFFSET ?2",
            )?;
            let rows = st.query_map(params![limit as i64, offset as i64], |r| {
                Ok((
                    r.get::<_, i64>(2)?,
                    DeadLetter {
                        seq: r.get(0)?,
                        peer: r.get(1)?,
                        message_id: String::new(),
                        msg_type: String::new(),
                        attempts: r.get(3)?,
                        dead_at: r.get::<_, i64>(4)? as u64,
                        note: r.get(5)?,
                        body: String::new(),
                    },
                ))
            })?;
            let mut journal = journal::Reader::new(c);
            let mut out = Vec::new();
            for row in rows {
                let (msg, mut dead) = row?;
                // A row whose write is gone from the journal is left out, as it always was.
                if let Some(entry) = journal.get(msg)? {
                    dead.message_id = entry.message_id.to_owned();
                    dead.msg_type = entry.msg_type.to_owned();
                    dead.body = entry.body.to_owned();
                    out.push(dead);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The seqs of dead rows of these message ids.
    pub async fn dead_seqs(&self, message_ids: Vec<String>) -> Result<Vec<i64>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT d.seq FROM seen s JOIN deliveries d ON d.msg = s.id
                 WHERE d.state = 'dead' AND s.message_id = ?1 ORDER BY d.seq",
            )?;
            let mut out = Vec::new();
            for id in &message_ids {
                for seq in st.query_map(params![id], |r| r.get(0))? {
                    out.push(seq?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Delivery counts per peer. Open and dead rows are counted through their indexes, so
    /// this stays cheap for metrics scrapes however many rows are retained; counting the
    /// acknowledged rows (`with_acked`) scans the outbox and is for `/status` only.
    pub async fn peer_counts(&self, with_acked: bool) -> Result<Vec<(String, PeerCounts)>> {
        // Rows held in memory are open too; rows acknowledged while held were never written.
        // Their counts are read before the outbox: a held row the writer writes out meanwhile
        // is then counted twice for a moment, never missed (read the other way round, a
        // backlog written out between the two reads did not show in `pending`).
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = self.count(move |c| {
            let mut out: std::collections::BTreeMap<String, PeerCounts> = Default::default();
            let mut count = |sql: &str, set: fn(&mut PeerCounts, &str, u64)| -> Result<()> {
                let mut st = c.prepare_cached(sql)?;
                let rows = st.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)? as u64,
                    ))
                })?;
                for row in rows {
                    let (peer, state, n) = row?;
                    set(out.entry(peer).or_default(), &state, n);
                }
                Ok(())
            };
            count(
                "SELECT peer, state, COUNT(*) FROM deliveries INDEXED BY deliveries_open
                 WHERE state IN ('pending', 'sent') GROUP BY peer, state",
                |c, state, n| match state {
                    "sent" => c.sent = n,
                    _ => c.pending = n,
                },
            )?;
            count(
                "SELECT peer, state, COUNT(*) FROM deliveries INDEXED BY deliveries_dead
                 WHERE state = 'dead' GROUP BY peer",
                |c, _, n| c.dead = n,
            )?;
            if with_acked {
                count(
                    "SELECT peer, state, COUNT(*) FROM deliveries WHERE state = 'acked' GROUP BY peer",
                    |c, _, n| c.acked = n,
                )?;
            }
            Ok(out)
        })
        .await?;
        for (peer, h) in held {
            if h.held > 0 || (with_acked && h.acked > 0) {
                let c = out.entry(peer.to_string()).or_default();
                c.pending += h.held;
                if with_acked {
                    c.acked += h.acked;
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The greatest HLC stamp the journal has held, pruned rows included, so a restarted
    /// node's clock starts past it. Reads the mark in `meta` and the journal rows recorded
    /// after it, not the whole journal (see `clock_mark.rs`).
    pub async fn max_hlc(&self) -> Result<Option<Hlc>> {
        self.read(|c| Ok(clock_mark::journal_mark(c)?.max)).await
    }

    /// How many messages the journal holds.
    pub async fn message_count(&self) -> Result<u64> {
        self.count(journal::count).await
    }

    /// Stops the writer after it has committed everything queued before this call. Other
    /// clones of the handle fail with [`StorageError::Closed`] afterwards.
    pub async fn close(&self) {
        let _ = self.call(WriterOp::Stop).await;
        let handle = self
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// The columns of a delivery row to send; its write comes from the journal ([`outgoing`]).
const OUTGOING: &str = "SELECT seq, msg, attempts FROM deliveries";

/// A delivery row's seq, journal id and attempts.
fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, i64, u32)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

/// A delivery row ready to send, with its write from the journal; none if the write is gone
/// (as a join would have left the row out).
fn outgoing(
    journal: &mut journal::Reader<'_>,
    (seq, msg, attempts): (i64, i64, u32),
) -> Result<Option<Outgoing>> {
    let Some(entry) = journal.get(msg)? else {
        return Ok(None);
    };
    let path = serde_json::from_str::<Vec<String>>(entry.path)
        .map_err(|e| StorageError::Corrupt(format!("path of {}: {e}", entry.message_id)))?;
    Ok(Some(Outgoing {
        seq,
        message_id: entry.message_id.into(),
        msg_type: MessageType::parse(entry.msg_type).map_or("?", MessageType::as_str),
        path: path.into(),
        body: entry.body.into(),
        attempts,
    }))
}

fn open_conn(file: &Path) -> Result<Connection> {
    let conn = Connection::open(file)?;
    conn.execute_batch(schema::PRAGMAS)?;
    Ok(conn)
}

/// The writer's connection: as any other, checkpointing itself only past
/// [`WAL_BOUND_PAGES`] (the checkpointer thread copies the WAL back before that).
pub(crate) fn open_writer_conn(file: &Path) -> Result<Connection> {
    let conn = open_conn(file)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_BOUND_PAGES)?;
    Ok(conn)
}

/// `con-` and eight random hex digits, from the OS's random source via the std hasher seed.
fn generate_instance_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.write_u32(std::process::id());
    format!("con-{:08x}", h.finish() as u32)
}

#[cfg(test)]
mod tests;
