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

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use crate::{Result, SeqQueue};

/// How long a row may stay held before it is written to the outbox.
pub const HOLD_FOR: Duration = Duration::from_secs(1);
/// Most rows held at once (32 bytes each in its peer's queue); beyond, the oldest are written.
pub const MAX_HELD: usize = 65_536;
/// Most rows held for one peer; beyond, its oldest are written. A peer with more rows
/// unacknowledged than its delivery task keeps in flight (4,096) is behind: the rest wait for
/// the window either way, or for the outbox once the task falls back to it, and while the
/// peer stalls they only cost the origin memory. With this bound the origin of a 7-node mesh
/// peaked at 45.8–48.4 MiB after a peer's 3 s stall, against 48.0–57.4 MiB without it, at
/// the same writes/s (BENCHMARKS.md, "2026-12-06, later").
pub const MAX_HELD_PER_PEER: usize = 4_096;
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

/// A held row: its message and when it was first held.
#[derive(Clone, Copy)]
struct Row {
    msg: i64,
    born: Instant,
}

/// One peer's held rows. Each write held at an origin adds a row per peer and its ACK takes
/// it away a moment later, so this is on the path of every write and peer; a queue by seq
/// ([`SeqQueue`]) per peer rather than one for all, so a peer that stalls keeps only its own
/// rows (one queue for all peers cost memory at 7 nodes, as a stalled peer's rows kept every
/// other peer's slots; one `BTreeMap` for all cost about 1,100 instructions per row). A row
/// is held at most [`HOLD_FOR`], which bounds the empty slots behind one never acknowledged.
struct PeerRows {
    name: Arc<str>,
    rows: SeqQueue<Row>,
}

