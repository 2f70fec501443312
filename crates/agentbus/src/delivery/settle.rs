//! Settling durable work: the one place where a delivered task or message is
//! acknowledged, retried or given up, and where a queued task's outcome is
//! recorded. The runtime's workers and the MCP bridge's claims both settle
//! through here, so `agentbus task`, [`crate::Bus::wait_task`] and the dead
//! letters see no difference between them.

use super::dead_letter::{DeadLetter, Landed, body_value};
use super::publish::{FROM_HEADER, RESULT_HEADER, ResultRetention};
use super::queue::queued_task_key;
use super::records::{AttemptError, RecordError, Records, TaskRecord, TaskState};
use super::{DeliveryOptions, dead_letter};
use crate::client::Bus;
use crate::clock;
use crate::protocol::{TaskRequest, TaskResponse, TaskStatus};
use crate::task_id::{TaskId, TaskKey};
use crate::telemetry::{TRACEPARENT, TRACESTATE};
use async_nats::jetstream::{self, AckKind};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// One delivery of a stored task or message.
#[derive(Debug, Clone)]
pub struct Delivery {
    message: jetstream::Message,
    attempt: u32,
    stream_sequence: u64,
    /// When the stream stored it, in nanoseconds since the epoch (the
    /// server's clock).
    stored_at: i128,
    ack_wait: Duration,
    received: tokio::time::Instant,
}

impl Delivery {
    /// A message delivered by a consumer whose ack wait is `ack_wait`.
    pub(crate) fn new(message: jetstream::Message, ack_wait: Duration) -> Self {
        let (attempt, stream_sequence, stored_at) = message.info().map_or((1, 0, 0), |info| {
            (
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                info.stream_sequence,
                info.published.unix_timestamp_nanos(),
            )
        });
        Self {
            message,
            attempt,
            stream_sequence,
            stored_at,
            ack_wait,
            received: tokio::time::Instant::now(),
        }
    }

    /// Whether it has waited so long, since it was received or last kept
    /// alive, that JetStream may redeliver it before its work can tell that
    /// it is in progress.
    pub(crate) fn stale(&self) -> bool {
        self.received.elapsed() > self.ack_wait / 2
    }

    /// Whether its ack wait has passed since it was received or last kept
    /// alive: JetStream delivers it again (to this worker or another), so
    /// this delivery must not run.
    pub(crate) fn expired(&self) -> bool {
        self.received.elapsed() >= self.ack_wait
    }

    /// Tells JetStream that the delivery, waiting for a worker, is still
    /// taken: its ack wait starts again, and no delivery is counted.
    pub(crate) async fn keep_alive(&mut self) {
        self.progress().await;
        self.received = tokio::time::Instant::now();
    }

    /// 1 for the first delivery.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The subject the message was stored on.
    pub fn subject(&self) -> &str {
        &self.message.subject
    }

    /// Its body.
    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    /// The value of header `name`, if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }

