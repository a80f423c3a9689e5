//! The rows a delivery task has sent and not yet settled.
//!
//! Every row sent to a peer passes through here twice: once when it is sent, once when the
//! peer's ACK settles it. At an origin that is per write and per peer. Rows are kept by seq in
//! a [`SeqQueue`] (sent in seq order, acknowledged in about that order), and ACKs, which name
//! message ids, find them through an id map hashed twice per row (once when the row is sent,
//! once when it is settled); the `BTreeMap` and id map this replaced hashed it four times.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::Arc;

use slipstream_storage::SeqQueue;
use tokio::time::Instant;

/// A row sent and not yet settled.
pub(super) struct InFlight {
    pub(super) message_id: Arc<str>,
    /// Unanswered sends already counted in the database.
    pub(super) attempts: u32,
    /// When the current send counts as unanswered; `None` while queued to be sent again.
    pub(super) deadline: Option<Instant>,
    /// The number of the delivery frame the current send went in (see `Wire`).
    pub(super) frame: u64,
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
    rows: SeqQueue<InFlight>,
    /// Rows by message id, to settle them from ACKs.
    by_id: foldhash::HashMap<Arc<str>, Seqs>,
}

impl InFlightRows {
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(super) fn clear(&mut self) {
        self.rows.clear();
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
        self.rows.put(seq, row);
    }

    /// A row in flight sent again: its attempts and deadline change.
    pub(super) fn resent(&mut self, seq: i64, attempts: u32, deadline: Instant, frame: u64) {
        if let Some(f) = self.rows.get_mut(seq) {
            f.attempts = attempts;
            f.deadline = Some(deadline);
            f.frame = frame;
        }
    }

    pub(super) fn get_mut(&mut self, seq: i64) -> Option<&mut InFlight> {
        self.rows.get_mut(seq)
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
        self.rows.take(seq);
        Some(seq)
    }

    /// Settles the row of `seq` (dead-lettered, or no longer open).
    pub(super) fn settle(&mut self, seq: i64) {
        let Some(row) = self.rows.take(seq) else {
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

    /// Rows in seq order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (i64, &InFlight)> {
        self.rows.iter()
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
            frame: 1,
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
        assert_eq!(rows.rows.slots(), 0, "no empty slot is left behind");
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
    fn a_row_sent_again_keeps_its_place_and_takes_the_new_deadline_and_frame() {
        let mut rows = InFlightRows::default();
        rows.sent(1, row("a"));
        rows.sent(2, row("b"));
        let at = Instant::now();
        rows.resent(1, 3, at, 2);
        let first = rows
            .iter()
            .next()
            .map(|(s, f)| (s, f.attempts, f.deadline, f.frame));
        assert_eq!(first, Some((1, 3, Some(at), 2)));
        assert_eq!(rows.len(), 2);
        rows.resent(7, 1, at, 2);
        assert_eq!(
            rows.len(),
            2,
            "a row not in flight is not added by a resend"
        );
    }
}
