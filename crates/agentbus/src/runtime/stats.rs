//! Live figures of a served agent: what waits, what runs, what finished, and
//! the last error (as the services protocol reports it, see [`super::discovery`]).

use crate::protocol::{TaskResponse, TaskStatus};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A snapshot of one agent's figures. Every answer counts once, in
/// `completed`, `failed` or `rejected`: each attempt at a queued task, and
/// each request/reply task (a retry of it answered from the deduplication
/// window is the same task and is not counted again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct AgentStats {
    /// Tasks waiting for a free slot.
    pub waiting: usize,
    /// Tasks being handled.
    pub running: usize,
    /// Tasks that completed.
    pub completed: u64,
    /// Tasks that ended in another status: the handler failed or ran out of
    /// time, or the task was cancelled at shutdown.
    pub failed: u64,
    /// Tasks refused before a handler ran: malformed, of a task type the
    /// agent does not accept, or with a payload that does not match its schema.
    pub rejected: u64,
    /// Time spent on the answered tasks, in total; integer nanoseconds in
    /// JSON, as in the services protocol.
    #[serde(serialize_with = "nanos")]
    pub processing_time: Duration,
    /// Outcomes of queued tasks discarded because another attempt had
    /// taken the task over (this runtime paused past the ack wait, say).
    pub stale_results: u64,
}

fn nanos<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
}

/// Longest description kept in `last_error`: a STATS answer must stay far
/// below the server's max_payload whatever a handler's error says.
const MAX_ERROR_DESCRIPTION: usize = 1024;

/// The counters behind [`AgentStats`], updated by the serving loop.
#[derive(Debug, Default)]
pub(super) struct Counters {
    waiting: AtomicUsize,
    running: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    processing_nanos: AtomicU64,
    stale_results: AtomicU64,
    /// `"<code>:<description>"` of the last error; empty before the first.
    last_error: Mutex<String>,
}

impl Counters {
    pub(super) fn set_queues(&self, waiting: usize, running: usize) {
        self.waiting.store(waiting, Ordering::Relaxed);
        self.running.store(running, Ordering::Relaxed);
    }

    /// A task answered with `response` after `took`.
    pub(super) fn finished(&self, response: &TaskResponse, took: Duration) {
        self.add_time(took);
        if response.status == TaskStatus::Completed {
            self.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let description = response.error.as_deref().unwrap_or_default();
            self.set_last_error(response.status, description);
        }
    }

    /// A task refused with `error` before a handler ran, after `took`.
    pub(super) fn rejected(&self, error: &str, took: Duration) {
        self.add_time(took);
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.set_last_error(TaskStatus::Rejected, error);
    }

    /// An outcome discarded: another attempt held the task by then.
    pub(super) fn stale(&self) {
        self.stale_results.fetch_add(1, Ordering::Relaxed);
    }

    /// The last error as the services protocol writes it, `"<code>:<description>"`
    /// (codes as in [`error_code`], the description cut at
    /// [`MAX_ERROR_DESCRIPTION`] bytes), or empty when there was none.
    pub(super) fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|last| last.clone())
            .unwrap_or_default()
    }

    pub(super) fn snapshot(&self) -> AgentStats {
        AgentStats {
            waiting: self.waiting.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            processing_time: Duration::from_nanos(self.processing_nanos.load(Ordering::Relaxed)),
            stale_results: self.stale_results.load(Ordering::Relaxed),
        }
    }

    fn add_time(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.processing_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn set_last_error(&self, status: TaskStatus, description: &str) {
        let mut end = description.len().min(MAX_ERROR_DESCRIPTION);
        while !description.is_char_boundary(end) {
            end -= 1;
        }
        let cut = if end < description.len() { "..." } else { "" };
        if let Ok(mut last) = self.last_error.lock() {
            *last = format!("{}:{}{cut}", error_code(status), &description[..end]);
        }
    }
}

/// The HTTP-like code of an error in `last_error`, as services use them:
/// 400 rejected, 503 cancelled, 504 timeout, 500 otherwise.
fn error_code(status: TaskStatus) -> u16 {
    match status {
        TaskStatus::Rejected => 400,
        TaskStatus::Cancelled => 503,
        TaskStatus::Timeout => 504,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_rejections_are_counted_with_the_last_one() {
        let counters = Counters::default();
        assert_eq!(counters.last_error(), "");
        counters.finished(
            &TaskResponse::completed("t1", serde_json::json!(1)),
            Duration::from_millis(2),
        );
        counters.rejected("unknown task_type", Duration::from_micros(5));
        assert_eq!(counters.last_error(), "400:unknown task_type");
        counters.finished(
            &TaskResponse::error("t2", TaskStatus::Timeout, "too slow"),
            Duration::from_millis(3),
        );
        assert_eq!(counters.last_error(), "504:too slow");
        counters.rejected(&"é".repeat(600), Duration::ZERO);
        let cut = counters.last_error();
        assert_eq!(cut, format!("400:{}...", "é".repeat(512)));
        let stats = counters.snapshot();
        assert_eq!((stats.completed, stats.failed, stats.rejected), (1, 1, 2));
        assert_eq!(stats.processing_time, Duration::from_micros(5005));
        let json = serde_json::to_value(stats).unwrap();
        assert_eq!(json["processing_time"], 5_005_000);
    }
}
