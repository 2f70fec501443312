//! Storing tasks, messages and broadcasts durably, from the sender's side.

use super::Queue;
use super::records::{RecordError, Records, TaskRecord, TaskState};
use crate::client::Bus;
use crate::jetstream_errors::{publish_passes, publish_refusal};
use crate::name::{InvalidName, Name};
use crate::protocol::{Priority, TaskRequest, TaskResponse, TaskStatus};
use crate::ride::ride;
use crate::subject::{self, Subject};
use crate::task_id::{InvalidTaskId, TaskId, TaskKey};
use crate::telemetry::Traced;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use serde::Serialize;
use std::time::Duration;

/// Header naming the sending agent of a message, when known.
pub const FROM_HEADER: &str = "Agentbus-From";

/// Header of a queued task saying what to keep of its outcome: absent or
/// `keep` keeps it, `discard` does not (see [`ResultRetention`]).
pub const RESULT_HEADER: &str = "Agentbus-Result";

/// What the runtime keeps of a queued task's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResultRetention {
    /// Record the response in the bucket `agent-task-results` before the task
    /// is acknowledged: [`Bus::wait_task`] and `agentbus task` find it, also
    /// after the submitter restarted, and a redelivery after a lost
    /// acknowledgement finds the task done instead of running it again. The
    /// default, and what a task without the header gets.
    #[default]
    Keep,
    /// Fire and forget: a task that succeeds at its first attempt leaves no
    /// record, which saves a stored message per task. Failures are still
    /// recorded (retries, dead letters). The price: nobody can wait for the
    /// result, and a worker that dies between finishing the task and
    /// acknowledging it (a window of microseconds) gets the task run again.
    Discard,
}

impl ResultRetention {
    /// The value of [`RESULT_HEADER`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Discard => "discard",
        }
    }

    /// Reads [`RESULT_HEADER`]: anything but `discard` keeps.
    pub fn from_header(value: Option<&str>) -> Self {
        match value {
            Some(value) if value.eq_ignore_ascii_case("discard") => Self::Discard,
            _ => Self::Keep,
        }
    }
}

/// Why a task or message was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A name cannot be a subject token.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// A task id does not follow the rule.
    #[error(transparent)]
    InvalidTaskId(#[from] InvalidTaskId),
    /// A message id cannot be a `Nats-Msg-Id`.
    #[error("invalid message id {0:?}: use 1-256 characters without spaces or control characters")]
    InvalidMessageId(String),
    /// The value does not serialize to JSON.
    #[error("the message does not serialize to JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// The message exceeds the server's `max_payload`.
    #[error(
        "the message is {size} bytes, more than the server's max_payload of {max} bytes; send large data by reference"
    )]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// The stream refused the message because one of its limits is reached
    /// (`discard: new`).
    #[error(
        "stream {stream} is full ({source}), so {subject} was not stored; let consumers catch up or raise its limits (`agentbus status` shows how full it is)"
    )]
    StreamFull {
        /// The stream.
        stream: String,
        /// The subject of the message.
        subject: String,
        /// The server's answer, naming the limit.
        #[source]
        source: jetstream::Error,
    },
    /// No stream captures the subject.
    #[error("no stream stores {subject}; run `agentbus setup` to create the streams")]
    NoStream {
        /// The subject of the message.
        subject: String,
    },
    /// JetStream did not store the message before the bus's store deadline,
    /// although it was sent again and again with the same message id: no
    /// leader answered for the stream (an election that takes too long, or a
    /// cluster that lost its majority), or the server could not be reached.
    #[error(
        "JetStream did not store {subject} within {after:?}: {reason}; `agentbus status` shows the streams"
    )]
    Unavailable {
        /// The subject of the message.
        subject: String,
        /// How long it was tried.
        after: Duration,
        /// What the last try met.
        reason: &'static str,
        /// The last failure.
        #[source]
        source: jetstream::context::PublishError,
    },
    /// JetStream refused the message otherwise.
    #[error("JetStream did not store {subject}: {source}")]
    JetStream {
        /// The subject of the message.
        subject: String,
        /// Why.
        #[source]
        source: jetstream::context::PublishError,
    },
    /// The task's record could not be read before storing it
    /// ([`Bus::submit_recorded`]); nothing was stored.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// What kept a message from being stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// A name, task id or message id is not valid.
    InvalidInput,
    /// The message is larger than the server accepts.
    TooLarge,
    /// The stream is full.
    StreamFull,
    /// No stream captures the subject.
    NoStream,
    /// JetStream could not be reached, or had no leader for the stream, until the deadline.
    Unavailable,
    /// JetStream refused or failed.
    JetStream,
    /// The task results bucket could not be read.
    Record,
}

