//! The client side of the bus: sending tasks, publishing and subscribing to events.

use crate::connect::{ConnectError, ServerTarget};
use crate::name::{InvalidName, Name};
use crate::protocol::{Priority, TaskRequest, TaskResponse};
use crate::subject::{self, InvalidSubject, Subject, SubjectPattern};
use crate::task_id::{TaskId, TaskKey};
use crate::telemetry::Traced;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Default time to wait for an agent's answer.
pub(crate) const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to the bus; cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    // Shared: a Bus is cloned into every task's context, and a JetStream
    // context owns strings of its own.
    inner: std::sync::Arc<BusInner>,
}

#[derive(Debug, Clone)]
struct BusInner {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    /// How long a store in a stream is retried ([`Bus::store_deadline`]).
    store_deadline: Duration,
    /// Changes each time the connection is made again; started at the
    /// first store that waits on it.
    reconnects: std::sync::Arc<std::sync::OnceLock<tokio::sync::watch::Receiver<u64>>>,
    /// The agent whose identity the connection uses, if it is an agent's.
    identity: Option<Name>,
    /// Whether it uses the operator identity, which may do everything.
    operator: bool,
    /// The shared work queues its agent identity may take tasks from, when known.
    work_types: Option<Vec<Name>>,
    /// With an agent identity, the tasks it asked for over request/reply
    /// and waits for, with their runner (and how many requests wait for
    /// each): a control request about one names its runner, which it could
    /// not look up for a task that logs nothing (see [`Bus::asked_key`]).
    asking: std::sync::Arc<std::sync::Mutex<Asked>>,
}

/// Request/reply tasks waited for, by id: their runner, and how many
/// requests wait.
type Asked = HashMap<TaskId, (Name, u32), foldhash::fast::RandomState>;

/// How long a store in a stream is retried unless told otherwise: longer
/// than a stream leader election (about 5 s measured on loopback).
const DEFAULT_STORE_DEADLINE: Duration = Duration::from_secs(15);
/// How often a bus looks whether its connection was made again.
const RECONNECT_POLL: Duration = Duration::from_millis(100);

/// On a cluster, how long a request that nothing answers is sent again
/// before the agent is called absent: an agent whose server died answers
/// again once it has reconnected to another, within a second or two.
const NO_AGENT_GRACE: Duration = Duration::from_secs(3);
/// The wait before such a request is sent again.
const NO_AGENT_RETRY: Duration = Duration::from_millis(100);

/// Watches `client`'s count of connections made: one task per bus, which
/// ends when the bus is gone (the last receiver dropped).
fn watch_reconnects(client: &async_nats::Client) -> tokio::sync::watch::Receiver<u64> {
    use std::sync::atomic::Ordering;
    let statistics = client.statistics();
    let (sender, receiver) =
        tokio::sync::watch::channel(statistics.connects.load(Ordering::Relaxed));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RECONNECT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = sender.closed() => return,
            }
            let connects = statistics.connects.load(Ordering::Relaxed);
            sender.send_if_modified(|seen| std::mem::replace(seen, connects) != connects);
        }
    });
    receiver
}

