//! The rows a delivery task has sent and not yet settled.
//!
//! Every row sent to a peer passes through here twice: once when it is sent, once when the
//! peer's ACK settles it. At an origin that is per write and per peer, so the structure is
//! shaped for that traffic. Rows are sent in seq order (a row sent again is already here)
//! and are almost always acknowledged in that order, so they are kept in a queue in seq order:
//! a new row goes at the back, an acknowledged one is most often the front, and a row settled
//! out of order leaves an empty slot behind until the rows before it are settled too. ACKs name
//! message ids, so an id map finds the row they settle.
//!
//! A `BTreeMap` by seq did the same with a tree insert and remove per row, and the id map was
//! hashed four times per row; here a row costs one push, one pop and two hashes.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

/// Empty slots the queue may hold beyond twice its rows before they are dropped all at once.
/// A row left unacknowledged at the front (its peer lost it; it waits to be sent again) keeps
/// the slots of every row settled after it; dropping them when they outnumber the rows keeps
/// memory and lookups within a small multiple of the window.
const SLACK: usize = 256;

/// A row sent and not yet settled.
pub(super) struct InFlight {
    pub(super) message_id: Arc<str>,
    /// Unanswered sends already counted in the database.
    pub(super) attempts: u32,
    /// When the current send counts as unanswered; `None` while queued to be sent again.
    pub(super) deadline: Option<Instant>,
}

/// The in-flight rows of one message id, in send order: almost always one (an id repeats
/// only across cluster groups), kept without an allocation of its own.
enum Seqs {
    One(i64),
    Many(VecDeque<i64>),
}

impl Seqs {
    fn push(&mut self, seq: i64) {
        match self {
            Seqs::One(first) => *self = Seqs::Many(VecDeque::from([*first, seq])),
            Seqs::Many(q) => q.push_back(seq),
        }
    }
}

/// One delivery task's rows in flight.
#[derive(Default)]
pub(super) struct InFlightRows {
    /// By seq, ascending; `None` once settled, until every slot before it is settled too.
    slots: VecDeque<(i64, Option<InFlight>)>,
    /// Slots holding a row.
    rows: usize,
    /// Rows by message id, to settle them from ACKs.
    by_id: foldhash::HashMap<Arc<str>, Seqs>,
}

impl InFlightRows {
    pub(super) fn len(&self) -> usize {
        self.rows
    }

    pub(super) fn clear(&mut self) {
        self.slots.clear();
        self.rows = 0;
        self.by_id.clear();
    }

    /// A row sent for the first time.
    pub(super) fn sent(&mut self, seq: i64, row: InFlight) {
        match self.by_id.entry(row.message_id.clone()) {
            Entry::Vacant(v) => {
                v.insert(Seqs::One(seq));
            }
            Entry::Occupied(mut o) => o.get_mut().push(seq),
        }
        self.put(seq, row);
    }

    /// A row in flight sent again: its attempts and deadline change.
    pub(super) fn resent(&mut self, seq: i64, attempts: u32, deadline: Instant) {
        if let Some(f) = self.get_mut(seq) {
            f.attempts = attempts;
            f.deadline = Some(deadline);
        }
    }

    fn put(&mut self, seq: i64, row: InFlight) {
        match self.slots.back() {
            Some((last, _)) if *last >= seq => match self.position(seq) {
                Ok(i) => {
                    let slot = &mut self.slots[i].1;
                    self.rows += usize::from(slot.is_none());
                    *slot = Some(row);
                }
                Err(i) => {
                    self.slots.insert(i, (seq, Some(row)));
                    self.rows += 1;
                }
            },
            _ => {
                self.slots.push_back((seq, Some(row)));
                self.rows += 1;
            }
        }
    }

    fn position(&self, seq: i64) -> Result<usize, usize> {
        // Rows are most often settled in the order they were sent: the front first.
        match self.slots.front() {
            Some((first, _)) if *first == seq => Ok(0),
            _ => self.slots.binary_search_by_key(&seq, |(s, _)| *s),
        }
    }

    pub(super) fn get_mut(&mut self, seq: i64) -> Option<&mut InFlight> {
        let i = self.position(seq).ok()?;
        self.slots[i].1.as_mut()
    }

    /// Settles the row an ACK of `id` names: the first sent of that id. Its seq, if in flight.
    pub(super) fn settle_id(&mut self, id: &str) -> Option<i64> {
        let (key, seqs) = self.by_id.remove_entry(id)?;
        let seq = match seqs {
            Seqs::One(seq) => seq,
            Seqs::Many(mut q) => {
                let seq = q.pop_front().expect("emptied lists are removed");
                if !q.is_empty() {
                    self.by_id.insert(key, Seqs::Many(q));
                }
                seq
            }
        };
        self.take(seq);
        Some(seq)
    }

