//! Keyed state of a stateful step, shared by aggregate and dedupe: values by key per
//! state partition, the keys changed since the last changelog flush, the partition's
//! stream time (the largest record timestamp applied), and expiry: an entry whose
//! deadline stream time has passed leaves the state and the changelog (a tombstone), so
//! state stays bounded.

use std::collections::{HashMap, HashSet};

/// The state of one state partition.
#[derive(Debug)]
pub struct Partition<V> {
    entries: HashMap<String, V>,
    /// Changed or removed since the last changelog flush.
    dirty: HashSet<String>,
    stream_time: i64,
    /// The earliest deadline of an entry (`i64::MAX`: none expires).
    next_expiry: i64,
}

impl<V> Default for Partition<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            dirty: HashSet::new(),
            stream_time: i64::MIN,
            next_expiry: i64::MAX,
        }
    }
}

impl<V> Partition<V> {
    /// The entry of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key)
    }

    /// The entry of `key`, to change; the key goes to the changelog at the next flush.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let entry = self.entries.get_mut(key)?;
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_string());
        }
        Some(entry)
    }

    /// Sets the entry of `key`, expiring once stream time reaches `deadline` (`None`:
    /// never); the key goes to the changelog at the next flush.
    pub fn insert(&mut self, key: String, value: V, deadline: Option<i64>) {
        if let Some(at) = deadline {
            self.next_expiry = self.next_expiry.min(at);
        }
        self.dirty.insert(key.clone());
        self.entries.insert(key, value);
    }

    /// Removes the entry of `key` (a tombstone at the next flush).
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let v = self.entries.remove(key)?;
        self.dirty.insert(key.to_string());
        Some(v)
    }

    /// The largest record timestamp applied (`i64::MIN` before the first).
    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// Moves stream time forward to `ts` (never back).
    pub fn advance(&mut self, ts: i64) {
        self.stream_time = self.stream_time.max(ts);
    }

    /// Removes every entry whose deadline (`deadline_of`) stream time has reached, each
    /// a tombstone at the next flush; answers them in no particular order. Costs a scan
    /// only when the earliest deadline has passed.
    pub fn expire(&mut self, deadline_of: impl Fn(&V) -> Option<i64>) -> Vec<(String, V)> {
        if self.next_expiry > self.stream_time {
            return Vec::new();
        }
        let now = self.stream_time;
        let mut next = i64::MAX;
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter_map(|(k, v)| match deadline_of(v) {
                Some(at) if at <= now => Some(k.clone()),
                Some(at) => {
                    next = next.min(at);
                    None
                }
                None => None,
            })
            .collect();
        self.next_expiry = next;
        expired
            .into_iter()
            .filter_map(|k| {
                let v = self.entries.remove(&k)?;
                self.dirty.insert(k.clone());
                Some((k, v))
            })
            .collect()
    }
}

/// Keyed state by state partition.
#[derive(Debug)]
pub struct KeyedState<V> {
    partitions: HashMap<i32, Partition<V>>,
}

impl<V> Default for KeyedState<V> {
    fn default() -> Self {
        Self {
            partitions: HashMap::new(),
        }
    }
}

impl<V> KeyedState<V> {
    /// The state of `partition`, made when there is none.
    pub fn partition(&mut self, partition: i32) -> &mut Partition<V> {
        self.partitions.entry(partition).or_default()
    }

    /// The entry of `key` in `partition`.
    pub fn get(&self, partition: i32, key: &str) -> Option<&V> {
        self.partitions.get(&partition)?.entries.get(key)
    }

    /// Changelog records (`None`: a tombstone) for the keys changed since the last call,
    /// each value encoded by `encode` (an entry it cannot encode is skipped).
    pub fn take_changes(
        &mut self,
        encode: impl Fn(&V) -> Option<Vec<u8>>,
    ) -> Vec<(i32, String, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        for (p, part) in &mut self.partitions {
            for key in part.dirty.drain() {
                match part.entries.get(&key) {
                    Some(v) => {
                        if let Some(bytes) = encode(v) {
                            out.push((*p, key, Some(bytes)));
                        }
                    }
                    None => out.push((*p, key, None)),
                }
            }
        }
        out
    }