    /// Its sequence in its stream.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    /// How long ago the stream stored it, by the server's clock against
    /// this machine's (zero when that is in the future).
    pub fn waited(&self) -> Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| i128::try_from(now.as_nanos()).unwrap_or(i128::MAX));
        u64::try_from(now - self.stored_at).map_or(Duration::ZERO, Duration::from_nanos)
    }

    /// Runs `work`, telling JetStream every third of the ack wait that the
    /// delivery is still in progress, so a long task is never redelivered to
    /// a second worker meanwhile.
    pub async fn in_progress<F: Future>(&self, work: F) -> F::Output {
        let period = DeliveryOptions::progress_period(self.ack_wait);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = ticker.tick() => self.progress().await,
            }
        }
    }

    /// Keeps the delivery in progress until `until`, for work held across
    /// calls (spawn it, and abort it once the work is settled); after that
    /// JetStream redelivers it when the ack wait passes.
    pub fn in_progress_until(
        &self,
        until: tokio::time::Instant,
    ) -> impl Future<Output = ()> + Send + 'static {
        let delivery = self.clone();
        async move {
            delivery.in_progress(tokio::time::sleep_until(until)).await;
        }
    }

    async fn progress(&self) {
        if let Err(err) = self.message.ack_with(AckKind::Progress).await {
            tracing::warn!(%err, subject = %self.message.subject, "cannot send a progress ack");
        }
    }

    async fn ack(&self) -> Result<(), SettleError> {
        self.message
            .ack()
            .await
            .map_err(|err| SettleError::ack("acknowledge", err))
    }

    /// Asks for a redelivery after `delay` (a retry).
    async fn retry_after(&self, delay: Duration) -> Result<(), SettleError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|err| SettleError::ack("schedule a retry of", err))
    }

    /// Gives the delivery back for another worker now, without counting it
    /// as a failure of the work (a claim released at shutdown). JetStream
    /// counts the redelivery as a delivery all the same, as it does after a
    /// worker crashed: the next attempt's number is one higher.
    pub async fn hand_back(&self) -> Result<(), SettleError> {
        self.message
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(|err| SettleError::ack("hand back", err))
    }

    /// Copies the delivery to the dead letters as `letter`, then removes it:
    /// when the copy fails, the message stays where it is.
    async fn dead_letter(&self, bus: &Bus, letter: &DeadLetter) -> Result<Landed, SettleError> {
        let landed = dead_letter::store_letter(bus, letter)
            .await
            .map_err(|source| SettleError::DeadLetter { source })?;
        // Term on a work-queue stream deletes the message at once; on other
        // streams it stops redelivery to this consumer.
        self.message.ack_with(AckKind::Term).await.map_err(|err| {
            SettleError::ack("remove a dead-lettered message from its queue:", err)
        })?;
        Ok(landed)
    }

    /// The dead letter of this delivery after `errors`, given up for `reason`.
    fn letter(
        &self,
        task_id: Option<String>,
        errors: Vec<AttemptError>,
        reason: String,
    ) -> DeadLetter {
        DeadLetter {
            subject: self.subject().to_owned(),
            task_id,
            body: body_value(self.payload()),
            attempts: self.attempt,
            errors,
            reason,
            dead_lettered_at: clock::now(),
            original_sequence: self.stream_sequence,
            traceparent: self.header(TRACEPARENT).map(str::to_owned),
            tracestate: self.header(TRACESTATE).map(str::to_owned),
            from: self.header(FROM_HEADER).map(str::to_owned),
        }
    }
}

/// Why a delivery could not be settled. Until it is, it stays unacknowledged
/// and JetStream delivers it again after the ack wait.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    /// The task's record could not be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The dead-letter stream did not take the letter (full, or missing).
    #[error("cannot store a dead letter: {source}")]
    DeadLetter {
        /// Why.
        #[source]
        source: super::StoreError,
    },
    /// An acknowledgement did not reach the server.
    #[error("cannot {action} a delivered message: {source}")]
    Ack {
        /// What was attempted.
        action: &'static str,
        /// Why it failed.
        #[source]
        source: async_nats::Error,
    },
}

/// What went wrong settling a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettleErrorKind {
    /// Reading or writing the task's record failed.
    Record,
    /// Storing the dead letter failed.
    DeadLetter,
    /// An acknowledgement failed.
    Ack,
}

impl SettleError {
    /// What went wrong.
    pub fn kind(&self) -> SettleErrorKind {
        match self {
            Self::Record(_) => SettleErrorKind::Record,
            Self::DeadLetter { .. } => SettleErrorKind::DeadLetter,
            Self::Ack { .. } => SettleErrorKind::Ack,
        }
    }

    fn ack(action: &'static str, source: async_nats::Error) -> Self {
        Self::Ack { action, source }
    }
}

/// How a delivery ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// Done: acknowledged (for a task, after its result was recorded).
    Done,
    /// Redelivered after this delay.
    Retrying(Duration),
    /// Moved to the dead letters.
    DeadLettered,
    /// Another attempt took the task over meanwhile (this one's delivery
    /// was given up by JetStream, say after a pause past its ack wait): this
    /// outcome was discarded, the record kept the other attempt's, and the
    /// delivery is left to it.
    Stale,
}

/// Settles the deliveries of one agent (or bridge): its records, options and
/// instance id. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Settler {
    inner: Arc<SettlerInner>,
}

#[derive(Debug)]
struct SettlerInner {
    bus: Bus,
    records: Option<Records>,
    options: DeliveryOptions,
    instance_id: Arc<str>,
}

impl Settler {
    /// A settler of messages only (no task records).
    pub(crate) fn for_messages(bus: &Bus, options: DeliveryOptions, instance_id: Arc<str>) -> Self {
        Self {
            inner: Arc::new(SettlerInner {
                bus: bus.clone(),
                records: None,
                options,
                instance_id,
            }),
        }
    }

