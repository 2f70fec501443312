//! The client side of the bus: sending tasks, publishing and subscribing to events.

use crate::connect::{ConnectError, ServerTarget};
use crate::name::{InvalidName, Name};
use crate::protocol::{Priority, TaskRequest, TaskResponse};
use crate::subject::{self, InvalidSubject, Subject, SubjectPattern};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Default time to wait for an agent's answer.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to the bus; cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    // Shared: a Bus is cloned into every task's context, and a JetStream
    // context owns strings of its own.
    inner: std::sync::Arc<BusInner>,
}

#[derive(Debug)]
struct BusInner {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
}

/// How to send a task over request/reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOptions {
    /// How long to wait for each attempt.
    pub timeout: Duration,
    /// Extra attempts after a timeout; they reuse the task id, so the agent
    /// answers a repeat with its first response instead of running it twice.
    pub retries: u32,
}

impl Default for RequestOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TASK_TIMEOUT,
            retries: 0,
        }
    }
}

/// Why a task got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendTaskError {
    /// The agent name cannot be a subject token.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// Nobody serves `agent.<name>.task`.
    #[error(
        "no agent named {agent:?} is running (nothing answers agent.{agent}.task); start it or check the name"
    )]
    NoAgent { agent: String },
    /// The agent did not answer in time.
    #[error(
        "agent {agent:?} did not answer task {task_id} within {after:?}; it may be busy or stuck (a retry with the same task_id will not run it twice)"
    )]
    TimedOut {
        agent: String,
        task_id: String,
        after: Duration,
    },
    /// The request exceeds the server's `max_payload`.
    #[error(
        "the task is {size} bytes, more than the server's max_payload of {max} bytes; send large data by reference"
    )]
    TooLarge { size: usize, max: usize },
    /// The answer is not a TaskResponse.
    #[error("agent {agent:?} answered with something that is not a TaskResponse: {reason}")]
    InvalidResponse { agent: String, reason: String },
    /// The connection failed.
    #[error("cannot send the task: {reason}")]
    Connection { reason: String },
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The subject is not valid.
    #[error(transparent)]
    InvalidSubject(#[from] InvalidSubject),
    /// The message exceeds the server's `max_payload`.
    #[error("the message is {size} bytes, more than the server's max_payload of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// The connection failed.
    #[error("cannot publish: {reason}")]
    Connection { reason: String },
}