impl StoreError {
    /// What kept the message from being stored.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::InvalidName(_)
            | Self::InvalidTaskId(_)
            | Self::InvalidMessageId(_)
            | Self::Encode(_) => StoreErrorKind::InvalidInput,
            Self::TooLarge { .. } => StoreErrorKind::TooLarge,
            Self::StreamFull { .. } => StoreErrorKind::StreamFull,
            Self::NoStream { .. } => StoreErrorKind::NoStream,
            Self::Unavailable { .. } => StoreErrorKind::Unavailable,
            Self::JetStream { .. } => StoreErrorKind::JetStream,
            Self::Record(_) => StoreErrorKind::Record,
        }
    }
}

/// A task stored in a work queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Submitted {
    /// The task id (also the `Nats-Msg-Id`).
    pub task_id: TaskId,
    /// The subject it was stored on.
    pub subject: Subject,
    /// Its stream sequence.
    pub sequence: u64,
    /// True when the same task id was already stored within the dedup window:
    /// this submission stored nothing new.
    pub duplicate: bool,
}

/// A message stored in a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The message id (also the `Nats-Msg-Id`).
    pub message_id: String,
    /// The subject it was stored on.
    pub subject: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// True when the same message id was already stored within the dedup window.
    pub duplicate: bool,
}

impl Bus {
    /// Stores `request` on `queue` at the request's priority, with the task id
    /// as `Nats-Msg-Id`. Returns once the stream has it. Its outcome is kept
    /// for [`Bus::wait_task`]. The submission itself is not recorded:
    /// [`Bus::task_report`] knows the task once an attempt ends, or at once
    /// when it was submitted with [`Bus::submit_recorded`].
    pub async fn submit(
        &self,
        queue: &Queue,
        request: &TaskRequest,
    ) -> Result<Submitted, StoreError> {
        self.submit_with(queue, request, ResultRetention::Keep)
            .await
    }

    /// [`Bus::submit`], saying what to keep of the outcome.
    pub async fn submit_with(
        &self,
        queue: &Queue,
        request: &TaskRequest,
        retention: ResultRetention,
    ) -> Result<Submitted, StoreError> {
        let subject = queue.subject(request.priority);
        // The caller's name places the task's record and log where it may
        // read them (see `TaskKey`).
        let mut headers = Vec::with_capacity(2);
        if let Some(caller) = self.identity() {
            headers.push((FROM_HEADER, caller.as_str()));
        }
        if retention == ResultRetention::Discard {
            headers.push((RESULT_HEADER, retention.as_str()));
        }
        let ack = store(
            self,
            &subject,
            request.to_json(),
            &request.task_id,
            &headers,
        )
        .await?;
        // Also after a duplicate: the try that stored it may have been cut
        // off before its ring.
        ring_queue(self, &subject).await;
        if request.stream && !ack.duplicate {
            let data = serde_json::json!({
                "task_type": request.task_type,
                "queue": subject.as_str(),
                "deadline": request.deadline,
            });
            let key = TaskKey::new(queue, self.identity(), &request.task_id);
            if let Err(err) = crate::task_log::accept_queued(self, &key, "submitter", data).await {
                tracing::warn!(%err, task_id = %request.task_id, "the task is queued, but its log could not be begun");
            }
        }
        Ok(Submitted {
            task_id: request.task_id.clone(),
            subject,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Waits until the queued task `task_id` is completed or dead-lettered and
    /// returns its response.
    pub async fn wait_task(
        &self,
        task_id: &TaskId,
        timeout: Duration,
    ) -> Result<TaskResponse, RecordError> {
        let records = Records::open(self).await?;
        let record = records
            .wait_final(self.identity(), task_id, timeout)
            .await?;
        Ok(record.response.unwrap_or_else(|| {
            TaskResponse::error(
                task_id,
                TaskStatus::Failed,
                "the task ended without a response",
            )
        }))
    }

    /// What is recorded of queued task `task_id`: `None` until its
    /// submission is recorded ([`Bus::submit_recorded`]) or an attempt ends.
    /// With an agent identity, of the tasks this agent sent only.
    pub async fn task_record(&self, task_id: &TaskId) -> Result<Option<TaskRecord>, RecordError> {
        let found = Records::open(self)
            .await?
            .find(self.identity(), task_id)
            .await?;
        Ok(found.and_then(|(_, record, _)| record))
    }

    /// Where queued task `task_id` stands: [`Bus::task_report`]'s state.
    pub async fn task_state(&self, task_id: &TaskId) -> Result<TaskState, RecordError> {
        Ok(self.task_report(task_id).await?.state)
    }

    /// Stores `message` in agent `to`'s inbox (delivered in order). Like
    /// every send below, it carries this connection's agent identity as the
    /// verified sender when it has one ([`Bus::identity`]).
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        to: &str,
        message: &T,
    ) -> Result<Published, StoreError> {
        let to = Name::parse("agent name", to)?;
        let subject = match self.identity() {
            Some(from) => subject::agent_inbox_from(&to, from),
            None => subject::agent_inbox(&to),
        };
        self.publish_durable(&subject, message, None, None).await
    }

    /// Stores `message` on agent `to`'s direct channel (delivered concurrently).
    pub async fn send_direct<T: Serialize + ?Sized>(
        &self,
        to: &str,
        message: &T,
    ) -> Result<Published, StoreError> {
        let to = Name::parse("agent name", to)?;
        let subject = match self.identity() {
            Some(from) => subject::agent_direct_from(&to, from),
            None => subject::agent_direct(&to),
        };
        self.publish_durable(&subject, message, None, None).await
    }

    /// Broadcasts `message` to every agent subscribed to `topic`.
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        message: &T,
    ) -> Result<Published, StoreError> {
        let topic = Name::parse("topic", topic)?;
        let subject = match self.identity() {
            Some(from) => subject::broadcast_from(&topic, from),
            None => subject::broadcast(&topic),
        };
        self.publish_durable(&subject, message, None, None).await
    }

    /// Announces `message` to every agent that takes messages.
    pub async fn announce<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        message: &T,
    ) -> Result<Published, StoreError> {
        let topic = Name::parse("topic", topic)?;
        let subject = match self.identity() {
            Some(from) => subject::announce_from(&topic, from),
            None => subject::announce(&topic),
        };
        self.publish_durable(&subject, message, None, None).await
    }