    /// A settler of tasks and messages, with the task records bucket.
    pub(crate) async fn for_tasks(
        bus: &Bus,
        options: DeliveryOptions,
        instance_id: Arc<str>,
    ) -> Result<Self, RecordError> {
        Ok(Self {
            inner: Arc::new(SettlerInner {
                bus: bus.clone(),
                records: Some(Records::open(bus).await?),
                options,
                instance_id,
            }),
        })
    }

    fn records(&self) -> &Records {
        self.inner
            .records
            .as_ref()
            .expect("tasks are settled by a settler made for tasks")
    }

    fn attempt_error(&self, attempt: u32, error: String) -> AttemptError {
        AttemptError {
            attempt,
            error,
            at: clock::now(),
            instance_id: self.inner.instance_id.to_string(),
        }
    }

    /// Reads a delivered task. What cannot run is settled here and not
    /// handed out: a malformed task goes to the dead letters, and a
    /// redelivery of a task that an earlier attempt finished (its
    /// acknowledgement was lost) is acknowledged without running again.
    pub(crate) async fn open_task(&self, delivery: Delivery) -> Result<Opened, SettleError> {
        let request = match TaskRequest::from_json(delivery.payload()) {
            Ok(request) => request,
            Err((raw_id, err)) => {
                let letter = delivery.letter(
                    raw_id,
                    vec![self.attempt_error(delivery.attempt, err.to_string())],
                    format!("not retryable: {err}"),
                );
                delivery.dead_letter(&self.inner.bus, &letter).await?;
                return Ok(Opened::Malformed(err.to_string()));
            }
        };
        let from = delivery.header(FROM_HEADER);
        let Some(key) = queued_task_key(delivery.subject(), from, &request.task_id) else {
            // Only a client outside agentbus stores one there: no consumer
            // of the bus filters on such a subject.
            let err = format!("{} is not a work-queue subject", delivery.subject());
            let letter = delivery.letter(
                Some(request.task_id.to_string()),
                vec![self.attempt_error(delivery.attempt, err.clone())],
                format!("not retryable: {err}"),
            );
            delivery.dead_letter(&self.inner.bus, &letter).await?;
            return Ok(Opened::Malformed(err));
        };
        let retention = ResultRetention::from_header(delivery.header(RESULT_HEADER));
        // A task whose outcome is kept is claimed in its record, also at its
        // first delivery: JetStream counts deliveries anew when a server
        // lost them, and only the record tells that a run finished or began.
        // A fire-and-forget task has a record only once an attempt failed.
        let claim = if retention == ResultRetention::Keep || delivery.attempt > 1 {
            match self.claim(&key, &delivery).await? {
                Some(claim) => Some(claim),
                None => {
                    delivery.ack().await?;
                    return Ok(Opened::Settled);
                }
            }
        } else {
            None
        };
        let attempt = TaskAttempt {
            task_id: request.task_id.clone(),
            key,
            delivery,
            settler: self.clone(),
            claim,
            retention,
        };
        Ok(Opened::Run(attempt, request))
    }

    /// Claims the task keyed `key` for `delivery` in its record: `None` when an
    /// earlier attempt finished it (its acknowledgement was lost, or a
    /// server lost its deliveries), else the record written, which says
    /// `running` on this instance, and its revision. Written only over the
    /// record as read, so of two claims at once one reads again.
    async fn claim(
        &self,
        key: &TaskKey,
        delivery: &Delivery,
    ) -> Result<Option<Claim>, RecordError> {
        let task_id = key.id();
        let records = self.records();
        // A first delivery usually finds no record: it is claimed by
        // creating one, and read only when one exists after all.
        let mut read = delivery.attempt > 1;
        loop {
            let (previous, revision) = if read {
                match records.entry(key).await? {
                    Some((record, revision)) => (record, Some(revision)),
                    None => (None, None),
                }
            } else {
                read = true;
                (None, None)
            };
            if previous
                .as_ref()
                .is_some_and(|record| record.state.is_final())
            {
                return Ok(None);
            }
            let earlier = previous.is_some();
            let mut record =
                previous.unwrap_or_else(|| TaskRecord::new(task_id, delivery.subject()));
            record.attempts = (record.attempts + 1).max(delivery.attempt);
            record.state = TaskState::Running;
            record.instance_id = Some(self.inner.instance_id.to_string());
            record.updated_at = clock::now();
            if let Some(revision) = records.write_unless_changed(key, &record, revision).await? {
                return Ok(Some(Claim {
                    record,
                    revision,
                    earlier,
                }));
            }
        }
    }

