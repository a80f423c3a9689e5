//! A bounded, time-limited set of (`messageId`, `clusterGroupId`) pairs.

use std::collections::{HashMap, VecDeque};

/// Remembers recently committed messages so duplicates are dropped without a database read.
/// Bounded by `capacity`: the oldest entries go first, which is safe because the durable
/// record in SQLite still catches a duplicate the cache forgot.
pub struct SeenCache {
    capacity: usize,
    ttl_ms: u64,
    entries: HashMap<(String, String), u64>,
    order: VecDeque<((String, String), u64)>,
}

impl SeenCache {
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        SeenCache {
            capacity: capacity.max(1),
            ttl_ms,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn contains(&self, message_id: &str, group: &str, now_ms: u64) -> bool {
        // Borrowed lookup without allocating a key would need a custom hash key; the
        // allocation is small next to the JSON decode that precedes it.
        self.entries
            .get(&(message_id.to_owned(), group.to_owned()))
            .is_some_and(|&at| now_ms.saturating_sub(at) < self.ttl_ms)
    }

    pub fn insert(&mut self, message_id: &str, group: &str, now_ms: u64) {
        self.expire(now_ms);
        let key = (message_id.to_owned(), group.to_owned());
        if self.entries.insert(key.clone(), now_ms).is_none() {
            self.order.push_back((key, now_ms));
        }
        while self.entries.len() > self.capacity {
            self.pop_oldest();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((_, at)) = self.order.front() {
            if now_ms.saturating_sub(*at) < self.ttl_ms {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((key, at)) = self.order.pop_front() {
            if self.entries.get(&key) == Some(&at) {
                self.entries.remove(&key);
            }
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
}