    /// Settles the row of `seq` (dead-lettered, or no longer open).
    pub(super) fn settle(&mut self, seq: i64) {
        let Some(row) = self.take(seq) else {
            return;
        };
        let gone = match self.by_id.get_mut(&row.message_id) {
            Some(Seqs::One(s)) => *s == seq,
            Some(Seqs::Many(q)) => {
                q.retain(|s| *s != seq);
                q.is_empty()
            }
            None => false,
        };
        if gone {
            self.by_id.remove(&row.message_id);
        }
    }

    /// Empties the row's slot, then drops empty slots at the front (and all of them when
    /// they outnumber the rows, see [`SLACK`]).
    fn take(&mut self, seq: i64) -> Option<InFlight> {
        let i = self.position(seq).ok()?;
        let row = self.slots[i].1.take()?;
        self.rows -= 1;
        while self.slots.front().is_some_and(|(_, f)| f.is_none()) {
            self.slots.pop_front();
        }
        if self.slots.len() > 2 * self.rows + SLACK {
            self.slots.retain(|(_, f)| f.is_some());
        }
        Some(row)
    }

    /// Rows in seq order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (i64, &InFlight)> {
        self.slots
            .iter()
            .filter_map(|(s, f)| f.as_ref().map(|f| (*s, f)))
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> InFlight {
        InFlight {
            message_id: id.into(),
            attempts: 0,
            deadline: None,
        }
    }

    fn seqs(rows: &InFlightRows) -> Vec<i64> {
        rows.iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn acks_settle_rows_in_any_order() {
        let mut rows = InFlightRows::default();
        for (seq, id) in [(3, "a"), (5, "b"), (9, "c"), (12, "d")] {
            rows.sent(seq, row(id));
        }
        assert_eq!(rows.settle_id("c"), Some(9));
        assert_eq!(seqs(&rows), [3, 5, 12]);
        assert_eq!(rows.settle_id("a"), Some(3));
        assert_eq!(rows.settle_id("a"), None, "settled once");
        assert_eq!(rows.settle_id("unknown"), None);
        assert_eq!(seqs(&rows), [5, 12]);
        assert_eq!(rows.len(), 2);
        rows.settle(12);
        rows.settle(5);
        assert_eq!(rows.len(), 0);
        assert_eq!(rows.slots(), 0, "no empty slot is left behind");
        assert!(rows.by_id.is_empty());
    }

    #[test]
    fn an_id_sent_twice_is_settled_first_sent_first() {
        // The same id in two cluster groups: one ACK settles one row.
        let mut rows = InFlightRows::default();
        rows.sent(1, row("x"));
        rows.sent(2, row("y"));
        rows.sent(4, row("x"));
        assert_eq!(rows.settle_id("x"), Some(1));
        assert_eq!(rows.settle_id("x"), Some(4));
        assert_eq!(rows.settle_id("x"), None);
        assert_eq!(seqs(&rows), [2]);
        // Dead-lettering one of two rows of an id leaves the other to its ACK.
        rows.sent(5, row("y"));
        rows.settle(2);
        assert_eq!(rows.settle_id("y"), Some(5));
        assert_eq!(rows.len(), 0);
    }

    #[test]
    fn a_row_sent_again_keeps_its_place_and_takes_the_new_deadline() {
        let mut rows = InFlightRows::default();
        rows.sent(1, row("a"));
        rows.sent(2, row("b"));
        let at = Instant::now();
        rows.resent(1, 3, at);
        let first = rows.iter().next().map(|(s, f)| (s, f.attempts, f.deadline));
        assert_eq!(first, Some((1, 3, Some(at))));
        assert_eq!(rows.len(), 2);
        rows.resent(7, 1, at);
        assert_eq!(
            rows.len(),
            2,
            "a row not in flight is not added by a resend"
        );
    }

    #[test]
    fn a_row_stuck_at_the_front_keeps_memory_bounded() {
        // The first row is never acknowledged while thousands after it are.
        let mut rows = InFlightRows::default();
        rows.sent(0, row("stuck"));
        for seq in 1..10_000 {
            rows.sent(seq, row(&format!("m{seq}")));
            assert_eq!(rows.settle_id(&format!("m{seq}")), Some(seq));
            assert!(rows.slots() <= 2 * rows.len() + SLACK + 1);
        }
        assert_eq!(seqs(&rows), [0]);
        assert_eq!(rows.settle_id("stuck"), Some(0));
        assert_eq!(rows.slots(), 0);
    }

    #[test]
    fn a_row_below_the_newest_is_put_in_order() {
        // Not how a task sends (seqs only grow), but the queue stays sorted if it happens.
        let mut rows = InFlightRows::default();
        rows.sent(10, row("a"));
        rows.sent(30, row("c"));
        rows.sent(20, row("b"));
        assert_eq!(seqs(&rows), [10, 20, 30]);
        assert_eq!(rows.settle_id("b"), Some(20));
        assert_eq!(seqs(&rows), [10, 30]);
    }
}
