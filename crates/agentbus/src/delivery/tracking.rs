//! Where a queued task stands, looked up by its id alone.
//!
//! JetStream cannot find a message by its `Nats-Msg-Id`, and many tasks
//! share a queue subject, so the id alone finds nothing in the tasks stream.
//! [`Bus::submit_recorded`] therefore records each submission in the results
//! bucket (`queued`, with the task's stream sequence), and
//! [`Bus::task_report`] reads that record, then the message at that sequence
//! and the delivered sequence of the queue's consumer: three single reads,
//! whatever the length of the queue.

use super::records::{RecordError, Records, TaskRecord, TaskState};
use super::{Queue, ResultRetention, StoreError, Submitted};
use crate::client::Bus;
use crate::protocol::TaskRequest;
use crate::subject::TASKS_STREAM;
use crate::subject::TaskControl;
use crate::task_id::{TaskId, TaskKey};
use crate::task_log::{LogEvent, find_last_event};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use bytes::Bytes;
use serde::Serialize;

/// What is known of a queued task: its state, told from its record, its
/// queue and the queue's consumer, and the record itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    /// The task id looked up.
    pub task_id: TaskId,
    /// Where it stands.
    pub state: TaskState,
    /// Its record, when there is one. Its own `state` is what was stored
    /// (`queued` for a task that runs or finished without a record).
    pub record: Option<TaskRecord>,
    /// The last event of its log, when it has one.
    pub last_event: Option<LogEvent>,
    /// The runtime instance holding it, when one said so.
    pub held_by: Option<String>,
    /// Where its record and log are kept, when either was found.
    pub key: Option<TaskKey>,
}

impl TaskReport {
    /// What this state cannot be told apart from, in one clause, for the
    /// states whose causes the server's information does not separate.
    pub fn note(&self) -> Option<&'static str> {
        match self.state {
            TaskState::Running => Some(
                "a task whose worker stopped mid-task, waiting to be delivered again after the ack wait, cannot be told apart from one that runs",
            ),
            TaskState::FinishedWithoutRecord => Some(
                "a fire-and-forget task that succeeded, a task taken by a worker that records no outcome (such as a plain NATS client) and a task its stream removed (max_age, purge) cannot be told apart",
            ),
            TaskState::Unknown => Some(
                "an id never sent, a task submitted without a record (`Bus::submit`, a plain NATS publish) that no attempt has ended yet, a task over request/reply that logged nothing, and a record or log past its max_age cannot be told apart",
            ),
            _ => None,
        }
    }
}

impl Bus {
    /// [`Bus::submit_with`], and records the submission in the results
    /// bucket, so that [`Bus::task_report`] (and `agentbus task`) can tell
    /// a queued task from a running one, from one that finished without a
    /// record, and from an unknown id. A worker's record written meanwhile
    /// is newer and stays.
    ///
    /// It costs a read and a write of the bucket on top of the task (two
    /// round trips and one stored message more): meant for a person or a
    /// tool that submits a task and may ask about it, not for a loop
    /// submitting thousands. A record that cannot be written after the task
    /// was stored is logged, not returned: the task is queued, and failing
    /// the call would invite a second submission.
    pub async fn submit_recorded(
        &self,
        queue: &Queue,
        request: &TaskRequest,
        retention: ResultRetention,
    ) -> Result<Submitted, StoreError> {
        let records = Records::open(self).await?;
        let key = TaskKey::new(queue, self.identity(), &request.task_id);
        // Read before the task is stored: a worker may record it at once.
        let revision = records.revision(&key).await?;
        let submitted = self.submit_with(queue, request, retention).await?;
        if !submitted.duplicate {
            let queued =
                TaskRecord::queued(&submitted.task_id, &submitted.subject, submitted.sequence);
            if let Err(err) = records.write_unless_changed(&key, &queued, revision).await {
                tracing::warn!(%err, task_id = %submitted.task_id, "the task is queued, but its submission could not be recorded");
            }
        }
        Ok(submitted)
    }

    /// Where task `task_id` stands, however it was sent. A queued task's
    /// stored state other than `queued` is reported as it is; a `queued`
    /// record is checked against the queue: the message gone means finished
    /// (its log may tell how), the queue's consumer past it means running
    /// (or waiting for input, as its log tells). A task without a record is
    /// told by its log's last event, else by the runtime holding it; with
    /// none of these it is [`TaskState::Unknown`]. [`TaskReport::note`]
    /// says what some states told this way cannot be told apart from.
    pub async fn task_report(&self, task_id: &TaskId) -> Result<TaskReport, RecordError> {
        self.task_report_asking(task_id, true).await
    }

    /// [`Bus::task_report`]; with `ask_runtimes` off, a task told by neither
    /// its record nor its log is not asked about (a wait of up to half a
    /// second when no runtime holds it).
    pub(crate) async fn task_report_asking(
        &self,
        task_id: &TaskId,
        ask_runtimes: bool,
    ) -> Result<TaskReport, RecordError> {
        let logged = match find_last_event(self, self.identity(), task_id).await {
            Ok(last) => last,
            Err(err) => {
                tracing::debug!(%err, "the task's log cannot be read");
                None
            }
        };
        self.task_report_logged(task_id, ask_runtimes, logged).await
    }

