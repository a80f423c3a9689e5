//! Delivery rows held in memory instead of written to the outbox.
//!
//! Every write recorded at its origin owes a delivery to each recipient peer. Writing a row per
//! (write, peer) into the outbox and marking it acknowledged a moment later cost the origin
//! about 30 % of its CPU, measured by taking the outbox away (BENCHMARKS.md), and on a healthy
//! mesh nearly every row is acknowledged within a fraction of a second. So the writer holds a
//! new write's delivery rows in memory, with seqs from the same sequence as written rows, and
//! writes a row to the outbox only when it must:
//!
//! - it is still unacknowledged after [`HOLD_FOR`] (the default; `SLIPSTREAM_HOLD_DELIVERY_MS`
//!   sets it, and zero holds nothing) because its peer is slow or unreachable, or more than
//!   [`MAX_HELD`] rows are held;
//! - something reads or changes rows in the database: the outbox read for a peer
//!   ([`crate::Storage::open_deliveries`] asks for that peer's rows first), a sent mark, an
//!   attempt counted or a dead letter for that row, and take-over, relay, a peer met, pruning,
//!   dead-letter replay and purge (all rows first);
//! - the writer stops (a batch with a stop, a peer met, take-over or relay holds no new rows
//!   either).
//!
//! A row acknowledged while held is never written. What makes this safe is the journal: each
//! message row lists its recipients, and every commit records in `meta` (`held_through`) the
//! journal id below which no message has a held row. After a crash, [`recover`] writes a pending
//! row for every recipient of every later message that has none; rows that were acknowledged
//! just before the crash are then sent once more, and receivers drop them as duplicates. The
//! watermark is recomputed in every commit that holds rows or lets them go, in the same
//! transaction as the rows it accounts for, so a commit lost in a crash takes its watermark with
//! it: more rows come back, never fewer. A commit with no row held before or after it (every
//! commit of a node that only receives) moves the watermark at most once per
//! [`WATERMARK_EVERY`]: it writes one more page to the WAL, and a lagging watermark only makes
//! [`recover`] read the journal rows of that last moment, which owe no held row.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use crate::Result;

/// How long a row may stay held before it is written to the outbox.
pub const HOLD_FOR: Duration = Duration::from_secs(1);
/// Most rows held at once (about 80 bytes each); beyond, the oldest are written.
pub const MAX_HELD: usize = 65_536;
/// How long the watermark may lag while no row is held (see the module's documentation).
pub const WATERMARK_EVERY: Duration = Duration::from_secs(1);

/// Per peer: rows held now, and rows acknowledged while held since this process started (they
/// were never written, so the outbox cannot count them).
#[derive(Debug, Default, Clone, Copy)]
pub struct PeerHeld {
    pub held: u64,
    pub acked: u64,
}

/// Shared between the writer and the storage handle. Its keys are also the held rows' peer
/// names, so each peer's name is allocated once.
pub(crate) type HeldCounts = Arc<Mutex<foldhash::HashMap<Arc<str>, PeerHeld>>>;

struct Row {
    msg: i64,
    peer: Arc<str>,
    born: Instant,
}

/// The writer's held rows.
pub(crate) struct Held {
    rows: BTreeMap<i64, Row>,
    counts: HeldCounts,
    /// The seq the next delivery row gets, held or written.
    pub(crate) next_seq: i64,
    /// The `held_through` value last committed, and when it was.
    watermark: i64,
    stored_at: Instant,
    /// [`WATERMARK_EVERY`]; a field so tests can stretch it.
    pub(crate) watermark_every: Duration,
    /// How long a row may stay held ([`HOLD_FOR`]).
    pub(crate) hold_for: Duration,
}

/// What one batch does to the held rows, decided before it runs.
#[derive(Default)]
pub(crate) struct Plan {
    /// Held rows written to the outbox at the start of the batch.
    pub(crate) write: Vec<i64>,
    /// Held rows the batch acknowledges (dropped once it commits).
    pub(crate) acked: Vec<i64>,
    /// The batch holds no rows (take-over, relay, a peer met, a stop): all held rows are
    /// written first, its rows are inserted through the table's own sequence, and that
    /// sequence is moved past every seq handed out first, so none is used twice.
    pub(crate) sync_sequence: bool,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.write.is_empty() && self.acked.is_empty() && !self.sync_sequence
    }
}

