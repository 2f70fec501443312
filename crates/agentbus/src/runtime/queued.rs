//! Durable work for a served agent: its work queues and, when enabled, its
//! inbox, direct channel and broadcasts. The consumers and the settlement
//! belong to [`crate::delivery`]; here the agent's handlers run.

use super::serve::{Served, execute, publish_task_event};
use crate::agent::{Agent, AgentMessage, Handled, TaskContext};
use crate::delivery::worker::{AgentWork, Job, JobFuture, Limits};
use crate::delivery::{
    ConsumerError, ConsumerSpec, Delivery, FROM_HEADER, Opened, Queue, Settled, Settler, body_value,
};
use crate::name::Name;
use crate::protocol::{TaskResponse, TaskStatus};
use crate::subject::{self, MessageChannel};
use crate::task_log::EventType;
use crate::telemetry::{Destination, Parent, TRACEPARENT, TRACESTATE, Traced};
use std::sync::Arc;
use std::time::Instant;

/// The durable work of an agent, for the runtime's worker: its work queues
/// (`tasks.<name>` and `work.<type>` for each accepted type; their consumers
/// are made when work arrives) and, with messages on, its inbox (in order,
/// one at a time), direct channel and broadcasts (in order), whose consumers
/// are made now, so that a failure to make them fails the agent's start.
pub(super) async fn agent_work<A: Agent>(
    served: &Arc<Served<A>>,
    task_types: &[Name],
    topics: &[Name],
    settler: Option<Settler>,
    message_settler: Option<Settler>,
) -> Result<AgentWork, ConsumerError> {
    let options = served.options.delivery;
    let limits = |concurrency| Limits {
        concurrency,
        bytes: served.options.max_held_bytes,
    };
    // An agent identity takes tasks from the shared queues it was granted
    // only: one it may not consume would time out each time work arrives.
    let granted = served.bus.granted_work_types();
    let shared = task_types.iter().filter(|task_type| match granted {
        Some(granted) if !granted.contains(task_type) => {
            tracing::warn!(
                agent = %served.name,
                %task_type,
                "the agent's identity may not take tasks from work.{task_type}: it serves that type over request/reply and its own queue only; `agentbus creds add {agent} --work-type {task_type}` grants it",
                agent = served.name,
            );
            false
        }
        _ => true,
    });
    let tasks = settler.map(|settler| {
        let queues = std::iter::once(Queue::Agent(served.name.clone()))
            .chain(shared.cloned().map(Queue::TaskType))
            .collect();
        let job: Arc<dyn Job> = Arc::new(TaskJob {
            served: served.clone(),
            settler,
        });
        (job, limits(served.options.max_concurrency), queues)
    });
    let mut messages = Vec::new();
    if let Some(settler) = message_settler {
        let agent = &served.name;
        let job: Arc<dyn Job> = Arc::new(MessageJob {
            served: served.clone(),
            settler,
        });
        for (spec, concurrency) in [
            (ConsumerSpec::inbox(agent), 1),
            (ConsumerSpec::direct(agent), served.options.max_concurrency),
            (ConsumerSpec::broadcasts(agent, topics), 1),
        ] {
            let consumer = spec.create(&served.bus, &options).await?;
            messages.push((job.clone(), limits(concurrency), consumer, spec));
        }
    }
    Ok(AgentWork {
        tasks,
        messages,
        options,
    })
}

/// Runs queued tasks through the agent's handler, then settles them.
pub(super) struct TaskJob<A> {
    pub(super) served: Arc<Served<A>>,
    pub(super) settler: Settler,
}

impl<A: Agent> Job for TaskJob<A> {
    fn run(&self, delivery: Delivery) -> JobFuture {
        let (served, settler) = (self.served.clone(), self.settler.clone());
        Box::pin(run_task(served, settler, delivery))
    }
}

