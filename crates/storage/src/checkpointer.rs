//! Checkpoints on a thread of their own.
//!
//! A WAL checkpoint copies the pages committed to the WAL back into the database file and
//! syncs it. A page changed by several commits between two checkpoints is copied once, so
//! checkpoints far apart cost less per write. That matters for keys in random order, where each
//! write changes pages of its own: checkpointing every 10,000 WAL pages instead of 1,000 carried
//! about two fifths more such writes. But SQLite's automatic checkpoint runs inside the writer's
//! commit, and every caller of that commit waits for it: at 10,000 pages sequential writes lost
//! about an eighth and latency tails grew (BENCHMARKS.md).
//!
//! So a second connection runs passive checkpoints while commits come in: about every 500
//! pages of WAL while the writer keeps up, so that each round's fsync of the database file
//! stays small, and about every [`CHECKPOINT_PAGES`] while it is saturated (see [`Pace`]). A
//! passive checkpoint never blocks the writer, which keeps appending to the WAL while the
//! frames before are copied. This connection is
//! `synchronous = FULL`, so it syncs the WAL before copying from it and the database file before
//! it lets the WAL be reused, whatever the writer's own setting (unsynced marks, `writer.rs`).
//!
//! The WAL starts again from its beginning only at a commit whose transaction began with the
//! WAL wholly copied: after a round that ended between two of the writer's transactions, or
//! after a checkpoint of the writer's own. So the
//! writer keeps its automatic checkpoint as a bound ([`WAL_BOUND_PAGES`]): past it, its commit
//! copies what this thread has not (the frames since its last round) and the WAL restarts.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::{Result, WriterStats};

/// How often the checkpointer copies the WAL back while commits come in ([`Pace::DEFAULT`]).
/// Each round syncs the WAL and the database file beside the writer's own fsyncs, and the
/// database file's fsync flushes every page the round copied: the writer's next WAL fsync
/// waits behind that flush on the same disk. So the rhythm depends on how busy the writer is:
///
/// - While it keeps up (commits of a few writes each), rounds are small and frequent: every
///   20 ms or more, aiming at 500 pages. At 10,000 writes/s one per frame, rounds every
///   250 ms (aiming at 3,000 pages) gave a p99 of 14.4 ms on 3 nodes and 5.4 ms on a node
///   alone; every 20 ms, 7.8 and 3.0 ms (BENCHMARKS.md, "2026-12-06, evening").
/// - While it is saturated (commits of [`BUSY_OPS`] operations or more), rounds are larger:
///   every 250 ms or more, aiming at 3,000 pages. A page changed by several commits between
///   two rounds is copied once, which saves the CPU the writer is short of; with keys in
///   random order, small rounds carried about 8 % fewer writes at full speed. Larger still
///   (every 250 ms with an 8,000-page aim and a 20,000-page bound) lengthened p99 by about
///   two fifths.
///
/// The wait follows the frames the WAL held at the last round, aiming at the pages above.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pace {
    /// The shortest wait between rounds while the writer keeps up.
    pub(crate) min: Duration,
    /// The shortest wait between rounds while the writer is saturated.
    pub(crate) busy_min: Duration,
    /// The longest wait between rounds (a trickle of writes, or none).
    pub(crate) max: Duration,
    /// The WAL frames (pages) a round aims to find while the writer keeps up.
    pub(crate) pages: u64,
    /// The WAL frames a round aims to find while the writer is saturated.
    pub(crate) busy_pages: u64,
}

impl Pace {
    pub(crate) const DEFAULT: Pace = Pace {
        min: Duration::from_millis(20),
        busy_min: Duration::from_millis(250),
        max: Duration::from_secs(2),
        pages: 500,
        busy_pages: CHECKPOINT_PAGES,
    };