/// Why a subscription could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The pattern is not valid.
    #[error(transparent)]
    InvalidSubject(#[from] InvalidSubject),
    /// The queue group name is not valid.
    #[error(transparent)]
    InvalidQueueGroup(#[from] InvalidName),
    /// The connection failed.
    #[error("cannot subscribe: {reason}")]
    Connection { reason: String },
}

impl Bus {
    /// Connects to `target`; `client_name` shows in the server's connection list.
    pub async fn connect(target: &ServerTarget, client_name: &str) -> Result<Self, ConnectError> {
        Ok(Self::from_client(target.connect(client_name).await?))
    }

    /// Wraps an existing connection.
    pub fn from_client(client: async_nats::Client) -> Self {
        let jetstream = async_nats::jetstream::new(client.clone());
        Self {
            inner: std::sync::Arc::new(BusInner { client, jetstream }),
        }
    }

    /// The JetStream context on this connection.
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.inner.jetstream
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The server's largest accepted message, in bytes.
    pub fn max_payload(&self) -> usize {
        // An atomic kept current by async-nats; server_info() copies strings.
        self.inner.client.max_payload()
    }

    /// Sends a task to `agent` and waits for its response (default timeout, no retries).
    ///
    /// ```no_run
    /// # async fn example(bus: agentbus::Bus) -> Result<(), agentbus::SendTaskError> {
    /// use agentbus::Priority;
    /// let response = bus
    ///     .publish_task("llm_agent", "generate_text", serde_json::json!({"prompt": "Hi", "max_tokens": 20}), Priority::Normal)
    ///     .await?;
    /// println!("{:?}", response.result);
    /// # Ok(()) }
    /// ```
    pub async fn publish_task(
        &self,
        agent: &str,
        task_type: &str,
        payload: Value,
        priority: Priority,
    ) -> Result<TaskResponse, SendTaskError> {
        let request = TaskRequest::new(task_type, payload).with_priority(priority);
        self.request(agent, &request, RequestOptions::default())
            .await
    }

    /// Sends `request` to `agent` and waits for the response.
    pub async fn request(
        &self,
        agent: &str,
        request: &TaskRequest,
        options: RequestOptions,
    ) -> Result<TaskResponse, SendTaskError> {
        let agent_name = Name::parse("agent name", agent)?;
        let subject = subject::agent_task(&agent_name);
        let body = Bytes::from(request.to_json());
        let max = self.max_payload();
        if body.len() > max {
            return Err(SendTaskError::TooLarge {
                size: body.len(),
                max,
            });
        }
        let mut attempt = 0;
        loop {
            let sent = self.inner.client.send_request(
                subject.clone(),
                async_nats::Request::new()
                    .payload(body.clone())
                    .timeout(Some(options.timeout)),
            );
            match sent.await {
                Ok(message) => {
                    return serde_json::from_slice(&message.payload).map_err(|err| {
                        SendTaskError::InvalidResponse {
                            agent: agent.to_owned(),
                            reason: err.to_string(),
                        }
                    });
                }
                Err(err) => {
                    use async_nats::client::RequestErrorKind as Kind;
                    match err.kind() {
                        Kind::NoResponders => {
                            return Err(SendTaskError::NoAgent {
                                agent: agent.to_owned(),
                            });
                        }
                        Kind::TimedOut if attempt < options.retries => attempt += 1,
                        Kind::TimedOut => {
                            return Err(SendTaskError::TimedOut {
                                agent: agent.to_owned(),
                                task_id: request.task_id.clone(),
                                after: options.timeout,
                            });
                        }
                        Kind::MaxPayloadExceeded => {
                            return Err(SendTaskError::TooLarge {
                                size: body.len(),
                                max,
                            });
                        }
                        _ => {
                            return Err(SendTaskError::Connection {
                                reason: err.to_string(),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Publishes `value` as JSON on `subject` (no wildcards).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        let subject = Subject::parse(subject)?;
        let body = serde_json::to_vec(value).map_err(|err| PublishError::Connection {
            reason: format!("the value does not serialize to JSON: {err}"),
        })?;
        self.publish_bytes(&subject, body.into()).await
    }

    /// Publishes raw bytes on a validated subject.
    pub async fn publish_bytes(&self, subject: &Subject, body: Bytes) -> Result<(), PublishError> {
        let max = self.max_payload();
        if body.len() > max {
            return Err(PublishError::TooLarge {
                size: body.len(),
                max,
            });
        }
        self.inner
            .client
            .publish(subject.as_str().to_owned(), body)
            .await
            .map_err(|err| PublishError::Connection {
                reason: err.to_string(),
            })
    }

    /// Subscribes to `pattern` (`*` and `>` allowed); with a queue group, each
    /// message goes to one member of the group. Messages published after this
    /// returns are received: the server has confirmed the subscription.
    pub async fn subscribe(
        &self,
        pattern: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, SubscribeError> {
        let pattern = SubjectPattern::parse(pattern)?;
        let subject = pattern.as_str().to_owned();
        let subscriber = match queue_group {
            Some(group) => {
                let group = Name::parse("queue group", group)?;
                self.inner
                    .client
                    .queue_subscribe(subject, group.as_str().to_owned())
                    .await
            }
            None => self.inner.client.subscribe(subject).await,
        }
        .map_err(|err| SubscribeError::Connection {
            reason: err.to_string(),
        })?;
        self.sync()
            .await
            .map_err(|err| SubscribeError::Connection {
                reason: err.to_string(),
            })?;
        Ok(Subscription { subscriber })
    }

    /// Waits until the server has processed everything sent on this
    /// connection so far (subscriptions included): `flush` only writes to
    /// the socket. A request to a subject nobody serves comes back as "no
    /// responders" only after the server handled what came before it.
    pub async fn sync(&self) -> Result<(), PublishError> {
        let subject = format!("_agentbus.sync.{}", uuid::Uuid::new_v4().simple());
        match self.inner.client.request(subject, Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == async_nats::client::RequestErrorKind::NoResponders => Ok(()),
            Err(err) => Err(PublishError::Connection {
                reason: err.to_string(),
            }),
        }
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), PublishError> {
        self.inner
            .client
            .flush()
            .await
            .map_err(|err| PublishError::Connection {
                reason: err.to_string(),
            })
    }
}

/// A message received on a subscription.
#[derive(Debug, Clone)]
pub struct Event {
    /// The subject it was published on.
    pub subject: String,
    /// Its bytes.
    pub payload: Bytes,
    /// Where to reply, for requests.
    pub reply: Option<String>,
}

impl Event {
    /// Decodes the payload as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// A stream of [`Event`]s; unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    subscriber: async_nats::Subscriber,
}

impl Subscription {
    /// A stream of decoded events: `(subject, value)`, or the decode error of
    /// a message that is not a `T`.
    pub fn typed<T: DeserializeOwned>(
        self,
    ) -> impl Stream<Item = Result<(String, T), EventDecodeError>> + Send + Unpin {
        self.map(|event| match event.json::<T>() {
            Ok(value) => Ok((event.subject, value)),
            Err(err) => Err(EventDecodeError {
                subject: event.subject,
                reason: err.to_string(),
            }),
        })
    }

    /// Stops the subscription; the stream ends after buffered messages.
    pub async fn unsubscribe(&mut self) {
        let _ = self.subscriber.unsubscribe().await;
    }
}

/// An event that did not decode as the expected type.
#[derive(Debug, Clone, thiserror::Error)]
#[error("message on {subject} is not the expected JSON: {reason}")]
pub struct EventDecodeError {
    /// Where it came from.
    pub subject: String,
    /// Why it did not decode.
    pub reason: String,
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.subscriber.poll_next_unpin(cx).map(|message| {
            message.map(|m| Event {
                subject: m.subject.to_string(),
                payload: m.payload,
                reply: m.reply.map(|r| r.to_string()),
            })
        })
    }
}