    /// Settles a delivered message by its handler's outcome: acknowledged,
    /// retried with backoff while attempts remain, else dead-lettered.
    pub(crate) async fn settle_message(
        &self,
        delivery: &Delivery,
        outcome: Result<(), (String, bool)>,
    ) -> Result<Settled, SettleError> {
        let attempt = delivery.attempt;
        let error = match outcome {
            Ok(()) => {
                delivery.ack().await?;
                return Ok(Settled::Done);
            }
            Err((error, true)) if attempt < self.inner.options.max_deliver => {
                let delay = self.inner.options.backoff(attempt);
                tracing::info!(%error, attempt, ?delay, subject = delivery.subject(), "message handler failed; retrying");
                delivery.retry_after(delay).await?;
                return Ok(Settled::Retrying(delay));
            }
            Err((error, _)) => error,
        };
        let letter = delivery.letter(
            None,
            vec![self.attempt_error(attempt, error.clone())],
            error,
        );
        delivery.dead_letter(&self.inner.bus, &letter).await?;
        Ok(Settled::DeadLettered)
    }
}

/// A delivered task, read: run it, or it was settled already.
#[derive(Debug)]
// Made once per delivery and taken apart at once: boxing would cost an
// allocation per task for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Opened {
    /// Run the request, then settle the attempt.
    Run(TaskAttempt, TaskRequest),
    /// Nothing to run: the delivery was settled as it was read.
    Settled,
    /// Not a task: it went to the dead letters; why.
    Malformed(String),
}

/// One attempt at a queued task, and the only way to settle it.
#[derive(Debug)]
pub struct TaskAttempt {
    task_id: TaskId,
    /// Where the task's record and log are kept.
    key: TaskKey,
    delivery: Delivery,
    settler: Settler,
    /// This attempt's claim in the task's record; `None` for the first
    /// attempt at a fire-and-forget task, which writes no record unless it fails.
    claim: Option<Claim>,
    retention: ResultRetention,
}

/// A task's record as an attempt claimed it.
#[derive(Debug)]
struct Claim {
    record: TaskRecord,
    /// The revision the claim was stored at: the outcome is stored only
    /// over it, so the attempt that claimed the task last is the one heard.
    revision: u64,
    /// Whether the claim was written over a record an earlier attempt or
    /// the submission left.
    earlier: bool,
}

impl TaskAttempt {
    /// The task.
    pub fn task_id(&self) -> &TaskId {
        &self.task_id
    }

    /// Where the task's record and log are kept.
    pub(crate) fn key(&self) -> &TaskKey {
        &self.key
    }

    /// The delivery behind this attempt.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// 1 for the first attempt. Counted in the task's record when it has
    /// one (a rerun after a server lost its deliveries counts on), else by
    /// JetStream's deliveries.
    pub fn attempt(&self) -> u32 {
        self.claim
            .as_ref()
            .map_or(self.delivery.attempt, |claim| claim.record.attempts)
    }

    /// Settles the attempt by its response: completed, else failed
    /// ([`TaskAttempt::fail`]).
    pub async fn settle(
        &self,
        response: &TaskResponse,
        retryable: bool,
    ) -> Result<Settled, SettleError> {
        if response.status == TaskStatus::Completed {
            self.complete(response).await
        } else {
            self.fail(response, retryable).await
        }
    }

    /// Records `response` as the task's outcome, then acknowledges the task.
    pub async fn complete(&self, response: &TaskResponse) -> Result<Settled, SettleError> {
        // Fire-and-forget tasks leave a record only when an earlier attempt
        // left one (which must not stay "retrying").
        if self.retention == ResultRetention::Keep || self.claim.as_ref().is_some_and(|c| c.earlier)
        {
            let mut record = self.record();
            record.state = TaskState::Completed;
            record.response = Some(response.clone());
            // The result is stored before the ack: a crash in between reruns
            // nothing, because the redelivery finds the completed record.
            if !self.write(&record).await? {
                return Ok(Settled::Stale);
            }
        }
        self.delivery.ack().await?;
        Ok(Settled::Done)
    }