/// How to send a task over request/reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOptions {
    /// How long to wait for each attempt.
    pub timeout: Duration,
    /// Extra attempts after a timeout; they reuse the task id, so an agentbus
    /// [`Runtime`](crate::Runtime) answers a repeat with its first response
    /// instead of running it twice (an agent written otherwise may run it again).
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
#[non_exhaustive]
pub enum SendTaskError {
    /// The agent name cannot be a subject token.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// Nobody serves `agent.<name>.task`.
    #[error(
        "no agent named {agent:?} is running (nothing answers agent.{agent}.task); start it or check the name"
    )]
    NoAgent {
        /// The agent asked.
        agent: String,
    },
    /// The agent did not answer in time. Whether retrying is safe depends on
    /// the agent: an agentbus runtime remembers task ids, other servers of
    /// `agent.<name>.task` may not.
    #[error(
        "agent {agent:?} did not answer task {task_id} within {after:?}; it may be busy or stuck; a retry with the same task_id is answered without running the task twice only by an agentbus agent (another implementation may run it again)"
    )]
    TimedOut {
        /// The agent asked.
        agent: String,
        /// The task.
        task_id: TaskId,
        /// How long each attempt waited.
        after: Duration,
    },
    /// The request exceeds the server's `max_payload`.
    #[error(
        "the task is {size} bytes, more than the server's max_payload of {max} bytes; send large data by reference"
    )]
    TooLarge {
        /// The request's size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// The answer is not a TaskResponse.
    #[error("agent {agent:?} answered with something that is not a TaskResponse: {source}")]
    InvalidResponse {
        /// The agent asked.
        agent: String,
        /// Why the answer did not decode.
        #[source]
        source: serde_json::Error,
    },
    /// The connection failed.
    #[error("cannot send the task: {source}")]
    Connection {
        /// Why.
        #[source]
        source: async_nats::RequestError,
    },
}

/// Why a task got no response, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendTaskErrorKind {
    /// The agent name is not valid.
    InvalidName,
    /// No agent of that name is running.
    NoAgent,
    /// The agent did not answer in time.
    TimedOut,
    /// The request is larger than the server accepts.
    TooLarge,
    /// The answer was not a TaskResponse.
    InvalidResponse,
    /// The connection failed.
    Connection,
}

impl SendTaskError {
    /// Why the task got no response.
    pub fn kind(&self) -> SendTaskErrorKind {
        match self {
            Self::InvalidName(_) => SendTaskErrorKind::InvalidName,
            Self::NoAgent { .. } => SendTaskErrorKind::NoAgent,
            Self::TimedOut { .. } => SendTaskErrorKind::TimedOut,
            Self::TooLarge { .. } => SendTaskErrorKind::TooLarge,
            Self::InvalidResponse { .. } => SendTaskErrorKind::InvalidResponse,
            Self::Connection { .. } => SendTaskErrorKind::Connection,
        }
    }
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The subject is not valid.
    #[error(transparent)]
    InvalidSubject(#[from] InvalidSubject),
    /// The value does not serialize to JSON.
    #[error("the value does not serialize to JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// The message exceeds the server's `max_payload`.
    #[error("the message is {size} bytes, more than the server's max_payload of {max} bytes")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// The connection failed.
    #[error("cannot publish: {source}")]
    Connection {
        /// Why.
        #[source]
        source: async_nats::Error,
    },
}

/// Why an event could not be published, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The subject or value is not valid.
    InvalidInput,
    /// The message is larger than the server accepts.
    TooLarge,
    /// The connection failed.
    Connection,
}

impl PublishError {
    /// Why the event could not be published.
    pub fn kind(&self) -> PublishErrorKind {
        match self {
            Self::InvalidSubject(_) | Self::Encode(_) => PublishErrorKind::InvalidInput,
            Self::TooLarge { .. } => PublishErrorKind::TooLarge,
            Self::Connection { .. } => PublishErrorKind::Connection,
        }
    }

    fn connection(source: impl Into<async_nats::Error>) -> Self {
        Self::Connection {
            source: source.into(),
        }
    }
}

/// Why a subscription could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The pattern is not valid.
    #[error(transparent)]
    InvalidSubject(#[from] InvalidSubject),
    /// The queue group name is not valid.
    #[error(transparent)]
    InvalidQueueGroup(#[from] InvalidName),
    /// The connection failed, or the server did not confirm the subscription.
    #[error("cannot subscribe: {source}")]
    Connection {
        /// Why.
        #[source]
        source: async_nats::Error,
    },
}

/// Why a subscription could not be made, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeErrorKind {
    /// The pattern or queue group is not valid.
    InvalidInput,
    /// The connection failed.
    Connection,
}

impl SubscribeError {
    /// Why the subscription could not be made.
    pub fn kind(&self) -> SubscribeErrorKind {
        match self {
            Self::InvalidSubject(_) | Self::InvalidQueueGroup(_) => {
                SubscribeErrorKind::InvalidInput
            }
            Self::Connection { .. } => SubscribeErrorKind::Connection,
        }
    }
}

