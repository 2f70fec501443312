//! What happens to a task while it runs, for anyone to follow: its event log,
//! cancellation, deadlines and questions back to the caller.
//!
//! Every task may have an ordered log of events on `task.<task key>.events`
//! (see [`crate::TaskKey`]),
//! stored in the `agent-task-events` stream: `accepted`, `started`,
//! `progress`, `partial`, `input_required`, `input_received`, then one final
//! state (`completed`, `failed`, `rejected`, `timeout`, `cancelled`). Each
//! event carries the task id, a sequence number that starts at 1 and has no
//! gaps, a time and the instance that wrote it ([`LogEvent`]).
//!
//! Which tasks have a full log: one whose sender asked to follow it
//! ([`crate::TaskRequest::stream`]), and one whose handler reports something
//! (a partial result, progress or a question). A task that does neither
//! keeps request/reply's cost: one request, one response, and a log of at
//! most its final state, written only when it was cancelled or stopped by
//! its deadline, or ran [`LOG_FINAL_AFTER`] or longer (long enough for
//! someone to look it up while it ran).
//!
//! [`crate::Bus::watch`] replays a log from any sequence and follows it to
//! the final state, saying when the events asked for are no longer stored
//! ([`Watched::Gone`]). [`crate::Bus::cancel`] and [`crate::Bus::answer`]
//! reach the runtime holding the task over
//! `task.<from>.<runner>.<task_id>.control.<verb>`, which a runtime subscribes
//! to once whatever its number of agents (with an agent identity, for its
//! own tasks only); a task obeys its caller and the operator only.

mod client;
mod control;
mod running;
mod watch;
mod writer;

pub use client::{CancelOutcome, ControlError, ControlErrorKind};
pub(crate) use control::{Registered, Registry, serve_controls};
pub use running::StopReason;
pub(crate) use running::{AskError, RunningTask, Stop};
pub use watch::{Watch, WatchError, WatchErrorKind, Watched};
pub use writer::LogError;
pub(crate) use writer::{accept_queued, find_last_event, purge};

use crate::protocol::{TaskResponse, TaskStatus};
use crate::task_id::TaskId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// A task that reported nothing and ran at least this long still logs its
/// final state: someone may have looked it up while it ran.
pub const LOG_FINAL_AFTER: Duration = Duration::from_secs(1);

/// What an event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventType {
    /// The bus took the task (queued, or admitted by a runtime).
    Accepted,
    /// A handler started on it; `data` has `agent` and `attempt`.
    Started,
    /// The handler reported progress; `data` has `progress` (a number)
    /// and/or `message`.
    Progress,
    /// A chunk of the result; `data` is the chunk.
    Partial,
    /// The handler asked a question; `data` has `question`.
    InputRequired,
    /// The question was answered; `data` has `answer`.
    InputReceived,
    /// Final: the handler succeeded. `data` is the TaskResponse.
    Completed,
    /// Final: the handler failed. `data` is the TaskResponse.
    Failed,
    /// Final: the task was refused. `data` is the TaskResponse.
    Rejected,
    /// Final: the deadline or the agent's time limit passed. `data` is the TaskResponse.
    Timeout,
    /// Final: the task was cancelled. `data` is the TaskResponse.
    Cancelled,
}

impl EventType {
    /// Whether this is a final state: nothing follows it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Rejected | Self::Timeout | Self::Cancelled
        )
    }

    /// The final event of a task that ended with `status`.
    pub fn of_status(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Completed => Self::Completed,
            TaskStatus::Rejected => Self::Rejected,
            TaskStatus::Timeout => Self::Timeout,
            TaskStatus::Cancelled => Self::Cancelled,
            TaskStatus::Failed | TaskStatus::Pending | TaskStatus::Running => Self::Failed,
        }
    }

    /// The snake_case wire name, such as `input_required`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Started => "started",
            Self::Progress => "progress",
            Self::Partial => "partial",
            Self::InputRequired => "input_required",
            Self::InputReceived => "input_received",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<EventType> for TaskStatus {
    /// The status of a final event; `running` for the others.
    fn from(kind: EventType) -> Self {
        match kind {
            EventType::Completed => Self::Completed,
            EventType::Failed => Self::Failed,
            EventType::Rejected => Self::Rejected,
            EventType::Timeout => Self::Timeout,
            EventType::Cancelled => Self::Cancelled,
            EventType::Accepted => Self::Pending,
            _ => Self::Running,
        }
    }
}

/// One event of a task's log, as stored on `task.<task_id>.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    /// The task.
    pub task_id: TaskId,
    /// Its place in the task's log: 1 for the first, no gaps.
    pub seq: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When, RFC 3339 with milliseconds.
    pub time: String,
    /// The runtime (or client) instance that wrote it.
    pub instance: String,
    /// What it carries (see [`EventType`]).
    #[serde(default)]
    pub data: Value,
}

impl LogEvent {
    /// The TaskResponse a final event carries; `None` for other events.
    pub fn response(&self) -> Option<TaskResponse> {
        if !self.kind.is_final() {
            return None;
        }
        serde_json::from_value(self.data.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_keep_their_wire_shape() {
        let event = LogEvent {
            task_id: TaskId::parse("t1").unwrap(),
            seq: 3,
            kind: EventType::InputRequired,
            time: "2026-01-01T00:00:00.000Z".into(),
            instance: "i1".into(),
            data: json!({"question": "ok?"}),
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            json!({"task_id": "t1", "seq": 3, "type": "input_required",
                   "time": "2026-01-01T00:00:00.000Z", "instance": "i1",
                   "data": {"question": "ok?"}})
        );
        assert!(event.response().is_none());
        for status in [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Rejected,
            TaskStatus::Timeout,
            TaskStatus::Cancelled,
        ] {
            let kind = EventType::of_status(status);
            assert!(kind.is_final());
            assert_eq!(kind.as_str(), status.as_str());
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert!(!EventType::InputReceived.is_final());
    }
}