impl Held {
    /// Recovers what a crash left (see [`recover`]) and starts with nothing held.
    pub(crate) fn open(conn: &Connection, counts: HeldCounts) -> Result<Held> {
        let watermark = recover(conn)?;
        let max: Option<i64> =
            conn.query_row("SELECT max(seq) FROM deliveries", [], |r| r.get(0))?;
        Ok(Held {
            rows: BTreeMap::new(),
            counts,
            next_seq: table_sequence(conn)?.max(max.unwrap_or(0)) + 1,
            watermark,
            stored_at: Instant::now(),
            watermark_every: WATERMARK_EVERY,
            hold_for: HOLD_FOR,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub(crate) fn contains(&self, seq: i64) -> bool {
        self.rows.contains_key(&seq)
    }

    /// When the oldest held row is due to be written.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.rows.values().next().map(|r| r.born + self.hold_for)
    }

    /// Held seqs: all, or one peer's.
    pub(crate) fn seqs<'a>(&'a self, peer: Option<&'a str>) -> impl Iterator<Item = i64> + 'a {
        self.rows
            .iter()
            .filter(move |(_, r)| peer.is_none_or(|p| *r.peer == *p))
            .map(|(s, _)| *s)
    }

    /// Rows due by age or over the cap.
    pub(crate) fn due(&self, now: Instant) -> impl Iterator<Item = i64> + '_ {
        let over = self.rows.len().saturating_sub(MAX_HELD);
        self.rows
            .iter()
            .enumerate()
            .take_while(move |(i, (_, r))| *i < over || r.born + self.hold_for <= now)
            .map(|(_, (s, _))| *s)
    }

    /// Writes these held rows to the outbox as pending, inside the batch's transaction.
    pub(crate) fn write(&self, c: &Connection, seqs: &[i64], now_ms: i64) -> Result<()> {
        let mut st = c.prepare_cached(
            "INSERT INTO deliveries (seq, msg, peer, state, attempts, updated_at)
             VALUES (?1, ?2, ?3, 'pending', 0, ?4)",
        )?;
        for seq in seqs {
            if let Some(r) = self.rows.get(seq) {
                st.execute(params![seq, r.msg, &*r.peer, now_ms])?;
            }
        }
        Ok(())
    }

    /// Moves the table's sequence past every seq handed out, inside the transaction.
    pub(crate) fn sync_sequence(&self, c: &Connection) -> Result<()> {
        let last = self.next_seq - 1;
        let n = c.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'deliveries'",
            params![last],
        )?;
        if n == 0 {
            c.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('deliveries', ?1)",
                params![last],
            )?;
        }
        Ok(())
    }

    /// After the table's own sequence was used: hands out seqs past it.
    pub(crate) fn follow_sequence(&mut self, c: &Connection) -> Result<()> {
        self.next_seq = self.next_seq.max(table_sequence(c)? + 1);
        Ok(())
    }

    /// The watermark once the batch commits: no message at or below it has a held row.
    /// `new_msgs` are the messages of the batch that hold new rows. `None` when no row will be
    /// held: the watermark is then the newest message.
    pub(crate) fn watermark_after(&self, plan: &Plan, new_msgs: &[i64]) -> Option<i64> {
        let leaving: foldhash::HashSet<i64> =
            plan.write.iter().chain(&plan.acked).copied().collect();
        let oldest_kept = self
            .rows
            .iter()
            .find(|(s, _)| !leaving.contains(s))
            .map(|(_, r)| r.msg);
        oldest_kept
            .into_iter()
            .chain(new_msgs.iter().copied())
            .min()
            .map(|m| m - 1)
    }

    /// Whether a batch after which no row is held must move the watermark: it lets held rows
    /// go (written or acknowledged, so they must fall below it), or the watermark was last
    /// moved [`WATERMARK_EVERY`] ago. Otherwise every journal row past it owes no held row, and
    /// it may lag.
    pub(crate) fn watermark_due(&self, plan: &Plan) -> bool {
        !plan.write.is_empty()
            || !plan.acked.is_empty()
            || self.stored_at.elapsed() >= self.watermark_every
    }

    /// Records the watermark in the batch's transaction, if it moved.
    pub(crate) fn store_watermark(&self, c: &Connection, watermark: i64) -> Result<()> {
        if watermark != self.watermark {
            put_watermark(c, watermark)?;
        }
        Ok(())
    }

    /// The batch committed: written and acknowledged rows leave, new ones are held.
    /// `watermark` is what the batch stored, if it stored one.
    pub(crate) fn committed(
        &mut self,
        plan: &Plan,
        new_rows: &[(i64, i64, &str)],
        watermark: Option<i64>,
    ) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let leaving = plan.write.iter().map(|s| (s, false));
        for (seq, acked) in leaving.chain(plan.acked.iter().map(|s| (s, true))) {
            let row = self.rows.remove(seq);
            if let Some(c) = row.and_then(|r| counts.get_mut(&*r.peer)) {
                c.held -= 1;
                c.acked += u64::from(acked);
            }
        }
        let born = Instant::now();
        for (seq, msg, peer) in new_rows {
            let peer = match counts.get_key_value(*peer) {
                Some((name, _)) => name.clone(),
                None => {
                    let name: Arc<str> = (*peer).into();
                    counts.insert(name.clone(), PeerHeld::default());
                    name
                }
            };
            if let Some(c) = counts.get_mut(&peer) {
                c.held += 1;
            }
            self.rows.insert(
                *seq,
                Row {
                    msg: *msg,
                    peer,
                    born,
                },
            );
        }
        if let Some(w) = watermark.filter(|w| *w != self.watermark) {
            self.watermark = w;
            self.stored_at = born;
        }
    }
}

