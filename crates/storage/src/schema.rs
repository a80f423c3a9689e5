//! The SQLite schema. One database file holds the journal of messages and the durable dedup
//! record, the delivery outbox, known peers, and the embedded key/value store,
//! so recording a write, its deliveries and its local apply commit as one transaction.

pub const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA foreign_keys = OFF;
PRAGMA busy_timeout = 5000;
";

pub const SCHEMA: &str = "
-- instance_id; held_through (the journal id below which no write has a held delivery row,
-- held.rs); hlc_through (the greatest HLC stamp recorded and the journal id it covers,
-- clock_mark.rs).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The journal (journal.rs): every write this node recorded, in the form it forwards it.
-- `seen` is the durable dedup record, one row per write: a copy whose (message_id,
-- cluster_group) is there already is a duplicate. `journal` holds the writes, one row per
-- commit: the commit's writes encoded one after another in `entries`, the first with the id
-- `first`, the others following on, `count` in all.
CREATE TABLE IF NOT EXISTS seen (
    message_id    TEXT NOT NULL,
    cluster_group TEXT NOT NULL,
    id            INTEGER NOT NULL,
    PRIMARY KEY (message_id, cluster_group)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal (
    first       INTEGER PRIMARY KEY,
    count       INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    entries     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_received ON journal (received_at);

-- One row per (message, recipient peer). `seq` is the send order; AUTOINCREMENT so a pruned
-- seq is never reused below a delivery task's cursor. `peer` is the peer's
-- instance id, or `url:<url>` for a configured peer not met yet.
-- state: pending -> sent -> acked, or dead.
CREATE TABLE IF NOT EXISTS deliveries (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    msg        INTEGER NOT NULL,
    peer       TEXT NOT NULL,
    state      TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    note       TEXT
);
-- Indexes cost a B-tree write on every state change, so only these: open rows per peer (the
-- outbox), rows per message (pruning), and the dead letters. Acknowledged rows are pruned with
-- their message, by the message's age.
CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (peer, seq) WHERE state IN ('pending', 'sent');
CREATE INDEX IF NOT EXISTS deliveries_msg ON deliveries (msg);
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (seq) WHERE state = 'dead';
DROP INDEX IF EXISTS deliveries_state;

-- Peers met through HELLO (or learnt from sourceInstanceId): they stay recipients while down.
CREATE TABLE IF NOT EXISTS peers (
    id        TEXT PRIMARY KEY,
    url       TEXT,
    tags      TEXT NOT NULL,
    last_seen INTEGER NOT NULL
);

-- The embedded store: last writer wins by (hlc, origin). A delete leaves a row of kind
-- 'deleted' (a tombstone) so that it wins or loses against concurrent sets by version like any
-- write; tombstones and expired rows are pruned after the retention period.
CREATE TABLE IF NOT EXISTS kv (
    key        TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    hlc        TEXT NOT NULL,
    origin     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER
);

-- Writes recorded but not yet applied to an external store (Redis), in apply order. A row
-- leaves only once the store confirmed the apply, so an outage of the store loses nothing.
CREATE TABLE IF NOT EXISTS apply_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg INTEGER NOT NULL
);
";
