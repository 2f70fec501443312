//! Cancelling a task and answering its question, from any client.

use super::writer::{LogError, append_alone, find_last_event};
use super::{EventType, LogEvent};
use crate::client::Bus;
use crate::delivery::{RecordError, Records, TaskRecord, TaskState};
use crate::protocol::{TaskResponse, TaskStatus};
use crate::subject::{self, TaskControl};
use crate::task_id::{TaskId, TaskKey};
use async_nats::RequestErrorKind;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// How long a control request waits for the runtime holding the task. Only
/// that runtime answers, so silence means no runtime holds it.
const CONTROL_WAIT: Duration = Duration::from_millis(500);

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// A runtime held the task (running it, or about to) and stops it: its
    /// handler's `cancelled()` resolves, and the task ends `cancelled`.
    Cancelling {
        /// The agent it was sent to.
        agent: String,
        /// The runtime instance holding it.
        instance: String,
    },
    /// It waited in its queue and was removed from it: it never runs.
    Dequeued,
    /// No runtime holds it now (it waits for a retry, or its runtime is
    /// gone): its log and record now say `cancelled`, and a worker that
    /// takes it later does not run it.
    Marked,
    /// It was over already; nothing changed.
    AlreadyOver(TaskState),
}

/// Why a cancel or an answer did not go through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Nothing is known of the task.
    #[error(
        "no task {task_id} is known: no runtime holds it and it has no record or log (a task queued with a plain `Bus::submit` is refused by the runtimes online now if one takes it)"
    )]
    UnknownTask {
        /// The task.
        task_id: TaskId,
    },
    /// The task is over.
    #[error("task {task_id} is over ({state}); it takes no answer")]
    Over {
        /// The task.
        task_id: TaskId,
        /// How it ended.
        state: TaskState,
    },
    /// No runtime holds the task waiting for an answer.
    #[error(
        "no runtime holds task {task_id} waiting for an answer; `agentbus task {task_id}` shows its state"
    )]
    NotAsking {
        /// The task.
        task_id: TaskId,
    },
    /// The runtime holding the task refused the answer.
    #[error("the runtime holding task {task_id} refused the answer: {reason}")]
    Refused {
        /// The task.
        task_id: TaskId,
        /// What it said.
        reason: String,
    },
    /// The task's log could not be read or written.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The task's record or queue could not be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The request could not be sent.
    #[error("cannot reach the runtimes about task {task_id}: {source}")]
    Request {
        /// The task.
        task_id: TaskId,
        /// Why.
        #[source]
        source: async_nats::RequestError,
    },
}

/// What went wrong with a cancel or an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlErrorKind {
    /// The task is unknown.
    UnknownTask,
    /// The task is over.
    Over,
    /// Nobody waits for an answer, or the answer was refused.
    NotAsking,
    /// The server failed a read, write or request.
    Backend,
}

impl ControlError {
    /// What went wrong.
    pub fn kind(&self) -> ControlErrorKind {
        match self {
            Self::UnknownTask { .. } => ControlErrorKind::UnknownTask,
            Self::Over { .. } => ControlErrorKind::Over,
            Self::NotAsking { .. } | Self::Refused { .. } => ControlErrorKind::NotAsking,
            Self::Log(_) | Self::Record(_) | Self::Request { .. } => ControlErrorKind::Backend,
        }
    }
}

/// What the runtime holding a task says of it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Held {
    pub(crate) state: Option<String>,
    #[serde(default)]
    pub(crate) agent: String,
    #[serde(default)]
    pub(crate) instance: String,
    pub(crate) error: Option<String>,
}

impl Bus {
    /// The last event of task `task_id`'s log; `None` when it has none (or
    /// its last message is not one of its events). With an agent identity,
    /// of the tasks this agent sent only.
    pub async fn last_task_event(&self, task_id: &TaskId) -> Result<Option<LogEvent>, LogError> {
        Ok(find_last_event(self, self.identity(), task_id)
            .await?
            .map(|(_, event)| event))
    }