impl Bus {
    /// Connects to `target`; `client_name` shows in the server's connection list.
    ///
    /// With an agent identity ([`ServerTarget::agent`]), what this bus sends
    /// carries that agent as its sender.
    pub async fn connect(target: &ServerTarget, client_name: &str) -> Result<Self, ConnectError> {
        let client = target.connect(client_name).await?;
        Ok(Self::wrap(BusInner {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
            store_deadline: DEFAULT_STORE_DEADLINE,
            reconnects: Default::default(),
            identity: target.agent().cloned(),
            operator: target.is_operator(),
            work_types: target.work_types().map(<[Name]>::to_vec),
            asking: Default::default(),
        }))
    }

    /// Wraps an existing connection that has no agent identity: tasks and
    /// messages sent through it have no verified sender, unless sent on an
    /// agent's behalf by a [`crate::Runtime`] it serves.
    pub fn from_client(client: async_nats::Client) -> Self {
        Self::wrapping(client, None)
    }

    /// Wraps a connection that uses agent `agent`'s identity: tasks and
    /// messages sent through it carry `agent` as their sender, and a
    /// [`crate::Runtime`] on it serves that agent only.
    pub fn from_client_as(client: async_nats::Client, agent: Name) -> Self {
        Self::wrapping(client, Some(agent))
    }

    /// An existing connection, with agent identity `identity` if any.
    fn wrapping(client: async_nats::Client, identity: Option<Name>) -> Self {
        Self::wrap(BusInner {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
            store_deadline: DEFAULT_STORE_DEADLINE,
            reconnects: Default::default(),
            identity,
            operator: false,
            work_types: None,
            asking: Default::default(),
        })
    }

    fn wrap(inner: BusInner) -> Self {
        Self {
            inner: std::sync::Arc::new(inner),
        }
    }

    /// This bus with stores in streams retried for up to `deadline` (15 s
    /// unless set): tasks submitted, messages sent, results and dead
    /// letters stored ride a stream leader election or a reconnect within
    /// it, and fail with [`crate::delivery::StoreErrorKind::Unavailable`] after it.
    #[must_use]
    pub fn with_store_deadline(self, deadline: Duration) -> Self {
        let mut inner = std::sync::Arc::unwrap_or_clone(self.inner);
        inner.store_deadline = deadline;
        Self::wrap(inner)
    }

    /// How long a store in a stream is retried (see [`Bus::with_store_deadline`]).
    pub fn store_deadline(&self) -> Duration {
        self.inner.store_deadline
    }

