//! Guaranteed delivery on JetStream: work queues, durable inboxes, broadcasts
//! and dead letters.
//!
//! - **Work queues** (`agent-tasks`, work-queue retention). `tasks.<agent>` is
//!   one agent's queue, shared by its replicas; `work.<task_type>` is shared by
//!   every agent accepting that type. Priorities live on separate subjects
//!   (`tasks.<agent>.critical|high|low`; plain `tasks.<agent>` is normal), each
//!   with its own durable consumer, so filters never overlap. A submission is
//!   stored with `Nats-Msg-Id` = task id: repeated within the dedup window, it
//!   is stored once.
//! - **Results** of queued tasks go to the KV bucket `agent-task-results`, so a
//!   submitter can collect them by task id, also after a restart. A submitter
//!   that will never ask can say so ([`ResultRetention::Discard`]): a task
//!   that succeeds at once then costs one stored message instead of two.
//! - **Inboxes** (`agent-messages`). `agent.<name>.inbox` is delivered in
//!   order, one message at a time; `agent.<name>.direct` is delivered
//!   concurrently, without ordering, for independent notifications. Both are
//!   durable: messages sent while the agent is offline wait for it.
//! - **Broadcasts** (`agent-broadcast`). `broadcast.<topic>` reaches every
//!   agent subscribed to the topic; `announce.<topic>` reaches every agent
//!   that takes messages. Each agent has its own durable consumer, so each
//!   receives each message once, with its own cursor.
//! - **Dead letters** (`agent-dlq`). A task or message that failed for good
//!   (retries exhausted, or a non-retryable error) is copied to
//!   `dlq.<original subject>` with its error history, then removed from its
//!   queue. [`crate::Bus::replay_dead_letter`] puts it back.

mod complete;
mod dead_letter;
mod publish;
mod queue;
mod records;
pub(crate) mod worker;

pub use dead_letter::{DeadLetter, DeadLetterEntry};
pub(crate) use dead_letter::{
    body_value, dead_letter_message, dead_letter_task, watch_max_deliveries,
};
pub use publish::{FROM_HEADER, Published, RESULT_HEADER, ResultRetention, Submitted};
pub use queue::Queue;
pub(crate) use records::Records;
pub use records::{AttemptError, TaskRecord, TaskState};

use crate::name::InvalidName;
use std::time::Duration;

/// Why a durable operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A name cannot be a subject token.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// A task id cannot be stored.
    #[error("invalid task id {0:?}: use 1-128 characters from A-Z, a-z, 0-9, '_' and '-'")]
    InvalidTaskId(String),
    /// A message id cannot be stored.
    #[error("invalid message id {0:?}: use 1-256 characters without spaces or control characters")]
    InvalidMessageId(String),
    /// The stream refused the message because it is full.
    #[error(
        "stream {stream} is full, so {subject} was not stored; let consumers catch up or raise its limits (`agentbus status` shows how full it is)"
    )]
    StreamFull { stream: String, subject: String },
    /// No stream captures the subject.
    #[error("no stream stores {subject}; run `agentbus setup` to create the streams")]
    NoStream { subject: String },
    /// The message exceeds the server's `max_payload`.
    #[error(
        "the message is {size} bytes, more than the server's max_payload of {max} bytes; send large data by reference"
    )]
    TooLarge { size: usize, max: usize },
    /// The task did not finish in time.
    #[error(
        "task {task_id} did not finish within {after:?}; `agentbus task {task_id}` shows its state"
    )]
    WaitTimedOut { task_id: String, after: Duration },
    /// Nothing is known of the task.
    #[error("no dead letter for task {0}; `agentbus dlq list` shows what there is")]
    NoDeadLetter(String),
    /// JetStream refused or failed an operation.
    #[error("JetStream could not {action}: {reason}")]
    JetStream {
        action: &'static str,
        reason: String,
    },
}

impl DeliveryError {
    pub(crate) fn jetstream(action: &'static str, err: impl std::fmt::Display) -> Self {
        Self::JetStream {
            action,
            reason: err.to_string(),
        }
    }
}

/// The current time, as RFC 3339 with milliseconds.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
