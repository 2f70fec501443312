//! Remembering recent task ids, so a retried task is answered, not run again.
//!
//! Every task an agent runs passes through here, so the layout is chosen for
//! the hot path:
//!
//! - ids are kept as 64-bit hashes (no allocation per task; the hasher is
//!   seeded per process, so clients cannot make two ids collide on purpose);
//! - responses are copied into one ring of bytes rather than kept as an
//!   allocation each: the memory held is bounded whatever the responses
//!   weigh (ten thousand kept allocations of large results could hold
//!   gigabytes), nothing is allocated or freed per task, and the ring is
//!   written front to back, which the memory system streams;
//! - the table of ids is sized for twice the capacity when made, so it never
//!   grows or moves while serving: removed ids leave tombstones, which it
//!   then clears in place;
//! - replies waiting for a task still running (a retry that arrives before
//!   the first attempt is answered) are rare, so they live in a side table.

use async_nats::Subject;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Bytes of ring per remembered id: the ring holds `capacity` responses of
/// this size on average (and at least the largest allowed, so that any
/// response can be kept).
pub const RESPONSE_BYTES_PER_ID: usize = 512;

/// The most ids the table is sized for up front; a larger capacity grows it
/// as it fills.
const PRESIZED_IDS: usize = 1 << 20;

/// What to do with an incoming task id.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: run it.
    New,
    /// Running now: its reply subject was added to the waiters.
    Running,
    /// Already answered: send this response again.
    Answered(Bytes),
}

type Hasher = foldhash::fast::RandomState;

/// One remembered id: 16 bytes, so that the table stays small.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Which `order` item this entry belongs to: a key evicted and added
    /// again has a newer one, and the old item must not remove it. Wraps;
    /// the order holds far fewer than 2^32 items, so two never share one.
    generation: u32,
    /// The length of the response, once answered.
    len: Option<NonZeroU32>,
    /// Where the response is in the ring, once answered.
    at: u64,
}

impl Entry {
    fn running(generation: u32) -> Self {
        Self {
            generation,
            len: None,
            at: 0,
        }
    }

    fn response(&self) -> Option<Stored> {
        self.len.map(|len| Stored { at: self.at, len })
    }
}

/// Recent task ids of one agent, for a time window and up to a capacity.
#[derive(Debug)]
pub struct DedupCache {
    window: Duration,
    capacity: usize,
    ids: Hasher,
    entries: HashMap<u64, Entry, Hasher>,
    /// Ids in the order they arrived, with their generation.
    order: VecDeque<(Instant, u64, u32)>,
    next_generation: u32,
    /// Replies to send when a running task is answered.
    waiters: HashMap<u64, Vec<Subject>, Hasher>,
    responses: ResponseRing,
}

impl DedupCache {
    /// A cache that remembers ids for `window`, at most `capacity` of them,
    /// with responses of up to `max_response` bytes.
    pub fn new(window: Duration, capacity: usize, max_response: usize) -> Self {
        let ring = capacity
            .saturating_mul(RESPONSE_BYTES_PER_ID)
            .max(max_response);
        Self {
            window,
            capacity,
            ids: Hasher::default(),
            entries: HashMap::with_capacity_and_hasher(
                capacity.min(PRESIZED_IDS).saturating_mul(2),
                Hasher::default(),
            ),
            order: VecDeque::new(),
            next_generation: 0,
            waiters: HashMap::default(),
            responses: ResponseRing::new(if capacity == 0 { 0 } else { ring }),
        }
    }

    /// Records `task_id`; a repeat while running adds `reply` to its waiters.
    pub fn check(&mut self, task_id: &str, reply: Option<&Subject>, now: Instant) -> Seen {
        if self.capacity == 0 {
            return Seen::New;
        }
        self.expire(now, false);
        let key = self.ids.hash_one(task_id);
        if let Some(entry) = self.entries.get(&key) {
            match entry.response() {
                None => {
                    if let Some(reply) = reply {
                        self.waiters.entry(key).or_default().push(reply.clone());
                    }
                    return Seen::Running;
                }
                Some(stored) => {
                    if let Some(response) = self.responses.read(stored) {
                        return Seen::Answered(response);
                    }
                    // The ring wrote over its response: forgotten, as after
                    // any other eviction. Its old order item no longer
                    // matches the generation and is skipped.
                    self.entries.remove(&key);
                }
            }
        }
        self.expire(now, true);
        let generation = self.next_generation;
        self.next_generation = generation.wrapping_add(1);
        self.entries.insert(key, Entry::running(generation));
        self.order.push_back((now, key, generation));
        Seen::New
    }

