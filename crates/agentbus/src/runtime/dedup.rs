//! Remembering recent task ids, so a retried task is answered, not run again.

use async_nats::Subject;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

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

#[derive(Debug)]
enum Entry {
    Running { waiters: Vec<Subject> },
    Answered(Bytes),
}

/// Recent task ids of one agent, for a time window and up to a capacity.
#[derive(Debug)]
pub struct DedupCache {
    window: Duration,
    capacity: usize,
    // Entries are keyed by a 64-bit hash of the task id, which saves an
    // allocation per task. Task ids come from clients: the hasher is seeded
    // per process, so nobody can make two ids collide on purpose.
    ids: foldhash::fast::RandomState,
    entries: HashMap<u64, Entry, foldhash::fast::RandomState>,
    order: VecDeque<(Instant, u64)>,
}

impl DedupCache {
    /// A cache that remembers ids for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            ids: foldhash::fast::RandomState::default(),
            entries: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// Records `task_id`; a repeat while running adds `reply` to its waiters.
    pub fn check(&mut self, task_id: &str, reply: Option<&Subject>, now: Instant) -> Seen {
        self.expire(now);
        let key = self.ids.hash_one(task_id);
        match self.entries.get_mut(&key) {
            Some(Entry::Answered(bytes)) => Seen::Answered(bytes.clone()),
            Some(Entry::Running { waiters }) => {
                waiters.extend(reply.cloned());
                Seen::Running
            }
            None => {
                if self.capacity > 0 {
                    let running = Entry::Running {
                        waiters: Vec::new(),
                    };
                    self.entries.insert(key, running);
                    self.order.push_back((now, key));
                }
                Seen::New
            }
        }
    }

    /// Stores the response of `task_id` and returns the replies that waited for it.
    pub fn answer(&mut self, task_id: &str, response: Bytes) -> Vec<Subject> {
        let key = self.ids.hash_one(task_id);
        match self.entries.get_mut(&key) {
            Some(entry) => match std::mem::replace(entry, Entry::Answered(response)) {
                Entry::Running { waiters } => waiters,
                Entry::Answered(_) => Vec::new(),
            },
            None => Vec::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        // Each entry is looked at once at most, so a cache full of running
        // tasks cannot loop.
        for _ in 0..self.order.len() {
            let Some((at, _)) = self.order.front() else {
                break;
            };
            let over_capacity = self.order.len() >= self.capacity;
            if now.duration_since(*at) <= self.window && !over_capacity {
                break;
            }
            let Some((at, id)) = self.order.pop_front() else {
                break;
            };
            // One lookup: remove, and put back the (rare) running one.
            if let Some(entry @ Entry::Running { .. }) = self.entries.remove(&id) {
                // Never forget a running task: its waiters must still be answered.
                self.entries.insert(id, entry);
                self.order.push_back((at, id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_while_running_waits_and_repeat_after_is_answered() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 100);
        let now = Instant::now();
        assert_eq!(
            cache.check("t1", Some(&Subject::from("r1")), now),
            Seen::New
        );
        assert_eq!(
            cache.check("t1", Some(&Subject::from("r2")), now),
            Seen::Running
        );
        assert_eq!(
            cache.answer("t1", Bytes::from_static(b"done")),
            vec![Subject::from("r2")]
        );
        assert_eq!(
            cache.check("t1", Some(&Subject::from("r3")), now),
            Seen::Answered(Bytes::from_static(b"done"))
        );
    }

    #[test]
    fn ids_are_forgotten_after_the_window() {
        let mut cache = DedupCache::new(Duration::from_secs(1), 100);
        let start = Instant::now();
        cache.check("t1", None, start);
        cache.answer("t1", Bytes::from_static(b"x"));
        assert_eq!(
            cache.check("t1", None, start + Duration::from_secs(2)),
            Seen::New
        );
    }

    #[test]
    fn capacity_bounds_memory_but_keeps_running_tasks() {
        let mut cache = DedupCache::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        cache.check("running", None, now);
        for i in 0..10 {
            let id = format!("t{i}");
            cache.check(&id, None, now);
            cache.answer(&id, Bytes::from_static(b"x"));
        }
        assert!(cache.entries.len() <= 3, "{}", cache.entries.len());
        assert_eq!(cache.check("running", None, now), Seen::Running);
    }
}
