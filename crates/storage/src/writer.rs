//! The single writer: group commit.
//!
//! It takes the first queued operation, then whatever else is already queued (up to
//! `max_batch`), runs them all in one transaction, commits once (one fsync), and only then
//! answers each caller. Operations almost never fail, so the batch first runs without
//! savepoints; if one does fail, the transaction is rolled back and the batch runs again with a
//! savepoint per operation, so only the failing one is answered with its error.

use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::clock_mark::ClockMark;
use crate::held::{Held, Plan};
use crate::journal::{self, Appender, Entry};
use crate::raw::RawStatement;
use crate::{
    now_ms, Apply, ChangeObserver, CommitObserver, DeliveryObserver, Outgoing, PeerRow, Record,
    Recorded, Result, StorageError, WriterStats,
};

type Reply<T> = oneshot::Sender<Result<T>>;

/// Who is told about each commit, right after it and in commit order (see
/// [`crate::StorageOptions`]).
#[derive(Clone, Default)]
pub(crate) struct Observers {
    pub on_commit: Option<CommitObserver>,
    pub on_deliveries: Option<DeliveryObserver>,
    pub on_changed: Option<ChangeObserver>,
}

pub(crate) enum WriterOp {
    /// Answered with the record itself (see [`crate::Submitted`]).
    Record(
        Box<Record>,
        oneshot::Sender<(Result<Recorded>, Box<Record>)>,
    ),
    MarkSent(Vec<i64>, Reply<()>),
    MarkAcked(Vec<i64>, Option<&'static str>, Reply<()>),
    CountAttempt(Vec<i64>, Reply<()>),
    MarkDead(Vec<i64>, String, Reply<()>),
    ReplayDead(Option<Vec<i64>>, Reply<Vec<(String, u64)>>),
    PurgeDead(Reply<u64>),
    PeerMet(PeerRow, Reply<u64>),
    TakeOver(String, u64, Vec<String>, Reply<Vec<(String, i64)>>),
    Prune(u64, Reply<u64>),
    Applied(Vec<i64>, Reply<()>),
    /// Writes held delivery rows to the outbox (one peer's, or all), so a read finds them.
    WriteHeld(Option<String>, Reply<()>),
    /// Answered after the commit of everything queued before it.
    Flush(Reply<()>),
    Stop(Reply<()>),
}

pub(crate) struct Writer {
    /// Prepared on `conn`, so declared before it: fields drop in order, and the statements
    /// must be finalized before the connection closes.
    hot: Hot,
    conn: Connection,
    rx: mpsc::Receiver<WriterOp>,
    max_batch: usize,
    stats: Arc<WriterStats>,
    observers: Observers,
    /// Whether commits are synced now (`synchronous = FULL`, the connection's setting).
    synced: bool,
    /// How long a batch of marks alone may wait for the next commit ([`DEFER_MARKS`]).
    pub(crate) defer_marks: std::time::Duration,
    /// Delivery rows held in memory (see `held.rs`).
    held: Held,
    /// Whether rows are held at all: only with a timer to write them out when due.
    hold: bool,
    /// Commits failed in a row (for the wait before the next try).
    failures: u32,
    /// The thread that copies the WAL back (see `checkpointer.rs`); it ends when the writer is
    /// dropped.
    pub(crate) checkpointer: Option<crate::checkpointer::Checkpointer>,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        rx: mpsc::Receiver<WriterOp>,
        max_batch: usize,
        stats: Arc<WriterStats>,
        observers: Observers,
        held: Held,
    ) -> Result<Self> {
        let hot = Hot {
            journal: Appender::open(&conn)?,
            insert_seen: None,
            upsert_kv: None,
            renamed: Default::default(),
            clock: ClockMark::default(),
        };
        Ok(Writer {
            hot,
            conn,
            rx,
            max_batch,
            stats,
            observers,
            synced: true,
            defer_marks: DEFER_MARKS,
            held,
            hold: true,
            failures: 0,
            checkpointer: None,
        })
    }

    /// The greatest stamp the journal held when the writer started (see `clock_mark.rs`).
    pub(crate) fn set_clock_mark(&mut self, mark: ClockMark) {
        self.hot.clock = mark;
    }

    pub(crate) fn run(mut self) {
        // Waiting for the next operation with a deadline needs a timer; a current-thread
        // runtime on this thread provides one. Without it, deferred marks commit at once.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok();
        // Without a timer, held rows could not be written out when due: none are held.
        self.hold = timer.is_some() && !self.held.hold_for.is_zero();
        let mut batch = Vec::with_capacity(self.max_batch);
        // Marks held back for the next commit (see `DEFER_MARKS`), in arrival order.
        let mut deferred: Vec<WriterOp> = Vec::new();
        let mut deferred_since = std::time::Instant::now();
        loop {
            // The next moment something is due without any new operation: held-back marks,
            // or the oldest held delivery row.
            let marks_due = (!deferred.is_empty()).then(|| deferred_since + self.defer_marks);
            let due = match (marks_due, self.held.next_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let next = match (&timer, due) {
                (Some(rt), Some(due)) => {
                    let left = due.saturating_duration_since(std::time::Instant::now());
                    let rx = &mut self.rx;
                    // The timer must be made inside the runtime, hence the async block.
                    match rt.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                        Ok(op) => op,
                        Err(_) => {
                            // Nothing came in time: what is due commits on its own (marks
                            // held back, rows held too long).
                            batch.append(&mut deferred);
                            if self.commit_batch(&mut batch) {
                                break;
                            }
                            continue;
                        }
                    }
                }
                _ => self.rx.blocking_recv(),
            };
            let Some(first) = next else {
                // Every sender is gone: commit what is held back and write every held row,
                // then stop.
                let (reply, _) = oneshot::channel();
                deferred.push(WriterOp::WriteHeld(None, reply));
                self.commit_batch(&mut deferred);
                // Close synced, so SQLite's closing checkpoint syncs the database file.
                let _ = self.set_synced(true);
                break;
            };
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if timer.is_some()
                && !self.defer_marks.is_zero()
                && deferrable(&batch)
                && deferred.len() < self.max_batch
            {
                if deferred.is_empty() {
                    deferred_since = std::time::Instant::now();
                }
                deferred.append(&mut batch);
                continue;
            }
            if !deferred.is_empty() {
                // Held-back marks go first, so every operation runs in arrival order.
                deferred.append(&mut batch);
                std::mem::swap(&mut deferred, &mut batch);
            }
            if self.commit_batch(&mut batch) {
                break;
            }
        }
    }