    /// Applies one changelog record of `partition` read back while restoring: `None`
    /// removes the key; a value at timestamp `ts` moves stream time to it and expires at
    /// `deadline`. Nothing restored is written to the changelog again.
    pub fn restore(&mut self, partition: i32, key: String, entry: Option<(V, i64, Option<i64>)>) {
        match entry {
            None => {
                if let Some(part) = self.partitions.get_mut(&partition) {
                    part.entries.remove(&key);
                }
            }
            Some((value, ts, deadline)) => {
                let part = self.partition(partition);
                part.advance(ts);
                if let Some(at) = deadline {
                    part.next_expiry = part.next_expiry.min(at);
                }
                part.entries.insert(key, value);
            }
        }
    }

    /// Forgets a partition (revoked, or about to be restored again).
    pub fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.partitions.clear();
    }

    /// Partitions with state.
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Entries held in all partitions.
    pub fn len(&self) -> usize {
        self.partitions.values().map(|p| p.entries.len()).sum()
    }

    /// Whether no partition holds an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry of every partition.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &V)> {
        self.partitions.values().flat_map(|p| p.entries.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(s: &mut KeyedState<i64>) -> Vec<(i32, String, Option<Vec<u8>>)> {
        let mut c = s.take_changes(|v| Some(v.to_string().into_bytes()));
        c.sort();
        c
    }

    #[test]
    fn changed_keys_reach_the_changelog_once() {
        let mut s = KeyedState::default();
        s.partition(0).insert("a".into(), 1, None);
        s.partition(1).insert("b".into(), 2, None);
        assert_eq!(
            changes(&mut s),
            vec![
                (0, "a".into(), Some(b"1".to_vec())),
                (1, "b".into(), Some(b"2".to_vec()))
            ]
        );
        assert!(changes(&mut s).is_empty(), "nothing changed since");
        *s.partition(0).get_mut("a").unwrap() += 1;
        assert_eq!(changes(&mut s), vec![(0, "a".into(), Some(b"2".to_vec()))]);
    }

    #[test]
    fn entries_expire_by_stream_time_with_tombstones() {
        let mut s = KeyedState::default();
        let p = s.partition(0);
        p.insert("early".into(), 10, Some(10));
        p.insert("late".into(), 20, Some(20));
        p.insert("never".into(), 0, None);
        p.advance(9);
        assert!(p.expire(|v| (*v > 0).then_some(*v)).is_empty());
        p.advance(15);
        let gone = p.expire(|v| (*v > 0).then_some(*v));
        assert_eq!(gone, vec![("early".to_string(), 10)]);
        p.advance(12);
        assert_eq!(p.stream_time(), 15, "stream time never goes back");
        let c = changes(&mut s);
        assert!(c.contains(&(0, "early".into(), None)), "{c:?}");
        assert_eq!(s.len(), 2);
        let p = s.partition(0);
        p.advance(100);
        let mut gone = p.expire(|v| (*v > 0).then_some(*v));
        gone.sort();
        assert_eq!(gone, vec![("late".to_string(), 20)]);
        assert_eq!(s.entries().count(), 1, "the entry without deadline stays");
    }

    #[test]
    fn restore_rebuilds_without_writing_back_and_forgets_per_partition() {
        let mut s = KeyedState::default();
        s.restore(3, "k".into(), Some((7, 50, Some(60))));
        s.restore(3, "gone".into(), Some((1, 40, None)));
        s.restore(3, "gone".into(), None);
        assert!(changes(&mut s).is_empty());
        assert_eq!(s.partition(3).stream_time(), 50);
        assert_eq!(s.partition(3).get("k"), Some(&7));
        s.partition(3).advance(60);
        assert_eq!(s.partition(3).expire(|_| Some(60)).len(), 1);
        s.partition(4).insert("x".into(), 1, None);
        s.drop_partition(3);
        assert_eq!(s.partitions(), vec![4]);
        s.clear();
        assert!(s.is_empty());
    }
}