/// After a crash: writes a pending row for every recipient of every message past the
/// watermark that has no row for it, then moves the watermark to the newest message. A
/// database without a watermark (new, or written before rows were held) has nothing to
/// recover. Returns the watermark.
pub(crate) fn recover(conn: &Connection) -> Result<i64> {
    let stored: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'held_through'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let last: i64 = conn.query_row("SELECT coalesce(max(id), 0) FROM messages", [], |r| {
        r.get(0)
    })?;
    if let Some(from) = stored.and_then(|s| s.parse::<i64>().ok()) {
        let tx = conn.unchecked_transaction()?;
        let now = crate::now_ms() as i64;
        let owed: Vec<(i64, String)> = tx
            .prepare(
                "SELECT id, recipients FROM messages WHERE id > ?1 AND recipients IS NOT NULL
                 ORDER BY id",
            )?
            .query_map(params![from], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        let mut add = tx.prepare(
            "INSERT INTO deliveries (msg, peer, state, attempts, updated_at)
             SELECT ?1, ?2, 'pending', 0, ?3
             WHERE NOT EXISTS (SELECT 1 FROM deliveries WHERE msg = ?1 AND peer = ?2)",
        )?;
        let mut rows = 0;
        for (msg, recipients) in &owed {
            let peers: Vec<String> = serde_json::from_str(recipients).map_err(|e| {
                crate::StorageError::Corrupt(format!("recipients of journal row {msg}: {e}"))
            })?;
            for peer in peers {
                rows += add.execute(params![msg, peer, now])?;
            }
        }
        drop(add);
        put_watermark(&tx, last)?;
        tx.commit()?;
        if rows > 0 {
            tracing::warn!(
                rows,
                "delivery rows held in memory when the node stopped were written again from the journal; writes acknowledged just before will be sent once more"
            );
        }
    } else {
        put_watermark(conn, last)?;
    }
    Ok(last)
}

/// The last seq the `deliveries` table's own sequence (AUTOINCREMENT) handed out, 0 if none.
fn table_sequence(c: &Connection) -> Result<i64> {
    let last: Option<i64> = c
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(last.unwrap_or(0))
}

/// Records `held_through` in `meta`.
fn put_watermark(c: &Connection, watermark: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('held_through', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![watermark.to_string()])?;
    Ok(())
}