    /// Runs one batch in one transaction. Returns whether a `Stop` was in it.
    fn commit_batch(&mut self, batch: &mut Vec<WriterOp>) -> bool {
        let mut ops: Vec<WriterOp> = std::mem::take(batch);
        let stop = ops.iter().any(|op| matches!(op, WriterOp::Stop(_)));
        let now = now_ms() as i64;
        skip_sent_marks_of_acked_rows(&mut ops);
        let plan = self.plan(&ops);
        skip_acked_marks_of_held_rows(&mut ops, &plan.acked);
        if ops.is_empty() && plan.is_empty() {
            return stop;
        }
        // A batch of delivery marks only needs no fsync of its own (see `only_marks`). Any
        // other batch commits only once syncing is back on.
        let marks_only = only_marks(&ops);
        let synced = self.set_synced(!marks_only);
        // A batch that inserts rows through the table's own sequence holds none: its writes'
        // rows are inserted the same way.
        let hold = self.hold && !plan.sync_sequence;
        let batch = Batch {
            ops: &ops,
            plan: &plan,
            hold,
            now,
        };
        let (conn, hot, held) = (&self.conn, &mut self.hot, &mut self.held);
        let mut run =
            |isolate| in_transaction(conn, |tx| run_batch(tx, hot, held, &batch, isolate));
        // Fast path: no savepoints. Any error rolls the whole transaction back.
        let fast = synced.and_then(|()| run(false));
        // Slow path: a savepoint per operation isolates the failing one.
        let outcome = fast.or_else(|e| {
            if !self.synced && !marks_only {
                return Err(e);
            }
            run(true)
        });
        match outcome {
            Ok((results, watermark)) => {
                let new_rows: Vec<(i64, i64, &str)> = if hold {
                    results
                        .iter()
                        .filter_map(|r| match r {
                            Ok(Done::Recorded(Recorded::New { deliveries, .. }, msg)) => {
                                Some(deliveries.iter().map(|(p, s)| (*s, *msg, p.as_str())))
                            }
                            _ => None,
                        })
                        .flatten()
                        .collect()
                } else {
                    Vec::new()
                };
                self.held.committed(&plan, &new_rows, watermark);
                drop(new_rows);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .ops
                    .fetch_add(results.len() as u64, Ordering::Relaxed);
                if let Some(observe) = &self.observers.on_commit {
                    observe(results.len());
                }
                if let Some(observe) = &self.observers.on_deliveries {
                    let rows = new_deliveries(&ops, &results);
                    if !rows.is_empty() {
                        observe(rows);
                    }
                }
                if let Some(observe) = &self.observers.on_changed {
                    let changed = changed_writes(&ops, &results);
                    if !changed.is_empty() {
                        observe(changed);
                    }
                }
                for (op, r) in ops.into_iter().zip(results) {
                    reply(op, r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storage commit failed");
                for op in ops {
                    reply(op, Err(StorageError::CommitFailed(e.to_string())));
                }
                // Held rows that failed to be written are due again at once: wait before the
                // next try instead of spinning on a failing disk.
                self.failures = self.failures.saturating_add(1);
                let wait = std::time::Duration::from_millis(50 << self.failures.min(5));
                std::thread::sleep(wait);
                return stop;
            }
        }
        self.failures = 0;
        stop
    }

    /// What a batch does to the held delivery rows (see `held.rs`): which to write first,
    /// which it acknowledges, and whether it uses the table's own sequence.
    fn plan(&self, ops: &[WriterOp]) -> Plan {
        let mut plan = Plan {
            sync_sequence: ops.iter().any(holds_nothing),
            ..Plan::default()
        };
        if self.held.is_empty() {
            return plan;
        }
        let all = !self.hold
            || plan.sync_sequence
            || ops.iter().any(|op| {
                matches!(
                    op,
                    WriterOp::Prune(..)
                        | WriterOp::ReplayDead(..)
                        | WriterOp::PurgeDead(..)
                        | WriterOp::WriteHeld(None, _)
                )
            });
        let mut write: std::collections::BTreeSet<i64> = if all {
            self.held.seqs(None).collect()
        } else {
            self.held.due(std::time::Instant::now()).collect()
        };
        for op in ops {
            match op {
                WriterOp::WriteHeld(Some(peer), _) => write.extend(self.held.seqs(Some(peer))),
                WriterOp::MarkSent(seqs, _)
                | WriterOp::CountAttempt(seqs, _)
                | WriterOp::MarkDead(seqs, _, _) => {
                    write.extend(seqs.iter().copied().filter(|s| self.held.contains(*s)));
                }
                WriterOp::MarkAcked(seqs, _, _) => plan.acked.extend(
                    seqs.iter()
                        .copied()
                        .filter(|s| self.held.contains(*s) && !write.contains(s)),
                ),
                _ => {}
            }
        }
        plan.acked.retain(|s| !write.contains(s));
        plan.write = write.into_iter().collect();
        plan
    }

    /// Unsynced commits also run no automatic checkpoint: a checkpoint under
    /// `synchronous = OFF` would copy frames into the database file without syncing it, and the
    /// WAL could then be rewound over frames the file does not durably hold. Checkpoints stay
    /// with synced commits, which sync the file first.
    fn set_synced(&mut self, synced: bool) -> Result<()> {
        if self.synced == synced {
            return Ok(());
        }
        let (sync, checkpoint) = match synced {
            true => ("FULL", crate::WAL_BOUND_PAGES),
            false => ("OFF", 0),
        };
        self.conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA wal_autocheckpoint = {checkpoint};"
        ))?;
        self.synced = synced;
        Ok(())
    }
}

/// Runs `body` in a transaction, committed if it succeeds and rolled back if it or the commit
/// fails. `BEGIN` and `COMMIT` come from the statement cache: rusqlite's `Transaction` parses
/// both anew each time. With the watermark's query, also parsed anew before, that parsing was
/// about a fifth of the writer's instructions for a commit of one write (BENCHMARKS.md).
fn in_transaction<T>(c: &Connection, body: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    c.prepare_cached("BEGIN")?.execute([])?;
    let out = body(c).and_then(|out| {
        c.prepare_cached("COMMIT")?.execute([])?;
        Ok(out)
    });
    // A failed COMMIT may have ended the transaction itself (SQLite rolls back on some
    // errors); otherwise it is still open.
    if out.is_err() && !c.is_autocommit() {
        if let Err(e) = c.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "storage rollback failed");
        }
    }
    out
}

/// What one batch runs, the same on its fast path and, after a failure, its slow one.
struct Batch<'a> {
    ops: &'a [WriterOp],
    plan: &'a Plan,
    /// New writes' delivery rows are held (get seqs from the held rows' sequence).
    hold: bool,
    now: i64,
}

