//! A bounded, time-limited set of (`messageId`, `clusterGroupId`) pairs.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// Remembers recently committed messages so duplicates are dropped without a database read.
/// Bounded by `capacity`: the oldest entries go first, which is safe because the durable
/// record in SQLite still catches a duplicate the cache forgot.
///
/// Every message a node receives is looked up here and every recorded one inserted, so the
/// layout avoids allocation on lookups: entries sit in a queue in insertion order, and a hash
/// table holds only their positions (entry numbers), compared against the queue's keys.
pub struct SeenCache {
    capacity: usize,
    ttl_ms: u64,
    /// Entries, oldest first; entry number `n` is at `order[n - first]`.
    order: VecDeque<Entry>,
    first: u64,
    index: HashTable<u64>,
    /// foldhash, seeded per process: std's SipHash was about 1 % of a node's instructions
    /// here alone (see the workspace's Cargo.toml).
    hasher: RandomState,
}

struct Entry {
    /// The message id followed by the group, in one allocation; `split` is where the group
    /// starts.
    key: Box<str>,
    split: usize,
    hash: u64,
    at: u64,
}

impl Entry {
    fn is(&self, message_id: &str, group: &str) -> bool {
        let (id, g) = self.key.split_at(self.split);
        id == message_id && g == group
    }
}

impl SeenCache {
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        SeenCache {
            capacity: capacity.max(1),
            ttl_ms,
            order: VecDeque::new(),
            first: 0,
            index: HashTable::new(),
            hasher: RandomState::default(),
        }
    }

    pub fn contains(&self, message_id: &str, group: &str, now_ms: u64) -> bool {
        let hash = self.hasher.hash_one((message_id, group));
        self.find(hash, message_id, group)
            .is_some_and(|e| now_ms.saturating_sub(e.at) < self.ttl_ms)
    }

    /// Remembers a message. One seen already keeps its first time: the TTL counts from then.
    pub fn insert(&mut self, message_id: &str, group: &str, now_ms: u64) {
        self.expire(now_ms);
        let hash = self.hasher.hash_one((message_id, group));
        if self.find(hash, message_id, group).is_some() {
            return;
        }
        let number = self.first + self.order.len() as u64;
        let (order, first) = (&self.order, self.first);
        self.index
            .insert_unique(hash, number, |n| order[(n - first) as usize].hash);
        let mut key = String::with_capacity(message_id.len() + group.len());
        key.push_str(message_id);
        key.push_str(group);
        self.order.push_back(Entry {
            key: key.into_boxed_str(),
            split: message_id.len(),
            hash,
            at: now_ms,
        });
        while self.order.len() > self.capacity {
            self.pop_oldest();
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn find(&self, hash: u64, message_id: &str, group: &str) -> Option<&Entry> {
        let n = self.index.find(hash, |n| {
            let e = &self.order[(n - self.first) as usize];
            e.hash == hash && e.is(message_id, group)
        })?;
        Some(&self.order[(n - self.first) as usize])
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(e) = self.order.front() {
            if now_ms.saturating_sub(e.at) < self.ttl_ms {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some(e) = self.order.pop_front() else {
            return;
        };
        let number = self.first;
        self.first += 1;
        if let Ok(slot) = self.index.find_entry(e.hash, |n| *n == number) {
            slot.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_ttl_and_forgets_after() {
        let mut s = SeenCache::new(10, 1000);
        s.insert("m1", "g", 0);
        assert!(s.contains("m1", "g", 999));
        assert!(!s.contains("m1", "other-group", 10));
        assert!(!s.contains("m1", "g", 1000));
        s.insert("m2", "g", 1500);
        assert_eq!(s.len(), 1, "expired entry pruned on insert");
    }

    #[test]
    fn bounded_by_capacity_oldest_first() {
        let mut s = SeenCache::new(2, u64::MAX);
        s.insert("a", "g", 1);
        s.insert("b", "g", 2);
        s.insert("c", "g", 3);
        assert!(!s.contains("a", "g", 4));
        assert!(s.contains("b", "g", 4) && s.contains("c", "g", 4));
    }

    #[test]
    fn id_and_group_are_told_apart_and_a_repeat_is_one_entry() {
        let mut s = SeenCache::new(100, u64::MAX);
        s.insert("ab", "c", 1);
        s.insert("a", "bc", 1);
        s.insert("ab", "c", 2);
        assert_eq!(s.len(), 2);
        assert!(s.contains("ab", "c", 3) && s.contains("a", "bc", 3));
        assert!(!s.contains("abc", "", 3) && !s.contains("a", "b", 3));
    }

    /// Many inserts through a small capacity: what is kept is exactly the newest entries, and
    /// every one of them is still found after the table reshuffled.
    #[test]
    fn keeps_exactly_the_newest_entries_through_many_evictions() {
        let mut s = SeenCache::new(500, u64::MAX);
        for i in 0..10_000u64 {
            s.insert(&format!("m{i}"), "g", i);
        }
        assert_eq!(s.len(), 500);
        assert!((9_500..10_000).all(|i| s.contains(&format!("m{i}"), "g", 0)));
        assert!((0..9_500).all(|i| !s.contains(&format!("m{i}"), "g", 0)));
    }
}
