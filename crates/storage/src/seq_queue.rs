//! Rows by seq, added in about seq order and taken away in about the same order.
//!
//! Every write recorded at an origin is tracked once per peer until that peer acknowledges it:
//! the writer holds its delivery row (`held.rs`), and the peer's delivery task keeps it in
//! flight. Both see rows arrive in seq order and leave in about that order, so both keep them
//! in this queue: a new row goes at the back, a row taken away most often comes from the front,
//! and one taken out of order leaves an empty slot until the rows before it are gone too. A
//! `BTreeMap` by seq did the same with a tree insert and remove per row, about 700 instructions
//! more per row and peer in each of the two places (BENCHMARKS.md).

use std::collections::VecDeque;

/// Empty slots a queue may hold beyond twice its rows before they are dropped all at once. A
/// row that stays at the front (its peer never acknowledged it) keeps the slots of every row
/// taken after it; dropping them when they outnumber the rows keeps memory and lookups within
/// a small multiple of the rows.
const SLACK: usize = 256;

/// Rows of `T` by seq (see the module's documentation).
pub struct SeqQueue<T> {
    /// By seq, ascending; `None` once taken, until every slot before it is taken too.
    slots: VecDeque<(i64, Option<T>)>,
    /// Slots holding a row.
    rows: usize,
}

impl<T> Default for SeqQueue<T> {
    fn default() -> Self {
        SeqQueue {
            slots: VecDeque::new(),
            rows: 0,
        }
    }
}

impl<T> SeqQueue<T> {
    /// Rows in the queue.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.rows = 0;
    }

    /// Adds (or replaces) the row of `seq`: at the back when it is the newest, as it almost
    /// always is.
    pub fn put(&mut self, seq: i64, row: T) {
        match self.slots.back() {
            Some((last, _)) if *last >= seq => {
                match self.slots.binary_search_by_key(&seq, |(s, _)| *s) {
                    Ok(i) => {
                        let slot = &mut self.slots[i].1;
                        self.rows += usize::from(slot.is_none());
                        *slot = Some(row);
                    }
                    Err(i) => {
                        self.slots.insert(i, (seq, Some(row)));
                        self.rows += 1;
                    }
                }
            }
            _ => {
                self.slots.push_back((seq, Some(row)));
                self.rows += 1;
            }
        }
    }

    /// The slot of `seq`, full or empty: the front first, then a search within the range.
    fn position(&self, seq: i64) -> Option<usize> {
        let (first, last) = (self.slots.front()?.0, self.slots.back()?.0);
        if seq == first {
            return Some(0);
        }
        if seq < first || seq > last {
            return None;
        }
        self.slots.binary_search_by_key(&seq, |(s, _)| *s).ok()
    }

    pub fn get(&self, seq: i64) -> Option<&T> {
        self.slots[self.position(seq)?].1.as_ref()
    }

    pub fn get_mut(&mut self, seq: i64) -> Option<&mut T> {
        let i = self.position(seq)?;
        self.slots[i].1.as_mut()
    }

    /// Takes the row of `seq` away, then drops the empty slots at the front (and every empty
    /// slot once they outnumber the rows, see [`SLACK`]).
    pub fn take(&mut self, seq: i64) -> Option<T> {
        let i = self.position(seq)?;
        let row = self.slots[i].1.take()?;
        self.rows -= 1;
        while self.slots.front().is_some_and(|(_, r)| r.is_none()) {
            self.slots.pop_front();
        }
        if self.slots.len() > 2 * self.rows + SLACK {
            self.slots.retain(|(_, r)| r.is_some());
        }
        Some(row)
    }

    /// Rows in seq order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &T)> {
        self.slots
            .iter()
            .filter_map(|(s, r)| r.as_ref().map(|r| (*s, r)))
    }

    /// Slots, full and empty: what the queue takes in memory.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs<T>(q: &SeqQueue<T>) -> Vec<i64> {
        q.iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn rows_leave_in_any_order() {
        let mut q = SeqQueue::default();
        for seq in [3, 5, 9, 12] {
            q.put(seq, seq * 10);
        }
        assert_eq!(q.take(9), Some(90));
        assert_eq!(seqs(&q), [3, 5, 12]);
        assert_eq!(q.take(3), Some(30));
        assert_eq!(q.take(3), None, "taken once");
        assert_eq!(q.take(4), None, "never there");
        assert_eq!(q.get(12), Some(&120));
        assert_eq!(q.len(), 2);
        q.take(12);
        q.take(5);
        assert!(q.is_empty());
        assert_eq!(q.slots(), 0, "no empty slot is left behind");
    }

    #[test]
    fn a_row_put_again_replaces_it_in_place() {
        let mut q = SeqQueue::default();
        q.put(1, "a");
        q.put(2, "b");
        q.put(1, "a again");
        assert_eq!(q.iter().collect::<Vec<_>>(), [(1, &"a again"), (2, &"b")]);
        assert_eq!(q.len(), 2);
        *q.get_mut(2).unwrap() = "b again";
        assert_eq!(q.get(2), Some(&"b again"));
        assert_eq!(q.get_mut(7), None);
    }

    #[test]
    fn a_row_below_the_newest_is_put_in_order() {
        let mut q = SeqQueue::default();
        q.put(10, ());
        q.put(30, ());
        q.put(20, ());
        assert_eq!(seqs(&q), [10, 20, 30]);
        q.take(20);
        q.put(20, ());
        assert_eq!(seqs(&q), [10, 20, 30]);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn a_row_that_stays_at_the_front_keeps_memory_bounded() {
        let mut q = SeqQueue::default();
        q.put(0, ());
        for seq in 1..10_000 {
            q.put(seq, ());
            assert_eq!(q.take(seq), Some(()));
            assert!(q.slots() <= 2 * q.len() + SLACK + 1);
        }
        assert_eq!(seqs(&q), [0]);
        q.take(0);
        assert_eq!(q.slots(), 0);
    }
}
