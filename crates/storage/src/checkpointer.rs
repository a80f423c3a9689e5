//! Checkpoints on a thread of their own.
//!
//! A WAL checkpoint copies the pages committed to the WAL back into the database file and
//! syncs it. Left to SQLite's automatic checkpoint, the writer runs it inside a commit, so every
//! caller of that commit waits for it: with keys in random order each commit changes about a
//! thousand pages, and copying them took about a fifth of the writer's time (BENCHMARKS.md).
//!
//! Here a second connection runs a passive checkpoint every [`CHECKPOINT_EVERY`] while commits
//! come in. A passive checkpoint never blocks the writer: the writer keeps appending to the WAL
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

/// How often the checkpointer copies the WAL back while commits come in. A page changed by
/// several commits within this time is copied once, so longer is cheaper per write, but each
/// round then copies and syncs more at once beside the writer: 500 ms (with a bound of 20,000
/// pages) lengthened the latency tails at 10,000 writes/s by half (BENCHMARKS.md).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// WAL pages past which the writer checkpoints itself (see the module's comment), about
/// 40 MiB. The WAL file grows past it, as a commit adds up to a few thousand pages and the
/// writer's checkpoint gives way to one of this thread's in progress: with random keys at full
/// speed it settled at about 65 MiB. Before the checkpointer, the writer
/// checkpointed every 3,000 pages (SQLite's default is 1,000).
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
        every: Duration,
    ) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("slipstream-checkpoint".into())
            .spawn(move || run(&conn, &stopped, &stats, every))?;
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

fn run(conn: &Connection, stopped: &mpsc::Receiver<()>, stats: &WriterStats, every: Duration) {
    // Commits counted before the thread ran count too.
    let mut seen = 0;
    loop {
        match stopped.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Err(e) = round(conn, stats, &mut seen) {
            // The next round tries again; the writer's bound keeps the WAL from growing on.
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// One round: a passive checkpoint if the writer committed since the last round (`seen`).
/// Returns whether it checkpointed.
fn round(conn: &Connection, stats: &WriterStats, seen: &mut u64) -> Result<bool> {
    let commits = stats.commits.load(Ordering::Relaxed);
    if commits == *seen {
        return Ok(false);
    }
    *seen = commits;
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    Ok(true)
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

        assert!(
            !round(&conn, &stats, &mut seen).unwrap(),
            "no commit counted"
        );
        assert!(file_len(&file) < 64 * 1024, "still only in the WAL");

        stats.commits.fetch_add(1, Ordering::Relaxed);
        assert!(round(&conn, &stats, &mut seen).unwrap());
        assert!(
            file_len(&file) > 1024 * 1024,
            "copied into the database file"
        );
        assert!(
            !round(&conn, &stats, &mut seen).unwrap(),
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
        let c =
            Checkpointer::start(crate::open_conn(&file).unwrap(), stats.clone(), every).unwrap();
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
}
