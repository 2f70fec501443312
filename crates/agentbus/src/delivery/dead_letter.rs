//! Dead letters: what failed for good, with its history, until replayed.

use super::StoreError;
use super::publish::store;
use super::records::{AttemptError, RecordError, Records, TaskRecord, TaskState};
use crate::client::Bus;
use crate::clock;
use crate::protocol::{TaskRequest, TaskResponse, TaskStatus};
use crate::subject::{self, DEAD_LETTER_STREAM, TASKS_STREAM};
use crate::task_id::TaskId;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A task or message that failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The subject it was stored on, and goes back to on replay.
    pub subject: String,
    /// The task id, for tasks.
    pub task_id: Option<String>,
    /// The original body: the TaskRequest for tasks (JSON when it was JSON, else a string).
    pub body: Value,
    /// Deliveries made.
    pub attempts: u32,
    /// Each failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// Why it was given up.
    pub reason: String,
    /// When, RFC 3339.
    pub dead_lettered_at: String,
    /// Its sequence in the original stream.
    pub original_sequence: u64,
}

/// A dead letter with its place in the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterEntry {
    /// Sequence in `agent-dlq`.
    pub sequence: u64,
    /// The dead letter.
    #[serde(flatten)]
    pub letter: DeadLetter,
}

/// Why dead letters could not be listed or replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// The dead-letter or tasks stream could not be read or changed.
    #[error("cannot {operation}: {source}; run `agentbus setup` if the streams are missing")]
    Stream {
        /// What was attempted.
        operation: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A task's record could not be cleared.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A replayed letter could not be put back on its queue.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What went wrong with the dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterErrorKind {
    /// Reading or changing a stream failed.
    Stream,
    /// Clearing a task record failed.
    Record,
    /// Putting a letter back failed.
    Store,
}

impl DeadLetterError {
    /// What went wrong.
    pub fn kind(&self) -> DeadLetterErrorKind {
        match self {
            Self::Stream { .. } => DeadLetterErrorKind::Stream,
            Self::Record(_) => DeadLetterErrorKind::Record,
            Self::Store(_) => DeadLetterErrorKind::Store,
        }
    }

    fn stream(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Stream {
            operation,
            source: Box::new(source),
        }
    }
}

/// Stores `letter` in the dead-letter stream, once however often this is
/// retried (its message id is tied to the original message).
pub(crate) async fn store_letter(bus: &Bus, letter: &DeadLetter) -> Result<(), StoreError> {
    let body = serde_json::to_vec(letter).expect("a dead letter always serializes");
    let message_id = format!("dlq-{}-{}", letter.subject, letter.original_sequence);
    store(
        bus,
        &subject::dead_letter(&letter.subject),
        body,
        &message_id,
        &[],
    )
    .await?;
    Ok(())
}

/// Watches for tasks that reached `max_deliver` without an outcome (their
/// workers died) and dead-letters them: JetStream leaves such messages in a
/// work-queue stream, undelivered, forever.
pub(crate) async fn watch_max_deliveries(bus: Bus) {
    let subscription = bus
        .client()
        .queue_subscribe(
            subject::MAX_DELIVERIES_ADVISORY,
            "agentbus-dead-letters".to_owned(),
        )
        .await;
    let mut advisories = match subscription {
        Ok(subscription) => subscription,
        Err(err) => {
            tracing::warn!(%err, "cannot watch max-deliveries advisories");
            return;
        }
    };
    while let Some(advisory) = advisories.next().await {
        #[derive(Deserialize)]
        struct Advisory {
            stream_seq: u64,
            deliveries: u32,
        }
        let Ok(advisory) = serde_json::from_slice::<Advisory>(&advisory.payload) else {
            continue;
        };
        if let Err(err) =
            dead_letter_abandoned(&bus, advisory.stream_seq, advisory.deliveries).await
        {
            tracing::warn!(%err, sequence = advisory.stream_seq, "cannot dead-letter an abandoned task");
        }
    }
}

