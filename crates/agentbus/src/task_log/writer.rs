//! Writing a task's log: numbering its events and storing them in order.
//!
//! A log has one writer at a time: the runtime that holds the task, or, for
//! a task no runtime holds (queued, or its runtime gone), the client that
//! submits or cancels it. A writer that takes over a log reads its last
//! event and stores its first one on condition that nothing was stored
//! after it (`Nats-Expected-Last-Subject-Sequence`), so two writers can never
//! both number an event `n`. The writer then publishes without waiting for
//! each acknowledgement, in order on one connection, and collects the
//! acknowledgements before the task's final state is answered.
//!
//! Stores ride out an election or a reconnect (see `ride`): the conditional
//! first store is tried again, and recognised by reading the log back when
//! an earlier try was stored but its answer lost; events whose
//! acknowledgement failed are sent again in order, after the last event the
//! log holds, before any later one (an event unanswered for half a second
//! holds the next one back, so that no later event reaches a new leader
//! first).

use super::{EventType, LogEvent};
use crate::client::Bus;
use crate::clock;
use crate::jetstream_errors::publish_passes;
use crate::name::Name;
use crate::ride::ride;
use crate::stream_read::last_on_subject;
use crate::subject::{self, Subject, TASK_EVENTS_STREAM};
use crate::task_id::{TaskId, TaskKey};
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{LastRawMessageError, LastRawMessageErrorKind};
use bytes::Bytes;
use futures::FutureExt;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Publishes awaited at most, before the writer waits for their acknowledgements.
const MAX_UNACKED: usize = 64;

/// How long the acknowledgements of a log's events are waited for.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an event may go unacknowledged before the next waits for it: a
/// stream answers in milliseconds, and an election takes seconds.
const STALL: Duration = Duration::from_millis(500);

/// Attempts at a conditional write while other writers keep adding events.
const MAX_TRIES: usize = 3;