    /// The wait after a round that found `frames` in the WAL following a wait of `wait`:
    /// scaled toward the round's aim in pages, by at most a factor of two each time, within
    /// the minimum (the writer `busy` or not) and [`Pace::max`].
    pub(crate) fn next(&self, wait: Duration, frames: u64, busy: bool) -> Duration {
        let (min, pages) = match busy {
            true => (self.busy_min, self.busy_pages),
            false => (self.min, self.pages),
        };
        let scaled = wait.mul_f64(pages as f64 / frames.max(1) as f64);
        scaled
            .clamp(wait / 2, wait * 2)
            .clamp(min, self.max.max(min))
    }
}

/// Operations per commit, on average since the last round, from which the writer counts as
/// saturated: its queue fills its batches. At 10,000 writes/s one per frame a node commits
/// about 7–9 at a time; at full speed, hundreds.
pub(crate) const BUSY_OPS: u64 = 32;

/// Whether `commits` commits carrying `ops` operations in all show a saturated writer.
fn busy(commits: u64, ops: u64) -> bool {
    commits > 0 && ops >= BUSY_OPS * commits
}

/// WAL pages the checkpointer aims to find a round while the writer is saturated: what the
/// writer's own automatic checkpoint copied before there was a checkpointer (SQLite's default
/// is 1,000).
pub(crate) const CHECKPOINT_PAGES: u64 = 3_000;

/// WAL pages past which the writer checkpoints itself (see the module's comment), about
/// 40 MiB. The WAL file grows past it, as a commit adds up to a few thousand pages and the
/// writer's checkpoint gives way to one of this thread's in progress: with random keys at full
/// speed it settled at about 65 MiB. SQLite never shrinks the file; it is reused.
pub(crate) const WAL_BOUND_PAGES: u32 = 10_000;

