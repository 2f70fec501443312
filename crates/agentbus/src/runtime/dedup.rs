//! Remembering recent task ids, so a retried task is answered, not run again.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
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
    Running { waiters: Vec<String> },
    Answered(Bytes),
}

/// Recent task ids of one agent, for a time window and up to a capacity.
#[derive(Debug)]
pub struct DedupCache {
    window: Duration,
    capacity: usize,
    // Task ids come from clients: a seeded hasher, fast but not predictable.
    entries: HashMap<Arc<str>, Entry, foldhash::fast::RandomState>,
    order: VecDeque<(Instant, Arc<str>)>,
}

impl DedupCache {
    /// A cache that remembers ids for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            entries: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// Records `task_id`; a repeat while running adds `reply` to its waiters.
    pub fn check(&mut self, task_id: &str, reply: Option<&str>, now: Instant) -> Seen {
        self.expire(now);
        match self.entries.get_mut(task_id) {
            Some(Entry::Answered(bytes)) => Seen::Answered(bytes.clone()),
            Some(Entry::Running { waiters }) => {
                waiters.extend(reply.map(str::to_owned));
                Seen::Running
            }
            None => {
                if self.capacity > 0 {
                    let key: Arc<str> = task_id.into();
                    let running = Entry::Running {
                        waiters: Vec::new(),
                    };
                    self.entries.insert(key.clone(), running);
                    self.order.push_back((now, key));
                }
                Seen::New
            }
        }
    }

    /// Stores the response of `task_id` and returns the replies that waited for it.
    pub fn answer(&mut self, task_id: &str, response: Bytes) -> Vec<String> {
        match self.entries.get_mut(task_id) {
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
                self.entries.insert(id.clone(), entry);
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
        assert_eq!(cache.check("t1", Some("r1"), now), Seen::New);
        assert_eq!(cache.check("t1", Some("r2"), now), Seen::Running);
        assert_eq!(
            cache.answer("t1", Bytes::from_static(b"done")),
            vec!["r2".to_owned()]
        );
        assert_eq!(
            cache.check("t1", Some("r3"), now),
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