    /// A receiver that changes each time the connection is made again.
    pub(crate) fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner
            .reconnects
            .get_or_init(|| watch_reconnects(&self.inner.client))
            .clone()
    }

    /// The agent whose identity this connection uses, if any.
    pub fn identity(&self) -> Option<&Name> {
        self.inner.identity.as_ref()
    }

    /// The task types whose shared queues (`work.<type>`) this connection's
    /// agent identity may take tasks from, when its target said
    /// ([`ServerTarget::work_types`]); `None` when not known.
    pub fn granted_work_types(&self) -> Option<&[Name]> {
        self.inner.work_types.as_deref()
    }

    /// Whether this connection uses the operator identity of `agentbus up`,
    /// which may read and change everything on the bus.
    pub fn is_operator(&self) -> bool {
        self.inner.operator
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
    ///
    /// The task carries this connection's agent identity as its sender, if
    /// it has one (see [`Bus::identity`]). It is delivered at most once: a
    /// request lost on the way (sent as the agent's server dies) times out
    /// unless [`RequestOptions::retries`] sends it again; a task that must
    /// not be lost goes through a work queue ([`Bus::submit`]).
    pub async fn request(
        &self,
        agent: &str,
        request: &TaskRequest,
        options: RequestOptions,
    ) -> Result<TaskResponse, SendTaskError> {
        self.request_from(self.identity(), agent, request, options)
            .await
    }

    /// [`Bus::request`] sent as agent `from` (on `agent.<agent>.task.<from>`),
    /// or without a sender (on `agent.<agent>.task`).
    pub(crate) async fn request_from(
        &self,
        from: Option<&Name>,
        agent: &str,
        request: &TaskRequest,
        options: RequestOptions,
    ) -> Result<TaskResponse, SendTaskError> {
        let agent_name = Name::parse("agent name", agent)?;
        let subject_and_body = || {
            let subject = match from {
                Some(from) => subject::agent_task_from(&agent_name, from),
                None => subject::agent_task(&agent_name),
            };
            (subject, Bytes::from(request.to_json()))
        };
        let (subject, body) = subject_and_body();
        let size = body.len();
        let max = self.max_payload();
        if size > max {
            return Err(SendTaskError::TooLarge { size, max });
        }
        // Sent in its identity's name: remembered while it waits, so that
        // a control request about it reaches its runner.
        let _asking = match (self.identity(), from) {
            (Some(me), Some(from)) if me == from => {
                Some(Asking::new(self, &request.task_id, &agent_name))
            }
            _ => None,
        };
        let mut attempt = 0;
        // When a request nothing answers stops being asked again.
        let mut ask_until: Option<std::time::Instant> = None;
        // One span for every attempt: the answer may come to any of them.
        let traced = Traced::produce("send", subject.as_str(), Some(request.task_id.as_str()));
        // The first attempt sends the subject and body made above, moved;
        // the rare others, ones made again: cloning a `Bytes` made from a
        // `Vec` allocates.
        let mut first = Some((subject, body));
        loop {
            let (subject, payload) = first.take().unwrap_or_else(subject_and_body);
            let mut asked = async_nats::Request::new()
                .payload(payload)
                .timeout(Some(options.timeout));
            // Written for each attempt: cheaper than a copy kept for the
            // rare second one.
            if let Some(headers) = traced.headers() {
                asked = asked.headers(headers);
            }
            let sent = self.inner.client.send_request(subject.into_nats(), asked);
            match sent.await {
                Ok(message) => {
                    return serde_json::from_slice(&message.payload).map_err(|source| {
                        SendTaskError::InvalidResponse {
                            agent: agent.to_owned(),
                            source,
                        }
                    });
                }
                Err(err) => {
                    use async_nats::client::RequestErrorKind as Kind;
                    match err.kind() {
                        Kind::NoResponders => {
                            let until = *ask_until.get_or_insert_with(|| {
                                let clustered = self.inner.client.server_info().cluster.is_some();
                                let grace = if clustered {
                                    NO_AGENT_GRACE.min(options.timeout)
                                } else {
                                    Duration::ZERO
                                };
                                std::time::Instant::now() + grace
                            });
                            if std::time::Instant::now() + NO_AGENT_RETRY < until {
                                tokio::time::sleep(NO_AGENT_RETRY).await;
                                continue;
                            }
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
                            return Err(SendTaskError::TooLarge { size, max });
                        }
                        _ => return Err(SendTaskError::Connection { source: err }),
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
        let body = serde_json::to_vec(value).map_err(PublishError::Encode)?;
        self.publish_bytes(&subject, body.into()).await
    }

    /// Publishes platform event `event` (a [`subject::events`] constant),
    /// stamped with this connection's agent identity when it has one, so
    /// that a receiver knows who reported it ([`subject::sender_of`]).
    pub async fn publish_platform_event<T: Serialize + ?Sized>(
        &self,
        event: &'static str,
        value: &T,
    ) -> Result<(), PublishError> {
        let subject = subject::events::stamped(event, self.identity());
        let body = serde_json::to_vec(value).map_err(PublishError::Encode)?;
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
        let traced = Traced::produce("publish", subject.as_str(), None);
        let published = match traced.headers() {
            Some(headers) => {
                self.inner
                    .client
                    .publish_with_headers(subject.to_nats(), headers, body)
                    .await
            }
            None => self.inner.client.publish(subject.to_nats(), body).await,
        };
        published.map_err(PublishError::connection)
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
        let subject = String::from(pattern);
        let subscriber = match queue_group {
            Some(group) => {
                let group = Name::parse("queue group", group)?;
                self.inner
                    .client
                    .queue_subscribe(subject, group.to_string())
                    .await
            }
            None => self.inner.client.subscribe(subject).await,
        }
        .map_err(|err| SubscribeError::Connection { source: err.into() })?;
        self.sync()
            .await
            .map_err(|err| SubscribeError::Connection { source: err.into() })?;
        Ok(Subscription { subscriber })
    }

    /// Waits until the server has processed everything sent on this
    /// connection so far (subscriptions included): `flush` only writes to
    /// the socket. The round trip is a message to a subscription of this
    /// connection's own, on a fresh inbox subject: the server delivers it only
    /// after it handled what came before, and no other client can answer it
    /// or swallow it (a foreign `>` subscriber merely sees a copy).
    pub async fn sync(&self) -> Result<(), SyncError> {
        let client = &self.inner.client;
        let subject = client.new_inbox();
        let mut probe = client
            .subscribe(subject.clone())
            .await
            .map_err(|err| SyncError(err.into()))?;
        client
            .publish(subject, Bytes::new())
            .await
            .map_err(|err| SyncError(err.into()))?;
        let arrived = tokio::time::timeout(SYNC_TIMEOUT, probe.next()).await;
        let _ = probe.unsubscribe().await;
        match arrived {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(SyncError("the connection closed".into())),
            Err(_) => Err(SyncError(
                format!("the server did not echo within {SYNC_TIMEOUT:?}").into(),
            )),
        }
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), PublishError> {
        self.inner
            .client
            .flush()
            .await
            .map_err(PublishError::connection)
    }
}

/// How long [`Bus::sync`] waits for its own message to come back.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// The server did not confirm what this connection sent.
#[derive(Debug, thiserror::Error)]
#[error("the server did not confirm this connection's subscriptions: {0}")]
pub struct SyncError(#[source] async_nats::Error);

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
            Err(source) => Err(EventDecodeError {
                subject: event.subject,
                source,
            }),
        })
    }

    /// Stops the subscription; the stream ends after buffered messages.
    pub async fn unsubscribe(&mut self) {
        let _ = self.subscriber.unsubscribe().await;
    }
}

/// An event that did not decode as the expected type.
#[derive(Debug, thiserror::Error)]
#[error("message on {subject} is not the expected JSON: {source}")]
pub struct EventDecodeError {
    /// Where it came from.
    pub subject: String,
    /// Why it did not decode.
    #[source]
    pub source: serde_json::Error,
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

impl Bus {
    /// The key of task `task_id` when this connection's agent identity
    /// asked for it over request/reply and waits for the answer: its runner
    /// is the agent asked.
    pub(crate) fn asked_key(&self, task_id: &TaskId) -> Option<TaskKey> {
        let me = self.identity()?;
        let asking = self.inner.asking.lock().ok()?;
        let (runner, _) = asking.get(task_id)?;
        Some(TaskKey::of_agent(runner, Some(me), task_id))
    }
}

/// A request/reply task this connection's identity waits for, remembered
/// with its runner until the wait ends.
struct Asking<'a> {
    bus: &'a Bus,
    task_id: &'a TaskId,
}

impl<'a> Asking<'a> {
    fn new(bus: &'a Bus, task_id: &'a TaskId, runner: &Name) -> Self {
        if let Ok(mut asking) = bus.inner.asking.lock() {
            asking
                .entry(task_id.clone())
                .or_insert_with(|| (runner.clone(), 0))
                .1 += 1;
        }
        Self { bus, task_id }
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        // Removed, and put back in the rare case of another wait for the
        // same id: one lookup for the common one.
        if let Ok(mut asking) = self.bus.inner.asking.lock()
            && let Some((runner, waiting)) = asking.remove(self.task_id)
            && waiting > 1
        {
            asking.insert(self.task_id.clone(), (runner, waiting - 1));
        }
    }
}
