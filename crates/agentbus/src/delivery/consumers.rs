//! Every durable consumer agentbus works, defined once: its stream, name,
//! filters and limits. A runtime replica and an MCP bridge serving the same
//! agent create the same consumer from the same definition, so neither can
//! change what the other promises (an inbox stays in order whoever starts
//! last).

use super::DeliveryOptions;
use super::queue::Queue;
use crate::client::Bus;
use crate::name::Name;
use crate::protocol::Priority;
use crate::ride::ride;
use crate::stream_read::{self, FindError};
use crate::subject;
use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use std::time::Duration;

/// Unacknowledged deliveries a work-queue consumer hands out at most, over
/// every worker: enough for several replicas at full concurrency.
const TASK_QUEUE_MAX_ACK_PENDING: i64 = 1024;
/// Unacknowledged direct messages at most (direct messages run concurrently).
const DIRECT_MAX_ACK_PENDING: i64 = 256;
/// An idle work-queue consumer is deleted by the server after this long:
/// queues cost nothing while empty, and their consumers are made again when
/// work arrives. Consumers of inboxes and broadcasts hold the agent's cursor
/// and are kept.
const QUEUE_IDLE: Duration = Duration::from_secs(30);
/// One message at a time, across every reader: the in-order promise of the
/// inbox and of broadcasts. A second message is delivered only once the first
/// is acknowledged or dead-lettered.
const IN_ORDER: i64 = 1;

/// The definition of one durable pull consumer. Every process that reads
/// an agent's queues, inbox or broadcasts creates its consumers from these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    stream: &'static str,
    name: String,
    filters: Vec<String>,
    max_ack_pending: i64,
    /// Deleted by the server after this long idle, when set.
    inactive_threshold: Option<Duration>,
    /// Made by the operator for a connection with an agent identity, which
    /// may not make it: its filters are more than one subject, and nats-server
    /// checks a filter against permissions only when it is the only one.
    provisioned: bool,
}

/// Why a durable consumer could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the durable consumer {consumer} on stream {stream}: {source}; {hint}")]
pub struct ConsumerError {
    kind: ConsumerErrorKind,
    stream: &'static str,
    consumer: String,
    hint: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// What went wrong setting up a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerErrorKind {
    /// The stream does not exist: `agentbus setup` creates it.
    NoStream,
    /// The consumer does not exist, and this connection's agent identity
    /// may not make it: `agentbus creds add` does.
    NotProvisioned,
    /// JetStream refused the consumer (a limit, a conflicting consumer).
    Refused,
    /// The server did not answer, or the connection failed.
    Unavailable,
}

impl ConsumerError {
    /// What went wrong.
    pub fn kind(&self) -> ConsumerErrorKind {
        self.kind
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }
}

impl ConsumerSpec {
    /// The consumer of `queue`'s tasks of `priority`, shared by every worker of the queue.
    pub fn task_queue(queue: &Queue, priority: Priority) -> Self {
        Self {
            stream: subject::TASKS_STREAM,
            name: queue.durable(priority),
            filters: vec![queue.subject(priority).into()],
            max_ack_pending: TASK_QUEUE_MAX_ACK_PENDING,
            inactive_threshold: Some(QUEUE_IDLE),
            provisioned: false,
        }
    }

    /// The consumer of an agent's inbox: in order, one message at a time.
    pub fn inbox(agent: &Name) -> Self {
        Self {
            stream: subject::MESSAGES_STREAM,
            name: subject::durable::inbox(agent),
            filters: subject::with_senders(&subject::agent_inbox(agent)).into(),
            max_ack_pending: IN_ORDER,
            inactive_threshold: None,
            provisioned: true,
        }
    }

    /// The consumer of an agent's direct channel: concurrent, unordered.
    pub fn direct(agent: &Name) -> Self {
        Self {
            stream: subject::MESSAGES_STREAM,
            name: subject::durable::direct(agent),
            filters: subject::with_senders(&subject::agent_direct(agent)).into(),
            max_ack_pending: DIRECT_MAX_ACK_PENDING,
            inactive_threshold: None,
            provisioned: true,
        }
    }

