//! Storing tasks, messages and broadcasts durably, from the sender's side.

use super::records::Records;
use super::{DeliveryError, Queue, TaskRecord};
use crate::client::Bus;
use crate::name::Name;
use crate::protocol::{TaskRequest, TaskResponse};
use crate::subject;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage as Publish;
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

/// A task stored in a work queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Submitted {
    /// The task id (also the `Nats-Msg-Id`).
    pub task_id: String,
    /// The subject it was stored on.
    pub subject: String,
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
    /// for [`Bus::wait_task`].
    pub async fn submit(
        &self,
        queue: &Queue,
        request: &TaskRequest,
    ) -> Result<Submitted, DeliveryError> {
        self.submit_with(queue, request, ResultRetention::Keep)
            .await
    }

    /// [`Bus::submit`], saying what to keep of the outcome.
    pub async fn submit_with(
        &self,
        queue: &Queue,
        request: &TaskRequest,
        retention: ResultRetention,
    ) -> Result<Submitted, DeliveryError> {
        check_task_id(&request.task_id)?;
        let subject = queue.subject(request.priority);
        let headers: &[(&str, &str)] = match retention {
            ResultRetention::Keep => &[],
            ResultRetention::Discard => &[(RESULT_HEADER, retention.as_str())],
        };
        let (sequence, duplicate) = self
            .store(&subject, request.to_json(), &request.task_id, headers)
            .await?;
        Ok(Submitted {
            task_id: request.task_id.clone(),
            subject,
            sequence,
            duplicate,
        })
    }

    /// Waits until the queued task `task_id` is completed or dead-lettered and
    /// returns its response.
    pub async fn wait_task(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<TaskResponse, DeliveryError> {
        let records = Records::open(self.jetstream()).await?;
        let record = records.wait_final(task_id, timeout).await?;
        Ok(record.response.unwrap_or_else(|| {
            TaskResponse::error(
                task_id,
                crate::TaskStatus::Failed,
                "the task ended without a response",
            )
        }))
    }

    /// What is recorded of queued task `task_id`: `None` while it waits for
    /// its first attempt to finish (or when it is unknown).
    pub async fn task_record(&self, task_id: &str) -> Result<Option<TaskRecord>, DeliveryError> {
        Records::open(self.jetstream()).await?.get(task_id).await
    }

    /// Stores `message` in agent `to`'s inbox (delivered in order).
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        to: &str,
        message: &T,
    ) -> Result<Published, DeliveryError> {
        let to = Name::parse("agent name", to)?;
        self.publish_durable(&subject::agent_inbox(&to), message, None, None)
            .await
    }

    /// Stores `message` on agent `to`'s direct channel (delivered concurrently).
    pub async fn send_direct<T: Serialize + ?Sized>(
        &self,
        to: &str,
        message: &T,
    ) -> Result<Published, DeliveryError> {
        let to = Name::parse("agent name", to)?;
        self.publish_durable(&subject::agent_direct(&to), message, None, None)
            .await
    }

    /// Broadcasts `message` to every agent subscribed to `topic`.
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        message: &T,
    ) -> Result<Published, DeliveryError> {
        let topic = Name::parse("topic", topic)?;
        self.publish_durable(&subject::broadcast(&topic), message, None, None)
            .await
    }

    /// Announces `message` to every agent that takes messages.
    pub async fn announce<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        message: &T,
    ) -> Result<Published, DeliveryError> {
        let topic = Name::parse("topic", topic)?;
        self.publish_durable(&subject::announce(&topic), message, None, None)
            .await
    }

    /// Stores a JSON message on a stream subject with a message id (a new UUID
    /// when `None`) and, optionally, the sender's name.
    pub async fn publish_durable<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        message: &T,
        message_id: Option<&str>,
        from: Option<&Name>,
    ) -> Result<Published, DeliveryError> {
        let body = serde_json::to_vec(message)
            .map_err(|err| DeliveryError::jetstream("encode the message as JSON", err))?;
        let message_id = match message_id {
            Some(id) => {
                check_message_id(id)?;
                id.to_owned()
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let from = from.map(|from| [(FROM_HEADER, from.as_str())]);
        let headers = from.as_ref().map_or(&[][..], |from| &from[..]);
        let (sequence, duplicate) = self.store(subject, body, &message_id, headers).await?;
        Ok(Published {
            message_id,
            subject: subject.to_owned(),
            sequence,
            duplicate,
        })
    }

    async fn store(
        &self,
        subject: &str,
        body: Vec<u8>,
        message_id: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u64, bool), DeliveryError> {
        let max = self.max_payload();
        if body.len() > max {
            return Err(DeliveryError::TooLarge {
                size: body.len(),
                max,
            });
        }
        let mut publish = Publish::build().payload(body.into()).message_id(message_id);
        for &(name, value) in headers {
            publish = publish.header(name, value);
        }
        let ack = self
            .jetstream()
            .send_publish(subject.to_owned(), publish)
            .await
            .map_err(|err| publish_error(subject, err))?
            .await
            .map_err(|err| publish_error(subject, err))?;
        Ok((ack.sequence, ack.duplicate))
    }
}

fn publish_error(
    subject: &str,
    err: async_nats::jetstream::context::PublishError,
) -> DeliveryError {
    let text = err.to_string();
    match err.kind() {
        PublishErrorKind::StreamNotFound => DeliveryError::NoStream {
            subject: subject.to_owned(),
        },
        PublishErrorKind::MaxPayloadExceeded => DeliveryError::TooLarge { size: 0, max: 0 },
        // discard: new refuses a publish to a full stream with "maximum ... exceeded".
        _ if text.contains("maximum") && text.contains("exceeded") => DeliveryError::StreamFull {
            stream: stream_of(subject).to_owned(),
            subject: subject.to_owned(),
        },
        _ => DeliveryError::jetstream("store the message", text),
    }
}

fn stream_of(subject: &str) -> &'static str {
    if subject.starts_with("tasks.") || subject.starts_with("work.") {
        subject::TASKS_STREAM
    } else if subject.starts_with("agent.") {
        subject::MESSAGES_STREAM
    } else if subject.starts_with("dlq.") {
        subject::DEAD_LETTER_STREAM
    } else {
        subject::BROADCAST_STREAM
    }
}

/// A message id is a `Nats-Msg-Id` header value: an empty one would not
/// deduplicate, and whitespace or control characters break the header.
fn check_message_id(message_id: &str) -> Result<(), DeliveryError> {
    let valid = !message_id.is_empty()
        && message_id.len() <= 256
        && !message_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(DeliveryError::InvalidMessageId(message_id.to_owned()))
    }
}

/// Task ids become message ids and KV keys: keep them plain.
pub(crate) fn check_task_id(task_id: &str) -> Result<(), DeliveryError> {
    let plain = !task_id.is_empty()
        && task_id.len() <= 128
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        Ok(())
    } else {
        Err(DeliveryError::InvalidTaskId(task_id.to_owned()))
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
