//! The greatest HLC stamp the journal has held, kept in `meta` so a restart need not scan the
//! journal for it.
//!
//! A restarted node starts its clock past every stamp it recorded: otherwise, with its wall
//! clock behind them (it stepped back, or a peer's clock ran ahead and was followed), its new
//! writes would be stamped lower than older ones and lose to them by last-writer-wins. The
//! stamp column has no index (an index is a B-tree insert per write), so `max(hlc)` read every
//! row: about 1.8 s before a node with 3,000,000 journal rows (1.9 GB) could listen with a cold
//! cache, and in proportion to the journal beyond.
//!
//! So the writer keeps the greatest stamp it recorded and the newest journal id it has seen,
//! and stores them in `meta` (`hlc_through`: `"<stamp> <id>"`) in a commit at most once per
//! [`MARK_EVERY`], in the same transaction as rows they cover. At start-up the greatest stamp
//! is the stored one or a greater one among the journal rows past the stored id, a range read
//! by id of what was recorded in the last moment before the stop. The stored stamp outlives
//! the pruning of its row, so the clock also stays past stamps pruned from the journal.

use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use slipstream_protocol::Hlc;

use crate::{Result, StorageError};

/// How often the writer may store a new mark: one more `meta` row in a commit per interval.
pub const MARK_EVERY: Duration = Duration::from_secs(1);

/// The greatest stamp recorded (`max`), the newest journal id covered (`through`): every
/// journal row up to `through` has a stamp no greater than `max`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) max: Option<Hlc>,
    pub(crate) through: i64,
}

/// The greatest stamp in the journal, from the stored mark and the rows past it; the mark it
/// gives covers every row there is now.
pub(crate) fn journal_mark(c: &Connection) -> Result<Mark> {
    with_rows_past(c, stored_mark(c)?)
}

/// `stored` moved past the journal rows recorded after the id it covers.
fn with_rows_past(c: &Connection, stored: Mark) -> Result<Mark> {
    let (mut tail, mut newest): (Option<String>, Option<i64>) = (None, None);
    // Stamps' texts sort as the stamps do.
    crate::journal::each_after(c, stored.through, |id, entry| {
        if tail.as_deref().is_none_or(|t| entry.hlc > t) {
            tail = Some(entry.hlc.to_owned());
        }
        newest = Some(id);
        Ok(())
    })?;
    let tail = tail
        .map(|t| {
            t.parse::<Hlc>()
                .map_err(|e| StorageError::Corrupt(format!("journal stamp {t:?}: {e}")))
        })
        .transpose()?;
    Ok(Mark {
        max: stored.max.max(tail),
        through: newest.unwrap_or(stored.through).max(stored.through),
    })
}

/// The mark in `meta`, or none (`Mark::default()`) before the first was stored.
pub(crate) fn stored_mark(c: &Connection) -> Result<Mark> {
    let Some(text) = c
        .prepare_cached("SELECT value FROM meta WHERE key = 'hlc_through'")?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()?
    else {
        return Ok(Mark::default());
    };
    let corrupt = || StorageError::Corrupt(format!("hlc_through in meta: {text:?}"));
    let (stamp, id) = text.split_once(' ').ok_or_else(corrupt)?;
    Ok(Mark {
        max: Some(stamp.parse().map_err(|_| corrupt())?),
        through: id.parse().map_err(|_| corrupt())?,
    })
}

fn store(c: &Connection, mark: Mark) -> Result<()> {
    let Some(max) = mark.max else {
        return Ok(());
    };
    c.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('hlc_through', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![format!(
        "{} {}",
        max.to_text().as_str(),
        mark.through
    )])?;
    Ok(())
}

/// The writer's side: what it recorded, and what it last stored.
#[derive(Debug)]
pub(crate) struct ClockMark {
    seen: Mark,
    stored: Mark,
    stored_at: Instant,
    /// [`MARK_EVERY`]; a field so tests can change it.
    pub(crate) every: Duration,
}

impl Default for ClockMark {
    fn default() -> Self {
        ClockMark {
            seen: Mark::default(),
            stored: Mark::default(),
            stored_at: Instant::now(),
            every: MARK_EVERY,
        }
    }
}

impl ClockMark {
    /// Reads the journal's mark (see [`journal_mark`]) and stores it, so that the next start
    /// reads only the rows recorded after this one.
    pub(crate) fn open(c: &Connection) -> Result<ClockMark> {
        let stored = stored_mark(c)?;
        // A mark stored with a commit counts the ids its batch handed out; a batch that failed
        // before it handed out ids that no row holds, and after a restart those ids are handed
        // out again: the mark must not cover them, or their rows would not be read here.
        let from = Mark {
            through: stored.through.min(crate::journal::last_id(c)?),
            ..stored
        };
        let mark = with_rows_past(c, from)?;
        if mark != stored {
            store(c, mark)?;
        }
        Ok(ClockMark {
            seen: mark,
            stored: mark,
            ..ClockMark::default()
        })
    }

    /// A journal row recorded in the batch being committed.
    pub(crate) fn recorded(&mut self, hlc: Hlc, id: i64) {
        self.seen.max = self.seen.max.max(Some(hlc));
        self.seen.through = self.seen.through.max(id);
    }

    /// Stores the mark in the batch's transaction, if it moved and was last stored
    /// [`MARK_EVERY`] ago. The rows it covers are in the same transaction or committed
    /// before, so a commit lost in a crash takes its mark with it.
    pub(crate) fn store_if_due(&mut self, c: &Connection) -> Result<()> {
        if self.seen == self.stored || self.stored_at.elapsed() < self.every {
            return Ok(());
        }
        store(c, self.seen)?;
        self.stored = self.seen;
        self.stored_at = Instant::now();
        Ok(())
    }
}
