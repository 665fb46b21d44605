//! A bounded index of threads (Message-ID or subject hash to its
//! participants) that forgets its least recently seen entries one at a
//! time, in constant amortised time.
//!
//! The index used to be cut back by an eighth whenever it outgrew its cap:
//! a pass over every entry (finding the cut, then dropping what is older)
//! under the graph's write lock, 32-52 ms at a million entries, during
//! which no message could be scored. Here a queue holds the keys in the
//! order they were first seen, and each insertion past the cap evicts from
//! its front with the "second chance" (CLOCK) rule: an entry seen again
//! since it was queued is marked, and a marked entry at the front is
//! unmarked and queued again at the back instead of being evicted. So an
//! entry goes when it has been neither inserted nor seen again for a whole
//! turn of the queue: roughly the least recently seen, in the order mail
//! arrived. (Exactly so for entries never seen again, which leave first in,
//! first out; when every entry ahead is marked, the queue's order decides.)
//!
//! The entries are spread over [`SHARDS`] hash tables by key, so that a
//! table growing (rehashing everything it holds) holds the lock for a
//! sixty-fourth of the time one table would: one table growing to 917,504
//! entries took 50-61 ms.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;

use super::memory::{FastMap, ThreadEntry};

/// Hash tables an index is spread over.
pub const SHARDS: usize = 64;

type Shard = FastMap<u64, ThreadEntry>;

/// The shard of a key: the top six bits of the key times 2^64/φ
/// (Fibonacci hashing), which spreads even keys that differ in few bits.
/// The tables hash the key again with their own seeds, so their placement
/// does not depend on the bits used here.
fn shard_of(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize
}

/// Thread or subject index: the entries, and their keys in the order the
/// eviction visits them.
#[derive(Debug, Default, Clone)]
pub struct RecentIndex {
    /// [`SHARDS`] tables, or none before the first entry (an empty graph,
    /// such as the one an unknown tenant is scored against, allocates
    /// nothing).
    shards: Option<Box<[Shard; SHARDS]>>,
    len: usize,
    /// Every key of the index, oldest first. May also hold keys that are
    /// no longer in it (removed by retention or erasure): they are skipped
    /// when they reach the front, and swept out when they outnumber the
    /// live ones (see [`RecentIndex::retain`]). A key removed and inserted
    /// again can stand twice; the older place evicts it early, once.
    order: VecDeque<u64>,
}

impl RecentIndex {
    /// An index of loaded entries, queued by when they were last seen
    /// (ties by key, so that a reload queues them the same way).
    pub fn from_loaded(mut entries: Vec<(u64, ThreadEntry)>) -> Self {
        entries.sort_unstable_by_key(|(k, e)| (e.last, *k));
        let mut idx = RecentIndex {
            order: entries.iter().map(|(k, _)| *k).collect(),
            ..Default::default()
        };
        if entries.is_empty() {
            return idx;
        }
        let mut counts = [0usize; SHARDS];
        for (k, _) in &entries {
            counts[shard_of(*k)] += 1;
        }
        let mut shards: Box<[Shard; SHARDS]> = Box::new(std::array::from_fn(|i| {
            Shard::with_capacity_and_hasher(counts[i], Default::default())
        }));
        for (k, e) in entries {
            if shards[shard_of(k)].insert(k, e).is_none() {
                idx.len += 1;
            }
        }
        idx.shards = Some(shards);
        idx
    }

    fn shard(&self, key: u64) -> Option<&Shard> {
        Some(&self.shards.as_ref()?[shard_of(key)])
    }

    fn all(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &u64) -> Option<&ThreadEntry> {
        self.shard(*key)?.get(key)
    }