/// The running checkpointer. Dropping it ends the thread after the round in progress, if any.
pub(crate) struct Checkpointer {
    stop: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread with its own connection. It checkpoints only after the writer's
    /// `commits` counter moved, so an idle node does nothing.
    pub(crate) fn start(
        conn: Connection,
        stats: Arc<WriterStats>,
        pace: Pace,
    ) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("slipstream-checkpoint".into())
            .spawn(move || run(&conn, &stopped, &stats, pace))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: &Connection, stopped: &mpsc::Receiver<()>, stats: &WriterStats, pace: Pace) {
    // Commits counted before the thread ran count too.
    let mut seen = 0;
    // The writer's commits and operations at the last round, for how busy it was since.
    let mut last = (0, 0);
    let mut wait = pace.min;
    loop {
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = (
            stats.commits.load(Ordering::Relaxed),
            stats.ops.load(Ordering::Relaxed),
        );
        let busy = busy(now.0.saturating_sub(last.0), now.1.saturating_sub(last.1));
        last = now;
        match round(conn, stats, &mut seen) {
            // Nothing committed: an idle node wakes less and less often, up to the maximum.
            Ok(None) => wait = pace.next(wait, 0, busy),
            Ok(Some(frames)) => wait = pace.next(wait, frames, busy),
            // The next round tries again; the writer's bound keeps the WAL from growing on.
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// One round: a passive checkpoint if the writer committed since the last round (`seen`).
/// Returns the frames the WAL held, if it checkpointed: what it grew by since the last round
/// when the WAL started again in between, and more (frames already copied) when it did not,
/// which only shortens the next wait.
fn round(conn: &Connection, stats: &WriterStats, seen: &mut u64) -> Result<Option<u64>> {
    let commits = stats.commits.load(Ordering::Relaxed);
    if commits == *seen {
        return Ok(None);
    }
    *seen = commits;
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    let frames = frames.max(0) as u64;
    stats.wal_frames.store(frames, Ordering::Relaxed);
    Ok(Some(frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database whose writer committed 1 MiB that is still only in the WAL: far below the
    /// writer's own bound, so only a checkpointer copies it into the database file.
    fn committed_to_the_wal(file: &std::path::Path) -> Connection {
        let writer = crate::open_writer_conn(file).unwrap();
        writer.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        for _ in 0..16 {
            writer
                .execute("INSERT INTO t VALUES (zeroblob(65536))", [])
                .unwrap();
        }
        writer
    }

    fn file_len(file: &std::path::Path) -> u64 {
        std::fs::metadata(file).unwrap().len()
    }

    #[test]
    fn a_round_checkpoints_only_after_commits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.db");
        let _writer = committed_to_the_wal(&file);
        let conn = crate::open_conn(&file).unwrap();
        let stats = WriterStats::default();
        let mut seen = 0;

        assert_eq!(
            round(&conn, &stats, &mut seen).unwrap(),
            None,
            "no commit counted"
        );
        assert!(file_len(&file) < 64 * 1024, "still only in the WAL");

        stats.commits.fetch_add(1, Ordering::Relaxed);
        let frames = round(&conn, &stats, &mut seen).unwrap().unwrap();
        // 16 rows of 64 KiB: 16 pages each, and a few more for the table.
        assert!(frames >= 16 * 16, "{frames} frames");
        assert_eq!(
            stats.wal_frames.load(Ordering::Relaxed),
            frames,
            "for the metric"
        );
        assert!(
            file_len(&file) > 1024 * 1024,
            "copied into the database file"
        );
        assert_eq!(
            round(&conn, &stats, &mut seen).unwrap(),
            None,
            "once per commit seen"
        );
    }

    #[test]
    fn the_thread_copies_the_wal_back_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.db");
        let _writer = committed_to_the_wal(&file);
        let stats = Arc::new(WriterStats::default());
        let every = Duration::from_millis(5);
        let pace = Pace {
            min: every,
            busy_min: every,
            max: every,
            pages: 1,
            busy_pages: 1,
        };
        let c = Checkpointer::start(crate::open_conn(&file).unwrap(), stats.clone(), pace).unwrap();
        stats.commits.fetch_add(1, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while file_len(&file) <= 1024 * 1024 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint in 20 s"
            );
            std::thread::sleep(every);
        }
        drop(c);
    }

    #[test]
    fn the_wait_follows_the_frames_a_round_found() {
        let pace = Pace::DEFAULT;
        let ms = Duration::from_millis;
        for (busy, min, pages) in [
            (false, pace.min, pace.pages),
            (true, pace.busy_min, pace.busy_pages),
        ] {
            // On target: the same wait.
            assert_eq!(pace.next(ms(500), pages, busy), ms(500));
            // Half the target: twice the wait; a tenth: still only twice.
            assert_eq!(pace.next(ms(500), pages / 2, busy), ms(1000));
            assert_eq!(pace.next(ms(500), pages / 10, busy), ms(1000));
            // Three times the target: a third of the wait, but not under the minimum.
            assert_eq!(pace.next(ms(900), pages * 3, busy), ms(450));
            assert_eq!(pace.next(min * 2, pages * 3, busy), min);
            // An empty WAL (started again, and only marks committed since): longer, up to
            // the maximum.
            assert_eq!(pace.next(pace.max, 0, busy), pace.max);
        }
        // A writer that keeps up gets small rounds, often; a saturated one larger rounds.
        assert!(pace.min < pace.busy_min && pace.pages < pace.busy_pages);
        // From busy to keeping up, the wait comes down by half a round, not at once; the
        // other way, it goes up to the busy minimum at once.
        assert_eq!(
            pace.next(pace.busy_min, pace.pages * 4, false),
            pace.busy_min / 2
        );
        assert_eq!(pace.next(pace.min, pace.pages, true), pace.busy_min);
    }

    #[test]
    fn a_writer_is_busy_when_its_commits_carry_many_operations() {
        // At 10,000 writes/s one per frame: about 8 operations a commit.
        assert!(!busy(1_700, 8 * 1_700));
        // At full speed: hundreds.
        assert!(busy(170, 580 * 170));
        assert!(busy(10, BUSY_OPS * 10));
        assert!(!busy(10, BUSY_OPS * 10 - 1));
        // No commit since the last round: not busy (an idle node's rounds stretch out).
        assert!(!busy(0, 0));
    }
}