/// Runs a batch's operations inside its transaction: held rows that must be in the outbox
/// first, then each operation (each in a savepoint when `isolate`), then the watermark.
fn run_batch(
    tx: &Connection,
    hot: &mut Hot,
    held: &mut Held,
    batch: &Batch,
    isolate: bool,
) -> Result<(Vec<Result<Done>>, Option<i64>)> {
    let Batch {
        ops,
        plan,
        hold,
        now,
    } = *batch;
    hot.journal.begin();
    if plan.sync_sequence {
        held.sync_sequence(tx)?;
    }
    held.write(tx, &plan.write, now)?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        if reads_journal(op) || hot.journal.is_full() {
            // The journal row of the writes so far goes in first: for the operations that
            // read the journal, and once it is full. Not before every other operation: marks
            // come between the writes of an origin's batch, and a row before each would cost
            // about what a row per write did.
            hot.journal.flush(tx, now)?;
        }
        if !isolate {
            results.push(Ok(execute(
                tx,
                hot,
                op,
                now,
                hold.then_some(&mut held.next_seq),
            )?));
            continue;
        }
        tx.execute_batch("SAVEPOINT op")?;
        let mark = hot.journal.mark();
        let r = execute(tx, hot, op, now, hold.then_some(&mut held.next_seq));
        if r.is_err() {
            hot.journal.rewind(mark);
        }
        tx.execute_batch(if r.is_ok() {
            "RELEASE op"
        } else {
            "ROLLBACK TO op; RELEASE op"
        })?;
        results.push(r);
    }
    hot.journal.flush(tx, now)?;
    if plan.sync_sequence {
        held.follow_sequence(tx)?;
    }
    for (op, r) in ops.iter().zip(&results) {
        if let (WriterOp::Record(rec, _), Ok(Done::Recorded(Recorded::New { .. }, msg))) = (op, r) {
            hot.clock.recorded(rec.hlc, *msg);
        }
    }
    hot.clock.store_if_due(tx)?;
    let new_msgs: Vec<i64> = results
        .iter()
        .filter_map(|r| match r {
            Ok(Done::Recorded(Recorded::New { deliveries, .. }, msg))
                if hold && !deliveries.is_empty() =>
            {
                Some(*msg)
            }
            _ => None,
        })
        .collect();
    let watermark = match held.watermark_after(plan, &new_msgs) {
        Some(w) => Some(w),
        // No row held before or after: the watermark may lag (see `held.rs`).
        None if !held.watermark_due(plan) => None,
        None => Some(hot.journal.last_id()),
    };
    if let Some(w) = watermark {
        held.store_watermark(tx, w)?;
    }
    Ok((results, watermark))
}

/// Operations that read the journal in the writer's transaction, so must find the batch's
/// writes before them in it.
fn reads_journal(op: &WriterOp) -> bool {
    matches!(
        op,
        WriterOp::TakeOver(..) | WriterOp::PeerMet(..) | WriterOp::Prune(..)
    )
}

/// Operations after which a batch holds no rows: all held rows are written first, and its
/// writes' rows are inserted through the table's own sequence, as these insert theirs
/// (take-over, relay), must find them in the table (a peer met renames `url:` rows), or will
/// not be there to write them (stop).
fn holds_nothing(op: &WriterOp) -> bool {
    match op {
        WriterOp::TakeOver(..) | WriterOp::PeerMet(..) | WriterOp::Stop(..) => true,
        WriterOp::Record(rec, _) => !rec.relay_to.is_empty(),
        _ => false,
    }
}

/// How long delivery marks (acknowledged, sent) may wait for the next commit. A batch of
/// nothing but such marks is held back this long, or until other operations or `max_batch`
/// more marks arrive, and then commits together with them: at a steady trickle of writes an
/// origin otherwise commits twice per write, once for the write and once for its peers' ACKs,
/// and each commit costs a WAL write of every page it touched (and, on a virtual machine,
/// exits to the hypervisor). A mark lost in a crash only means its row is sent again, so
/// holding marks back risks nothing that was acknowledged.
pub const DEFER_MARKS: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether a batch may be held back ([`DEFER_MARKS`]): marks that nobody waits for. A counted
/// attempt is waited for by its delivery task, so it commits at once (unsynced, see
/// [`only_marks`]).
fn deferrable(ops: &[WriterOp]) -> bool {
    ops.iter()
        .all(|op| matches!(op, WriterOp::MarkAcked(..) | WriterOp::MarkSent(..)))
}

/// Whether a batch holds nothing but delivery marks (acknowledged, sent, an attempt counted).
/// Such a batch commits without an fsync: losing it in a crash only means those rows go again,
/// and receivers drop what they hold already (the journal is the durable dedup record). The
/// next commit's fsync makes it durable with everything before it, as WAL frames are synced in
/// order. Under a light load every write would otherwise cost the origin a second fsync, for
/// its ACKs.
fn only_marks(ops: &[WriterOp]) -> bool {
    ops.iter().all(|op| {
        matches!(
            op,
            WriterOp::MarkAcked(..)
                | WriterOp::MarkSent(..)
                | WriterOp::CountAttempt(..)
                | WriterOp::WriteHeld(..)
        )
    })
}

/// The delivery rows a committed batch created for new writes, per peer in seq order. Grouped
/// here, so each peer's name is copied once per commit rather than once per row.
fn new_deliveries(ops: &[WriterOp], results: &[Result<Done>]) -> Vec<(String, Vec<Outgoing>)> {
    let mut by_peer: Vec<(String, Vec<Outgoing>)> = Vec::new();
    for (op, result) in ops.iter().zip(results) {
        if let (WriterOp::Record(rec, _), Ok(Done::Recorded(Recorded::New { deliveries, .. }, _))) =
            (op, result)
        {
            if deliveries.is_empty() {
                continue;
            }
            let path: Arc<[String]> = rec.path.as_slice().into();
            let message_id: Arc<str> = rec.message_id.as_str().into();
            for (peer, seq) in deliveries {
                let row = Outgoing {
                    seq: *seq,
                    message_id: message_id.clone(),
                    msg_type: rec.msg_type,
                    path: path.clone(),
                    body: rec.body.clone(),
                    attempts: 0,
                };
                match by_peer.iter_mut().find(|(p, _)| p == peer) {
                    Some((_, rows)) => rows.push(row),
                    None => by_peer.push((peer.clone(), vec![row])),
                }
            }
        }
    }
    by_peer
}

/// The encoded writes of a commit that changed the store, in the order they were committed.
fn changed_writes(ops: &[WriterOp], results: &[Result<Done>]) -> Vec<Arc<str>> {
    ops.iter()
        .zip(results)
        .filter_map(|(op, result)| match (op, result) {
            (
                WriterOp::Record(rec, _),
                Ok(Done::Recorded(Recorded::New { changed: true, .. }, _)),
            ) => Some(rec.body.clone()),
            _ => None,
        })
        .collect()
}

