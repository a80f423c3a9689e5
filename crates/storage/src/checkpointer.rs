//! Checkpoints on a thread of their own.
//!
//! A WAL checkpoint copies the pages committed to the WAL back into the database file and
//! syncs it. Left to SQLite's automatic checkpoint, the writer runs it inside a commit, so every
//! caller of that commit waits for it: with keys in random order each commit changes about a
//! thousand pages, and copying them took about a fifth of the writer's time (BENCHMARKS.md).
//!
//! Here a second connection runs a passive checkpoint while commits come in, about every
//! [`CHECKPOINT_PAGES`] of WAL, but at most every 250 ms and at least every 2 s (see [`Pace`]).
//! A passive checkpoint never blocks the writer: the writer keeps appending to the WAL
//! while the pages before are copied. Its connection is `synchronous = FULL`, so it syncs the
//! WAL before copying from it and the database file before it lets the WAL be reused, whatever
//! the writer's own setting (unsynced marks, see `writer.rs`).
//!
//! The WAL starts again from its beginning only when a commit finds it wholly copied, which a
//! writer that never pauses never does. So the writer keeps an automatic checkpoint as a bound
//! ([`WAL_BOUND_PAGES`]): past it, the writer's own commit copies what is left (little, as this
//! thread has copied the rest) and the WAL restarts.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::{Result, WriterStats};

/// How often the checkpointer copies the WAL back while commits come in ([`Pace::DEFAULT`]).
/// A page changed by several commits between two rounds is copied once, so rounds far apart
/// cost less per write; but each round syncs the WAL and the database file beside the writer's
/// own fsyncs, and a bigger one copies more at once. Rounds every 250 ms whatever the WAL held
/// lengthened p99 at 10,000 sequential writes/s by about a tenth; every 500 ms (with a bound
/// of 20,000 pages), by half (BENCHMARKS.md). So the wait follows the WAL's growth, aiming at
/// [`CHECKPOINT_PAGES`] a round.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pace {
    /// The shortest wait between rounds (random keys at full speed wait this).
    pub(crate) min: Duration,
    /// The longest wait between rounds while commits come in (a trickle of writes).
    pub(crate) max: Duration,
    /// The WAL pages a round aims to copy.
    pub(crate) pages: u64,
}

impl Pace {
    pub(crate) const DEFAULT: Pace = Pace {
        min: Duration::from_millis(250),
        max: Duration::from_secs(2),
        pages: CHECKPOINT_PAGES,
    };

    /// The wait after a round that copied `copied` pages following a wait of `wait`: scaled
    /// toward [`Pace::pages`] a round, by at most a factor of two each time, within
    /// [`Pace::min`] and [`Pace::max`].
    pub(crate) fn next(&self, wait: Duration, copied: u64) -> Duration {
        let scaled = wait.mul_f64(self.pages as f64 / copied.max(1) as f64);
        scaled
            .clamp(wait / 2, wait * 2)
            .clamp(self.min, self.max.max(self.min))
    }
}

/// WAL pages the checkpointer aims to copy a round: what the writer's own automatic checkpoint
/// copied before there was a checkpointer (SQLite's default is 1,000).
pub const CHECKPOINT_PAGES: u64 = 3_000;

/// WAL pages past which the writer checkpoints itself (see the module's comment), about
/// 40 MiB. The WAL file grows past it, as a commit adds up to a few thousand pages and the
/// writer's checkpoint gives way to one of this thread's in progress: with random keys at full
/// speed it settled at about 65 MiB.
pub const WAL_BOUND_PAGES: u32 = 10_000;

/// The running checkpointer. [`Checkpointer::stop`] ends it; dropping it ends it too.
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

    /// Ends the thread after the checkpoint in progress, if any.
    pub(crate) fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(conn: &Connection, stopped: &mpsc::Receiver<()>, stats: &WriterStats, pace: Pace) {
    // Commits counted before the thread ran count too.
    let mut seen = 0;
    let mut copied_before = 0;
    let mut wait = pace.min;
    loop {
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        match round(conn, stats, &mut seen) {
            Ok(None) => {}
            Ok(Some(copied)) => {
                // The count of frames copied starts again when the WAL does.
                let new = copied.checked_sub(copied_before).unwrap_or(copied);
                copied_before = copied;
                wait = pace.next(wait, new);
            }
            // The next round tries again; the writer's bound keeps the WAL from growing on.
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// One round: a passive checkpoint if the writer committed since the last round (`seen`).
/// Returns the WAL frames copied so far since the WAL last started again, if it checkpointed.
fn round(conn: &Connection, stats: &WriterStats, seen: &mut u64) -> Result<Option<u64>> {
    let commits = stats.commits.load(Ordering::Relaxed);
    if commits == *seen {
        return Ok(None);
    }
    *seen = commits;
    let copied: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(2))?;
    Ok(Some(copied.max(0) as u64))
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
        let copied = round(&conn, &stats, &mut seen).unwrap().unwrap();
        // 16 rows of 64 KiB: 16 pages each, and a few more for the table.
        assert!(copied >= 16 * 16, "{copied} frames");
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
            max: every,
            pages: 1,
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
        c.stop();
    }

    #[test]
    fn the_wait_follows_the_pages_a_round_copied() {
        let pace = Pace::DEFAULT;
        let ms = Duration::from_millis;
        // On target: the same wait.
        assert_eq!(pace.next(ms(500), pace.pages), ms(500));
        // Half the target: twice the wait; a tenth: still only twice.
        assert_eq!(pace.next(ms(500), pace.pages / 2), ms(1000));
        assert_eq!(pace.next(ms(500), pace.pages / 10), ms(1000));
        // Three times the target: a third of the wait, but not under the minimum.
        assert_eq!(pace.next(ms(600), pace.pages * 3), ms(300));
        assert_eq!(pace.next(ms(300), pace.pages * 3), pace.min);
        // Nothing copied (a round that found the WAL copied already): longer, up to the maximum.
        assert_eq!(pace.next(pace.max, 0), pace.max);
    }
}
