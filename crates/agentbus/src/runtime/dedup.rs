//! Remembering recent task ids, so a retried task is answered, not run again.
//!
//! Every task an agent runs passes through here, so the layout is chosen for
//! the hot path:
//!
//! - ids are kept as 64-bit hashes (no allocation per task; the hasher is
//!   seeded per process, so clients cannot make two ids collide on purpose);
//! - the ids live in a table of sets of four slots, an id's set picked by its
//!   hash: checking, recording and answering an id touch that one set (two
//!   cache lines), and forgetting is lazy (a slot past the window is free).
//!   The table is made at the first task, starts small and doubles when an
//!   id would push out a remembered one, up to its capacity, so an agent
//!   that is never asked holds no table and one rarely asked holds little;
//!   once grown, nothing is rehashed, moved or allocated while
//!   serving. A hash table with a queue of
//!   arrivals, its first form, touched three places in a table of a megabyte
//!   per task, which cost about 0.5 µs in `agentbus bench request-reply`;
//! - responses are copied into one ring of bytes rather than kept as an
//!   allocation each: the memory held is bounded whatever the responses
//!   weigh (ten thousand kept allocations of large results could hold
//!   gigabytes), and the ring is written front to back;
//! - replies waiting for a task still running (a retry that arrives before
//!   the first attempt is answered) are rare, so they live in a side table.

use async_nats::Subject;
use bytes::Bytes;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Bytes of ring per remembered id: the ring holds `capacity` responses of
/// this size on average (and at least the largest allowed, so that any
/// response can be kept).
pub(super) const RESPONSE_BYTES_PER_ID: usize = 512;

/// Slots per set: a new id evicts the oldest answered id of its set.
const WAYS: usize = 4;
/// Sets of a new table (64 ids): it doubles as ids come.
const FIRST_SETS: usize = 16;

/// What to do with an incoming task id.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// First time: run it.
    New,
    /// Running now: its reply subject was added to the waiters.
    Running,
    /// Already answered: send this response again.
    Answered(Bytes),
}

type Hasher = foldhash::fast::RandomState;

/// One remembered id, or a free slot (`key` 0; hashes of 0 are made 1).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    key: u64,
    /// When the id arrived, in nanoseconds since the cache was made.
    arrived: u64,
    /// Where the response is in the ring, once answered.
    at: u64,
    /// The length of the response, once answered; None while running.
    len: Option<NonZeroU32>,
}

impl Slot {
    fn response(&self) -> Option<Stored> {
        self.len.map(|len| Stored { at: self.at, len })
    }
}

/// Recent task ids of one agent, for a time window and up to about a
/// capacity (rounded up to whole sets of four; ids crowding one set push
/// each other out sooner).
#[derive(Debug)]
pub(super) struct DedupCache {
    window: u64,
    started: Instant,
    /// The latest arrival given out: arrivals strictly increase, so the
    /// oldest slot of a set is always one (ids can arrive within one tick).
    last_arrival: u64,
    ids: Hasher,
    sets: Vec<[Slot; WAYS]>,
    /// The table's full size: it doubles up to this many sets.
    max_sets: usize,
    /// Replies to send when a running task is answered.
    waiters: HashMap<u64, Vec<Subject>, Hasher>,
    responses: ResponseRing,
}

impl DedupCache {
    /// A cache that remembers ids for `window`, about `capacity` of them,
    /// with responses of up to `max_response` bytes.
    pub(super) fn new(window: Duration, capacity: usize, max_response: usize) -> Self {
        let max_sets = if capacity == 0 {
            0
        } else {
            capacity.div_ceil(WAYS).next_power_of_two()
        };
        let ring = capacity
            .saturating_mul(RESPONSE_BYTES_PER_ID)
            .max(max_response);
        Self {
            window: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            started: Instant::now(),
            last_arrival: 0,
            ids: Hasher::default(),
            sets: Vec::new(),
            max_sets,
            waiters: HashMap::default(),
            responses: ResponseRing::new(if capacity == 0 { 0 } else { ring }),
        }
    }

