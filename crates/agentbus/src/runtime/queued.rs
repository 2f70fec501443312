//! Durable work for a served agent: its work queues and, when enabled, its
//! inbox, direct channel and broadcasts. The consumers and the settlement
//! belong to [`crate::delivery`]; here the agent's handlers run.

use super::serve::{Served, execute, publish_task_event};
use crate::agent::{Agent, AgentMessage, TaskContext};
use crate::delivery::worker::{Job, Source, WorkerConfig};
use crate::delivery::{
    ConsumerError, ConsumerSpec, Delivery, FROM_HEADER, Opened, Queue, Settled, Settler, body_value,
};
use crate::name::Name;
use crate::protocol::Priority;
use crate::subject::{self, MessageChannel};
use async_nats::jetstream;
use std::sync::Arc;
use std::time::Instant;

/// How a worker of the agent runs: `max_concurrency` jobs at once.
fn worker_config<A>(served: &Served<A>, max_concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        max_concurrency,
        idle_poll: served.options.delivery.idle_poll,
    }
}

async fn source<A>(
    js: &jetstream::Context,
    served: &Served<A>,
    spec: &ConsumerSpec,
    priority: Priority,
) -> Result<Source, ConsumerError> {
    Ok(Source {
        consumer: spec.create(js, &served.options.delivery).await?,
        wake_subjects: spec.filters().to_vec(),
        priority,
    })
}

/// The sources of an agent's work queues: `tasks.<name>` and `work.<type>` for
/// each accepted type, at each priority.
pub(super) async fn queue_sources<A>(
    js: &jetstream::Context,
    served: &Served<A>,
    task_types: &[Name],
) -> Result<(Vec<Source>, WorkerConfig), ConsumerError> {
    let queues = std::iter::once(Queue::Agent(served.name.clone()))
        .chain(task_types.iter().cloned().map(Queue::TaskType));
    let mut sources = Vec::new();
    for queue in queues {
        for priority in Priority::ALL {
            let spec = ConsumerSpec::task_queue(&queue, priority);
            sources.push(source(js, served, &spec, priority).await?);
        }
    }
    let config = worker_config(served, served.options.max_concurrency);
    Ok((sources, config))
}

/// The message workers of an agent: its inbox (in order, one at a time), its
/// direct channel, and its broadcasts and announcements (in order).
pub(super) async fn message_sources<A>(
    js: &jetstream::Context,
    served: &Served<A>,
    topics: &[Name],
) -> Result<Vec<(Vec<Source>, WorkerConfig)>, ConsumerError> {
    let agent = &served.name;
    let normal = Priority::Normal;
    let inbox = source(js, served, &ConsumerSpec::inbox(agent), normal).await?;
    let direct = source(js, served, &ConsumerSpec::direct(agent), normal).await?;
    let broadcasts = ConsumerSpec::broadcasts(agent, topics);
    let broadcasts = source(js, served, &broadcasts, normal).await?;
    Ok(vec![
        (vec![inbox], worker_config(served, 1)),
        (
            vec![direct],
            worker_config(served, served.options.max_concurrency),
        ),
        (vec![broadcasts], worker_config(served, 1)),
    ])
}

/// Runs queued tasks through the agent's handler, then settles them.
pub(super) struct TaskJob<A> {
    pub(super) served: Arc<Served<A>>,
    pub(super) settler: Settler,
}

impl<A: Agent> Job for TaskJob<A> {
    async fn run(&self, delivery: Delivery) {
        let served = &self.served;
        let opened = Instant::now();
        let (attempt, request) = match self.settler.open_task(delivery).await {
            Ok(Opened::Run(attempt, request)) => (attempt, request),
            Ok(Opened::Settled) => return,
            Ok(Opened::Malformed(error)) => {
                served.counters.rejected(&error, opened.elapsed());
                return;
            }
            Err(err) => {
                // Unsettled: it is delivered again after the ack wait.
                tracing::warn!(%err, agent = %served.name, "a queued task could not be opened");
                return;
            }
        };
        if let Err(err) = served.task_types.check(served.name.as_str(), &request) {
            // Counted before the record that tells the sender is written.
            served.counters.rejected(err.message(), opened.elapsed());
            if let Err(err) = attempt.give_up(err.message(), err.status()).await {
                tracing::warn!(%err, task_id = %attempt.task_id(), "a refused task could not be dead-lettered");
            }
            return;
        }
        let task_type = request.task_type.clone();
        let outcome = attempt
            .delivery()
            .in_progress(execute(served, request, Instant::now()))
            .await;
        match attempt.settle(&outcome.response, outcome.retryable).await {
            Ok(Settled::Retrying(_)) => {}
            Ok(_) => {
                publish_task_event(
                    served,
                    attempt.task_id(),
                    &task_type,
                    &outcome.response,
                    outcome.duration,
                )
                .await;
            }
            Err(err) => {
                tracing::warn!(%err, task_id = %attempt.task_id(), "a queued task could not be settled");
            }
        }
    }
}

/// Runs durable messages through the agent's message handler, then settles them.
pub(super) struct MessageJob<A> {
    pub(super) served: Arc<Served<A>>,
    pub(super) settler: Settler,
}

impl<A: Agent> Job for MessageJob<A> {
    async fn run(&self, delivery: Delivery) {
        let served = &self.served;
        let message_id = delivery.header("Nats-Msg-Id").map(str::to_owned);
        let agent_message = AgentMessage {
            channel: channel_of(delivery.subject()),
            subject: delivery.subject().to_owned(),
            message_id: message_id.clone(),
            from: delivery.header(FROM_HEADER).map(str::to_owned),
            body: body_value(delivery.payload()),
            sequence: delivery.stream_sequence(),
            attempt: delivery.attempt(),
        };
        let ctx = TaskContext {
            agent: served.name.clone(),
            instance_id: served.instance_id.clone(),
            task_id: message_id.as_deref().unwrap_or_default().into(),
            bus: served.bus.clone(),
        };
        let handled = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            delivery.in_progress(served.agent.handle_message(agent_message, ctx)),
        ))
        .await;
        let outcome = match handled {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err((err.message().to_owned(), err.is_retryable())),
            // A panic is not retried: it would panic again.
            Err(_) => Err(("the message handler panicked".to_owned(), false)),
        };
        if let Err(err) = self.settler.settle_message(&delivery, outcome).await {
            tracing::warn!(%err, subject = delivery.subject(), "a message could not be settled");
        }
    }
}

/// The channel of a stored message; a subject outside the known channels
/// (a custom topology's) counts as the inbox.
fn channel_of(subject: &str) -> MessageChannel {
    subject::parse_channel(subject).unwrap_or(MessageChannel::Inbox)
}
