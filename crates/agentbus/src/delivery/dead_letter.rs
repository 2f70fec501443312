//! Dead letters: what failed for good, with its history, until replayed.

use super::records::Records;
use super::{AttemptError, DeliveryError, TaskRecord, TaskState, now_rfc3339};
use crate::client::Bus;
use crate::protocol::{TaskRequest, TaskResponse, TaskStatus};
use crate::subject::{self, DEAD_LETTER_STREAM, TASKS_STREAM};
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::{self, AckKind};
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

/// Copies `message` to the dead-letter stream with `letter`, then removes it
/// from its queue. When the copy fails, the message stays where it is.
pub(crate) async fn dead_letter_message(
    js: &jetstream::Context,
    message: &jetstream::Message,
    letter: &DeadLetter,
) -> Result<(), DeliveryError> {
    store_dead_letter(js, letter).await?;
    // Term on a work-queue stream deletes the message at once; on other
    // streams it stops redelivery to this consumer.
    message.ack_with(AckKind::Term).await.map_err(|err| {
        DeliveryError::jetstream("remove a dead-lettered message from its queue", err)
    })
}

async fn store_dead_letter(
    js: &jetstream::Context,
    letter: &DeadLetter,
) -> Result<(), DeliveryError> {
    let body = serde_json::to_vec(letter)
        .map_err(|err| DeliveryError::jetstream("encode a dead letter", err))?;
    let publish = Publish::build()
        .payload(body.into())
        // One dead letter per stored message, however often this is retried.
        .message_id(format!(
            "dlq-{}-{}",
            letter.subject, letter.original_sequence
        ));
    js.send_publish(subject::dead_letter(&letter.subject), publish)
        .await
        .map_err(|err| DeliveryError::jetstream("store a dead letter", err))?
        .await
        .map_err(|err| DeliveryError::jetstream("store a dead letter", err))?;
    Ok(())
}

/// Builds the dead letter of a task and records it as dead-lettered.
pub(crate) async fn dead_letter_task(
    js: &jetstream::Context,
    records: &Records,
    message: &jetstream::Message,
    mut record: TaskRecord,
    reason: String,
    final_status: TaskStatus,
) -> Result<(), DeliveryError> {
    let info = message
        .info()
        .map_err(|err| DeliveryError::jetstream("read a message's delivery info", err))?;
    let task_id = Some(record.task_id.clone()).filter(|id| !id.is_empty());
    let letter = DeadLetter {
        subject: message.subject.to_string(),
        task_id: task_id.clone(),
        body: body_value(&message.payload),
        attempts: record.attempts,
        errors: record.errors.clone(),
        reason: reason.clone(),
        dead_lettered_at: now_rfc3339(),
        original_sequence: info.stream_sequence,
    };
    dead_letter_message(js, message, &letter).await?;
    if task_id.is_none() {
        return Ok(()); // Nothing to record a result under.
    }
    record.state = TaskState::DeadLettered;
    record.response = Some(TaskResponse::error(
        record.task_id.clone(),
        final_status,
        reason,
    ));
    record.updated_at = now_rfc3339();
    records.put(&record).await
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
) -> Result<(), DeliveryError> {
    let js = bus.jetstream();
    let stream = js
        .get_stream(TASKS_STREAM)
        .await
        .map_err(|err| DeliveryError::jetstream("open the tasks stream", err))?;
    let Ok(message) = stream.get_raw_message(sequence).await else {
        return Ok(()); // Already gone: acknowledged, terminated or handled by another runtime.
    };
    let records = Records::open(js).await?;
    let task_id = TaskRequest::from_json(&message.payload)
        .ok()
        .map(|r| r.task_id);
    let mut record = match &task_id {
        Some(id) => records
            .get(id)
            .await?
            .unwrap_or_else(|| TaskRecord::new(id, &message.subject)),
        None => TaskRecord::new("", &message.subject),
    };
    let reason = format!(
        "delivered {deliveries} times without an outcome (the workers stopped or crashed mid-task)"
    );
    let letter = DeadLetter {
        subject: message.subject.to_string(),
        task_id: task_id.clone(),
        body: body_value(&message.payload),
        attempts: deliveries,
        errors: record.errors.clone(),
        reason: reason.clone(),
        dead_lettered_at: now_rfc3339(),
        original_sequence: sequence,
    };
    store_dead_letter(js, &letter).await?;
    stream
        .delete_message(sequence)
        .await
        .map_err(|err| DeliveryError::jetstream("remove an abandoned task", err))?;
    if let Some(task_id) = task_id {
        record.state = TaskState::DeadLettered;
        record.attempts = deliveries;
        record.response = Some(TaskResponse::error(task_id, TaskStatus::Failed, reason));
        record.updated_at = now_rfc3339();
        records.put(&record).await?;
    }
    Ok(())
}

/// The body as JSON when it is JSON, else as a string.
pub(crate) fn body_value(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

impl Bus {
    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterEntry>, DeliveryError> {
        let mut stream = self
            .jetstream()
            .get_stream(DEAD_LETTER_STREAM)
            .await
            .map_err(|err| {
                DeliveryError::jetstream("open the dead-letter stream (run `agentbus setup`)", err)
            })?;
        let state = stream
            .info()
            .await
            .map_err(|err| DeliveryError::jetstream("read the dead-letter stream", err))?
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

    /// Puts the dead-lettered task `task_id` back on its original queue and
    /// removes it from the dead letters. Returns how many were replayed: 0
    /// when there is nothing (left) to replay, so replaying twice is harmless.
    pub async fn replay_dead_letter(&self, task_id: &str) -> Result<usize, DeliveryError> {
        let entries = self.dead_letters().await?;
        let matching: Vec<_> = entries
            .into_iter()
            .filter(|e| e.letter.task_id.as_deref() == Some(task_id))
            .collect();
        self.replay(matching).await
    }

    /// Replays every dead letter. Returns how many were replayed.
    pub async fn replay_all_dead_letters(&self) -> Result<usize, DeliveryError> {
        let entries = self.dead_letters().await?;
        self.replay(entries).await
    }

    async fn replay(&self, entries: Vec<DeadLetterEntry>) -> Result<usize, DeliveryError> {
        let js = self.jetstream();
        let stream = js
            .get_stream(DEAD_LETTER_STREAM)
            .await
            .map_err(|err| DeliveryError::jetstream("open the dead-letter stream", err))?;
        let records = Records::open(js).await?;
        let mut replayed = 0;
        for entry in entries {
            let body = match &entry.letter.body {
                Value::String(text) => text.clone().into_bytes(),
                other => serde_json::to_vec(other).unwrap_or_default(),
            };
            // The id is tied to this dead letter: a replay interrupted before the
            // dead letter is removed and run again is stored once.
            let publish = Publish::build()
                .payload(body.into())
                .message_id(format!("replay-{}", entry.sequence));
            js.send_publish(entry.letter.subject.clone(), publish)
                .await
                .map_err(|err| {
                    DeliveryError::jetstream("put a dead letter back on its queue", err)
                })?
                .await
                .map_err(|err| {
                    DeliveryError::jetstream("put a dead letter back on its queue", err)
                })?;
            if let Some(task_id) = &entry.letter.task_id {
                records.delete(task_id).await?;
            }
            stream
                .delete_message(entry.sequence)
                .await
                .map_err(|err| DeliveryError::jetstream("remove a replayed dead letter", err))?;
            replayed += 1;
        }
        Ok(replayed)
    }
}