/// A row acknowledged in the same batch that marks it sent skips the `sent` step: it would be
/// overwritten in the same transaction. Under load most acknowledgements arrive within a
/// commit or two of the send, so this saves a row update per delivery.
fn skip_sent_marks_of_acked_rows(ops: &mut [WriterOp]) {
    let acked: foldhash::HashSet<i64> = ops
        .iter()
        .filter_map(|op| match op {
            WriterOp::MarkAcked(seqs, _, _) => Some(seqs.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    if acked.is_empty() {
        return;
    }
    for op in ops.iter_mut() {
        if let WriterOp::MarkSent(seqs, _) = op {
            seqs.retain(|s| !acked.contains(s));
        }
    }
}

/// Held rows this batch acknowledges (`acked`, see `held.rs`) were never written, so their
/// `acked` marks would update nothing; they leave the held rows when the batch commits. On a
/// healthy mesh that is nearly every mark, and each cost the origin a lookup of its seq in
/// the outbox (`update_each`): about 7 % of its instructions per write (callgrind,
/// BENCHMARKS.md).
fn skip_acked_marks_of_held_rows(ops: &mut [WriterOp], acked: &[i64]) {
    if acked.is_empty() {
        return;
    }
    let held: foldhash::HashSet<i64> = acked.iter().copied().collect();
    for op in ops.iter_mut() {
        if let WriterOp::MarkAcked(seqs, _, _) = op {
            seqs.retain(|s| !held.contains(s));
        }
    }
}

/// What an operation produced, sent to its caller after the commit.
enum Done {
    /// The outcome, and the journal row of the message.
    Recorded(Recorded, i64),
    Unit,
    Count(u64),
    Peers(Vec<(String, u64)>),
    Rows(Vec<(String, i64)>),
}

/// Sends an operation's result to its caller.
fn reply(op: WriterOp, result: Result<Done>) {
    fn send<T>(reply: Reply<T>, result: Result<Done>, pick: impl FnOnce(Done) -> Option<T>) {
        let _ = reply.send(result.and_then(|d| {
            pick(d)
                .ok_or_else(|| StorageError::Corrupt("writer answered with the wrong type".into()))
        }));
    }
    match op {
        WriterOp::Record(rec, r) => {
            let result = result.and_then(|d| match d {
                Done::Recorded(x, _) => Ok(x),
                _ => Err(StorageError::Corrupt(
                    "writer answered with the wrong type".into(),
                )),
            });
            let _ = r.send((result, rec));
        }
        WriterOp::MarkSent(_, r)
        | WriterOp::MarkAcked(_, _, r)
        | WriterOp::CountAttempt(_, r)
        | WriterOp::MarkDead(_, _, r)
        | WriterOp::Applied(_, r)
        | WriterOp::WriteHeld(_, r)
        | WriterOp::Flush(r)
        | WriterOp::Stop(r) => send(r, result, |d| matches!(d, Done::Unit).then_some(())),
        WriterOp::TakeOver(_, _, _, r) => send(r, result, |d| match d {
            Done::Rows(x) => Some(x),
            _ => None,
        }),
        WriterOp::ReplayDead(_, r) => send(r, result, |d| match d {
            Done::Peers(x) => Some(x),
            _ => None,
        }),
        WriterOp::PurgeDead(r) | WriterOp::PeerMet(_, r) | WriterOp::Prune(_, r) => {
            send(r, result, |d| match d {
                Done::Count(x) => Some(x),
                _ => None,
            })
        }
    }
}

/// The statements every write runs, prepared once for the writer's life and run through
/// SQLite's C API ([`RawStatement`]), which binds their texts without copying them. Taking
/// them from rusqlite's statement cache for each write hashed the SQL text and cleared the
/// bindings on return (about an eighth of the writer's instructions), and rusqlite's binding
/// copies every text (see `raw.rs`).
struct Hot {
    /// Hands out journal ids and collects the batch's journal row (`journal.rs`).
    journal: Appender,
    insert_seen: Option<RawStatement>,
    upsert_kv: Option<RawStatement>,
    /// Configured peers' `url:` keys whose instance id a peer-met operation revealed, with
    /// that id. A write routed while the router still knew the key, but recorded after the
    /// rename, owes its row to the id (once, if the id is among its recipients too).
    renamed: foldhash::HashMap<String, String>,
    /// The greatest stamp recorded, stored now and then (see `clock_mark.rs`).
    clock: ClockMark,
}

/// `slot`'s statement, prepared on first use.
fn hot_statement<'s>(
    slot: &'s mut Option<RawStatement>,
    c: &Connection,
    sql: &str,
) -> Result<&'s mut RawStatement> {
    if slot.is_none() {
        *slot = Some(RawStatement::prepare(c, sql)?);
    }
    Ok(slot.as_mut().expect("prepared above"))
}

const INSERT_SEEN: &str = "INSERT INTO seen (message_id, cluster_group, id) VALUES (?1, ?2, ?3)
     ON CONFLICT (message_id, cluster_group) DO NOTHING";

const UPSERT_KV: &str =
    "INSERT INTO kv (key, kind, value, hlc, origin, message_id, updated_at, expires_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)
     ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, value = excluded.value,
         hlc = excluded.hlc, origin = excluded.origin, message_id = excluded.message_id,
         updated_at = excluded.updated_at, expires_at = NULL
     WHERE excluded.hlc > kv.hlc OR (excluded.hlc = kv.hlc AND excluded.origin > kv.origin)";

/// Runs one operation inside the batch's transaction.
fn execute(
    c: &Connection,
    hot: &mut Hot,
    op: &WriterOp,
    now: i64,
    hold: Option<&mut i64>,
) -> Result<Done> {
    Ok(match op {
        WriterOp::Record(rec, _) => {
            let (recorded, msg) = record(c, hot, rec, now, hold)?;
            Done::Recorded(recorded, msg)
        }
        WriterOp::MarkSent(seqs, _) => {
            update_each(
                c,
                seqs,
                now,
                None,
                "SET state = 'sent' WHERE state = 'pending'",
            )?;
            Done::Unit
        }
        WriterOp::MarkAcked(seqs, note, _) => {
            update_each(
                c,
                seqs,
                now,
                *note,
                "SET state = 'acked' WHERE state IN ('pending', 'sent')",
            )?;
            Done::Unit
        }
        WriterOp::CountAttempt(seqs, _) => {
            update_each(
                c,
                seqs,
                now,
                None,
                "SET attempts = attempts + 1, state = 'sent' WHERE state IN ('pending', 'sent')",
            )?;
            Done::Unit
        }
        WriterOp::MarkDead(seqs, note, _) => {
            update_each(
                c,
                seqs,
                now,
                Some(note),
                "SET state = 'dead', attempts = attempts + 1 WHERE state IN ('pending', 'sent')",
            )?;
            Done::Unit
        }
        WriterOp::ReplayDead(seqs, _) => Done::Peers(replay_dead(c, seqs.as_deref(), now)?),
        WriterOp::PurgeDead(_) => {
            Done::Count(c.execute("DELETE FROM deliveries WHERE state = 'dead'", [])? as u64)
        }
        WriterOp::PeerMet(peer, _) => {
            let moved = peer_met(c, peer, now)?;
            if let Some(url) = &peer.url {
                hot.renamed.insert(format!("url:{url}"), peer.id.clone());
            }
            Done::Count(moved)
        }
        WriterOp::TakeOver(origin, since, peers, _) => {
            Done::Rows(take_over(c, origin, *since as i64, peers, now)?)
        }
        WriterOp::Prune(before, _) => {
            let before = *before as i64;
            // Tombstones and expired keys go after the retention period too.
            c.execute(
                "DELETE FROM kv WHERE (kind = 'deleted' AND updated_at < ?1)
                 OR (expires_at IS NOT NULL AND expires_at < ?1)",
                params![before],
            )?;
            // The newest journal row stays, whatever its age: the next id follows the
            // greatest one there is, so an emptied journal would hand out ids again that the
            // clock mark (`clock_mark.rs`) has counted past, and a start would not read the
            // rows recorded under them just before a crash.
            Done::Count(journal::prune(c, before)?)
        }
        WriterOp::Applied(seqs, _) => {
            let mut st = c.prepare_cached("DELETE FROM apply_queue WHERE seq = ?1")?;
            for s in seqs {
                st.execute(params![s])?;
            }
            Done::Unit
        }
        WriterOp::Flush(_) | WriterOp::Stop(_) | WriterOp::WriteHeld(..) => Done::Unit,
    })
}

/// Runs `change` on every row in `seqs` with one statement: the seqs go in as one JSON array
/// (`json_each`), so a batch of a thousand rows costs one statement, not a thousand.
fn update_each(
    c: &Connection,
    seqs: &[i64],
    now: i64,
    note: Option<&str>,
    change: &str,
) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    let (set, condition) = change
        .split_once(" WHERE ")
        .expect("change has a WHERE clause");
    let sql = format!(
        "UPDATE deliveries {set}, updated_at = ?2, note = coalesce(?3, note)
         WHERE seq IN (SELECT value FROM json_each(?1)) AND {condition}"
    );
    c.prepare_cached(&sql)?
        .execute(params![json_list(seqs), now, note])?;
    Ok(())
}