/// Why an event could not be added to a task's log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// What the handler works on is a durable message, not a task: it has no log.
    #[error("a message handler has no task log; only a task's handler can report on it")]
    NotATask,
    /// The event does not fit in one message.
    #[error(
        "the {kind} event is {size} bytes, more than the server's max_payload of {max} bytes; send smaller chunks"
    )]
    TooLarge {
        /// Which event.
        kind: EventType,
        /// Its size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// The log already holds a final state.
    #[error("task {task_id} is over ({state}); its log takes no more events")]
    Ended {
        /// The task.
        task_id: TaskId,
        /// Its final state.
        state: EventType,
    },
    /// Another writer stored events at the same time, more than once in a row.
    #[error("task {task_id}'s log kept changing while an event was added; try again")]
    Contended {
        /// The task.
        task_id: TaskId,
    },
    /// The stream did not take or give the event.
    #[error(
        "cannot {operation} the log of task {task_id} in stream {TASK_EVENTS_STREAM}: {source}; run `agentbus setup` if the stream is missing"
    )]
    Stream {
        /// The task.
        task_id: TaskId,
        /// What was attempted.
        operation: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl LogError {
    fn stream(
        task_id: &TaskId,
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Stream {
            task_id: task_id.clone(),
            operation,
            source: Box::new(source),
        }
    }
}

/// [`last_message`], asked again through an election or a reconnect up to
/// the bus's store deadline, unless the stream is missing.
async fn read_last(bus: &Bus, key: &TaskKey) -> Result<Option<(Option<LogEvent>, u64)>, LogError> {
    ride(
        bus,
        "read a task's log",
        || last_message(bus, key),
        |err| {
            let LogError::Stream { source, .. } = err else {
                return false;
            };
            !matches!(
                source.downcast_ref::<LastRawMessageError>().map(LastRawMessageError::kind),
                Some(LastRawMessageErrorKind::JetStream(refusal))
                    if refusal.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            )
        },
    )
    .await
}

/// The last message of the log of the task keyed `key`: the event it holds
/// (`None` when it is not an event of this task: something else wrote on
/// the subject, and it is not trusted) and its stream sequence. `None` when
/// the log is empty (never written, purged, or aged out).
pub(crate) async fn last_message(
    bus: &Bus,
    key: &TaskKey,
) -> Result<Option<(Option<LogEvent>, u64)>, LogError> {
    let log = subject::task_events(key);
    Ok(last_on(bus, log.as_str(), key.id())
        .await?
        .map(|(_, event, sequence)| (event, sequence)))
}

/// The last message on the log subjects matching `subject` (a task's own,
/// or a pattern that finds it under any runner): its subject, the event it
/// holds if it is one of task `task_id`, and its stream sequence.
async fn last_on(
    bus: &Bus,
    subject: &str,
    task_id: &TaskId,
) -> Result<Option<(String, Option<LogEvent>, u64)>, LogError> {
    let stream = bus
        .jetstream()
        .get_stream_no_info(TASK_EVENTS_STREAM)
        .await
        .map_err(|err| LogError::stream(task_id, "open", err))?;
    let message = last_on_subject(&stream, subject)
        .await
        .map_err(|source| LogError::Stream {
            task_id: task_id.clone(),
            operation: "read",
            source,
        })?;
    Ok(message.map(|message| {
        let event = serde_json::from_slice::<LogEvent>(&message.payload)
            .ok()
            .filter(|event| event.task_id == *task_id);
        (message.subject.to_string(), event, message.sequence)
    }))
}

/// The last event of task `task_id`'s log as `caller` finds it, whoever
/// runs the task (any caller's with `None`), with the task's key.
pub(crate) async fn find_last_event(
    bus: &Bus,
    caller: Option<&Name>,
    task_id: &TaskId,
) -> Result<Option<(TaskKey, LogEvent)>, LogError> {
    let pattern = subject::task_events_matching(&TaskKey::pattern(caller, task_id));
    Ok(last_on(bus, &pattern, task_id)
        .await?
        .and_then(|(subject, event, _)| Some((subject::parse_task_events(&subject)?, event?))))
}

/// Removes every event of the log of the task keyed `key`: what an earlier
/// run of the same id left (a replayed dead letter, an id sent again after
/// it ended).
pub(crate) async fn purge(bus: &Bus, key: &TaskKey) -> Result<(), LogError> {
    let task_id = key.id();
    let stream = bus
        .jetstream()
        .get_stream_no_info(TASK_EVENTS_STREAM)
        .await
        .map_err(|err| LogError::stream(task_id, "open", err))?;
    stream
        .purge()
        .filter(subject::task_events(key).to_string())
        .await
        .map_err(|err| LogError::stream(task_id, "clear an earlier run from", err))?;
    Ok(())
}

/// Adds one event to a log no runtime is writing now (a `cancelled` for a
/// task nobody holds), after its last event. Refused when the log is over
/// already.
pub(crate) async fn append_alone(
    bus: &Bus,
    key: &TaskKey,
    instance: &str,
    kind: EventType,
    data: Value,
) -> Result<(), LogError> {
    LogWriter::new(key.clone(), instance.into())
        .write(bus, kind, data, Earlier::Ended)
        .await
}

/// Begins a followed task's log with `accepted` once it is queued, unless a
/// worker took it and began the log first.
pub(crate) async fn accept_queued(
    bus: &Bus,
    key: &TaskKey,
    instance: &str,
    data: Value,
) -> Result<(), LogError> {
    let event = event(key.id(), 1, EventType::Accepted, instance, data);
    match store(bus, key, &event, Some(0)).await {
        Ok(()) | Err(StoreFailure::Moved) => Ok(()),
        Err(StoreFailure::Error(err)) => Err(err),
    }
}

fn event(task_id: &TaskId, seq: u64, kind: EventType, instance: &str, data: Value) -> LogEvent {
    LogEvent {
        task_id: task_id.clone(),
        seq,
        kind,
        time: clock::now(),
        instance: instance.to_owned(),
        data,
    }
}

enum StoreFailure {
    /// Something was stored after the event expected to be last.
    Moved,
    Error(LogError),
}

/// Stores `event` and waits for its acknowledgement; with `expect`, only if
/// the log's last message is still at that stream sequence (0: none).
async fn store(
    bus: &Bus,
    key: &TaskKey,
    event: &LogEvent,
    expect: Option<u64>,
) -> Result<(), StoreFailure> {
    let body = encode(bus, event).map_err(StoreFailure::Error)?;
    let subject = subject::task_events(key);
    let (stored, tries) = send_riding(bus, &subject, &body, expect).await;
    match stored {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
            // A try whose answer was lost may have stored it: then the log
            // ends with this very event.
            if tries > 1
                && let Ok(Some((Some(last), _))) = last_message(bus, key).await
                && last == *event
            {
                return Ok(());
            }
            Err(StoreFailure::Moved)
        }
        Err(err) => Err(StoreFailure::Error(LogError::stream(
            &event.task_id,
            "store an event in",
            err,
        ))),
    }
}