/// The writer's held rows.
pub(crate) struct Held {
    peers: Vec<PeerRows>,
    /// The peer whose row was found last: the next lookup most likely names another of its
    /// rows (acknowledgements come from one peer's delivery task at a time).
    last: Cell<usize>,
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
            peers: Vec::new(),
            last: Cell::new(0),
            counts,
            next_seq: table_sequence(conn)?.max(max.unwrap_or(0)) + 1,
            watermark,
            stored_at: Instant::now(),
            watermark_every: WATERMARK_EVERY,
            hold_for: HOLD_FOR,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.peers.iter().all(|p| p.rows.is_empty())
    }

    /// The peers in the order to look for a row in: the one found last first
    /// (acknowledgements come from one peer's delivery task at a time).
    fn lookup_order(&self) -> impl Iterator<Item = usize> + use<> {
        let (last, n) = (self.last.get(), self.peers.len());
        std::iter::once(last)
            .chain((0..n).filter(move |p| *p != last))
            .filter(move |p| *p < n)
    }

    /// A held row, with the peer it is held for.
    fn find(&self, seq: i64) -> Option<(&PeerRows, &Row)> {
        let (p, row) = self
            .lookup_order()
            .find_map(|p| self.peers[p].rows.get(seq).map(|r| (p, r)))?;
        self.last.set(p);
        Some((&self.peers[p], row))
    }

    /// Takes a held row away; the peer it was held for.
    fn take(&mut self, seq: i64) -> Option<usize> {
        let p = self
            .lookup_order()
            .find(|p| self.peers[*p].rows.take(seq).is_some())?;
        self.last.set(p);
        Some(p)
    }

    pub(crate) fn contains(&self, seq: i64) -> bool {
        self.find(seq).is_some()
    }

    /// When the oldest held row is due to be written.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.peers
            .iter()
            .filter_map(|p| p.rows.iter().next().map(|(_, r)| r.born + self.hold_for))
            .min()
    }

    /// Held seqs: all, or one peer's.
    pub(crate) fn seqs<'a>(&'a self, peer: Option<&'a str>) -> impl Iterator<Item = i64> + 'a {
        self.peers
            .iter()
            .filter(move |p| peer.is_none_or(|name| *p.name == *name))
            .flat_map(|p| p.rows.iter().map(|(s, _)| s))
    }

    /// Rows due by age, a peer's oldest over its own cap ([`MAX_HELD_PER_PEER`]), and the
    /// oldest of all peers over the cap on all ([`MAX_HELD`]). Rows are held in seq order, so
    /// each peer's are its oldest; each is listed once.
    pub(crate) fn due(&self, now: Instant) -> impl Iterator<Item = i64> {
        let mut due: Vec<i64> = Vec::new();
        let mut aged = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            let before = due.len();
            let over = p.rows.len().saturating_sub(MAX_HELD_PER_PEER);
            due.extend(
                p.rows
                    .iter()
                    .enumerate()
                    .take_while(|(i, (_, r))| *i < over || r.born + self.hold_for <= now)
                    .map(|(_, (s, _))| s),
            );
            aged.push(due.len() - before);
        }
        let held: usize = self.peers.iter().map(|p| p.rows.len()).sum();
        let over = held.saturating_sub(MAX_HELD);
        if over > due.len() {
            // The oldest of the rest: merge the peers' queues by seq.
            let mut heads: Vec<_> = self
                .peers
                .iter()
                .zip(aged)
                .map(|(p, aged)| p.rows.iter().skip(aged).map(|(s, _)| s).peekable())
                .collect();
            for _ in due.len()..over {
                let next = heads
                    .iter_mut()
                    .filter_map(|h| h.peek().copied().map(|s| (s, h)))
                    .min_by_key(|(s, _)| *s);
                let Some((seq, head)) = next else {
                    break;
                };
                head.next();
                due.push(seq);
            }
        }
        due.into_iter()
    }

    /// Writes these held rows to the outbox as pending, inside the batch's transaction.
    pub(crate) fn write(&self, c: &Connection, seqs: &[i64], now_ms: i64) -> Result<()> {
        let mut st = c.prepare_cached(
            "INSERT INTO deliveries (seq, msg, peer, state, attempts, updated_at)
             VALUES (?1, ?2, ?3, 'pending', 0, ?4)",
        )?;
        for seq in seqs {
            if let Some((peer, r)) = self.find(*seq) {
                st.execute(params![seq, r.msg, &*peer.name, now_ms])?;
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
        // A peer's rows are held in the order their messages were recorded: its first row
        // that stays has its oldest message.
        let oldest_kept = self
            .peers
            .iter()
            .filter_map(|p| p.rows.iter().find(|(s, _)| !leaving.contains(s)))
            .map(|(_, r)| r.msg)
            .min();
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
    /// `watermark` is what the batch stored, if it stored one. The shared counts are updated
    /// once per peer, not per row.
    pub(crate) fn committed(
        &mut self,
        plan: &Plan,
        new_rows: &[(i64, i64, &str)],
        watermark: Option<i64>,
    ) {
        // Per peer: rows that left, and how many of them were acknowledged; rows added.
        let mut deltas = vec![(0u64, 0u64, 0u64); self.peers.len()];
        let leaving = plan.write.iter().map(|s| (s, false));
        for (seq, acked) in leaving.chain(plan.acked.iter().map(|s| (s, true))) {
            if let Some(p) = self.take(*seq) {
                deltas[p].0 += 1;
                deltas[p].1 += u64::from(acked);
            }
        }
        let born = Instant::now();
        let mut at = 0;
        for (seq, msg, peer) in new_rows {
            // A batch's rows go to the same few peers in turn: try the one after the last.
            let p = match (0..self.peers.len())
                .map(|k| (at + k) % self.peers.len())
                .find(|p| *self.peers[*p].name == **peer)
            {
                Some(p) => p,
                None => {
                    let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
                    let name = match counts.get_key_value(*peer) {
                        Some((name, _)) => name.clone(),
                        None => {
                            let name: Arc<str> = (*peer).into();
                            counts.insert(name.clone(), PeerHeld::default());
                            name
                        }
                    };
                    self.peers.push(PeerRows {
                        name,
                        rows: SeqQueue::default(),
                    });
                    deltas.push((0, 0, 0));
                    self.peers.len() - 1
                }
            };
            self.peers[p].rows.put(*seq, Row { msg: *msg, born });
            deltas[p].2 += 1;
            at = p + 1;
        }
        if deltas.iter().any(|d| *d != (0, 0, 0)) {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            for (p, (left, acked, added)) in self.peers.iter().zip(deltas) {
                if (left, added) == (0, 0) {
                    continue;
                }
                if let Some(c) = counts.get_mut(&*p.name) {
                    c.held = c.held + added - left;
                    c.acked += acked;
                }
            }
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
    let last = crate::journal::last_id(conn)?;
    if let Some(from) = stored.and_then(|s| s.parse::<i64>().ok()) {
        let tx = conn.unchecked_transaction()?;
        let now = crate::now_ms() as i64;
        let mut owed: Vec<(i64, String)> = Vec::new();
        crate::journal::each_after(&tx, from, |id, entry| {
            if let Some(recipients) = entry.recipients {
                owed.push((id, recipients.to_owned()));
            }
            Ok(())
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> (Held, HeldCounts) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::schema::SCHEMA).unwrap();
        let counts = HeldCounts::default();
        (Held::open(&conn, counts.clone()).unwrap(), counts)
    }

    fn count(counts: &HeldCounts, peer: &str) -> (u64, u64) {
        let c = counts.lock().unwrap();
        c.get(peer).map_or((0, 0), |c| (c.held, c.acked))
    }

    /// Messages 1..=n, each owing a row to b and to c: seqs 2m-1 (b) and 2m (c).
    fn hold_writes(h: &mut Held, n: i64) {
        let rows: Vec<(i64, i64, &str)> = (1..=n)
            .flat_map(|m| [(2 * m - 1, m, "b"), (2 * m, m, "c")])
            .collect();
        h.committed(&Plan::default(), &rows, None);
    }

    #[test]
    fn rows_of_several_peers_leave_in_any_order() {
        let (mut h, counts) = held();
        hold_writes(&mut h, 4);
        assert_eq!(count(&counts, "b"), (4, 0));
        assert_eq!(h.seqs(Some("c")).collect::<Vec<_>>(), [2, 4, 6, 8]);
        // c acknowledges its third row before the others; b's second is written out.
        let plan = Plan {
            write: vec![3],
            acked: vec![6, 1],
            ..Plan::default()
        };
        // The oldest row that stays is c's first (message 1).
        assert_eq!(h.watermark_after(&plan, &[]), Some(0));
        h.committed(&plan, &[], None);
        assert_eq!(count(&counts, "b"), (2, 1));
        assert_eq!(count(&counts, "c"), (3, 1));
        assert!(!h.contains(6) && !h.contains(3) && h.contains(2));
        assert_eq!(h.seqs(None).collect::<Vec<_>>(), [5, 7, 2, 4, 8]);
        let plan = Plan {
            acked: vec![2, 4, 5],
            ..Plan::default()
        };
        // Left: b's row of message 4 and c's of message 4.
        assert_eq!(h.watermark_after(&plan, &[]), Some(3));
        assert_eq!(h.watermark_after(&plan, &[2]), Some(1));
        h.committed(&plan, &[], None);
        let plan = Plan {
            acked: vec![7, 8],
            ..Plan::default()
        };
        assert_eq!(h.watermark_after(&plan, &[]), None, "nothing held after it");
        h.committed(&plan, &[], None);
        assert!(h.is_empty());
        assert_eq!(count(&counts, "b"), (0, 3));
        assert_eq!(count(&counts, "c"), (0, 4));
    }

    /// Holds `per_peer` writes' rows for each of `peers`, seqs interleaved as an origin hands
    /// them out: write m (from 1) owes peer p (from 0) the row of seq (m - 1) * peers + p + 1.
    fn hold_for_peers(h: &mut Held, peers: usize, per_peer: i64) {
        let names: Vec<String> = (0..peers).map(|p| format!("p{p}")).collect();
        let rows: Vec<(i64, i64, &str)> = (1..=per_peer)
            .flat_map(|m| {
                let names = &names;
                (0..peers).map(move |p| ((m - 1) * peers as i64 + p as i64 + 1, m, &*names[p]))
            })
            .collect();
        h.committed(&Plan::default(), &rows, None);
    }

    #[test]
    fn rows_are_due_by_age_and_the_oldest_of_all_peers_over_the_cap() {
        let (mut h, _) = held();
        // 17 peers, each under its own cap, 16 rows over the cap on all.
        let peers = 17;
        let per_peer = (MAX_HELD / peers + 1) as i64;
        assert!(per_peer as usize <= MAX_HELD_PER_PEER);
        hold_for_peers(&mut h, peers, per_peer);
        let over = peers * per_peer as usize - MAX_HELD;
        let now = Instant::now();
        // The rows over the cap: the lowest seqs, whichever peer they belong to.
        let mut due: Vec<i64> = h.due(now).collect();
        due.sort_unstable();
        assert_eq!(due, (1..=over as i64).collect::<Vec<_>>());
        // Every row is due once it has been held long enough, each once.
        let mut due: Vec<i64> = h.due(now + HOLD_FOR).collect();
        due.sort_unstable();
        due.dedup();
        assert_eq!(due.len(), peers * per_peer as usize);
        assert_eq!(h.due(now + HOLD_FOR).count(), peers * per_peer as usize);
        let first = h.peers[0]
            .rows
            .iter()
            .next()
            .map(|(_, r)| r.born + HOLD_FOR);
        assert_eq!(h.next_due(), first);
    }

    /// A peer that stalls: its oldest rows over its own cap are due at once, the other peers'
    /// rows stay held.
    #[test]
    fn a_peers_oldest_rows_over_its_own_cap_are_due() {
        let (mut h, counts) = held();
        hold_writes(&mut h, 10);
        // b keeps acknowledging nothing; c acknowledges all it got.
        let rows: Vec<(i64, i64, &str)> = (0..MAX_HELD_PER_PEER as i64)
            .map(|i| (100 + i, 11 + i, "b"))
            .collect();
        h.committed(&Plan::default(), &rows, None);
        let plan = Plan {
            acked: (1..=10).map(|m| 2 * m).collect(),
            ..Plan::default()
        };
        h.committed(&plan, &[], None);
        assert_eq!(count(&counts, "b"), (MAX_HELD_PER_PEER as u64 + 10, 0));
        // b's ten oldest rows (messages 1 to 10) are over its cap.
        let due: Vec<i64> = h.due(Instant::now()).collect();
        assert_eq!(due, [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]);
    }
}