    /// Stores the response of `task_id` and returns the replies that waited for it.
    pub fn answer(&mut self, task_id: &str, response: &[u8]) -> Vec<Subject> {
        if self.capacity == 0 {
            return Vec::new();
        }
        let key = self.ids.hash_one(task_id);
        if let Some(entry) = self.entries.get_mut(&key) {
            match self.responses.write(response) {
                Some(stored) => {
                    entry.at = stored.at;
                    entry.len = Some(stored.len);
                }
                // Not kept (empty, or larger than the ring): forget the id
                // rather than leave it running.
                None => {
                    self.entries.remove(&key);
                }
            }
        }
        self.waiters.remove(&key).unwrap_or_default()
    }

    /// Forgets ids older than the window and, `making_room` for one more,
    /// the oldest ones beyond the capacity.
    fn expire(&mut self, now: Instant, making_room: bool) {
        // Each item is looked at once at most, so a cache full of running
        // tasks cannot loop.
        for _ in 0..self.order.len() {
            let Some(&(at, key, generation)) = self.order.front() else {
                break;
            };
            let over_capacity = making_room && self.order.len() >= self.capacity;
            if now.duration_since(at) <= self.window && !over_capacity {
                break;
            }
            self.order.pop_front();
            // One lookup: remove, and put back what must stay (rare).
            let Some(entry) = self.entries.remove(&key) else {
                continue;
            };
            if entry.generation != generation {
                // The id was forgotten and came back: this item is stale.
                self.entries.insert(key, entry);
            } else if entry.len.is_none() {
                // Never forget a running task: its waiters must still be answered.
                self.entries.insert(key, entry);
                self.order.push_back((at, key, generation));
            }
        }
    }
}

/// Where one response is in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    /// Offset since the ring was made: position `at % size`.
    at: u64,
    len: NonZeroU32,
}

/// Responses, written one after another into a buffer that wraps around.
/// A response is readable until the ring has gone round and written over it.
///
/// The buffer is reserved whole but filled as responses arrive: memory the
/// ring has not reached yet is never touched, so an agent that answers
/// little holds little, and the ring is never copied to grow.
#[derive(Debug)]
struct ResponseRing {
    bytes: Vec<u8>,
    size: usize,
    /// Offset of the next write since the ring was made.
    written: u64,
}