/// [`send`], waiting for the acknowledgement, tried again through an
/// election or a reconnect up to the bus's store deadline (see `ride`);
/// returns the outcome of the last try and how many there were.
async fn send_riding(
    bus: &Bus,
    subject: &Subject,
    body: &Bytes,
    expect: Option<u64>,
) -> (Result<PublishAck, PublishError>, usize) {
    let tries = AtomicUsize::new(0);
    let stored = ride(
        bus,
        "store an event of a task's log",
        || async {
            tries.fetch_add(1, Ordering::Relaxed);
            send(bus, subject, body.clone(), expect).await?.await
        },
        publish_passes,
    )
    .await;
    (stored, tries.into_inner())
}

/// `event` as JSON, if it fits in a message.
fn encode(bus: &Bus, event: &LogEvent) -> Result<Bytes, LogError> {
    let body = serde_json::to_vec(event).expect("an event always serializes");
    let max = bus.max_payload();
    // Room for the subject and headers of the message.
    if body.len() + 256 > max {
        return Err(LogError::TooLarge {
            kind: event.kind,
            size: body.len(),
            max,
        });
    }
    Ok(body.into())
}

/// Publishes `body` on `subject`, with `expect` as the expected last subject
/// sequence.
async fn send(
    bus: &Bus,
    subject: &Subject,
    body: Bytes,
    expect: Option<u64>,
) -> Result<PublishAckFuture, PublishError> {
    let mut message = PublishMessage::build().payload(body);
    if let Some(expect) = expect {
        message = message.expected_last_subject_sequence(expect);
    }
    bus.jetstream().send_publish(subject.clone(), message).await
}

/// The writer of one task's log, held by the runtime that runs the task.
#[derive(Debug)]
pub(crate) struct LogWriter {
    key: TaskKey,
    task_id: TaskId,
    instance: Arc<str>,
    /// Built at the first write: most tasks never write.
    subject: Option<Subject>,
    /// The sequence of the next event.
    next: u64,
    /// Whether the log holds events of this run (read or written).
    begun: bool,
    /// Until the log was read: the stream sequence its last message must
    /// still have at the next write (set by a take-over).
    expect: Option<u64>,
    /// Whether the log was read (taken over) yet.
    read: bool,
    /// Events stored without waiting, whose acknowledgements are not
    /// collected yet.
    pending: Vec<Unacked>,
    /// The final state, once written.
    ended: Option<EventType>,
}

/// An event published without waiting for its acknowledgement.
struct Unacked {
    ack: Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>,
    /// Its acknowledgement, once it came: whether to send it again.
    answered: Option<Resend>,
    /// When it was sent.
    sent: std::time::Instant,
    seq: u64,
    /// Kept to send it again if it was not stored.
    body: Bytes,
}

impl std::fmt::Debug for Unacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unacked")
            .field("seq", &self.seq)
            .field("answered", &self.answered)
            .finish_non_exhaustive()
    }
}

/// What became of an event stored without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Stored, or refused for good (logged).
    No,
    /// Not stored, or its answer was lost: sent again in order.
    Yes,
}

impl Unacked {
    /// Takes the outcome of its publish: `Resend::Yes` when the stream did
    /// not take it for a reason that passes (no leader, no answer).
    fn outcome(&self, answer: Result<PublishAck, PublishError>, task_id: &TaskId) -> Resend {
        match answer {
            Ok(_) => Resend::No,
            Err(err) if publish_passes(&err) => Resend::Yes,
            Err(err) => {
                tracing::warn!(%err, %task_id, seq = self.seq, "an event of the task's log was not stored");
                Resend::No
            }
        }
    }
}

/// What an earlier final state in a log means to a writer taking it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Earlier {
    /// A queued task: `cancelled` or `timeout` ended it while it waited;
    /// any other final state is an earlier run's (a replayed dead letter).
    Queued,
    /// A task taken over request/reply: any final state is an earlier
    /// run's (the id was sent again after it ended).
    Requested,
    /// A writer that does not run the task (a canceller): any final state
    /// means the task is over.
    Ended,
}