    /// Stores a JSON message on a stream subject with a message id (a new UUID
    /// when `None`) and, optionally, the sender's name.
    pub async fn publish_durable<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        message: &T,
        message_id: Option<&str>,
        from: Option<&Name>,
    ) -> Result<Published, StoreError> {
        let body = serde_json::to_vec(message).map_err(StoreError::Encode)?;
        let message_id = match message_id {
            Some(id) => {
                check_message_id(id)?;
                id.to_owned()
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let from = from.map(|from| [(FROM_HEADER, from.as_str())]);
        let headers = from.as_ref().map_or(&[][..], |from| &from[..]);
        let ack = store(self, subject, body, &message_id, headers).await?;
        ring_queue(self, subject).await;
        Ok(Published {
            message_id,
            subject: subject.to_owned(),
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// Once a task is stored on `subject`, rings the agent whose own queue it
/// is, at the priorities the tasks stream does not ring itself (all but
/// normal; see [`subject::agent_queued`]), so that an idle agent takes it at
/// once rather than at its worker's next sweep. A ring that cannot be sent
/// only delays the task until that sweep.
pub(crate) async fn ring_queue(bus: &Bus, subject: &str) {
    let Some((subject::QueueKind::Agent, agent, priority)) = subject::parse_queue(subject) else {
        return;
    };
    if priority == Priority::Normal {
        return;
    }
    let ring = subject::agent_queued(&agent, priority);
    if let Err(err) = bus.client().publish(ring.to_nats(), Bytes::new()).await {
        tracing::debug!(%err, %ring, "cannot ring a queue; its worker finds the task at its next sweep");
    }
}

/// Stores `body` on `subject` with `message_id` as its `Nats-Msg-Id` (a
/// repeat within the stream's dedup window is stored once) and `headers`;
/// returns once the stream has it.
///
/// What passes is retried with the same message id, with backoff, until the
/// bus's store deadline ([`Bus::store_deadline`]): a stream without a leader
/// (an election, or a cluster that lost its majority: JetStream answers "no
/// responders"), an acknowledgement that timed out, a broken connection. A
/// publish in flight when the connection comes back is sent again at once,
/// since its acknowledgement went to a connection that is gone.
pub(crate) async fn store(
    bus: &Bus,
    subject: &str,
    body: Vec<u8>,
    message_id: &str,
    headers: &[(&str, &str)],
) -> Result<jetstream::publish::PublishAck, StoreError> {
    let max = bus.max_payload();
    if body.len() > max {
        return Err(StoreError::TooLarge {
            size: body.len(),
            max,
        });
    }
    let size = body.len();
    // One span for the store, however often it is tried; the headers are
    // stored with the message, so every delivery of it is in this trace.
    let traced = Traced::produce("publish", subject, Some(message_id));
    let mut publish = Publish::build().payload(body.into());
    if let Some(trace) = traced.headers() {
        publish = publish.headers(trace);
    }
    publish = publish.message_id(message_id);
    for &(name, value) in headers {
        publish = publish.header(name, value);
    }
    let js = bus.jetstream();
    // "No responders" is what a stream without a leader answers, and also
    // what a subject no stream stores gets: the server is asked once which.
    let asked = std::sync::atomic::AtomicBool::new(false);
    let stored = ride(
        bus,
        subject,
        || async {
            let err = match js.send_publish(subject.to_owned(), publish.clone()).await {
                Ok(ack) => match ack.await {
                    Ok(ack) => return Ok(ack),
                    Err(err) => err,
                },
                Err(err) => err,
            };
            if err.kind() == PublishErrorKind::StreamNotFound
                && !asked.swap(true, std::sync::atomic::Ordering::Relaxed)
                && no_stream_stores(bus, subject).await
            {
                return Err(Failure::NoStream);
            }
            Err(Failure::Publish(err))
        },
        |failure| matches!(failure, Failure::Publish(err) if publish_passes(err)),
    )
    .await;
    match stored {
        Ok(ack) => Ok(ack),
        Err(Failure::NoStream) => Err(StoreError::NoStream {
            subject: subject.to_owned(),
        }),
        Err(Failure::Publish(err)) if publish_passes(&err) => {
            Err(unavailable(bus, subject, err).await)
        }
        Err(Failure::Publish(err)) => Err(publish_error(bus, subject, size, max, err).await),
    }
}

/// Why one try of a store failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no stream stores the subject")]
    NoStream,
    #[error(transparent)]
    Publish(jetstream::context::PublishError),
}

/// Whether the server says that no stream stores `subject` (not when it
/// cannot tell, say while a stream has no leader, or when this identity
/// may not ask).
async fn no_stream_stores(bus: &Bus, subject: &str) -> bool {
    let lookup = tokio::time::timeout(
        STREAM_LOOKUP_TIMEOUT,
        bus.jetstream().stream_by_subject(subject),
    );
    matches!(
        lookup.await,
        Ok(Err(err)) if err.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound
    )
}

/// The error of a store that kept failing until its deadline: a stream
/// nobody has (told by the server when it can tell), else a stream without
/// a leader or a server out of reach.
async fn unavailable(
    bus: &Bus,
    subject: &str,
    err: jetstream::context::PublishError,
) -> StoreError {
    if err.kind() == PublishErrorKind::StreamNotFound && no_stream_stores(bus, subject).await {
        return StoreError::NoStream {
            subject: subject.to_owned(),
        };
    }
    let reason = match err.kind() {
        PublishErrorKind::StreamNotFound => {
            "no server answered for its stream (a leader election that lasts, or a cluster that lost its majority)"
        }
        PublishErrorKind::TimedOut => {
            "its acknowledgement did not come (a majority of the stream's servers may be down), so it may yet be stored: sending it again with the same id stores it once"
        }
        PublishErrorKind::BrokenPipe => "the connection to the server is down",
        _ => {
            "the stream's cluster did not settle it (no majority, or an earlier try still in progress): it may have been stored, and sending it again with the same id stores it once"
        }
    };
    StoreError::Unavailable {
        subject: subject.to_owned(),
        after: bus.store_deadline(),
        reason,
        source: err,
    }
}

/// How long the server is asked which stream stores a subject.
const STREAM_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads a refused publish: a full stream is JetStream's error code 10077
/// (`maximum messages|bytes|messages per subject exceeded`).
async fn publish_error(
    bus: &Bus,
    subject: &str,
    size: usize,
    max: usize,
    err: jetstream::context::PublishError,
) -> StoreError {
    // "No responders" (no stream, or no leader) passes: `store` told it.
    let subject = subject.to_owned();
    if err.kind() == PublishErrorKind::MaxPayloadExceeded {
        return StoreError::TooLarge { size, max };
    }
    let refusal = publish_refusal(&err)
        .filter(|refusal| refusal.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED)
        .cloned();
    match refusal {
        Some(source) => {
            // Named by the server, so a custom topology is named right too.
            let stream = bus
                .jetstream()
                .stream_by_subject(subject.as_str())
                .await
                .unwrap_or_else(|_| "(the stream storing it)".to_owned());
            StoreError::StreamFull {
                stream,
                subject,
                source,
            }
        }
        None => StoreError::JetStream {
            subject,
            source: err,
        },
    }
}

/// A message id is a `Nats-Msg-Id` header value: an empty one would not
/// deduplicate, and whitespace or control characters break the header.
fn check_message_id(message_id: &str) -> Result<(), StoreError> {
    let valid = !message_id.is_empty()
        && message_id.len() <= 256
        && !message_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidMessageId(message_id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_must_be_usable_headers() {
        for good in ["m-1", "order:42/a", &"x".repeat(256)] {
            assert!(check_message_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a\nb", "tab\there", &"x".repeat(257)] {
            assert!(check_message_id(bad).is_err(), "{bad:?}");
        }
    }
}
