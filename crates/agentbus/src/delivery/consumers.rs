//! Every durable consumer agentbus works, defined once: its stream, name,
//! filters and limits. A runtime replica and an MCP bridge serving the same
//! agent create the same consumer from the same definition, so neither can
//! change what the other promises (an inbox stays in order whoever starts
//! last).

use super::DeliveryOptions;
use super::queue::Queue;
use crate::name::Name;
use crate::protocol::Priority;
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
        }
    }

    /// The consumer of an agent's inbox: in order, one message at a time.
    pub fn inbox(agent: &Name) -> Self {
        Self {
            stream: subject::MESSAGES_STREAM,
            name: subject::durable::inbox(agent),
            filters: vec![subject::agent_inbox(agent).into()],
            max_ack_pending: IN_ORDER,
            inactive_threshold: None,
        }
    }

    /// The consumer of an agent's direct channel: concurrent, unordered.
    pub fn direct(agent: &Name) -> Self {
        Self {
            stream: subject::MESSAGES_STREAM,
            name: subject::durable::direct(agent),
            filters: vec![subject::agent_direct(agent).into()],
            max_ack_pending: DIRECT_MAX_ACK_PENDING,
            inactive_threshold: None,
        }
    }

    /// The consumer of the broadcasts an agent receives: its topics and
    /// every announcement, in order.
    pub fn broadcasts(agent: &Name, topics: &[Name]) -> Self {
        let mut filters: Vec<String> = topics
            .iter()
            .map(|topic| subject::broadcast(topic).into())
            .collect();
        filters.push(subject::ALL_ANNOUNCEMENTS.to_owned());
        Self {
            stream: subject::BROADCAST_STREAM,
            name: subject::durable::broadcast(agent),
            filters,
            max_ack_pending: IN_ORDER,
            inactive_threshold: None,
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

    /// Creates the consumer, or updates an existing one to this definition
    /// (its cursor and pending messages are kept).
    pub async fn create(
        &self,
        js: &jetstream::Context,
        options: &DeliveryOptions,
    ) -> Result<PullConsumer, ConsumerError> {
        let stream = self.stream_of(js).await?;
        self.create_on(&stream, options).await
    }

    /// The stream the consumer reads.
    async fn stream_of(
        &self,
        js: &jetstream::Context,
    ) -> Result<jetstream::stream::Stream, ConsumerError> {
        js.get_stream(self.stream).await.map_err(|err| {
            let kind = match err.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    ConsumerErrorKind::NoStream
                }
                _ => ConsumerErrorKind::Unavailable,
            };
            self.error(kind, err)
        })
    }

    /// [`ConsumerSpec::create`] on the stream, looked up already.
    async fn create_on(
        &self,
        stream: &jetstream::stream::Stream,
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
        stream.create_consumer(config).await.map_err(|err| {
            let kind = match err.kind() {
                jetstream::stream::ConsumerErrorKind::JetStream(_) => ConsumerErrorKind::Refused,
                _ => ConsumerErrorKind::Unavailable,
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
        js: &jetstream::Context,
        defaults: &DeliveryOptions,
    ) -> Result<(PullConsumer, DeliveryOptions), ConsumerError> {
        let stream = self.stream_of(js).await?;
        let options = match stream.consumer_info(&self.name).await.ok() {
            Some(info) => DeliveryOptions {
                ack_wait: info.config.ack_wait,
                // Zero or below: without a limit.
                max_deliver: u32::try_from(info.config.max_deliver)
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or(u32::MAX),
                ..*defaults
            },
            None => *defaults,
        };
        Ok((self.create_on(&stream, &options).await?, options))
    }

    fn error(
        &self,
        kind: ConsumerErrorKind,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ConsumerError {
        ConsumerError {
            kind,
            stream: self.stream,
            consumer: self.name.clone(),
            hint: match kind {
                ConsumerErrorKind::NoStream => "run `agentbus setup` to create the streams",
                ConsumerErrorKind::Refused => {
                    "check the stream's limits with `agentbus status`, or turn this part off in AgentOptions"
                }
                ConsumerErrorKind::Unavailable => {
                    "check that the server is up and JetStream enabled"
                }
            },
            source: Box::new(source),
        }
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
        assert_eq!(broadcasts.filters(), ["broadcast.news", "announce.*"]);
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
