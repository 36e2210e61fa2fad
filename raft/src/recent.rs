//! The newest log entries, kept in memory beside the database: a leader's replication reads what it
//! has just appended, and answering those reads from here saves each a round trip through the database
//! thread and the shard (and a decode). The database stays the log's only durable home; this holds
//! copies of a suffix of it, bounded in entries and bytes, and follows every append, truncation and
//! purge so it never holds an entry the log no longer has.

use std::collections::VecDeque;

use crate::types::Entry;

/// Consecutive entries ending at the log's last one.
#[derive(Debug)]
pub(crate) struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Recent {
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Recent {
        Recent {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    /// An entry appended to the log (`size`: its encoded bytes). One that does not follow the newest
    /// held starts the suffix afresh.
    pub(crate) fn push(&mut self, e: Entry, size: usize) {
        if self.next_index().is_some_and(|n| n != e.log_id.index) {
            self.clear();
        }
        self.bytes += size;
        self.entries.push_back((e, size));
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            match self.entries.pop_front() {
                Some((_, s)) => self.bytes -= s,
                None => break,
            }
        }
    }

    /// The log was truncated: entries from `index` on are gone.
    pub(crate) fn truncate_from(&mut self, index: u64) {
        while self.next_index().is_some_and(|n| n > index) {
            if let Some((_, s)) = self.entries.pop_back() {
                self.bytes -= s;
            }
        }
    }

    /// The log was purged: entries up to `index` are gone.
    pub(crate) fn purge_upto(&mut self, index: u64) {
        while self.first_index().is_some_and(|f| f <= index) {
            if let Some((_, s)) = self.entries.pop_front() {
                self.bytes -= s;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries `start..end` (`end` None: to the newest), when all of them are held; None otherwise.
    pub(crate) fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let next = self.next_index()?;
        let end = end.unwrap_or(next);
        if start < first || end > next {
            return None;
        }
        if start >= end {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let mut r = Recent::new(100, 1 << 20);
        assert_eq!(indexes(r.get(0, None)), None);
        for i in 5..10 {
            r.push(entry(i), 10);
        }
        assert_eq!(indexes(r.get(5, None)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(r.get(7, Some(9))), Some(vec![7, 8]));
        assert_eq!(indexes(r.get(9, Some(9))), Some(vec![]));
        // Before the first held entry or past the newest: the database answers.
        assert_eq!(indexes(r.get(4, Some(7))), None);
        assert_eq!(indexes(r.get(8, Some(11))), None);
    }

    #[test]
    fn follows_truncation_purge_and_gaps() {
        let mut r = Recent::new(100, 1 << 20);
        for i in 1..=10 {
            r.push(entry(i), 10);
        }
        r.truncate_from(8);
        assert_eq!(indexes(r.get(1, None)), Some((1..=7).collect()));
        assert_eq!(r.bytes, 70);
        r.purge_upto(3);
        assert_eq!(indexes(r.get(4, None)), Some(vec![4, 5, 6, 7]));
        assert_eq!(indexes(r.get(3, None)), None);
        // The next append after a truncation continues the suffix.
        r.push(entry(8), 10);
        assert_eq!(indexes(r.get(4, None)), Some(vec![4, 5, 6, 7, 8]));
        // One that does not follow (a snapshot installed, say) starts it afresh.
        r.push(entry(20), 10);
        assert_eq!(indexes(r.get(20, None)), Some(vec![20]));
        assert_eq!(indexes(r.get(8, None)), None);
        assert_eq!(r.bytes, 10);
        r.truncate_from(0);
        assert_eq!(indexes(r.get(0, None)), None);
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let mut r = Recent::new(4, 1 << 20);
        for i in 0..10 {
            r.push(entry(i), 1);
        }
        assert_eq!(indexes(r.get(6, None)), Some(vec![6, 7, 8, 9]));
        let mut r = Recent::new(100, 25);
        for i in 0..10 {
            r.push(entry(i), 10);
        }
        assert_eq!(indexes(r.get(8, None)), Some(vec![8, 9]));
        assert_eq!(r.bytes, 20);
    }
}
