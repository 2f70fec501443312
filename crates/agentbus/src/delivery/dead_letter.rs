//! Dead letters: what failed for good, with its history, until replayed.

use super::StoreError;
use super::publish::{FROM_HEADER, ring_queue, store};
use super::queue::queued_task_key;
use super::records::{AttemptError, RecordError, Records, TaskRecord, TaskState};
use crate::bucket::Bucket;
use crate::client::Bus;
use crate::clock;
use crate::jetstream_errors::is_missing_bucket;
use crate::protocol::{TaskRequest, TaskResponse, TaskStatus};
use crate::ride::{open_bucket, ride};
use crate::subject::{self, DEAD_LETTER_STREAM, PARKED_LETTERS_BUCKET, TASKS_STREAM};
use crate::task_id::TaskId;
use crate::telemetry::{self, TRACEPARENT, TRACESTATE};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

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
    /// The W3C trace context it was stored with, if any: a replay continues
    /// that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` it was stored with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// The agent its submitter named as the caller (`Agentbus-From`), if
    /// any: a replay stores it again, so the task's record and log stay
    /// where that caller reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl DeadLetter {
    /// The message as it was stored: the inverse of [`body_value`].
    fn original_body(&self) -> Vec<u8> {
        match &self.body {
            Value::String(text) => text.clone().into_bytes(),
            other => serde_json::to_vec(other).unwrap_or_default(),
        }
    }
}

/// A dead letter with its place in the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterEntry {
    /// Sequence in `agent-dlq`.
    pub sequence: u64,
    /// The dead letter.
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// Why it may not be replayed, when it may not: it does not read as a
    /// letter the bus wrote (a forged one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Why a letter stored on `stored_on` may not go back to its subject: the
/// bus stores a letter under `dlq.<its subject>`, that subject is a task
/// queue or a message channel, and a task's letter holds that task.
fn refusal(stored_on: &str, letter: &DeadLetter) -> Option<String> {
    if stored_on != subject::dead_letter(&letter.subject).as_str() {
        return Some(format!(
            "it was stored on {stored_on}, not on the dead-letter subject of {}",
            letter.subject
        ));
    }
    let queue = subject::parse_queue(&letter.subject).is_some();
    if !queue && subject::parse_channel(&letter.subject).is_none() {
        return Some(format!(
            "{} is neither a task queue nor a message channel",
            letter.subject
        ));
    }
    // A task that could not be read has no id: it goes back as it came.
    let Some(task_id) = &letter.task_id else {
        return None;
    };
    if !queue {
        return Some(format!("{} is not a task queue", letter.subject));
    }
    match TaskRequest::from_json(&letter.original_body()) {
        Ok(request) if request.task_id.as_str() == task_id => None,
        Ok(request) => Some(format!(
            "the letter names task {task_id} but holds task {}",
            request.task_id
        )),
        // A task that could not be read is dead-lettered as it came.
        Err(_) => None,
    }
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
    /// A letter does not read as one the bus wrote: it is not replayed.
    #[error(
        "dead letter {sequence} is not replayed: {reason}; remove it with `nats stream rmm agent-dlq {sequence}` if it is not yours"
    )]
    Refused {
        /// Its sequence in the dead-letter stream.
        sequence: u64,
        /// What is wrong with it.
        reason: String,
    },
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
    /// A letter the bus did not write was not replayed.
    Refused,
}