impl Earlier {
    /// Whether a final state `kind` found in the log ends it for this
    /// writer, rather than belonging to an earlier run.
    fn ends_at(self, kind: EventType) -> bool {
        match self {
            Self::Queued => matches!(kind, EventType::Cancelled | EventType::Timeout),
            Self::Requested => false,
            Self::Ended => true,
        }
    }
}

impl LogWriter {
    /// The writer of the log of the task keyed `key`; the log is read at the
    /// first write, or at [`LogWriter::take_over`].
    pub(crate) fn new(key: TaskKey, instance: Arc<str>) -> Self {
        Self {
            subject: None,
            task_id: key.id().clone(),
            key,
            instance,
            next: 1,
            begun: false,
            expect: None,
            read: false,
            pending: Vec::new(),
            ended: None,
        }
    }

    /// Reads the log before writing to it: numbering goes on after its
    /// last event, and the next write is stored only if nothing was
    /// written meanwhile. An earlier run's events are cleared. Returns the
    /// final state when the log says the task is over already for this
    /// writer (see [`Earlier`]).
    pub(crate) async fn take_over(
        &mut self,
        bus: &Bus,
        earlier: Earlier,
    ) -> Result<Option<EventType>, LogError> {
        self.read = true;
        match read_last(bus, &self.key).await? {
            Some((Some(last), _)) if last.kind.is_final() && earlier.ends_at(last.kind) => {
                self.ended = Some(last.kind);
                Ok(Some(last.kind))
            }
            // An agent identity may not purge (`dlq replay` clears the log
            // of a task it puts back): this run numbers on after the
            // earlier one, whose final event a reader of the log meets first.
            Some((Some(last), stream_sequence))
                if last.kind.is_final() && bus.identity().is_some() =>
            {
                tracing::warn!(
                    task_id = %self.task_id,
                    "the log of an earlier run of this task id ends it, and an agent identity may not clear it: its readers stop there"
                );
                self.next = last.seq + 1;
                self.begun = false;
                self.expect = Some(stream_sequence);
                Ok(None)
            }
            Some((Some(last), _)) if last.kind.is_final() => {
                purge(bus, &self.key).await?;
                self.next = 1;
                self.begun = false;
                self.expect = Some(0);
                Ok(None)
            }
            Some((Some(last), stream_sequence)) => {
                self.next = last.seq + 1;
                self.begun = true;
                self.expect = Some(stream_sequence);
                Ok(None)
            }
            // A message that is not an event: numbering starts over after it.
            Some((None, stream_sequence)) => {
                self.next = 1;
                self.begun = false;
                self.expect = Some(stream_sequence);
                Ok(None)
            }
            None => {
                self.next = 1;
                self.begun = false;
                self.expect = Some(0);
                Ok(None)
            }
        }
    }

    /// Whether the log holds events of this run.
    pub(crate) fn begun(&self) -> bool {
        self.begun
    }

    /// The final state written, if any.
    pub(crate) fn ended(&self) -> Option<EventType> {
        self.ended
    }