    /// The task was stopped for good (cancelled, or its deadline passed):
    /// records `response` (status `cancelled` or `timeout`), then
    /// acknowledges the task. Not a failure: it is neither retried nor
    /// dead-lettered.
    pub async fn end(&self, response: &TaskResponse) -> Result<Settled, SettleError> {
        let mut record = self.record();
        record.state = match response.status {
            TaskStatus::Timeout => TaskState::Timeout,
            _ => TaskState::Cancelled,
        };
        record.response = Some(response.clone());
        if !self.write(&record).await? {
            return Ok(Settled::Stale);
        }
        self.delivery.ack().await?;
        Ok(Settled::Done)
    }

    /// The attempt failed with `response`: retried with backoff when
    /// `retryable` and attempts remain, else given up.
    pub async fn fail(
        &self,
        response: &TaskResponse,
        retryable: bool,
    ) -> Result<Settled, SettleError> {
        let error = response
            .error
            .clone()
            .unwrap_or_else(|| response.status.to_string());
        let options = &self.settler.inner.options;
        let attempt = self.attempt();
        if !retryable || attempt >= options.max_deliver {
            return self.give_up(&error, response.status).await;
        }
        let mut record = self.record();
        record
            .errors
            .push(self.settler.attempt_error(attempt, error));
        record.state = TaskState::Retrying;
        if !self.write(&record).await? {
            return Ok(Settled::Stale);
        }
        let delay = options.backoff(attempt);
        self.delivery.retry_after(delay).await?;
        Ok(Settled::Retrying(delay))
    }

    /// Gives up on the task for good: copies it to the dead letters with its
    /// error history, removes it from its queue, and records it as
    /// dead-lettered with `status` (replayable with `agentbus dlq replay`).
    pub async fn give_up(&self, error: &str, status: TaskStatus) -> Result<Settled, SettleError> {
        let attempt = self.attempt();
        let mut record = self.record();
        record
            .errors
            .push(self.settler.attempt_error(attempt, error.to_owned()));
        let exhausted = attempt >= self.settler.inner.options.max_deliver;
        let reason = if status != TaskStatus::Rejected && exhausted {
            format!("failed {attempt} times, the last with: {error}")
        } else {
            format!("not retryable: {error}")
        };
        // A stale attempt must not move the task another attempt holds.
        if let Some(claim) = &self.claim
            && self.settler.records().revision(&self.key).await? != Some(claim.revision)
        {
            return Ok(Settled::Stale);
        }
        let letter = self.delivery.letter(
            Some(self.task_id.to_string()),
            record.errors.clone(),
            reason.clone(),
        );
        let landed = self
            .delivery
            .dead_letter(&self.settler.inner.bus, &letter)
            .await?;
        record.state = TaskState::DeadLettered;
        record.response = Some(TaskResponse::error(
            &self.task_id,
            status,
            format!("{reason}{}", landed.note()),
        ));
        self.write(&record).await?;
        Ok(Settled::DeadLettered)
    }

    /// This attempt's record: its claim, or (a first attempt at a
    /// fire-and-forget task) a new one.
    fn record(&self) -> TaskRecord {
        let mut record = match &self.claim {
            Some(claim) => claim.record.clone(),
            None => {
                let mut record = TaskRecord::new(&self.task_id, self.delivery.subject());
                record.attempts = self.attempt();
                record.instance_id = Some(self.settler.inner.instance_id.to_string());
                record
            }
        };
        record.updated_at = clock::now();
        record
    }

    /// Stores `record` as this attempt's outcome: over its claim only, so
    /// `false` when another attempt claimed the task since (the outcome is
    /// discarded and counted by the caller).
    async fn write(&self, record: &TaskRecord) -> Result<bool, RecordError> {
        match &self.claim {
            Some(claim) => {
                let written = self
                    .settler
                    .records()
                    .write_unless_changed(&self.key, record, Some(claim.revision))
                    .await?;
                if written.is_none() {
                    tracing::warn!(
                        task_id = %self.task_id,
                        attempt = claim.record.attempts,
                        "another attempt took this task over; this attempt's outcome is discarded"
                    );
                }
                Ok(written.is_some())
            }
            None => {
                self.settler.records().put(&self.key, record).await?;
                Ok(true)
            }
        }
    }
}