async fn run_task<A: Agent>(served: Arc<Served<A>>, settler: Settler, delivery: Delivery) {
    let served = &served;
    let opened = Instant::now();
    let (attempt, request) = match settler.open_task(delivery).await {
        Ok(Opened::Run(attempt, request)) => (attempt, request),
        Ok(Opened::Settled) => return,
        Ok(Opened::Malformed(error)) => {
            served.rejected("", &error, opened.elapsed());
            return;
        }
        Err(err) => {
            // Unsettled: it is delivered again after the ack wait.
            tracing::warn!(%err, agent = %served.name, "a queued task could not be opened");
            return;
        }
    };
    let task_type = match served.task_types.check(served.name.as_str(), &request) {
        Ok(task_type) => task_type,
        Err(err) => {
            // Counted before the record that tells the sender is written.
            served.rejected(&request.task_type, err.message(), opened.elapsed());
            match attempt.give_up(err.message(), err.status()).await {
                Ok(Settled::DeadLettered) => {
                    if let Some(metrics) = &served.metrics {
                        metrics.dead_lettered();
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, task_id = %attempt.task_id(), "a refused task could not be dead-lettered");
                }
            }
            return;
        }
    };
    let held = served.hold(
        &request,
        task_type,
        attempt.key().clone(),
        Some(attempt.attempt()),
    );
    // A task that may have a log already (its sender follows it, or an
    // earlier attempt ran) takes it over: one cancelled meanwhile ends here.
    if request.stream || attempt.attempt() > 1 {
        match held.task().take_over_log().await {
            Ok(Some(state)) => {
                let why = match state {
                    EventType::Timeout => "the task's deadline passed while it waited",
                    _ => "the task was cancelled while it waited",
                };
                let response =
                    TaskResponse::error(attempt.task_id().as_str(), TaskStatus::from(state), why);
                if let Err(err) = attempt.end(&response).await {
                    tracing::warn!(%err, task_id = %attempt.task_id(), "a task over already could not be settled");
                }
                return;
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%err, task_id = %attempt.task_id(), "cannot read the task's log");
            }
        }
    }
    let task_type = request.task_type.clone();
    if let Some(metrics) = &served.metrics
        && attempt.attempt() > 1
    {
        metrics.redelivered();
    }
    // Read for the metrics and the task event only: a clock read per task
    // otherwise spent.
    let waited = match served.metrics.is_some() || served.options.task_events {
        true => attempt.delivery().waited(),
        false => std::time::Duration::ZERO,
    };
    let delivery = attempt.delivery();
    let traced = handled_in(delivery, attempt.task_id().as_str());
    let outcome = delivery
        .in_progress(execute(
            served,
            request,
            subject::sender_of(delivery.subject()),
            &held,
            &traced,
            Instant::now(),
            waited,
        ))
        .await;
    let settled = if outcome.stopped && !outcome.retryable {
        attempt.end(&outcome.response).await
    } else {
        attempt.settle(&outcome.response, outcome.retryable).await
    };
    let task = held.task();
    match settled {
        Ok(Settled::Retrying(_)) => task.flush_log().await,
        Ok(Settled::Stale) => {
            served.counters.stale();
            if let Some(metrics) = &served.metrics {
                metrics.stale();
            }
            task.flush_log().await;
        }
        Ok(settled) => {
            if let (Some(metrics), Settled::DeadLettered) = (&served.metrics, settled) {
                metrics.dead_lettered();
            }
            task.finish(&outcome.response, outcome.duration, outcome.stopped)
                .await;
            publish_task_event(
                served,
                attempt.task_id(),
                &task_type,
                &outcome.response,
                outcome.duration,
                waited,
            )
            .await;
        }
        Err(err) => {
            task.flush_log().await;
            tracing::warn!(%err, task_id = %attempt.task_id(), "a queued task could not be settled");
        }
    }
}

/// Runs durable messages through the agent's message handler, then settles them.
pub(super) struct MessageJob<A> {
    pub(super) served: Arc<Served<A>>,
    pub(super) settler: Settler,
}

impl<A: Agent> Job for MessageJob<A> {
    fn run(&self, delivery: Delivery) -> JobFuture {
        let (served, settler) = (self.served.clone(), self.settler.clone());
        Box::pin(run_message(served, settler, delivery))
    }
}

async fn run_message<A: Agent>(served: Arc<Served<A>>, settler: Settler, delivery: Delivery) {
    let served = &served;
    let message_id = delivery.header("Nats-Msg-Id").map(str::to_owned);
    let agent_message = AgentMessage {
        channel: channel_of(delivery.subject()),
        subject: delivery.subject().to_owned(),
        message_id: message_id.clone(),
        from: delivery.header(FROM_HEADER).map(str::to_owned),
        sender: subject::sender_of(delivery.subject()),
        body: body_value(delivery.payload()),
        sequence: delivery.stream_sequence(),
        attempt: delivery.attempt(),
    };
    let ctx = TaskContext {
        handled: Handled::Message {
            agent: served.name.clone(),
            instance_id: served.instance_id.clone(),
            message_id: message_id.as_deref().unwrap_or_default().into(),
            bus: served.bus.clone(),
        },
        sender: agent_message.sender.clone(),
    };
    let traced = handled_in(&delivery, message_id.as_deref().unwrap_or_default());
    let handler = traced.within(served.agent.handle_message(agent_message, ctx));
    let handled = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
        delivery.in_progress(handler),
    ))
    .await;
    let outcome = match handled {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err((err.message().to_owned(), err.is_retryable())),
        // A panic is not retried: it would panic again.
        Err(_) => Err(("the message handler panicked".to_owned(), false)),
    };
    if let Err(err) = settler.settle_message(&delivery, outcome).await {
        tracing::warn!(%err, subject = delivery.subject(), "a message could not be settled");
    }
}

/// The span a stored task or message is handled in: a child of the one it
/// was stored in, whose trace context its headers carry.
fn handled_in(delivery: &Delivery, id: &str) -> Traced {
    let parent = Parent::from_values(delivery.header(TRACEPARENT), delivery.header(TRACESTATE));
    Traced::process(&parent, || Destination::new(delivery.subject()), id)
}

/// The channel of a stored message; a subject outside the known channels
/// (a custom topology's) counts as the inbox.
fn channel_of(subject: &str) -> MessageChannel {
    subject::parse_channel(subject).unwrap_or(MessageChannel::Inbox)
}