/// `ids` as a JSON array, for `json_each` to hand one statement many rows.
fn json_list(ids: &[i64]) -> String {
    let mut list = String::with_capacity(ids.len() * 8 + 2);
    list.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(&id.to_string());
    }
    list.push(']');
    list
}

/// Records a write; returns what happened and the message's journal row (0 when it was
/// there already). With `hold` (the next seq), its delivery rows are held, not written.
fn record(
    c: &Connection,
    hot: &mut Hot,
    rec: &Record,
    now: i64,
    hold: Option<&mut i64>,
) -> Result<(Recorded, i64)> {
    let path = slipstream_protocol::json_strings(&rec.path);
    let renamed;
    let is_renamed = |p: &String| p.starts_with("url:") && hot.renamed.contains_key(p);
    let peers: &[String] = if hot.renamed.is_empty() || !rec.recipients.iter().any(is_renamed) {
        &rec.recipients
    } else {
        renamed = renamed_recipients(&rec.recipients, &hot.renamed);
        &renamed
    };
    let recipients = (!peers.is_empty()).then(|| slipstream_protocol::json_strings(peers));
    let hlc = rec.hlc.to_text();
    let inserted = hot_statement(&mut hot.insert_seen, c, INSERT_SEEN)?.execute(&[
        rec.message_id.as_str().into(),
        rec.group.as_str().into(),
        hot.journal.next_id().into(),
    ])?;
    if inserted == 0 {
        return Ok((relay(c, rec, now)?, 0));
    }
    let msg = hot.journal.push(&Entry {
        message_id: &rec.message_id,
        group: &rec.group,
        msg_type: rec.msg_type,
        origin: &rec.origin,
        hlc: hlc.as_str(),
        path: &path,
        body: &rec.body,
        recipients: recipients.as_deref(),
    });
    let changed = match &rec.apply {
        None => false,
        Some(_) if rec.queue_apply => {
            c.prepare_cached("INSERT INTO apply_queue (msg) VALUES (?1)")?
                .execute(params![msg])?;
            false
        }
        Some(apply) => apply_embedded(c, hot, apply, rec, hlc.as_str(), now)?,
    };
    let mut deliveries = Vec::with_capacity(peers.len());
    match hold {
        Some(next_seq) => {
            for peer in peers {
                deliveries.push((peer.clone(), *next_seq));
                *next_seq += 1;
            }
        }
        None => {
            let mut st = c.prepare_cached(
                "INSERT INTO deliveries (msg, peer, state, attempts, updated_at) VALUES (?1, ?2, 'pending', 0, ?3)",
            )?;
            for peer in peers {
                st.execute(params![msg, peer, now])?;
                deliveries.push((peer.clone(), c.last_insert_rowid()));
            }
        }
    }
    Ok((
        Recorded::New {
            changed,
            deliveries,
        },
        msg,
    ))
}

/// `recipients` with each `url:` key whose id is known replaced by that id, each peer once.
fn renamed_recipients(
    recipients: &[String],
    renamed: &foldhash::HashMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(recipients.len());
    for peer in recipients {
        let peer = renamed.get(peer).unwrap_or(peer);
        if !out.contains(peer) {
            out.push(peer.clone());
        }
    }
    out
}

/// Adds deliveries to `peers` of the untargeted writes that came from `origin` since
/// `since`, where no delivery of that write to that peer exists yet.
fn take_over(
    c: &Connection,
    origin: &str,
    since: i64,
    peers: &[String],
    now: i64,
) -> Result<Vec<(String, i64)>> {
    let mut writes = Vec::new();
    journal::each_received_since(c, since, |id, entry| {
        if entry.origin == origin && !entry.body.contains("\"targetedTags\"") {
            writes.push(id);
        }
        Ok(())
    })?;
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    // One statement per peer, the writes in id order (`json_each` keeps the array's).
    let writes = json_list(&writes);
    let mut st = c.prepare_cached(
        "INSERT INTO deliveries (msg, peer, state, attempts, updated_at)
         SELECT w.value, ?2, 'pending', 0, ?3 FROM json_each(?1) w
         WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.msg = w.value AND d.peer = ?2)
         ORDER BY w.key",
    )?;
    let mut added = Vec::new();
    for peer in peers {
        let n = st.execute(params![writes, peer, now])?;
        if n > 0 {
            added.push((peer.clone(), n as i64));
        }
    }
    Ok(added)
}

/// A write already in the journal: adds the deliveries a sender asked for in `relayTo`, to
/// peers that have no open delivery of it yet.
fn relay(c: &Connection, rec: &Record, now: i64) -> Result<Recorded> {
    if rec.relay_to.is_empty() {
        return Ok(Recorded::Duplicate);
    }
    let msg = journal::id_of(c, &rec.message_id, &rec.group)?.ok_or_else(|| {
        StorageError::Corrupt(format!("{} is in `seen` but has no id", rec.message_id))
    })?;
    let mut deliveries = Vec::new();
    for peer in &rec.relay_to {
        let added = c
            .prepare_cached(
                "INSERT INTO deliveries (msg, peer, state, attempts, updated_at)
                 SELECT ?1, ?2, 'pending', 0, ?3 WHERE NOT EXISTS (
                     SELECT 1 FROM deliveries WHERE msg = ?1 AND peer = ?2
                     AND state IN ('pending', 'sent'))",
            )?
            .execute(params![msg, peer, now])?;
        if added > 0 {
            deliveries.push((peer.clone(), c.last_insert_rowid()));
        }
    }
    Ok(Recorded::Relayed { deliveries })
}

/// Applies a write to the embedded store; returns whether the store changed.
fn apply_embedded(
    c: &Connection,
    hot: &mut Hot,
    apply: &Apply,
    rec: &Record,
    hlc: &str,
    now: i64,
) -> Result<bool> {
    let (key, kind, value) = match apply {
        Apply::Set { key, value } => (key, value.kind().as_str(), value.to_json_text()),
        Apply::Delete { key } => (key, "deleted", "null".to_owned()),
        Apply::Expire { key, seconds } => {
            let at = now.saturating_add((*seconds as i64).saturating_mul(1000));
            let n = c
                .prepare_cached(
                    "UPDATE kv SET expires_at = ?2 WHERE key = ?1 AND kind != 'deleted'",
                )?
                .execute(params![key, at])?;
            return Ok(n > 0);
        }
    };
    let n = hot_statement(&mut hot.upsert_kv, c, UPSERT_KV)?.execute(&[
        key.as_str().into(),
        kind.into(),
        value.as_str().into(),
        hlc.into(),
        rec.origin.as_str().into(),
        rec.message_id.as_str().into(),
        now.into(),
    ])?;
    Ok(n > 0)
}