    /// Adds an event. The first write reads the log first, and is stored
    /// only if nobody wrote after what it read; when somebody did, it reads
    /// again and goes on after that (an `accepted` the submitter wrote
    /// meanwhile is not written twice).
    pub(crate) async fn write(
        &mut self,
        bus: &Bus,
        kind: EventType,
        data: Value,
        earlier: Earlier,
    ) -> Result<(), LogError> {
        if !self.read
            && let Some(state) = self.take_over(bus, earlier).await?
        {
            return Err(LogError::Ended {
                task_id: self.task_id.clone(),
                state,
            });
        }
        if let Some(state) = self.ended {
            return Err(LogError::Ended {
                task_id: self.task_id.clone(),
                state,
            });
        }
        let mut tries = 0;
        while let Some(expect) = self.expect {
            let event = event(&self.task_id, self.next, kind, &self.instance, data.clone());
            match store(bus, &self.key, &event, Some(expect)).await {
                Ok(()) => {
                    self.expect = None;
                    self.wrote(kind);
                    return Ok(());
                }
                Err(StoreFailure::Moved) if tries + 1 < MAX_TRIES => {
                    tries += 1;
                    if let Some(state) = self.take_over(bus, earlier).await? {
                        return Err(LogError::Ended {
                            task_id: self.task_id.clone(),
                            state,
                        });
                    }
                    if kind == EventType::Accepted && self.begun {
                        return Ok(());
                    }
                }
                Err(StoreFailure::Moved) => {
                    return Err(LogError::Contended {
                        task_id: self.task_id.clone(),
                    });
                }
                Err(StoreFailure::Error(err)) => return Err(err),
            }
        }
        let event = event(&self.task_id, self.next, kind, &self.instance, data);
        let body = encode(bus, &event)?;
        if self.must_flush() {
            self.flush(bus).await;
        }
        let subject = self
            .subject
            .get_or_insert_with(|| subject::task_events(&self.key));
        let unacked = match send(bus, subject, body.clone(), None).await {
            Ok(ack) => Unacked {
                ack: ack.into_future(),
                answered: None,
                sent: std::time::Instant::now(),
                seq: event.seq,
                body,
            },
            Err(err) => return Err(LogError::stream(&self.task_id, "store an event in", err)),
        };
        self.pending.push(unacked);
        // Counted before waiting: a caller that stops waiting (its future
        // dropped) leaves the numbering right.
        self.wrote(kind);
        if self.pending.len() >= MAX_UNACKED {
            self.flush(bus).await;
        }
        Ok(())
    }

    fn wrote(&mut self, kind: EventType) {
        self.next += 1;
        self.begun = true;
        if kind.is_final() {
            self.ended = Some(kind);
        }
    }

    /// Whether the events stored without waiting must be waited for before
    /// the next is sent: one was refused (it is stored again first, so that
    /// the log stays in order; the stream refuses at once while it has no
    /// leader, long before a new one is elected), or the oldest unanswered
    /// one waited longer than [`STALL`] (its answer may be lost with a
    /// dying server, and a later event must not reach a new leader first).
    /// Looks without waiting, oldest first.
    fn must_flush(&mut self) -> bool {
        let task_id = &self.task_id;
        for unacked in &mut self.pending {
            let resend = match unacked.answered {
                Some(resend) => resend,
                None => match unacked.ack.as_mut().now_or_never() {
                    Some(answer) => {
                        let resend = unacked.outcome(answer, task_id);
                        unacked.answered = Some(resend);
                        resend
                    }
                    // Answers come in order: the later ones are younger.
                    None => return unacked.sent.elapsed() > STALL,
                },
            };
            if resend == Resend::Yes {
                return true;
            }
        }
        false
    }

    /// Waits for the acknowledgements of what was written. Events not
    /// stored are sent again, in order, after the last one the log holds (an
    /// event whose answer was lost may be stored); one still not stored by
    /// the store deadline is logged (a watcher sees the gap in the sequence
    /// numbers).
    pub(crate) async fn flush(&mut self, bus: &Bus) {
        let mut failed = Vec::new();
        for mut unacked in std::mem::take(&mut self.pending) {
            let resend = match unacked.answered {
                Some(resend) => resend,
                None => match tokio::time::timeout(ACK_TIMEOUT, unacked.ack.as_mut()).await {
                    Ok(answer) => unacked.outcome(answer, &self.task_id),
                    Err(_) => Resend::Yes,
                },
            };
            if resend == Resend::Yes {
                failed.push((unacked.seq, unacked.body));
            }
        }
        if failed.is_empty() {
            return;
        }
        let stored_up_to = match read_last(bus, &self.key).await {
            Ok(Some((Some(last), _))) => last.seq,
            Ok(_) => 0,
            Err(err) => {
                tracing::warn!(%err, task_id = %self.task_id, events = failed.len(), "events of the task's log may not be stored");
                return;
            }
        };
        let key = &self.key;
        let subject = self
            .subject
            .get_or_insert_with(|| subject::task_events(key));
        for (_, body) in failed.into_iter().filter(|(seq, _)| *seq > stored_up_to) {
            if let (Err(err), _) = send_riding(bus, subject, &body, None).await {
                tracing::warn!(%err, task_id = %self.task_id, "an event of the task's log was not stored");
            }
        }
    }
}
