//! Live figures of a served agent: what waits, what runs, what finished.

use crate::protocol::TaskStatus;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A snapshot of one agent's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct AgentStats {
    /// Tasks waiting for a free slot.
    pub waiting: usize,
    /// Tasks being handled.
    pub running: usize,
    /// Tasks that completed.
    pub completed: u64,
    /// Tasks that ended in any other status.
    pub failed: u64,
    /// Time handlers spent on the finished tasks, in total.
    pub processing_time: Duration,
}

/// The counters behind [`AgentStats`], updated by the serving loop.
#[derive(Debug, Default)]
pub(super) struct Counters {
    waiting: AtomicUsize,
    running: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    processing_nanos: AtomicU64,
}

impl Counters {
    pub(super) fn set_queues(&self, waiting: usize, running: usize) {
        self.waiting.store(waiting, Ordering::Relaxed);
        self.running.store(running, Ordering::Relaxed);
    }

    pub(super) fn finished(&self, status: TaskStatus, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.processing_nanos.fetch_add(nanos, Ordering::Relaxed);
        let counter = if status == TaskStatus::Completed {
            &self.completed
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> AgentStats {
        AgentStats {
            waiting: self.waiting.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            processing_time: Duration::from_nanos(self.processing_nanos.load(Ordering::Relaxed)),
        }
    }
}