async fn dead_letter_abandoned(
    bus: &Bus,
    sequence: u64,
    deliveries: u32,
) -> Result<(), DeadLetterError> {
    let js = bus.jetstream();
    let stream = js
        .get_stream(TASKS_STREAM)
        .await
        .map_err(|err| DeadLetterError::stream("open the tasks stream", err))?;
    let Ok(message) = stream.get_raw_message(sequence).await else {
        return Ok(()); // Already gone: acknowledged, terminated or handled by another runtime.
    };
    let task_id = TaskRequest::from_json(&message.payload)
        .ok()
        .map(|r| r.task_id);
    let records = Records::open(bus).await?;
    let record = match &task_id {
        Some(id) => Some(
            records
                .get(id)
                .await?
                .unwrap_or_else(|| TaskRecord::new(id, &message.subject)),
        ),
        None => None,
    };
    let reason = format!(
        "delivered {deliveries} times without an outcome (the workers stopped or crashed mid-task)"
    );
    let letter = DeadLetter {
        subject: message.subject.to_string(),
        task_id: task_id.as_ref().map(ToString::to_string),
        body: body_value(&message.payload),
        attempts: deliveries,
        errors: record
            .as_ref()
            .map(|r| r.errors.clone())
            .unwrap_or_default(),
        reason: reason.clone(),
        dead_lettered_at: clock::now(),
        original_sequence: sequence,
    };
    store_letter(bus, &letter).await?;
    stream
        .delete_message(sequence)
        .await
        .map_err(|err| DeadLetterError::stream("remove an abandoned task", err))?;
    if let Some(mut record) = record {
        record.state = TaskState::DeadLettered;
        record.attempts = deliveries;
        record.response = Some(TaskResponse::error(
            &record.task_id,
            TaskStatus::Failed,
            reason,
        ));
        record.updated_at = clock::now();
        records.put(&record).await?;
    }
    Ok(())
}

/// A stored message's body as JSON when it is JSON, else as a string (how
/// dead letters and delivered messages show it).
pub fn body_value(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

impl Bus {
    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterEntry>, DeadLetterError> {
        let mut stream = self
            .jetstream()
            .get_stream(DEAD_LETTER_STREAM)
            .await
            .map_err(|err| DeadLetterError::stream("open the dead-letter stream", err))?;
        let state = stream
            .info()
            .await
            .map_err(|err| DeadLetterError::stream("read the dead-letter stream", err))?
            .state
            .clone();
        let mut entries = Vec::new();
        if state.messages == 0 {
            return Ok(entries);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            if let Ok(letter) = serde_json::from_slice::<DeadLetter>(&message.payload) {
                entries.push(DeadLetterEntry { sequence, letter });
            }
        }
        Ok(entries)
    }

    /// Puts the dead-lettered task `task_id` back on its original queue,
    /// records it as queued again, and removes it from the dead letters.
    /// Returns how many were replayed: 0 when there is nothing (left) to
    /// replay, so replaying twice puts nothing back twice.
    pub async fn replay_dead_letter(&self, task_id: &str) -> Result<usize, DeadLetterError> {
        let entries = self.dead_letters().await?;
        let matching: Vec<_> = entries
            .into_iter()
            .filter(|e| e.letter.task_id.as_deref() == Some(task_id))
            .collect();
        self.replay(matching).await
    }

    /// Replays every dead letter. Returns how many were replayed.
    pub async fn replay_all_dead_letters(&self) -> Result<usize, DeadLetterError> {
        let entries = self.dead_letters().await?;
        self.replay(entries).await
    }

    async fn replay(&self, entries: Vec<DeadLetterEntry>) -> Result<usize, DeadLetterError> {
        let js = self.jetstream();
        let stream = js
            .get_stream(DEAD_LETTER_STREAM)
            .await
            .map_err(|err| DeadLetterError::stream("open the dead-letter stream", err))?;
        let records = Records::open(self).await?;
        let mut replayed = 0;
        for entry in entries {
            let body = match &entry.letter.body {
                Value::String(text) => text.clone().into_bytes(),
                other => serde_json::to_vec(other).unwrap_or_default(),
            };
            let task_id = entry
                .letter
                .task_id
                .as_deref()
                .and_then(|id| TaskId::parse(id).ok());
            // Read before the task is back in its queue: a worker's record
            // written after that is newer than "queued" and must stay.
            let revision = match &task_id {
                Some(task_id) => records.revision(task_id.as_str()).await?,
                None => None,
            };
            // The earlier run's log ends it: cleared here, with the
            // operator's rights, rather than by the worker, whose agent
            // identity may not purge.
            if let Some(task_id) = &task_id {
                crate::task_log::purge(self, task_id)
                    .await
                    .map_err(|err| DeadLetterError::stream("clear the replayed task's log", err))?;
            }
            // The id is tied to this dead letter: a replay interrupted before the
            // dead letter is removed and run again is stored once.
            let message_id = format!("replay-{}", entry.sequence);
            let ack = store(self, &entry.letter.subject, body, &message_id, &[]).await?;
            if let Some(task_id) = &task_id {
                let queued = TaskRecord::queued(task_id, &entry.letter.subject, ack.sequence);
                records.write_unless_changed(&queued, revision).await?;
            }
            stream
                .delete_message(entry.sequence)
                .await
                .map_err(|err| DeadLetterError::stream("remove a replayed dead letter", err))?;
            replayed += 1;
        }
        Ok(replayed)
    }
}