    /// The consumer of the broadcasts an agent receives: its topics and
    /// every announcement, in order.
    pub fn broadcasts(agent: &Name, topics: &[Name]) -> Self {
        let mut filters: Vec<String> = topics
            .iter()
            .flat_map(|topic| subject::with_senders(&subject::broadcast(topic)))
            .collect();
        filters.extend(subject::ALL_ANNOUNCEMENTS.map(str::to_owned));
        Self {
            stream: subject::BROADCAST_STREAM,
            name: subject::durable::broadcast(agent),
            filters,
            max_ack_pending: IN_ORDER,
            inactive_threshold: None,
            // Broadcasts are for every agent: an identity may make its own
            // consumer of them, with whatever topics.
            provisioned: false,
        }
    }

    /// The subjects this consumer reads; a publish on one of them means it may have work.
    pub fn filters(&self) -> &[String] {
        &self.filters
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream it reads.
    pub fn stream(&self) -> &'static str {
        self.stream
    }

    /// How long the server keeps it idle before deleting it, if it does.
    pub fn inactive_threshold(&self) -> Option<Duration> {
        self.inactive_threshold
    }

    /// Whether `bus` must use this consumer as the operator made it: it has
    /// an agent identity, and the consumer is one an agent may not make.
    fn made_by_operator_for(&self, bus: &Bus) -> bool {
        bus.identity().is_some() && self.provisioned
    }

    /// Whether an agent identity gets this consumer made by the operator
    /// (`agentbus creds add`) instead of making it.
    pub fn is_provisioned(&self) -> bool {
        self.provisioned
    }

    /// Creates the consumer, or updates an existing one to this definition
    /// (its cursor and pending messages are kept). On a connection with an
    /// agent identity, a consumer the operator provisions is used as it is.
    pub async fn create(
        &self,
        bus: &Bus,
        options: &DeliveryOptions,
    ) -> Result<PullConsumer, ConsumerError> {
        let stream = self.stream_of(bus).await?;
        if self.made_by_operator_for(bus) {
            return self.provisioned_on(&stream).await;
        }
        self.create_on(bus, &stream, options).await
    }

    /// The consumer the operator made for an agent identity.
    async fn provisioned_on(
        &self,
        stream: &jetstream::stream::Stream<()>,
    ) -> Result<PullConsumer, ConsumerError> {
        stream.get_consumer(&self.name).await.map_err(|err| {
            let missing = err
                .downcast_ref::<jetstream::Error>()
                .is_some_and(|js| js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND);
            let kind = if missing {
                ConsumerErrorKind::NotProvisioned
            } else {
                ConsumerErrorKind::Unavailable
            };
            self.error(kind, err)
        })
    }

    /// The stream the consumer reads; asked again through a reconnect or a
    /// stream without a leader, up to the bus's store deadline.
    /// Found by a subject it reads, the way an agent identity may
    /// ([`stream_read::find`]).
    async fn stream_of(&self, bus: &Bus) -> Result<jetstream::stream::Stream<()>, ConsumerError> {
        let subject = self.filters.first().map_or(">", String::as_str);
        stream_read::find(bus, self.stream, subject)
            .await
            .map_err(|err| {
                let kind = match err {
                    FindError::Missing { .. } => ConsumerErrorKind::NoStream,
                    FindError::Unanswered { .. } => ConsumerErrorKind::Unavailable,
                };
                self.error(kind, err)
            })
    }