    /// [`Bus::task_report_asking`] for a caller that read the last event of
    /// the task's log already.
    pub(crate) async fn task_report_logged(
        &self,
        task_id: &TaskId,
        ask_runtimes: bool,
        logged: Option<(TaskKey, LogEvent)>,
    ) -> Result<TaskReport, RecordError> {
        let records = Records::open(self).await?;
        let found = records.find(self.identity(), task_id).await?;
        let (logged_key, last_event) = logged.unzip();
        let key = found.as_ref().map(|(key, ..)| key.clone()).or(logged_key);
        let mut record = found.and_then(|(_, record, _)| record);
        let logged = last_event
            .as_ref()
            .map(|event| TaskState::of_event(event.kind));
        let mut held_by = None;
        let mut state = match (&record, logged) {
            (Some(record), logged) => match (record.state, record.sequence) {
                // An agent identity may not read the queues: the runtime
                // holding the task tells it is running; else it waits.
                (TaskState::Queued, Some(_)) if self.identity().is_some() => match logged {
                    Some(state) if state.is_final() => state,
                    _ if !ask_runtimes => TaskState::Queued,
                    _ => match self.held(task_id, key.as_ref()).await {
                        Some((state, instance)) => {
                            held_by = Some(instance);
                            state
                        }
                        None => TaskState::Queued,
                    },
                },
                (TaskState::Queued, Some(sequence)) => {
                    match self.queue_state(task_id, &record.subject, sequence).await? {
                        TaskState::FinishedWithoutRecord => logged
                            .filter(|state| state.is_final())
                            .unwrap_or(TaskState::FinishedWithoutRecord),
                        TaskState::Running => match logged {
                            Some(TaskState::InputRequired) => TaskState::InputRequired,
                            _ => TaskState::Running,
                        },
                        state => state,
                    }
                }
                (TaskState::Queued | TaskState::Retrying, _)
                    if logged.is_some_and(TaskState::is_final) =>
                {
                    logged.unwrap_or(record.state)
                }
                // A worker records a task running when it takes it; its log
                // tells when the handler waits for an answer.
                (TaskState::Running, _) if logged == Some(TaskState::InputRequired) => {
                    TaskState::InputRequired
                }
                (state, _) => state,
            },
            (None, Some(state)) if state.is_final() => state,
            (None, logged) if !ask_runtimes => logged.unwrap_or(TaskState::Unknown),
            (None, _) => match self.held(task_id, key.as_ref()).await {
                Some((state, instance)) => {
                    held_by = Some(instance);
                    state
                }
                None => logged.unwrap_or(TaskState::Unknown),
            },
        };
        // A worker stores the outcome before it acknowledges the task: a
        // task found gone after its record was read as queued may have
        // finished in between, and the record read again tells.
        if state == TaskState::FinishedWithoutRecord
            && let Some((_, Some(again), _)) = records.find(self.identity(), task_id).await?
            && again.state.is_final()
        {
            state = again.state;
            record = Some(again);
        }
        Ok(TaskReport {
            task_id: task_id.clone(),
            state,
            record,
            last_event,
            held_by,
            key,
        })
    }

    /// The state of task `task_id` (kept under `key`, when known) and the
    /// instance holding it, as the runtime that holds it tells (`None` when
    /// none answers in time).
    async fn held(&self, task_id: &TaskId, key: Option<&TaskKey>) -> Option<(TaskState, String)> {
        match self
            .control(task_id, key, TaskControl::Status, Bytes::new())
            .await
        {
            Ok(Some(held)) => {
                let state = match held.state.as_deref() {
                    Some("input_required") => TaskState::InputRequired,
                    _ => TaskState::Running,
                };
                Some((state, held.instance))
            }
            _ => None,
        }
    }

    /// The tasks stream, and whether task `task_id` is still stored in it
    /// at `sequence`.
    pub(crate) async fn task_in_queue(
        &self,
        task_id: &TaskId,
        sequence: u64,
    ) -> Result<(Stream<()>, bool), RecordError> {
        let stream = self
            .jetstream()
            .get_stream_no_info(TASKS_STREAM)
            .await
            .map_err(|err| RecordError::queue("opening the stream", err))?;
        let stored = match stream.get_raw_message(sequence).await {
            // A stream made anew reuses sequences: the task must be the one.
            Ok(message) => TaskRequest::from_json(&message.payload)
                .is_ok_and(|request| request.task_id == *task_id),
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => false,
            Err(err) => return Err(RecordError::queue("reading the task", err)),
        };
        Ok((stream, stored))
    }

    /// Queued, running or gone: the task stored at `sequence` on `subject`.
    async fn queue_state(
        &self,
        task_id: &TaskId,
        subject: &str,
        sequence: u64,
    ) -> Result<TaskState, RecordError> {
        let (stream, stored) = self.task_in_queue(task_id, sequence).await?;
        if !stored {
            return Ok(TaskState::FinishedWithoutRecord);
        }
        let Some((queue, priority)) = Queue::from_subject(subject) else {
            return Ok(TaskState::Queued);
        };
        // A consumer delivers its subject's messages in stream order: one
        // that got past the task's sequence has handed it to a worker.
        match stream.consumer_info(queue.durable(priority)).await {
            Ok(info) if info.delivered.stream_sequence >= sequence => Ok(TaskState::Running),
            Ok(_) => Ok(TaskState::Queued),
            Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => Ok(TaskState::Queued),
            Err(err) => Err(RecordError::queue("reading the queue's consumer", err)),
        }
    }
}