    pub fn contains_key(&self, key: &u64) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &ThreadEntry)> {
        self.all().flat_map(|s| s.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &u64> {
        self.all().flat_map(|s| s.keys())
    }

    pub fn values(&self) -> impl Iterator<Item = &ThreadEntry> {
        self.all().flat_map(|s| s.values())
    }

    /// The entries, for changes that leave them in the index (participant
    /// lists); use [`RecentIndex::retain`] to remove entries.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u64, &mut ThreadEntry)> {
        self.shards
            .iter_mut()
            .flat_map(|s| s.iter_mut())
            .flat_map(|s| s.iter_mut())
    }

    /// Insert or replace the entry of `key`; either way it counts as seen.
    pub fn insert(&mut self, key: u64, mut entry: ThreadEntry) {
        let e = self.entry_or_default(key);
        // Marked when the key was there already, as `entry_or_default` does.
        entry.seen_again = e.seen_again;
        *e = entry;
    }

    /// The entry of `key`, created empty if there is none; either way it
    /// counts as seen.
    pub fn entry_or_default(&mut self, key: u64) -> &mut ThreadEntry {
        let shards = self
            .shards
            .get_or_insert_with(|| Box::new(std::array::from_fn(|_| Shard::default())));
        match shards[shard_of(key)].entry(key) {
            Entry::Occupied(o) => {
                let e = o.into_mut();
                e.seen_again = true;
                e
            }
            Entry::Vacant(v) => {
                self.len += 1;
                self.order.push_back(key);
                v.insert(ThreadEntry::default())
            }
        }
    }

    /// Keep the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&u64, &mut ThreadEntry) -> bool) {
        for s in self.shards.iter_mut().flat_map(|s| s.iter_mut()) {
            s.retain(&mut keep);
        }
        self.len = self.all().map(Shard::len).sum();
        // Removed keys stay queued until they reach the front; sweep them
        // out once they outnumber the live ones, so that the queue stays
        // within twice the index even when nothing is evicted.
        if self.order.len() > 2 * self.len + 64 {
            let shards = &self.shards;
            self.order.retain(|k| {
                shards
                    .as_ref()
                    .is_some_and(|s| s[shard_of(*k)].contains_key(k))
            });
            self.order.shrink_to(2 * self.order.len() + 64);
        }
    }

    /// Evict least recently seen entries until at most `cap` remain,
    /// handing each evicted key to `evicted`.
    pub fn evict_over(&mut self, cap: usize, mut evicted: impl FnMut(u64)) {
        while self.len > cap {
            let Some(key) = self.order.pop_front() else {
                // Only reachable if the queue lost a key, which the
                // methods above never do; an index over its cap is better
                // than a loop that cannot end.
                return;
            };
            let Some(shards) = self.shards.as_mut() else {
                return;
            };
            let shard = &mut shards[shard_of(key)];
            match shard.get_mut(&key) {
                None => {}
                Some(e) if e.seen_again => {
                    e.seen_again = false;
                    self.order.push_back(key);
                }
                Some(_) => {
                    shard.remove(&key);
                    self.len -= 1;
                    evicted(key);
                }
            }
        }
    }

    /// Bytes held (an estimate, as [`super::Graph::approx_bytes`]).
    pub fn bytes(&self, map: impl Fn(&Shard) -> usize) -> usize {
        self.all().map(map).sum::<usize>()
            + self
                .shards
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<[Shard; SHARDS]>())
            + self.order.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn entry(last: u32) -> ThreadEntry {
        ThreadEntry::new(vec![last], last)
    }

    /// Fresh keys leave first in, first out, one per insertion past the
    /// cap; keys seen again within a turn of the queue are never evicted;
    /// every key that leaves is reported once and is gone.
    #[test]
    fn evicts_the_oldest_one_at_a_time_and_spares_what_is_seen_again() {
        let cap = 50;
        let mut idx = RecentIndex::default();
        let mut gone = Vec::new();
        for k in 0..200u64 {
            idx.insert(k, entry(k as u32));
            let before = gone.len();
            idx.evict_over(cap, |k| gone.push(k));
            assert_eq!(gone.len() - before, usize::from(k >= cap as u64));
            assert_eq!(idx.len(), (k as usize + 1).min(cap));
        }
        assert_eq!(gone, (0..150).collect::<Vec<_>>());

        // Five hot keys (replies to live threads), each seen again every
        // ten messages, among fresh keys: a turn of the queue takes about
        // `cap - 5` messages, so they always come round marked.
        let hot = [7_000_001u64, 7_000_002, 7_000_003, 7_000_004, 7_000_005];
        for h in hot {
            idx.insert(h, entry(0));
            idx.evict_over(cap, |k| gone.push(k));
        }
        let mut rng = StdRng::seed_from_u64(7);
        let mut fresh = std::collections::HashSet::new();
        for step in 0..10_000u64 {
            let k = 10_000 + step;
            idx.insert(k, entry(step as u32));
            fresh.insert(k);
            if step % 2 == 0 {
                let h = hot[(step / 2 % 5) as usize];
                if rng.gen_bool(0.5) {
                    idx.insert(h, entry(step as u32));
                } else {
                    idx.entry_or_default(h).last = step as u32;
                }
            }
            let before = gone.len();
            idx.evict_over(cap, |k| gone.push(k));
            assert!(gone.len() - before <= 1);
            assert_eq!(idx.len(), cap);
            for h in hot {
                assert!(idx.contains_key(&h), "hot key {h} evicted at step {step}");
            }
            for k in &gone[before..] {
                assert!(!idx.contains_key(k));
            }
        }
        let left: Vec<u64> = gone.iter().copied().filter(|k| *k >= 10_000).collect();
        let unique: std::collections::HashSet<u64> = left.iter().copied().collect();
        assert_eq!(unique.len(), left.len(), "a key reported twice");
        let live = fresh.iter().filter(|k| idx.contains_key(k)).count();
        assert_eq!(live + left.len(), fresh.len());
        // Still oldest first among the fresh keys.
        assert!(left.windows(2).all(|w| w[0] < w[1]));
        // The shards together hold exactly the live keys.
        let keys: std::collections::HashSet<u64> = idx.keys().copied().collect();
        assert_eq!(keys.len(), idx.len());
        assert_eq!(idx.iter().count(), idx.len());
        assert!(keys.iter().all(|k| idx.get(k).is_some()));
        assert!(hot.iter().all(|h| keys.contains(h)));
    }

    #[test]
    fn removed_keys_are_swept_from_the_queue() {
        let mut idx = RecentIndex::default();
        for k in 0..10_000u64 {
            idx.insert(k, entry(k as u32));
            // Retention keeps only the last hundred: the index never
            // reaches a cap, so nothing is evicted and the queue would grow
            // without the sweep.
            idx.retain(|_, e| e.last + 100 > k as u32);
            assert!(idx.order.len() <= 2 * idx.len() + 65);
        }
        assert_eq!(idx.len(), 100);
        // Eviction after that still takes the oldest live entry.
        let mut gone = Vec::new();
        idx.evict_over(99, |k| gone.push(k));
        assert_eq!(gone, vec![9_900]);
    }

    #[test]
    fn loaded_entries_are_queued_by_when_they_were_seen() {
        let entries = vec![
            (5, entry(30)),
            (9, entry(10)),
            (1, entry(20)),
            (2, entry(10)),
        ];
        let mut idx = RecentIndex::from_loaded(entries);
        let mut gone = Vec::new();
        idx.evict_over(1, |k| gone.push(k));
        assert_eq!(gone, vec![2, 9, 1]);
        assert!(idx.contains_key(&5));
    }
}