    /// [`ConsumerSpec::create`] on the stream, looked up already.
    async fn create_on(
        &self,
        bus: &Bus,
        stream: &jetstream::stream::Stream<()>,
        options: &DeliveryOptions,
    ) -> Result<PullConsumer, ConsumerError> {
        let mut config = pull::Config {
            durable_name: Some(self.name.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            max_deliver: i64::from(options.max_deliver),
            max_ack_pending: self.max_ack_pending,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            inactive_threshold: self.inactive_threshold.unwrap_or_default(),
            ..Default::default()
        };
        match self.filters.as_slice() {
            [one] => config.filter_subject = one.clone(),
            many => config.filter_subjects = many.to_vec(),
        }
        // Made again through a reconnect or an election: the same config
        // makes the same consumer.
        let refused = |err: &jetstream::stream::ConsumerError| {
            matches!(
                err.kind(),
                jetstream::stream::ConsumerErrorKind::JetStream(_)
            )
        };
        ride(
            bus,
            &self.name,
            || stream.create_consumer(config.clone()),
            |err| !refused(err),
        )
        .await
        .map_err(|err| {
            let kind = if refused(&err) {
                ConsumerErrorKind::Refused
            } else {
                ConsumerErrorKind::Unavailable
            };
            self.error(kind, err)
        })
    }

    /// Creates the consumer for a process that shares it and has no
    /// delivery options of its own (an MCP bridge beside a runtime serving
    /// the same agent): an existing consumer keeps the ack wait and max
    /// deliver it was made with, and the rest of this definition is applied;
    /// a missing one is made with `defaults`. Returns the options in force.
    pub async fn create_sharing(
        &self,
        bus: &Bus,
        defaults: &DeliveryOptions,
    ) -> Result<(PullConsumer, DeliveryOptions), ConsumerError> {
        let stream = self.stream_of(bus).await?;
        if self.made_by_operator_for(bus) {
            let consumer = self.provisioned_on(&stream).await?;
            let options = options_of(&consumer.cached_info().config, defaults);
            return Ok((consumer, options));
        }
        let options = match stream.consumer_info(&self.name).await.ok() {
            Some(info) => options_of(&info.config, defaults),
            None => *defaults,
        };
        Ok((self.create_on(bus, &stream, &options).await?, options))
    }

    fn error(
        &self,
        kind: ConsumerErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ConsumerError {
        ConsumerError {
            kind,
            stream: self.stream,
            consumer: self.name.clone(),
            hint: Self::hint(kind),
            source: source.into(),
        }
    }

    fn hint(kind: ConsumerErrorKind) -> &'static str {
        match kind {
            ConsumerErrorKind::NoStream => "run `agentbus setup` to create the streams",
            ConsumerErrorKind::NotProvisioned => {
                "the agent's identity may not make it; `agentbus creds add <agent>` provisions it"
            }
            ConsumerErrorKind::Refused => {
                "check the stream's limits with `agentbus status`, or turn this part off in AgentOptions"
            }
            ConsumerErrorKind::Unavailable => "check that the server is up and JetStream enabled",
        }
    }
}

/// The delivery options an existing consumer was made with; the rest from `defaults`.
fn options_of(config: &jetstream::consumer::Config, defaults: &DeliveryOptions) -> DeliveryOptions {
    DeliveryOptions {
        ack_wait: config.ack_wait,
        // Zero or below: without a limit.
        max_deliver: u32::try_from(config.max_deliver)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(u32::MAX),
        ..*defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        Name::parse("agent name", text).unwrap()
    }

    #[test]
    fn ordered_consumers_hand_out_one_message_at_a_time() {
        assert_eq!(ConsumerSpec::inbox(&name("a")).max_ack_pending, 1);
        let broadcasts = ConsumerSpec::broadcasts(&name("a"), &[name("news")]);
        assert_eq!(broadcasts.max_ack_pending, 1);
        assert_eq!(
            broadcasts.filters(),
            [
                "broadcast.news",
                "broadcast.news.*",
                "announce.*",
                "announce.*.*"
            ]
        );
        assert!(ConsumerSpec::direct(&name("a")).max_ack_pending > 1);
    }

    #[test]
    fn a_queue_consumer_reads_its_own_priority_only() {
        let queue = Queue::agent("a").unwrap();
        let spec = ConsumerSpec::task_queue(&queue, Priority::High);
        assert_eq!(spec.name, "tasks-a-high");
        assert_eq!(spec.filters(), ["tasks.a.high"]);
        assert_eq!(spec.stream, "agent-tasks");
    }
}