    /// Records `task_id`; a repeat while running adds `reply` to its waiters.
    pub(super) fn check(&mut self, task_id: &str, reply: Option<&Subject>, now: Instant) -> Seen {
        if self.max_sets == 0 {
            return Seen::New;
        }
        if self.sets.is_empty() {
            self.sets = vec![[Slot::default(); WAYS]; self.max_sets.min(FIRST_SETS)];
        }
        let key = self.key(task_id);
        let now = self.nanos(now);
        let window = self.window;
        let mut set = self.set_of(key);
        let live = move |slot: &Slot| {
            slot.key != 0 && (slot.len.is_none() || now.saturating_sub(slot.arrived) <= window)
        };
        if let Some(slot) = self.sets[set].iter_mut().find(|s| s.key == key && live(s)) {
            match slot.response() {
                None => {
                    if let Some(reply) = reply {
                        self.waiters.entry(key).or_default().push(reply.clone());
                    }
                    return Seen::Running;
                }
                Some(stored) => match self.responses.read(stored) {
                    Some(response) => return Seen::Answered(response),
                    // The ring wrote over its response: forgotten, as after
                    // any other eviction.
                    None => *slot = Slot::default(),
                },
            }
        }
        // A full set grows the table, while it may, rather than forget an id.
        while self.sets.len() < self.max_sets && self.sets[set].iter().all(live) {
            self.grow();
            set = self.set_of(key);
        }
        // A free or expired slot, else the oldest answered one. Running ids
        // are never evicted (their waiters must be answered); a set of four
        // running ids, which takes four tasks running at once whose hashes
        // share a set, leaves the new id unrecorded.
        let victim = self.sets[set]
            .iter_mut()
            .filter(|s| !live(s) || s.len.is_some())
            .min_by_key(|s| (live(s), s.arrived));
        if let Some(slot) = victim {
            self.last_arrival = now.max(self.last_arrival + 1);
            *slot = Slot {
                key,
                arrived: self.last_arrival,
                at: 0,
                len: None,
            };
        }
        Seen::New
    }

    /// Doubles the table: each set splits in two by one more bit of its
    /// ids' hashes, so every id keeps its slot's contents and finds room.
    fn grow(&mut self) {
        let mut sets = vec![[Slot::default(); WAYS]; self.sets.len() * 2];
        let mask = sets.len() - 1;
        for slot in self.sets.iter().flatten().filter(|s| s.key != 0) {
            let set = &mut sets[(slot.key >> 32) as usize & mask];
            if let Some(free) = set.iter_mut().find(|s| s.key == 0) {
                *free = *slot;
            }
        }
        self.sets = sets;
    }

    /// Stores the response of `task_id` and returns the replies that waited for it.
    pub(super) fn answer(&mut self, task_id: &str, response: &[u8]) -> Vec<Subject> {
        if self.sets.is_empty() {
            return Vec::new();
        }
        let key = self.key(task_id);
        let set = self.set_of(key);
        if let Some(slot) = self.sets[set]
            .iter_mut()
            .find(|s| s.key == key && s.len.is_none())
        {
            match self.responses.write(response) {
                Some(stored) => {
                    slot.at = stored.at;
                    slot.len = Some(stored.len);
                }
                // Not kept (empty, or larger than the ring): forget the id
                // rather than leave it running.
                None => *slot = Slot::default(),
            }
        }
        self.waiters.remove(&key).unwrap_or_default()
    }

    fn key(&self, task_id: &str) -> u64 {
        self.ids.hash_one(task_id).max(1)
    }