    /// Sends a control request about `task_id` to the runtimes of its
    /// runner, which `key` names (to every runtime when it is unknown);
    /// `None` when no runtime holds the task (nobody answered in time).
    pub(crate) async fn control(
        &self,
        task_id: &TaskId,
        key: Option<&TaskKey>,
        control: TaskControl,
        body: Bytes,
    ) -> Result<Option<Held>, ControlError> {
        let asked = match key {
            Some(_) => None,
            None => self.asked_key(task_id),
        };
        let key = key.or(asked.as_ref());
        let request = self.client().request(
            subject::task_control(self.identity(), key, task_id, control),
            body,
        );
        match tokio::time::timeout(CONTROL_WAIT, request).await {
            Ok(Ok(reply)) => Ok(serde_json::from_slice(&reply.payload).ok()),
            Ok(Err(err))
                if matches!(
                    err.kind(),
                    RequestErrorKind::NoResponders | RequestErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Ok(Err(source)) => Err(ControlError::Request {
                task_id: task_id.clone(),
                source,
            }),
            Err(_) => Ok(None),
        }
    }

    /// Cancels task `task_id`, wherever it is: a runtime holding it stops
    /// it (its handler sees `cancelled()`; one that ignores it is dropped
    /// after the agent's grace period), a queued one is removed from its
    /// queue and never runs, and the task ends `cancelled` in its response,
    /// log and record. Idempotent: cancelling a task that is over says so
    /// and changes nothing.
    pub async fn cancel(&self, task_id: &TaskId) -> Result<CancelOutcome, ControlError> {
        let key = self.task_key(task_id).await?;
        if let Some(cancelling) = self.cancel_held(task_id, key.as_ref()).await? {
            return Ok(cancelling);
        }
        // Nobody answered the cancel: no runtime to ask again.
        let report = self.task_report_asking(task_id, false).await?;
        if report.state.is_final() {
            return Ok(CancelOutcome::AlreadyOver(report.state));
        }
        let cancelled = TaskResponse::error(
            task_id.as_str(),
            TaskStatus::Cancelled,
            "the task was cancelled before it ran",
        );
        // An agent identity may not read or change the queues: it marks the
        // task cancelled, and the worker that takes it refuses it.
        if let Some(record) = &report.record
            && report.state == TaskState::Queued
            && self.identity().is_none()
            && let Some(sequence) = record.sequence
            && self.dequeue(task_id, sequence).await?
        {
            if let Some(key) = &report.key {
                self.mark_cancelled(key, Some(record), &cancelled).await?;
            }
            return Ok(CancelOutcome::Dequeued);
        }
        // Taken by a worker meanwhile: it holds it now, or got the tombstone.
        let key = report.key.as_ref().or(key.as_ref());
        if let Some(cancelling) = self.cancel_held(task_id, key).await? {
            return Ok(cancelling);
        }
        let Some(key) = key else {
            return Err(ControlError::UnknownTask {
                task_id: task_id.clone(),
            });
        };
        self.mark_cancelled(key, report.record.as_ref(), &cancelled)
            .await?;
        Ok(CancelOutcome::Marked)
    }

    /// The key task `task_id` is kept under, as this connection finds it
    /// (see [`Bus::task_report`]): from the request/reply tasks its identity
    /// waits for, else the task's record, else its log; `None` when none
    /// has it (a request/reply task that reports nothing).
    async fn task_key(&self, task_id: &TaskId) -> Result<Option<TaskKey>, ControlError> {
        // A request/reply task this identity waits for has no record to
        // find: its key is known here.
        if let Some(key) = self.asked_key(task_id) {
            return Ok(Some(key));
        }
        let recorded = Records::open(self)
            .await?
            .find(self.identity(), task_id)
            .await?;
        if let Some((key, ..)) = recorded {
            return Ok(Some(key));
        }
        Ok(find_last_event(self, self.identity(), task_id)
            .await?
            .map(|(key, _)| key))
    }

    /// Asks the runtime holding the task to stop it; `None` when no runtime
    /// holds it (each one of its runner remembers the cancel all the same).
    async fn cancel_held(
        &self,
        task_id: &TaskId,
        key: Option<&TaskKey>,
    ) -> Result<Option<CancelOutcome>, ControlError> {
        let held = self
            .control(task_id, key, TaskControl::Cancel, Bytes::new())
            .await?;
        Ok(held.map(|held| CancelOutcome::Cancelling {
            agent: held.agent,
            instance: held.instance,
        }))
    }

    /// Removes the task stored at `sequence` from its queue; `false` when
    /// it is not there any more (a worker took it).
    async fn dequeue(&self, task_id: &TaskId, sequence: u64) -> Result<bool, ControlError> {
        let (stream, stored) = self.task_in_queue(task_id, sequence).await?;
        if !stored {
            return Ok(false);
        }
        match stream.delete_message(sequence).await {
            Ok(deleted) => Ok(deleted),
            // Acknowledged (taken and finished) in between.
            Err(_) => Ok(false),
        }
    }

    /// Writes `cancelled` into the log and record of the task keyed `key`.
    async fn mark_cancelled(
        &self,
        key: &TaskKey,
        record: Option<&TaskRecord>,
        response: &TaskResponse,
    ) -> Result<(), ControlError> {
        let data = serde_json::to_value(response).unwrap_or(Value::Null);
        match append_alone(self, key, "cancel", EventType::Cancelled, data).await {
            Ok(_) | Err(LogError::Ended { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        if let Some(record) = record {
            let mut record = record.clone();
            record.state = TaskState::Cancelled;
            record.response = Some(response.clone());
            record.updated_at = crate::clock::now();
            Records::open(self).await?.put(key, &record).await?;
        }
        Ok(())
    }

    /// Answers the question task `task_id`'s handler asked: the handler
    /// resumes with `answer`, logged first as `input_received`. The answer
    /// is stored beside the task's record, where the runtime holding it
    /// reads it, not sent on the control subject, which every runtime hears.
    pub async fn answer(&self, task_id: &TaskId, answer: &Value) -> Result<(), ControlError> {
        // A question is logged before it waits: no log, no question.
        let (key, last) = find_last_event(self, self.identity(), task_id)
            .await?
            .ok_or_else(|| ControlError::NotAsking {
                task_id: task_id.clone(),
            })?;
        if last.kind.is_final() {
            return Err(ControlError::Over {
                task_id: task_id.clone(),
                state: TaskState::of_event(last.kind),
            });
        }
        Records::open(self).await?.put_answer(&key, answer).await?;
        match self
            .control(task_id, Some(&key), TaskControl::Answer, Bytes::new())
            .await?
        {
            Some(Held {
                error: Some(reason),
                ..
            }) => Err(ControlError::Refused {
                task_id: task_id.clone(),
                reason,
            }),
            Some(_) => Ok(()),
            None => match find_last_event(self, self.identity(), task_id).await? {
                Some((_, last)) if last.kind.is_final() => Err(ControlError::Over {
                    task_id: task_id.clone(),
                    state: TaskState::of_event(last.kind),
                }),
                _ => Err(ControlError::NotAsking {
                    task_id: task_id.clone(),
                }),
            },
        }
    }
}