impl ResponseRing {
    fn new(size: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(size),
            size,
            written: 0,
        }
    }

    /// Copies `response` in; None when it is empty or does not fit at all.
    fn write(&mut self, response: &[u8]) -> Option<Stored> {
        let len = response.len();
        let stored_len = NonZeroU32::new(u32::try_from(len).ok()?)?;
        if len > self.size {
            return None;
        }
        let size = self.size as u64;
        let mut at = self.written;
        if (at % size) as usize + len > self.size {
            // Not enough room before the end: start again at the front.
            at = at.next_multiple_of(size);
        }
        let start = (at % size) as usize;
        // Writes go front to back, so the ring is filled up to `start` at
        // least: overwrite what is there, append the rest.
        debug_assert!(start <= self.bytes.len());
        let filled = (start + len).min(self.bytes.len());
        let (overwrite, append) = response.split_at(filled - start);
        self.bytes[start..filled].copy_from_slice(overwrite);
        self.bytes.extend_from_slice(append);
        self.written = at + len as u64;
        Some(Stored {
            at,
            len: stored_len,
        })
    }

    /// The response at `stored`, unless the ring has written over it.
    fn read(&self, stored: Stored) -> Option<Bytes> {
        if self.written > stored.at + self.size as u64 {
            return None;
        }
        let start = (stored.at % self.size as u64) as usize;
        Some(Bytes::copy_from_slice(
            &self.bytes[start..start + stored.len.get() as usize],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    #[test]
    fn repeat_while_running_waits_and_repeat_after_is_answered() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 100, MAX);
        let now = Instant::now();
        assert_eq!(
            cache.check("t1", Some(&Subject::from("r1")), now),
            Seen::New
        );
        assert_eq!(
            cache.check("t1", Some(&Subject::from("r2")), now),
            Seen::Running
        );
        assert_eq!(cache.answer("t1", b"done"), vec![Subject::from("r2")]);
        assert_eq!(
            cache.check("t1", Some(&Subject::from("r3")), now),
            Seen::Answered(Bytes::from_static(b"done"))
        );
        assert_eq!(cache.answer("t1", b"again"), Vec::<Subject>::new());
    }

    #[test]
    fn ids_are_forgotten_after_the_window() {
        let mut cache = DedupCache::new(Duration::from_secs(1), 100, MAX);
        let start = Instant::now();
        cache.check("t1", None, start);
        cache.answer("t1", b"x");
        assert_eq!(
            cache.check("t1", None, start + Duration::from_secs(2)),
            Seen::New
        );
    }

    #[test]
    fn capacity_bounds_memory_but_keeps_running_tasks() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 2, MAX);
        let now = Instant::now();
        cache.check("running", None, now);
        for i in 0..10 {
            let id = format!("t{i}");
            cache.check(&id, None, now);
            cache.answer(&id, b"x");
        }
        assert!(cache.entries.len() <= 3, "{}", cache.entries.len());
        assert!(cache.order.len() <= 3, "{}", cache.order.len());
        assert_eq!(cache.check("running", None, now), Seen::Running);
        assert_eq!(cache.check("t9", None, now), Seen::Answered("x".into()));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 0, MAX);
        let now = Instant::now();
        assert_eq!(cache.check("t1", None, now), Seen::New);
        cache.answer("t1", b"x");
        assert_eq!(cache.check("t1", None, now), Seen::New);
    }

    #[test]
    fn responses_survive_wrapping_until_written_over() {
        // 4 ids * 512 bytes: a ring of 2048 bytes, ample for the count.
        let mut cache = DedupCache::new(Duration::from_secs(60), 4, 10);
        assert_eq!(cache.responses.size, 2048);
        let now = Instant::now();
        let body = |i: usize| vec![b'a' + i as u8; 700];
        for i in 0..6 {
            let id = format!("t{i}");
            assert_eq!(cache.check(&id, None, now), Seen::New);
            cache.answer(&id, &body(i));
        }
        // Two 700-byte responses fit in the ring: the two newest are kept
        // whole, and every older id was forgotten with its response.
        for i in 4..6 {
            assert_eq!(
                cache.check(&format!("t{i}"), None, now),
                Seen::Answered(Bytes::from(body(i))),
                "t{i}"
            );
        }
        for i in 0..4 {
            assert_eq!(cache.check(&format!("t{i}"), None, now), Seen::New, "t{i}");
        }
    }

    #[test]
    fn a_response_larger_than_the_ring_is_not_kept_and_the_id_is_forgotten() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 1, 10);
        let now = Instant::now();
        cache.check("big", Some(&Subject::from("r1")), now);
        cache.check("big", Some(&Subject::from("r2")), now);
        let waiters = cache.answer("big", &[b'x'; 600]);
        assert_eq!(waiters, vec![Subject::from("r2")], "waiters still answered");
        assert_eq!(cache.check("big", None, now), Seen::New);
    }

    #[test]
    fn an_evicted_id_added_again_is_not_removed_by_its_old_order_item() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 3, 10);
        let now = Instant::now();
        // A 1000-byte response in a 1536-byte ring is written over by the next.
        cache.check("a", None, now);
        cache.answer("a", &[b'a'; 1000]);
        cache.check("b", None, now);
        cache.answer("b", &[b'b'; 1000]);
        // "a" was forgotten with its response; it comes back.
        assert_eq!(cache.check("a", None, now), Seen::New);
        cache.answer("a", b"second");
        // The next check pops the old item for "a" (capacity 3 reached),
        // which must not take the new entry with it.
        cache.check("c", None, now);
        assert_eq!(cache.check("a", None, now), Seen::Answered("second".into()));
    }

    #[test]
    fn the_table_settles_at_its_first_size_while_ids_churn() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 1_000, MAX);
        let table = cache.entries.capacity();
        let now = Instant::now();
        for i in 0..20_000 {
            let id = format!("t{i}");
            cache.check(&id, None, now);
            cache.answer(&id, b"{}");
        }
        assert_eq!(cache.entries.len(), 1_000);
        // capacity() is what fits without growing: the table's size less
        // the tombstones not yet cleared, so it may dip but never rise.
        assert!(cache.entries.capacity() <= table, "the table grew");
    }

    #[test]
    fn an_empty_response_is_not_kept() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 10, MAX);
        let now = Instant::now();
        cache.check("t1", None, now);
        cache.answer("t1", b"");
        assert_eq!(cache.check("t1", None, now), Seen::New);
    }
}
