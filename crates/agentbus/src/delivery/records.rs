//! The state and result of queued tasks, in the KV bucket `agent-task-results`.

use crate::bucket::{Bucket, is_put};
use crate::client::Bus;
use crate::clock;
use crate::name::Name;
use crate::protocol::TaskResponse;
use crate::ride::ride;
use crate::stream_read::last_on_subject;
use crate::subject::{TASK_RESULTS_BUCKET, TASKS_STREAM};
use crate::task_id::{TaskId, TaskKey};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Where a task stands.
///
/// Stored in a queued task's [`TaskRecord`]: `queued` (by
/// [`Bus::submit_recorded`] and replays), `retrying`, `completed`,
/// `dead_lettered`, `cancelled` and `timeout`. Told by [`Bus::task_report`]
/// from the record, the queue and its consumer, the task's log and the
/// runtime holding it: also `running`, `input_required`, `failed`,
/// `rejected`, `finished_without_record` and `unknown` ([`TaskReport::note`]
/// says what some of these cannot be told apart from).
///
/// [`Bus::submit_recorded`]: crate::Bus::submit_recorded
/// [`Bus::task_report`]: crate::Bus::task_report
/// [`TaskReport::note`]: super::TaskReport::note
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// Submitted, and nothing more is known: what a submitter may say of a
    /// task it just queued without looking it up. Never stored.
    Pending,
    /// Stored in its queue, not delivered to a worker yet. A stored record
    /// says `queued` from its submission until an attempt ends, also while
    /// the task runs: the lookup tells the difference.
    Queued,
    /// Delivered to a worker and not acknowledged yet, or held by a
    /// runtime over request/reply. Stored by the worker that takes a queued
    /// task whose outcome is kept: its claim, which a late result of an
    /// earlier attempt cannot overwrite.
    Running,
    /// The handler asked a question and waits for the answer. Never stored.
    InputRequired,
    /// An attempt failed; the task waits to be retried.
    Retrying,
    /// The task finished; `response` holds the TaskResponse.
    Completed,
    /// The task failed for good and sits in the dead-letter stream.
    DeadLettered,
    /// The handler failed (a task sent over request/reply; a queued task
    /// that fails for good is dead-lettered). Told from the task's log.
    Failed,
    /// The task was refused (request/reply). Told from the task's log.
    Rejected,
    /// Its deadline or its agent's time limit passed.
    Timeout,
    /// It was cancelled.
    Cancelled,
    /// The task left its queue and no outcome was recorded (a fire-and-forget
    /// task that succeeded leaves none). Never stored.
    FinishedWithoutRecord,
    /// Nothing is recorded under the task id. Never stored.
    Unknown,
}

impl TaskState {
    /// Whether the task is over (completed, dead-lettered, or finished
    /// without a record).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed
                | Self::DeadLettered
                | Self::FinishedWithoutRecord
                | Self::Failed
                | Self::Rejected
                | Self::Timeout
                | Self::Cancelled
        )
    }

    /// The state a task's last logged event tells.
    pub fn of_event(kind: crate::task_log::EventType) -> Self {
        use crate::task_log::EventType;
        match kind {
            EventType::Accepted => Self::Queued,
            EventType::InputRequired => Self::InputRequired,
            EventType::Completed => Self::Completed,
            EventType::Failed => Self::Failed,
            EventType::Rejected => Self::Rejected,
            EventType::Timeout => Self::Timeout,
            EventType::Cancelled => Self::Cancelled,
            _ => Self::Running,
        }
    }

    /// The state's name as printed and serialized, such as `dead_lettered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::InputRequired => "input_required",
            Self::Retrying => "retrying",
            Self::Completed => "completed",
            Self::DeadLettered => "dead_lettered",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::FinishedWithoutRecord => "finished_without_record",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// 1 for the first delivery.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// When, RFC 3339.
    pub at: String,
    /// The runtime instance that ran the attempt.
    pub instance_id: String,
}

/// What is known of a queued task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id.
    pub task_id: TaskId,
    /// Where it stands.
    pub state: TaskState,
    /// The subject it was queued on.
    pub subject: String,
    /// Its sequence in the tasks stream, when its submission was recorded:
    /// what finds the task in its queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// Attempts so far: runs of the task, counted from the record (a rerun
    /// after a server lost its deliveries counts on, where JetStream's
    /// delivery count starts again).
    pub attempts: u32,
    /// The runtime instance that holds the task's latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Each failed attempt.
    pub errors: Vec<AttemptError>,
    /// The final response, once completed or dead-lettered.
    pub response: Option<TaskResponse>,
    /// Last change, RFC 3339.
    pub updated_at: String,
}