impl DeadLetterError {
    /// What went wrong.
    pub fn kind(&self) -> DeadLetterErrorKind {
        match self {
            Self::Stream { .. } => DeadLetterErrorKind::Stream,
            Self::Record(_) => DeadLetterErrorKind::Record,
            Self::Store(_) => DeadLetterErrorKind::Store,
            Self::Refused { .. } => DeadLetterErrorKind::Refused,
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

/// Where a dead letter landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landed {
    /// In the dead-letter stream.
    Stored,
    /// The dead-letter stream was full: in [`PARKED_LETTERS_BUCKET`], until
    /// [`Bus::move_parked_dead_letters`] finds room for it.
    Parked,
}

impl Landed {
    /// What a record of the task says after its reason, when it was parked.
    pub(crate) fn note(self) -> &'static str {
        match self {
            Self::Stored => "",
            Self::Parked => {
                " (the dead-letter stream is full: the letter waits in agent-dlq-parked, and `agentbus dlq list` shows it)"
            }
        }
    }
}

/// Stores `letter` in the dead-letter stream, once however often this is
/// retried (its message id is tied to the original message); parks it when
/// the stream is full, so the task can leave its queue without being lost.
pub(crate) async fn store_letter(bus: &Bus, letter: &DeadLetter) -> Result<Landed, StoreError> {
    let body = serde_json::to_vec(letter).expect("a dead letter always serializes");
    match store_in_stream(bus, letter, body.clone()).await {
        Ok(()) => Ok(Landed::Stored),
        Err(full @ StoreError::StreamFull { .. }) => {
            park(bus, letter, body).await.map_err(|err| {
                tracing::warn!(%err, "cannot park a dead letter");
                full
            })?;
            tracing::warn!(
                subject = %letter.subject,
                sequence = letter.original_sequence,
                "the dead-letter stream is full; the letter is parked until there is room"
            );
            Ok(Landed::Parked)
        }
        Err(err) => Err(err),
    }
}

async fn store_in_stream(bus: &Bus, letter: &DeadLetter, body: Vec<u8>) -> Result<(), StoreError> {
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

async fn park(bus: &Bus, letter: &DeadLetter, body: Vec<u8>) -> Result<(), async_nats::Error> {
    let parked = Bucket::open(bus, PARKED_LETTERS_BUCKET).await?;
    let key = subject::parked_letter(&letter.subject, letter.original_sequence);
    let body = bytes::Bytes::from(body);
    ride(
        bus,
        &key,
        || parked.put(&key, body.clone()),
        |err| err.kind() != async_nats::jetstream::kv::PutErrorKind::InvalidKey,
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
    // Parked letters are moved by connections that may read every queue's
    // letters: an agent identity may not.
    let mut sweep = tokio::time::interval(PARKED_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let advisory = tokio::select! {
            advisory = advisories.next() => match advisory {
                Some(advisory) => advisory,
                None => return,
            },
            _ = sweep.tick(), if bus.identity().is_none() => {
                move_parked(&bus).await;
                continue;
            }
        };
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

/// How often a runtime looks for parked dead letters to move.
const PARKED_SWEEP: Duration = Duration::from_secs(10);

/// Moves parked dead letters, when there are any (two stream lookups when
/// there are none).
async fn move_parked(bus: &Bus) {
    match bus.move_parked_dead_letters().await {
        Ok(0) => {}
        Ok(moved) => tracing::info!(moved, "parked dead letters moved to the dead-letter stream"),
        Err(err) => tracing::warn!(%err, "cannot move parked dead letters"),
    }
}

/// The letters in `parked`, by their key.
async fn parked_in(parked: &kv::Store) -> Result<Vec<(String, DeadLetter)>, DeadLetterError> {
    // Listing makes a consumer: not for an empty bucket (the usual case).
    let waiting = parked
        .status()
        .await
        .map_err(|err| DeadLetterError::stream("read the parked dead letters", err))?
        .values();
    if waiting == 0 {
        return Ok(Vec::new());
    }
    let mut keys = parked
        .keys()
        .await
        .map_err(|err| DeadLetterError::stream("list the parked dead letters", err))?;
    let mut letters = Vec::new();
    while let Some(key) = keys.next().await {
        let key =
            key.map_err(|err| DeadLetterError::stream("list the parked dead letters", err))?;
        let value = parked
            .get(&key)
            .await
            .map_err(|err| DeadLetterError::stream("read a parked dead letter", err))?;
        if let Some(letter) = value.and_then(|v| serde_json::from_slice::<DeadLetter>(&v).ok()) {
            letters.push((key, letter));
        }
    }
    Ok(letters)
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
    let from = message
        .headers
        .get(FROM_HEADER)
        .map(|from| from.as_str().to_owned());
    let key = task_id
        .as_ref()
        .and_then(|id| queued_task_key(&message.subject, from.as_deref(), id));
    let records = Records::open(bus).await?;
    let record = match &key {
        Some(key) => Some((
            key,
            records
                .get(key)
                .await?
                .unwrap_or_else(|| TaskRecord::new(key.id(), &message.subject)),
        )),
        None => None,
    };
    let reason = format!(
        "delivered {deliveries} times without an outcome (the workers stopped or crashed mid-task)"
    );
    let trace_header = |name| Some(message.headers.get(name)?.as_str().to_owned());
    let letter = DeadLetter {
        subject: message.subject.to_string(),
        task_id: task_id.as_ref().map(ToString::to_string),
        body: body_value(&message.payload),
        attempts: deliveries,
        errors: record
            .as_ref()
            .map(|(_, r)| r.errors.clone())
            .unwrap_or_default(),
        reason: reason.clone(),
        dead_lettered_at: clock::now(),
        original_sequence: sequence,
        traceparent: trace_header(TRACEPARENT),
        tracestate: trace_header(TRACESTATE),
        from,
    };
    let landed = store_letter(bus, &letter).await?;
    stream
        .delete_message(sequence)
        .await
        .map_err(|err| DeadLetterError::stream("remove an abandoned task", err))?;
    if let Some((key, mut record)) = record {
        record.state = TaskState::DeadLettered;
        record.attempts = deliveries;
        record.response = Some(TaskResponse::error(
            &record.task_id,
            TaskStatus::Failed,
            format!("{reason}{}", landed.note()),
        ));
        record.updated_at = clock::now();
        records.put(key, &record).await?;
    }
    Ok(())
}

/// The letter at `sequence` of the dead-letter stream, unless it is gone or
/// does not read as a letter.
async fn read_letter(stream: &Stream, sequence: u64) -> Option<DeadLetterEntry> {
    let message = stream.get_raw_message(sequence).await.ok()?;
    let letter = serde_json::from_slice::<DeadLetter>(&message.payload).ok()?;
    let refused = refusal(&message.subject, &letter);
    Some(DeadLetterEntry {
        sequence,
        letter,
        refused,
    })
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
        let (stream, state) = self.dead_letter_stream().await?;
        let mut entries = Vec::new();
        if state.messages == 0 {
            return Ok(entries);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            entries.extend(read_letter(&stream, sequence).await);
        }
        Ok(entries)
    }

    /// The newest `limit` dead letters, newest first, and how many messages
    /// the dead-letter stream holds: what a view of a long list shows
    /// without reading all of it.
    pub async fn recent_dead_letters(
        &self,
        limit: usize,
    ) -> Result<(u64, Vec<DeadLetterEntry>), DeadLetterError> {
        let (stream, state) = self.dead_letter_stream().await?;
        let mut entries = Vec::new();
        if state.messages == 0 {
            return Ok((0, entries));
        }
        let newest_first = (state.first_sequence..=state.last_sequence).rev();
        for sequence in newest_first {
            if entries.len() == limit {
                break;
            }
            entries.extend(read_letter(&stream, sequence).await);
        }
        Ok((state.messages, entries))
    }

    async fn dead_letter_stream(
        &self,
    ) -> Result<(Stream, async_nats::jetstream::stream::State), DeadLetterError> {
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
        Ok((stream, state))
    }

    /// The dead letters waiting in `agent-dlq-parked` because the
    /// dead-letter stream was full when they were written, by their key.
    pub async fn parked_dead_letters(&self) -> Result<Vec<(String, DeadLetter)>, DeadLetterError> {
        match self.parked_bucket().await? {
            Some(parked) => parked_in(&parked).await,
            None => Ok(Vec::new()),
        }
    }

    /// Moves the parked dead letters into the dead-letter stream while it
    /// has room; returns how many were moved. Each is stored once, however
    /// often this runs (its message id is the one it was first tried with).
    pub async fn move_parked_dead_letters(&self) -> Result<usize, DeadLetterError> {
        let Some(parked) = self.parked_bucket().await? else {
            return Ok(0);
        };
        let mut moved = 0;
        for (key, letter) in parked_in(&parked).await? {
            let body = serde_json::to_vec(&letter).expect("a dead letter always serializes");
            match store_in_stream(self, &letter, body).await {
                Ok(()) => {}
                Err(StoreError::StreamFull { .. }) => break,
                Err(err) => return Err(err.into()),
            }
            parked
                .purge(&key)
                .await
                .map_err(|err| DeadLetterError::stream("remove a moved dead letter", err))?;
            moved += 1;
        }
        Ok(moved)
    }

    /// The bucket of parked dead letters; `None` on a bus set up before it existed.
    async fn parked_bucket(&self) -> Result<Option<kv::Store>, DeadLetterError> {
        match open_bucket(self, PARKED_LETTERS_BUCKET).await {
            Ok(bucket) => Ok(Some(bucket)),
            Err(err) if is_missing_bucket(&err) => Ok(None),
            Err(err) => Err(DeadLetterError::stream("open the parked dead letters", err)),
        }
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
        self.replay(matching, true, |_, _| {}).await
    }

    /// Replays every dead letter. Returns how many were replayed.
    pub async fn replay_all_dead_letters(&self) -> Result<usize, DeadLetterError> {
        self.replay_all_dead_letters_with(|_, _| {}).await
    }

    /// [`Bus::replay_all_dead_letters`], telling `progress` after each
    /// letter how many of how many were looked at.
    pub async fn replay_all_dead_letters_with(
        &self,
        progress: impl FnMut(usize, usize),
    ) -> Result<usize, DeadLetterError> {
        let entries = self.dead_letters().await?;
        self.replay(entries, false, progress).await
    }

    /// Replays `entries`; a refused one is an error when `single`, else
    /// skipped. `progress` is told how many of how many were looked at.
    async fn replay(
        &self,
        entries: Vec<DeadLetterEntry>,
        single: bool,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<usize, DeadLetterError> {
        let js = self.jetstream();
        let stream = js
            .get_stream(DEAD_LETTER_STREAM)
            .await
            .map_err(|err| DeadLetterError::stream("open the dead-letter stream", err))?;
        let records = Records::open(self).await?;
        let mut replayed = 0;
        let total = entries.len();
        for (looked, entry) in entries.into_iter().enumerate() {
            progress(looked, total);
            if let Some(reason) = entry.refused {
                tracing::warn!(sequence = entry.sequence, %reason, "a dead letter is not replayed");
                if single {
                    return Err(DeadLetterError::Refused {
                        sequence: entry.sequence,
                        reason,
                    });
                }
                continue;
            }
            let body = entry.letter.original_body();
            let letter = &entry.letter;
            let key = letter
                .task_id
                .as_deref()
                .and_then(|id| TaskId::parse(id).ok())
                .and_then(|id| queued_task_key(&letter.subject, letter.from.as_deref(), &id));
            // Read before the task is back in its queue: a worker's record
            // written after that is newer than "queued" and must stay.
            let revision = match &key {
                Some(key) => records.revision(key).await?,
                None => None,
            };
            // The earlier run's log ends it: cleared here, with the
            // operator's rights, rather than by the worker, whose agent
            // identity may not purge.
            if let Some(key) = &key {
                crate::task_log::purge(self, key)
                    .await
                    .map_err(|err| DeadLetterError::stream("clear the replayed task's log", err))?;
            }
            // The id is tied to this dead letter: a replay interrupted before the
            // dead letter is removed and run again is stored once.
            let message_id = format!("replay-{}", entry.sequence);
            // In the trace the task was first stored in: the replay is one
            // more attempt of it.
            let trace = (letter.traceparent.as_deref(), letter.tracestate.as_deref());
            let passed = telemetry::passed_on(trace.0, trace.1);
            let mut headers: Vec<(&str, &str)> = passed
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            if let Some(from) = &letter.from {
                headers.push((FROM_HEADER, from));
            }
            let stored = store(self, &letter.subject, body, &message_id, &headers);
            let ack = telemetry::continue_trace(trace.0, trace.1, stored).await?;
            ring_queue(self, &letter.subject).await;
            if let Some(key) = &key {
                let queued = TaskRecord::queued(key.id(), &letter.subject, ack.sequence);
                records.write_unless_changed(key, &queued, revision).await?;
            }
            stream
                .delete_message(entry.sequence)
                .await
                .map_err(|err| DeadLetterError::stream("remove a replayed dead letter", err))?;
            replayed += 1;
        }
        progress(total, total);
        Ok(replayed)
    }
}