    fn set_of(&self, key: u64) -> usize {
        // The high bits: foldhash mixes them best.
        (key >> 32) as usize & (self.sets.len() - 1)
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.started).as_nanos()).unwrap_or(u64::MAX)
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
/// The buffer grows as responses arrive, up to its size, and is then
/// written over from the front: an agent that answers little holds little.
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
            bytes: Vec::new(),
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

    impl DedupCache {
        fn remembered(&self) -> usize {
            self.sets.iter().flatten().filter(|s| s.key != 0).count()
        }
    }

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
        assert_eq!(cache.check("t1", None, now), Seen::Answered("done".into()));
    }

    #[test]
    fn ids_are_forgotten_after_the_window_unless_still_running() {
        let mut cache = DedupCache::new(Duration::from_secs(1), 100, MAX);
        let start = Instant::now();
        let later = start + Duration::from_secs(2);
        cache.check("t1", None, start);
        cache.answer("t1", b"x");
        cache.check("long", None, start);
        assert_eq!(cache.check("t1", None, later), Seen::New);
        assert_eq!(cache.check("long", None, later), Seen::Running);
    }

    #[test]
    fn capacity_bounds_memory_but_keeps_running_tasks() {
        // Capacity 2 rounds up to one set of four slots.
        let mut cache = DedupCache::new(Duration::from_secs(60), 2, MAX);
        let now = Instant::now();
        cache.check("running", None, now);
        for i in 0..10 {
            let id = format!("t{i}");
            assert_eq!(
                cache.check(&id, None, now + Duration::from_millis(i)),
                Seen::New
            );
            cache.answer(&id, id.as_bytes());
        }
        assert_eq!(cache.remembered(), WAYS);
        assert_eq!(cache.check("running", None, now), Seen::Running);
        // The newest three answered ids are kept, the older ones evicted.
        for i in 7..10 {
            let id = format!("t{i}");
            assert_eq!(cache.check(&id, None, now), Seen::Answered(id.into()));
        }
        assert_eq!(cache.check("t6", None, now), Seen::New);
    }

    #[test]
    fn a_set_of_running_ids_leaves_a_new_one_unrecorded_but_evicts_none() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 1, MAX);
        let now = Instant::now();
        for i in 0..WAYS {
            assert_eq!(cache.check(&format!("r{i}"), None, now), Seen::New);
        }
        assert_eq!(cache.check("extra", None, now), Seen::New);
        assert_eq!(cache.check("extra", None, now), Seen::New, "not recorded");
        for i in 0..WAYS {
            assert_eq!(cache.check(&format!("r{i}"), None, now), Seen::Running);
        }
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
    fn the_table_holds_about_the_capacity() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 10_000, MAX);
        assert!(cache.sets.is_empty(), "no table before the first task");
        cache.check("t", None, Instant::now());
        assert_eq!(cache.sets.len(), FIRST_SETS, "it starts small");
        let slots = cache.max_sets * WAYS;
        assert!((10_000..20_000).contains(&slots), "{slots}");
        let mut cache = DedupCache::new(Duration::from_secs(60), 10_000, MAX);
        let now = Instant::now();
        for i in 0..50_000 {
            let id = format!("t{i}");
            cache.check(&id, None, now);
            cache.answer(&id, b"{}");
        }
        // Nearly every slot is used before ids are evicted.
        assert!(
            cache.remembered() > slots * 9 / 10,
            "{}",
            cache.remembered()
        );
        assert!(cache.remembered() <= slots);
        assert_eq!(cache.sets.len() * WAYS, slots, "grown to its capacity");
    }

    #[test]
    fn growing_keeps_every_id_and_its_response() {
        // Room for far more ids than the test records: at full size, five of
        // them sharing a set (ids are hashed with a seed per process) would
        // push one out, which with room for 10,000 happens in about one run
        // in forty; with room for a million, about one in a billion.
        let mut cache = DedupCache::new(Duration::from_secs(60), 1_000_000, MAX);
        let now = Instant::now();
        cache.check("running", None, now);
        assert_eq!(
            cache.check("running", Some(&Subject::from("r")), now),
            Seen::Running
        );
        for i in 0..1_000 {
            let id = format!("t{i}");
            cache.check(&id, None, now);
            cache.answer(&id, id.as_bytes());
        }
        assert!(cache.sets.len() > FIRST_SETS, "it grew");
        for i in 0..1_000 {
            let id = format!("t{i}");
            assert_eq!(cache.check(&id, None, now), Seen::Answered(id.into()));
        }
        assert_eq!(cache.check("running", None, now), Seen::Running);
        assert_eq!(cache.answer("running", b"ok"), vec![Subject::from("r")]);
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
    fn an_empty_response_is_not_kept() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 10, MAX);
        let now = Instant::now();
        cache.check("t1", None, now);
        cache.answer("t1", b"");
        assert_eq!(cache.check("t1", None, now), Seen::New);
    }
}