impl TaskRecord {
    /// A record for a task seen for the first time.
    pub(crate) fn new(task_id: &TaskId, subject: &str) -> Self {
        Self {
            task_id: task_id.clone(),
            state: TaskState::Retrying,
            subject: subject.to_owned(),
            sequence: None,
            attempts: 0,
            instance_id: None,
            errors: Vec::new(),
            response: None,
            updated_at: clock::now(),
        }
    }

    /// The record of a task just stored at `sequence` on `subject`.
    pub(crate) fn queued(task_id: &TaskId, subject: &str, sequence: u64) -> Self {
        Self {
            state: TaskState::Queued,
            sequence: Some(sequence),
            ..Self::new(task_id, subject)
        }
    }
}

/// Why a task record could not be read, written or waited for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bucket is missing (or cannot be opened).
    #[error(
        "cannot open the task results bucket {TASK_RESULTS_BUCKET} ({source}); run `agentbus setup` to create it"
    )]
    NoBucket {
        /// Why it could not be opened.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read, write or watch of the bucket failed.
    #[error("cannot {operation} in {TASK_RESULTS_BUCKET}: {source}")]
    Backend {
        /// What was attempted.
        operation: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The task's queue or its consumer could not be read.
    #[error(
        "cannot look the task up in stream {TASKS_STREAM} ({operation}): {source}; check that the server is up"
    )]
    Queue {
        /// What was attempted.
        operation: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The task did not finish in time.
    #[error(
        "task {task_id} did not finish within {after:?}; `agentbus task {task_id}` shows its state"
    )]
    WaitTimedOut {
        /// The task waited for.
        task_id: TaskId,
        /// How long it was waited for.
        after: Duration,
    },
}

/// What went wrong with a task record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordErrorKind {
    /// The bucket is missing: `agentbus setup`.
    NoBucket,
    /// The server failed a read, write or watch.
    Backend,
    /// The task's queue or consumer could not be read.
    Queue,
    /// A wait ran out of time.
    WaitTimedOut,
}

impl RecordError {
    /// What went wrong.
    pub fn kind(&self) -> RecordErrorKind {
        match self {
            Self::NoBucket { .. } => RecordErrorKind::NoBucket,
            Self::Backend { .. } => RecordErrorKind::Backend,
            Self::Queue { .. } => RecordErrorKind::Queue,
            Self::WaitTimedOut { .. } => RecordErrorKind::WaitTimedOut,
        }
    }

    fn backend(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            operation,
            source: Box::new(source),
        }
    }

    pub(crate) fn queue(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Queue {
            operation,
            source: Box::new(source),
        }
    }
}

/// Access to the records bucket. Reads and writes ride out a bucket
/// without a leader and a lost connection, up to the bus's store deadline.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    bucket: Bucket,
    bus: Bus,
}

impl Records {
    /// Opens the bucket; asked again through an election or a reconnect,
    /// up to the bus's store deadline, unless the server says it is missing.
    pub(crate) async fn open(bus: &Bus) -> Result<Self, RecordError> {
        let bucket = Bucket::open(bus, TASK_RESULTS_BUCKET)
            .await
            .map_err(|source| RecordError::NoBucket {
                source: Box::new(source),
            })?;
        Ok(Self {
            bucket,
            bus: bus.clone(),
        })
    }

    /// The record of the task keyed `key`; `None` when there is none (or it
    /// is not a record of that task: written by something else, it is not
    /// trusted).
    pub(crate) async fn get(&self, key: &TaskKey) -> Result<Option<TaskRecord>, RecordError> {
        let value = self.read(key.as_str(), "read a task record").await?;
        Ok(value.and_then(|bytes| record_of(&bytes, key.id())))
    }

    /// The value under `key`, if any, read by `operation` (for its error).
    async fn read(
        &self,
        key: &str,
        operation: &'static str,
    ) -> Result<Option<bytes::Bytes>, RecordError> {
        ride(
            &self.bus,
            key,
            || self.bucket.get(key),
            |err| err.kind() != kv::EntryErrorKind::InvalidKey,
        )
        .await
        .map_err(|err| RecordError::backend(operation, err))
    }