fn replay_dead(c: &Connection, seqs: Option<&[i64]>, now: i64) -> Result<Vec<(String, u64)>> {
    let mut peers: Vec<(String, u64)> = Vec::new();
    let mut count = |peer: String| match peers.iter_mut().find(|(p, _)| *p == peer) {
        Some((_, n)) => *n += 1,
        None => peers.push((peer, 1)),
    };
    let mut st = c.prepare_cached(
        "UPDATE deliveries SET state = 'pending', attempts = 0, note = NULL, updated_at = ?2
         WHERE seq = ?1 AND state = 'dead' RETURNING peer",
    )?;
    let all: Vec<i64>;
    let seqs = match seqs {
        Some(s) => s,
        None => {
            all = c
                .prepare("SELECT seq FROM deliveries WHERE state = 'dead' ORDER BY seq")?
                .query_map([], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?;
            &all
        }
    };
    for s in seqs {
        let mut rows = st.query(params![s, now])?;
        while let Some(row) = rows.next()? {
            count(row.get(0)?);
        }
    }
    Ok(peers)
}

fn peer_met(c: &Connection, peer: &PeerRow, now: i64) -> Result<u64> {
    let tags = serde_json::to_string(&peer.tags).expect("strings serialize");
    c.execute(
        "INSERT INTO peers (id, url, tags, last_seen) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET url = coalesce(excluded.url, peers.url),
             tags = excluded.tags, last_seen = excluded.last_seen",
        params![peer.id, peer.url, tags, now],
    )?;
    if let Some(url) = &peer.url {
        // Rows queued for the configured URL before its id was known now belong to the id. A
        // write that owed the id a row as well (the peer dialled in first, and was known by
        // its id while this node's own dial had not got through) keeps that one: the URL's
        // row would send it a second time. The journal lists both among the write's
        // recipients; the id's row may be gone already, acknowledged while held (`held.rs`).
        let key = format!("url:{url}");
        let rows: Vec<(i64, i64)> = c
            .prepare_cached("SELECT seq, msg FROM deliveries WHERE peer = ?1")?
            .query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        let mut owed_to_id = c.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE msg = ?1 AND peer = ?2 AND state != 'dead')",
        )?;
        let mut forget = c.prepare_cached("DELETE FROM deliveries WHERE seq = ?1")?;
        let mut journal = journal::Reader::new(c);
        for (seq, msg) in rows {
            let listed = match journal.get(msg)?.and_then(|e| e.recipients) {
                Some(recipients) => serde_json::from_str::<Vec<String>>(recipients)
                    .map_err(|e| {
                        StorageError::Corrupt(format!("recipients of journal id {msg}: {e}"))
                    })?
                    .contains(&peer.id),
                None => false,
            };
            if listed || owed_to_id.query_row(params![msg, peer.id], |r| r.get::<_, bool>(0))? {
                forget.execute(params![seq])?;
            }
        }
        let moved = c.execute(
            "UPDATE deliveries SET peer = ?1 WHERE peer = ?2",
            params![peer.id, key],
        )?;
        return Ok(moved as u64);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply<T>() -> Reply<T> {
        oneshot::channel().0
    }

    #[test]
    fn acked_marks_skip_held_rows_and_keep_written_ones() {
        let mut ops = vec![
            WriterOp::MarkAcked(vec![1, 2, 3, 4], None, reply()),
            WriterOp::MarkSent(vec![2, 5], reply()),
            WriterOp::MarkAcked(vec![4], Some("late"), reply()),
        ];
        skip_acked_marks_of_held_rows(&mut ops, &[2, 4]);
        let seqs: Vec<Vec<i64>> = ops
            .iter()
            .map(|op| match op {
                WriterOp::MarkAcked(s, _, _) | WriterOp::MarkSent(s, _) => s.clone(),
                _ => unreachable!(),
            })
            .collect();
        // Only acked marks lose held rows; sent marks are left to the plan, which writes them.
        assert_eq!(seqs, vec![vec![1, 3], vec![2, 5], vec![]]);
        let mut untouched = vec![WriterOp::MarkAcked(vec![7], None, reply())];
        skip_acked_marks_of_held_rows(&mut untouched, &[]);
        assert!(matches!(&untouched[0], WriterOp::MarkAcked(s, _, _) if s == &[7]));
    }

    /// A writer on a real database file switches to unsynced commits (and no checkpoints)
    /// for a batch of marks, and back to synced ones checkpointing past
    /// [`crate::WAL_BOUND_PAGES`] for anything else.
    #[test]
    fn syncing_is_back_on_for_every_batch_that_is_not_only_marks() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = test_writer(dir.path());
        let level = |w: &Writer| -> (i64, i64) {
            let get = |pragma: &str| -> i64 {
                w.conn
                    .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                    .unwrap()
            };
            (get("synchronous"), get("wal_autocheckpoint"))
        };
        let every = i64::from(crate::WAL_BOUND_PAGES);
        assert_ne!(every, 1000, "not SQLite's default, so the test sees it set");
        assert_eq!(level(&w), (2, every), "FULL to begin with");
        w.commit_batch(&mut vec![WriterOp::MarkAcked(vec![1], None, reply())]);
        assert_eq!(level(&w), (0, 0), "OFF for marks alone");
        w.commit_batch(&mut vec![
            WriterOp::MarkAcked(vec![1], None, reply()),
            WriterOp::Flush(reply()),
        ]);
        assert_eq!(level(&w), (2, every), "FULL again for anything else");
    }

    fn test_writer(dir: &std::path::Path) -> Writer {
        let conn = crate::open_writer_conn(&dir.join("w.db")).unwrap();
        conn.execute_batch(crate::schema::SCHEMA).unwrap();
        let (_tx, rx) = mpsc::channel(1);
        let held = Held::open(&conn, Default::default()).unwrap();
        Writer::new(conn, rx, 16, Arc::default(), Observers::default(), held).unwrap()
    }

    fn write_to(id: &str, peer: &str) -> WriterOp {
        write_to_all(id, &[peer])
    }

    fn write_to_all(id: &str, peers: &[&str]) -> WriterOp {
        WriterOp::Record(
            Box::new(Record {
                message_id: id.into(),
                group: "singleton".into(),
                msg_type: "SK",
                origin: "a".into(),
                hlc: slipstream_protocol::Hlc::new(1, 0),
                path: vec!["a".into()],
                body: "{}".into(),
                apply: None,
                queue_apply: false,
                recipients: peers.iter().map(|p| p.to_string()).collect(),
                relay_to: Vec::new(),
            }),
            oneshot::channel().0,
        )
    }

    #[test]
    fn a_peer_known_by_url_and_by_id_is_owed_each_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = test_writer(dir.path());
        let url_key = "url:ws://b.example:9";
        let deliveries = |w: &mut Writer, op: WriterOp| -> Vec<String> {
            let (tx, rx) = oneshot::channel();
            let op = match op {
                WriterOp::Record(rec, _) => WriterOp::Record(rec, tx),
                _ => unreachable!(),
            };
            w.commit_batch(&mut vec![op]);
            match rx.blocking_recv().unwrap() {
                (Ok(Recorded::New { deliveries, .. }), _) => {
                    deliveries.into_iter().map(|(p, _)| p).collect()
                }
                (other, _) => panic!("{other:?}"),
            }
        };
        // b dialled in (known as "b") while this node's dial to its URL had not got through.
        assert_eq!(
            deliveries(&mut w, write_to_all("m1", &["b", url_key])),
            ["b", url_key]
        );
        assert_eq!(
            deliveries(&mut w, write_to_all("m2", &[url_key])),
            [url_key]
        );
        let met = PeerRow {
            id: "b".into(),
            url: Some("ws://b.example:9".into()),
            tags: Vec::new(),
            last_seen: 0,
        };
        w.commit_batch(&mut vec![WriterOp::PeerMet(met, reply())]);
        let rows: Vec<(String, String)> = w
            .conn
            .prepare(
                "SELECT s.message_id, d.peer FROM deliveries d JOIN seen s ON s.id = d.msg
                 ORDER BY d.seq",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let rows: Vec<(&str, &str)> = rows.iter().map(|(m, p)| (m.as_str(), p.as_str())).collect();
        assert_eq!(
            rows,
            [("m1", "b"), ("m2", "b")],
            "m1's URL row went (b owed it already), m2's moved to b"
        );
        // Routed before the router knew, recorded after: the row goes to the id, once.
        assert_eq!(
            deliveries(&mut w, write_to_all("m3", &["b", url_key])),
            ["b"]
        );
        assert_eq!(
            deliveries(&mut w, write_to_all("m4", &[url_key, "c"])),
            ["b", "c"]
        );
    }

    #[test]
    fn a_commits_new_delivery_rows_go_to_their_peers_grouped_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::open_writer_conn(&dir.path().join("w.db")).unwrap();
        conn.execute_batch(crate::schema::SCHEMA).unwrap();
        let (_tx, rx) = mpsc::channel(1);
        let held = Held::open(&conn, Default::default()).unwrap();
        // Per peer: (seq, message id) of each row handed over.
        type Handed = Vec<(String, Vec<(i64, String)>)>;
        let seen: Arc<std::sync::Mutex<Handed>> = Arc::default();
        let observe = seen.clone();
        let on_deliveries: DeliveryObserver = Arc::new(move |by_peer| {
            let rows = by_peer.into_iter().map(|(peer, rows)| {
                let rows = rows.into_iter().map(|r| (r.seq, r.message_id.to_string()));
                (peer, rows.collect())
            });
            observe.lock().unwrap().extend(rows);
        });
        let mut w = Writer::new(
            conn,
            rx,
            16,
            Arc::default(),
            Observers {
                on_deliveries: Some(on_deliveries),
                ..Observers::default()
            },
            held,
        )
        .unwrap();
        w.commit_batch(&mut vec![
            write_to_all("m1", &["b", "c"]),
            write_to("m2", "c"),
            write_to_all("m3", &["c", "b"]),
        ]);
        let seen = seen.lock().unwrap().clone();
        let ids = |peer: &str| -> Vec<String> {
            let rows = &seen
                .iter()
                .find(|(p, _)| p == peer)
                .expect("the peer's rows")
                .1;
            assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "in seq order");
            rows.iter().map(|(_, id)| id.clone()).collect()
        };
        assert_eq!(seen.len(), 2, "one list per peer: {seen:?}");
        assert_eq!(ids("b"), ["m1", "m3"]);
        assert_eq!(ids("c"), ["m1", "m2", "m3"]);
    }

    /// A write that owes no delivery, as every write a node only receives.
    fn received(id: &str) -> WriterOp {
        let mut op = write_to(id, "-");
        if let WriterOp::Record(rec, _) = &mut op {
            rec.recipients.clear();
        }
        op
    }

    /// A commit's writes go into journal rows of about [`journal::ROW_BYTES`] each, ids one
    /// after another across the rows, and every write reads back by its id.
    #[test]
    fn a_large_commit_fills_journal_rows_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = test_writer(dir.path());
        let body: Arc<str> = "x".repeat(1000).into();
        let mut ops: Vec<WriterOp> = (0..100)
            .map(|i| {
                let mut op = received(&format!("m{i}"));
                if let WriterOp::Record(rec, _) = &mut op {
                    rec.body = body.clone();
                }
                op
            })
            .collect();
        w.commit_batch(&mut ops);
        let rows: Vec<(i64, i64, usize)> = w
            .conn
            .prepare("SELECT first, count, length(entries) FROM journal ORDER BY first")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(rows.len() >= 3, "100 KB in rows of 32 KiB: {rows:?}");
        let mut next = 1;
        for (first, count, bytes) in &rows {
            assert_eq!(*first, next, "ids follow on: {rows:?}");
            assert!(*bytes < journal::ROW_BYTES + 1100, "{rows:?}");
            next = first + count;
        }
        assert_eq!(next, 101);
        let mut journal = journal::Reader::new(&w.conn);
        for id in 1..=100 {
            let entry = journal.get(id).unwrap().expect("every write is there");
            assert_eq!(entry.message_id, format!("m{}", id - 1));
            assert_eq!(entry.body, &*body);
        }
    }

    /// A journal row holds a whole commit's writes and is pruned whole: while one of its
    /// writes is owed to a peer, the others stay too, and their dedup keys with them.
    #[test]
    fn a_journal_row_is_pruned_whole_once_none_of_its_writes_is_owed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = test_writer(dir.path());
        w.commit_batch(&mut vec![write_to("m1", "b"), received("r1")]);
        // The newest row, which stays whatever its age.
        w.commit_batch(&mut vec![received("r2")]);
        let prune = |w: &mut Writer| -> u64 {
            let (tx, rx) = oneshot::channel();
            w.commit_batch(&mut vec![WriterOp::Prune(now_ms() + 1000, tx)]);
            rx.blocking_recv().unwrap().unwrap()
        };
        let known = |w: &Writer, id: &str| journal::id_of(&w.conn, id, "singleton").unwrap();
        assert_eq!(prune(&mut w), 0, "m1 is owed to b");
        assert!(known(&w, "r1").is_some(), "r1 stays with m1");
        let seq: i64 = w
            .conn
            .query_row("SELECT seq FROM deliveries", [], |r| r.get(0))
            .unwrap();
        w.commit_batch(&mut vec![WriterOp::MarkAcked(vec![seq], None, reply())]);
        assert_eq!(prune(&mut w), 2);
        assert_eq!((known(&w, "m1"), known(&w, "r1")), (None, None));
        assert_eq!(known(&w, "r2"), Some(3));
        assert!(rows(&w).is_empty(), "the acknowledged row went too");
    }

    /// Marks between the writes of a batch do not split its journal row; an operation that
    /// reads the journal does, and finds the writes before it.
    #[test]
    fn only_operations_that_read_the_journal_split_a_batchs_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = test_writer(dir.path());
        let rows = |w: &Writer| -> i64 {
            w.conn
                .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
                .unwrap()
        };
        w.commit_batch(&mut vec![
            received("r1"),
            WriterOp::MarkAcked(vec![1], None, reply()),
            received("r2"),
            WriterOp::MarkSent(vec![2], reply()),
            WriterOp::CountAttempt(vec![3], reply()),
            received("r3"),
            WriterOp::Applied(vec![4], reply()),
            received("r4"),
        ]);
        assert_eq!(rows(&w), 1);
        // A take-over between writes reads the journal: the writes before it are there, so
        // the one from the origin taken over is owed to the new peer.
        let mut from_a = received("r5");
        if let WriterOp::Record(rec, _) = &mut from_a {
            rec.origin = "gone".into();
        }
        let (tx, rx) = oneshot::channel();
        w.commit_batch(&mut vec![
            from_a,
            WriterOp::TakeOver("gone".into(), 0, vec!["c".into()], tx),
            received("r6"),
        ]);
        assert_eq!(rx.blocking_recv().unwrap().unwrap(), [("c".to_owned(), 1)]);
        assert_eq!(rows(&w), 3);
    }

    fn held_through(w: &Writer) -> i64 {
        let v: String = w
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'held_through'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        v.parse().unwrap()
    }

    /// Commits with nothing held leave the watermark where it was (for up to
    /// `WATERMARK_EVERY`); a commit that holds rows or lets them go moves it. A crash after a
    /// lagging watermark owes nothing again: the journal rows past it owed no held row.
    #[test]
    fn the_watermark_lags_only_while_nothing_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = test_writer(dir.path());
        w.held.watermark_every = std::time::Duration::from_secs(3600);
        let start = held_through(&w);
        w.commit_batch(&mut vec![received("r1"), received("r2")]);
        assert_eq!(held_through(&w), start, "nothing held: it lags");
        // Journal ids 1 and 2 owe nothing; 3 holds a row, so the watermark is just below it.
        w.commit_batch(&mut vec![write_to("m1", "b")]);
        assert_eq!(held_through(&w), 2);
        let seq = w.held.seqs(None).next().expect("m1's row is held");
        w.commit_batch(&mut vec![WriterOp::MarkAcked(vec![seq], None, reply())]);
        assert!(w.held.is_empty());
        assert_eq!(held_through(&w), 3, "the acknowledged row falls below it");
        w.commit_batch(&mut vec![received("r3")]);
        assert_eq!(held_through(&w), 3, "lags again");
        // What a restart after a crash would do: the acknowledged row is not owed again.
        assert_eq!(crate::held::recover(&w.conn).unwrap(), 4);
        assert!(rows(&w).is_empty(), "{:?}", rows(&w));

        // Lagging no longer than `watermark_every`.
        w.held.watermark_every = std::time::Duration::ZERO;
        w.commit_batch(&mut vec![received("r4")]);
        assert_eq!(held_through(&w), 5);
    }

    fn received_at(id: &str, hlc: u64) -> WriterOp {
        let mut op = received(id);
        if let WriterOp::Record(rec, _) = &mut op {
            rec.hlc = slipstream_protocol::Hlc::new(hlc, 0);
        }
        op
    }

    fn clock_mark(w: &Writer) -> crate::clock_mark::Mark {
        crate::clock_mark::stored_mark(&w.conn).unwrap()
    }

    fn mark(max: u64, through: i64) -> crate::clock_mark::Mark {
        crate::clock_mark::Mark {
            max: Some(slipstream_protocol::Hlc::new(max, 0)),
            through,
        }
    }

    /// The greatest stamp recorded and the newest journal id are stored with a commit once
    /// `MARK_EVERY` has passed since they were last stored, not in every commit; a stamp lower
    /// than one recorded before moves only the id.
    #[test]
    fn the_clock_mark_is_stored_with_a_commit_once_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = test_writer(dir.path());
        w.hot.clock.every = std::time::Duration::from_secs(3600);
        w.commit_batch(&mut vec![received_at("r1", 7), received_at("r2", 9)]);
        assert_eq!(clock_mark(&w), Default::default(), "not due yet");
        w.hot.clock.every = std::time::Duration::ZERO;
        w.commit_batch(&mut vec![received_at("r3", 8)]);
        assert_eq!(clock_mark(&w), mark(9, 3));
        // A duplicate records no row and moves nothing.
        w.commit_batch(&mut vec![received_at("r3", 8)]);
        assert_eq!(clock_mark(&w), mark(9, 3));
        w.commit_batch(&mut vec![received_at("r4", 12)]);
        assert_eq!(clock_mark(&w), mark(12, 4));
    }

    fn rows(w: &Writer) -> Vec<String> {
        let mut st = w
            .conn
            .prepare("SELECT peer FROM deliveries ORDER BY seq")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    /// A write to a configured peer not met yet, in the same batch as meeting it: its row is
    /// written, not held, and so renamed with the others.
    #[test]
    fn a_batch_that_meets_a_peer_holds_no_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = test_writer(dir.path());
        w.commit_batch(&mut vec![write_to("m1", "url:ws://x")]);
        assert!(rows(&w).is_empty(), "held: {:?}", rows(&w));
        let met = PeerRow {
            id: "con-x".into(),
            url: Some("ws://x".into()),
            tags: Vec::new(),
            last_seen: 0,
        };
        w.commit_batch(&mut vec![
            write_to("m2", "url:ws://x"),
            WriterOp::PeerMet(met, reply()),
        ]);
        assert_eq!(rows(&w), ["con-x", "con-x"]);
        assert!(w.held.is_empty());
    }

    #[test]
    fn only_marks_nobody_waits_for_are_held_back() {
        assert!(deferrable(&[
            WriterOp::MarkAcked(vec![1], None, reply()),
            WriterOp::MarkSent(vec![2], reply()),
        ]));
        assert!(!deferrable(&[
            WriterOp::MarkAcked(vec![1], None, reply()),
            WriterOp::CountAttempt(vec![3], reply()),
        ]));
        assert!(!deferrable(&[WriterOp::Flush(reply())]));
    }

    #[test]
    fn only_batches_of_delivery_marks_skip_the_fsync() {
        let marks = || {
            vec![
                WriterOp::MarkAcked(vec![1], None, reply()),
                WriterOp::MarkSent(vec![2], reply()),
                WriterOp::CountAttempt(vec![3], reply()),
            ]
        };
        assert!(only_marks(&marks()));
        for durable in [
            WriterOp::MarkDead(vec![4], "gone".into(), reply()),
            WriterOp::Flush(reply()),
            WriterOp::Stop(reply()),
            WriterOp::Applied(vec![5], reply()),
            WriterOp::PurgeDead(reply()),
        ] {
            let mut ops = marks();
            ops.push(durable);
            assert!(!only_marks(&ops));
        }
    }
}
