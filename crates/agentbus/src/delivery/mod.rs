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
//!
//! # Layout
//!
//! - `consumers`: every durable consumer, defined once (name, filters, limits).
//! - `worker`: fetching from consumers by priority and handing out deliveries.
//! - `settle`: a [`Delivery`] and how it is settled: acknowledged, retried,
//!   recorded, dead-lettered ([`TaskAttempt`] for queued tasks).
//! - `claim`: an agent's own queue worked by hand, one task at a time ([`TaskClaims`]).
//! - `publish`: storing tasks, messages and broadcasts from the sender's side.
//! - `records`: the results bucket ([`TaskRecord`], [`TaskState`]).
//! - `tracking`: where a queued task stands, by its id ([`TaskReport`]).
//! - `recipients`: who would receive work sent to an [`Address`] ([`Recipients`]).
//! - `dead_letter`: dead letters, their replay, and abandoned tasks.
//! - `options`: [`DeliveryOptions`]; `queue`: which work queue ([`Queue`]).

mod claim;
mod consumers;
mod dead_letter;
mod options;
mod publish;
mod queue;
mod recipients;
mod records;
mod settle;
mod tracking;
pub(crate) mod worker;

pub use claim::{ClaimError, ClaimErrorKind, TaskClaims};
pub use consumers::{ConsumerError, ConsumerErrorKind, ConsumerSpec};
pub use dead_letter::body_value;
pub(crate) use dead_letter::watch_max_deliveries;
pub use dead_letter::{DeadLetter, DeadLetterEntry, DeadLetterError, DeadLetterErrorKind};
pub use options::DeliveryOptions;
pub use publish::{
    FROM_HEADER, Published, RESULT_HEADER, ResultRetention, StoreError, StoreErrorKind, Submitted,
};
pub use queue::Queue;
pub use recipients::{Address, Recipients, RecipientsError, RecipientsErrorKind};
pub(crate) use records::Records;
pub use records::{AttemptError, RecordError, RecordErrorKind, TaskRecord, TaskState};
pub use settle::{Delivery, SettleError, SettleErrorKind, Settled, TaskAttempt};
pub(crate) use settle::{Opened, Settler};
pub use tracking::TaskReport;