    /// Stores `value` under `key`, whatever it held, by `operation` (for its
    /// error).
    async fn write<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        operation: &'static str,
    ) -> Result<(), RecordError> {
        let body: bytes::Bytes = serde_json::to_vec(value)
            .expect("a task record or a JSON value serializes")
            .into();
        ride(
            &self.bus,
            key,
            || self.bucket.put(key, body.clone()),
            |err| err.kind() != kv::PutErrorKind::InvalidKey,
        )
        .await
        .map_err(|err| RecordError::backend(operation, err))?;
        Ok(())
    }

    /// The record of task `task_id` as `caller` finds it, whoever runs the
    /// task (any caller's with `None`), with its key and revision (`None`
    /// inside when deleted or not a record of the task). `None` when no key
    /// of the task was ever written (or it expired).
    pub(crate) async fn find(
        &self,
        caller: Option<&Name>,
        task_id: &TaskId,
    ) -> Result<Option<(TaskKey, Option<TaskRecord>, u64)>, RecordError> {
        let subject = self.bucket.subject(&TaskKey::pattern(caller, task_id));
        let found = ride(
            &self.bus,
            task_id.as_str(),
            || last_on_subject(self.bucket.stream(), &subject),
            |_| true,
        )
        .await
        .map_err(|source| RecordError::Backend {
            operation: "read a task record",
            source,
        })?;
        let Some(message) = found else {
            return Ok(None);
        };
        let Some(key) = self
            .bucket
            .key_of(&message.subject)
            .and_then(TaskKey::parse)
        else {
            return Ok(None);
        };
        let record = is_put(Some(&message.headers))
            .then(|| record_of(&message.payload, task_id))
            .flatten();
        Ok(Some((key, record, message.sequence)))
    }

    /// Stores `record` under `key`, whatever the key held.
    pub(crate) async fn put(&self, key: &TaskKey, record: &TaskRecord) -> Result<(), RecordError> {
        self.write(key.as_str(), record, "store a task record")
            .await
    }

    /// Stores `answer` to the question of the task keyed `key`, where the
    /// runtime holding it reads it ([`Records::answer`]).
    pub(crate) async fn put_answer(
        &self,
        key: &TaskKey,
        answer: &Value,
    ) -> Result<(), RecordError> {
        self.write(&key.answer_key(), answer, "store an answer")
            .await
    }

    /// The answer stored to the question of the task keyed `key`, if any
    /// (`None` also when it is not JSON).
    pub(crate) async fn answer(&self, key: &TaskKey) -> Result<Option<Value>, RecordError> {
        let value = self.read(&key.answer_key(), "read an answer").await?;
        Ok(value.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// The revision of `key`, a deletion included; `None` when the key was
    /// never written (or expired). What [`Records::write_unless_changed`] compares.
    pub(crate) async fn revision(&self, key: &TaskKey) -> Result<Option<u64>, RecordError> {
        Ok(self.entry(key).await?.map(|(_, revision)| revision))
    }

    /// The record under `key` as stored (`None` inside when deleted or not
    /// a record), with its revision; `None` when the key was never written
    /// (or expired).
    pub(crate) async fn entry(
        &self,
        key: &TaskKey,
    ) -> Result<Option<(Option<TaskRecord>, u64)>, RecordError> {
        let entry = ride(
            &self.bus,
            key.as_str(),
            || self.bucket.entry(key.as_str()),
            |err| err.kind() != kv::EntryErrorKind::InvalidKey,
        )
        .await
        .map_err(|err| RecordError::backend("read a task record", err))?;
        Ok(entry.map(|entry| {
            let record = match entry.operation {
                kv::Operation::Put => record_of(&entry.value, key.id()),
                _ => None,
            };
            (record, entry.revision)
        }))
    }

    /// Stores `record` unless its key changed since `revision` was read
    /// (`None`: unless it was written since). Returns the new revision, or
    /// `None` when the key changed in between: then the change stays.
    pub(crate) async fn write_unless_changed(
        &self,
        key: &TaskKey,
        record: &TaskRecord,
        revision: Option<u64>,
    ) -> Result<Option<u64>, RecordError> {
        let key = key.as_str();
        let body: bytes::Bytes = serde_json::to_vec(record)
            .expect("a task record always serializes")
            .into();
        let stored = match revision {
            Some(revision) => ride(
                &self.bus,
                key,
                || self.bucket.update(key, body.clone(), revision),
                |err| {
                    !matches!(
                        err.kind(),
                        kv::UpdateErrorKind::WrongLastRevision | kv::UpdateErrorKind::InvalidKey
                    )
                },
            )
            .await
            .map_err(|err| {
                (
                    err.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    err.into(),
                )
            }),
            None => ride(
                &self.bus,
                key,
                || self.bucket.create(key, body.clone()),
                |err| {
                    !matches!(
                        err.kind(),
                        kv::CreateErrorKind::AlreadyExists | kv::CreateErrorKind::InvalidKey
                    )
                },
            )
            .await
            .map_err(|err| {
                let changed = err.kind() == kv::CreateErrorKind::AlreadyExists;
                (
                    changed,
                    Box::new(err) as Box<dyn std::error::Error + Send + Sync>,
                )
            }),
        };
        match stored {
            Ok(revision) => Ok(Some(revision)),
            Err((true, _)) => Ok(None),
            Err((false, source)) => Err(RecordError::Backend {
                operation: "store a task record",
                source,
            }),
        }
    }

    /// The changes of the records under the keys matching `pattern`, the
    /// last of each first. A named consumer, which an agent identity may
    /// create on its own keys (a key-value watch asks without a name); it
    /// goes away a few seconds after the watch is dropped.
    async fn watch(
        &self,
        pattern: &str,
    ) -> Result<jetstream::consumer::push::Ordered, async_nats::Error> {
        let (_, watch) = self
            .bucket
            .watch(
                pattern,
                jetstream::consumer::DeliverPolicy::LastPerSubject,
                false,
            )
            .await?;
        Ok(watch)
    }

    /// Waits until task `task_id`, as `caller` finds it (see
    /// [`Records::find`]), is completed or dead-lettered. A watch that
    /// fails or ends (its stream changed leader, the connection came back)
    /// is made again, and the record read again, until `timeout`.
    pub(crate) async fn wait_final(
        &self,
        caller: Option<&Name>,
        task_id: &TaskId,
        timeout: Duration,
    ) -> Result<TaskRecord, RecordError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let pattern = TaskKey::pattern(caller, task_id);
        let waited = tokio::time::timeout_at(deadline, async {
            loop {
                // Watch first, then read, so a change between the two is not missed.
                let mut watch = ride(
                    &self.bus,
                    task_id.as_str(),
                    || self.watch(&pattern),
                    |_| true,
                )
                .await
                .map_err(|source| RecordError::Backend {
                    operation: "watch a task record",
                    source,
                })?;
                if let Some((_, Some(record), _)) = self.find(caller, task_id).await?
                    && record.state.is_final()
                {
                    return Ok(record);
                }
                while let Some(Ok(message)) = watch.next().await {
                    if !is_put(message.headers.as_ref()) {
                        continue;
                    }
                    if let Some(record) = record_of(&message.payload, task_id)
                        && record.state.is_final()
                    {
                        return Ok(record);
                    }
                }
                tracing::debug!(task_id = %task_id, "a task record's watch ended; watching again");
                tokio::time::sleep(WATCH_AGAIN_AFTER).await;
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(RecordError::WaitTimedOut {
                task_id: task_id.clone(),
                after: timeout,
            })
        })
    }
}

/// `bytes` read as a record of task `task_id`; `None` when it is not one:
/// written by something else, it is not trusted.
fn record_of(bytes: &[u8], task_id: &TaskId) -> Option<TaskRecord> {
    serde_json::from_slice::<TaskRecord>(bytes)
        .ok()
        .filter(|record| record.task_id == *task_id)
}

/// How long a wait for a task's record pauses before it watches again.
const WATCH_AGAIN_AFTER: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_prints_as_it_serializes() {
        use TaskState::*;
        for state in [
            Pending,
            Queued,
            Running,
            InputRequired,
            Retrying,
            Completed,
            DeadLettered,
            Failed,
            Rejected,
            Timeout,
            Cancelled,
            FinishedWithoutRecord,
            Unknown,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(state.to_string(), state.as_str());
        }
    }
}
