//! Durable work for a served agent: its work queues and, when enabled, its
//! inbox, direct channel and broadcasts.

use super::AgentOptions;
use super::serve::{Outcome, Served, execute, publish_task_event};
use crate::agent::{Agent, AgentMessage, MessageChannel, TaskContext};
use crate::delivery::worker::{Job, Source, WorkerConfig, backoff};
use crate::delivery::{
    AttemptError, DeadLetter, DeliveryError, FROM_HEADER, Queue, RESULT_HEADER, Records,
    ResultRetention, TaskRecord, TaskState, body_value, dead_letter_message, dead_letter_task,
    now_rfc3339,
};
use crate::name::Name;
use crate::protocol::{Priority, TaskRequest, TaskStatus};
use crate::subject::{self, durable};
use async_nats::jetstream::{self, AckKind, consumer::pull};
use std::sync::Arc;
use std::time::Instant;

/// Why the durable consumers of an agent could not be set up.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot set up the durable consumer {consumer} on stream {stream}: {reason}; run `agentbus setup`, or turn this off in AgentOptions"
)]
pub struct ConsumerSetupError {
    /// The stream.
    pub stream: &'static str,
    /// The consumer.
    pub consumer: String,
    /// Why.
    pub reason: String,
}

/// Creates (or updates) a durable pull consumer filtering exactly `filters`.
async fn durable_consumer(
    js: &jetstream::Context,
    stream: &'static str,
    name: String,
    filters: Vec<String>,
    options: &AgentOptions,
    max_ack_pending: i64,
) -> Result<jetstream::consumer::PullConsumer, ConsumerSetupError> {
    let error = |reason: String| ConsumerSetupError {
        stream,
        consumer: name.clone(),
        reason,
    };
    let handle = js
        .get_stream(stream)
        .await
        .map_err(|err| error(err.to_string()))?;
    let mut config = pull::Config {
        durable_name: Some(name.clone()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_deliver: i64::from(options.max_deliver),
        max_ack_pending,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    };
    match filters.as_slice() {
        [one] => config.filter_subject = one.clone(),
        _ => config.filter_subjects = filters,
    }
    handle
        .create_consumer(config)
        .await
        .map_err(|err| error(err.to_string()))
}

fn worker_config(options: &AgentOptions, max_concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        max_concurrency,
        ack_wait: options.ack_wait,
        idle_poll: options.idle_poll,
    }
}

/// The sources of an agent's work queues: `tasks.<name>` and `work.<type>` for
/// each accepted type, at each priority.
pub(super) async fn queue_sources(
    js: &jetstream::Context,
    agent: &Name,
    task_types: &[Name],
    options: &AgentOptions,
) -> Result<(Vec<Source>, WorkerConfig), ConsumerSetupError> {
    let queues = std::iter::once(Queue::Agent(agent.clone()))
        .chain(task_types.iter().cloned().map(Queue::TaskType));
    let mut sources = Vec::new();
    for queue in queues {
        for priority in Priority::ALL {
            let subject = queue.subject(priority);
            let max_ack_pending =
                i64::try_from(options.max_concurrency.max(1) * 16).unwrap_or(i64::MAX);
            let consumer = durable_consumer(
                js,
                subject::TASKS_STREAM,
                queue.durable(priority),
                vec![subject.clone()],
                options,
                max_ack_pending,
            )
            .await?;
            sources.push(Source {
                consumer,
                wake_subjects: vec![subject],
                priority,
            });
        }
    }
    Ok((sources, worker_config(options, options.max_concurrency)))
}

/// The message workers of an agent: its inbox (in order, one at a time), its
/// direct channel, and its broadcasts and announcements.
pub(super) async fn message_sources(
    js: &jetstream::Context,
    agent: &Name,
    options: &AgentOptions,
    topics: &[Name],
) -> Result<Vec<(Vec<Source>, WorkerConfig)>, ConsumerSetupError> {
    let inbox = durable_consumer(
        js,
        subject::MESSAGES_STREAM,
        durable::inbox(agent),
        vec![subject::agent_inbox(agent)],
        options,
        1,
    )
    .await?;
    let direct_pending = i64::try_from(options.max_concurrency.max(1) * 4).unwrap_or(i64::MAX);
    let direct = durable_consumer(
        js,
        subject::MESSAGES_STREAM,
        durable::direct(agent),
        vec![subject::agent_direct(agent)],
        options,
        direct_pending,
    )
    .await?;
    let mut filters: Vec<String> = topics.iter().map(subject::broadcast).collect();
    filters.push(subject::ALL_ANNOUNCEMENTS.to_owned());
    let broadcast = durable_consumer(
        js,
        subject::BROADCAST_STREAM,
        durable::broadcast(agent),
        filters.clone(),
        options,
        1,
    )
    .await?;
    let source = |consumer, wake_subjects: Vec<String>| Source {
        consumer,
        wake_subjects,
        priority: Priority::Normal,
    };
    Ok(vec![
        (
            vec![source(inbox, vec![subject::agent_inbox(agent)])],
            worker_config(options, 1),
        ),
        (
            vec![source(direct, vec![subject::agent_direct(agent)])],
            worker_config(options, options.max_concurrency),
        ),
        (vec![source(broadcast, filters)], worker_config(options, 1)),
    ])
}

/// Runs queued tasks through the agent's handler.
pub(super) struct TaskJob<A> {
    pub(super) served: Arc<Served<A>>,
    pub(super) records: Records,
}

impl<A: Agent> Job for TaskJob<A> {
    async fn run(&self, message: &jetstream::Message) {
        if let Err(err) = self.run_task(message).await {
            // The message stays unacknowledged: it is redelivered after ack_wait.
            tracing::warn!(%err, subject = %message.subject, "a queued task could not be settled");
        }
    }
}

impl<A: Agent> TaskJob<A> {
    async fn run_task(&self, message: &jetstream::Message) -> Result<(), DeliveryError> {
        let served = &self.served;
        let attempt = message
            .info()
            .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let request = match TaskRequest::from_json(&message.payload) {
            Ok(request) => request,
            Err((task_id, err)) => {
                let record = self.new_record(message, task_id.as_deref().unwrap_or(""));
                return self
                    .give_up(
                        message,
                        record,
                        attempt,
                        err.to_string(),
                        TaskStatus::Rejected,
                    )
                    .await;
            }
        };
        // Only a redelivery can find a record: a first attempt has none yet.
        let previous = if attempt > 1 {
            match self.records.get(&request.task_id).await? {
                // A previous attempt finished but its ack was lost: do not run it again.
                Some(record) if record.state != TaskState::Retrying => {
                    return message
                        .ack()
                        .await
                        .map_err(|err| DeliveryError::jetstream("acknowledge a task", err));
                }
                previous => previous,
            }
        } else {
            None
        };
        if let Err(err) = served.task_types.check(served.name.as_str(), &request) {
            let record = previous.unwrap_or_else(|| self.new_record(message, &request.task_id));
            return self
                .give_up(
                    message,
                    record,
                    attempt,
                    err.message().to_owned(),
                    err.status(),
                )
                .await;
        }
        let task_id: Arc<str> = request.task_id.as_str().into();
        let task_type = request.task_type.clone();
        let Outcome {
            response,
            retryable,
            duration,
            ..
        } = execute(served, request, task_id.clone(), Instant::now()).await;
        let retention = ResultRetention::from_header(
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(RESULT_HEADER))
                .map(|v| v.as_str()),
        );
        if response.status == TaskStatus::Completed {
            // Fire-and-forget tasks leave a record only when an earlier
            // attempt left one (which must not stay "retrying").
            if retention == ResultRetention::Keep || previous.is_some() {
                let mut record = previous.unwrap_or_else(|| self.new_record(message, &task_id));
                record.attempts = attempt;
                record.updated_at = now_rfc3339();
                record.state = TaskState::Completed;
                record.response = Some(response.clone());
                // The result is stored before the ack: a crash in between reruns
                // nothing, because the redelivery finds the completed record.
                self.records.put(&record).await?;
            }
            message
                .ack()
                .await
                .map_err(|err| DeliveryError::jetstream("acknowledge a task", err))?;
        } else {
            let mut record = previous.unwrap_or_else(|| self.new_record(message, &task_id));
            record.attempts = attempt;
            record.updated_at = now_rfc3339();
            let error = response
                .error
                .clone()
                .unwrap_or_else(|| response.status.to_string());
            if retryable && attempt < served.options.max_deliver {
                record.errors.push(self.attempt_error(attempt, error));
                record.state = TaskState::Retrying;
                self.records.put(&record).await?;
                let delay = backoff(
                    attempt,
                    served.options.retry_backoff,
                    served.options.max_retry_backoff,
                );
                message
                    .ack_with(AckKind::Nak(Some(delay)))
                    .await
                    .map_err(|err| DeliveryError::jetstream("schedule a retry", err))?;
                return Ok(());
            }
            self.give_up(message, record, attempt, error, response.status)
                .await?;
        }
        publish_task_event(served, &task_id, &task_type, &response, duration).await;
        Ok(())
    }

    /// A record for a task seen for the first time.
    fn new_record(&self, message: &jetstream::Message, task_id: &str) -> TaskRecord {
        TaskRecord::new(task_id, &message.subject)
    }

    fn attempt_error(&self, attempt: u32, error: String) -> AttemptError {
        AttemptError {
            attempt,
            error,
            at: now_rfc3339(),
            instance_id: self.served.instance_id.to_string(),
        }
    }

    async fn give_up(
        &self,
        message: &jetstream::Message,
        mut record: TaskRecord,
        attempt: u32,
        error: String,
        status: TaskStatus,
    ) -> Result<(), DeliveryError> {
        record.attempts = attempt;
        record
            .errors
            .push(self.attempt_error(attempt, error.clone()));
        let reason = if status == TaskStatus::Rejected || attempt < self.served.options.max_deliver
        {
            format!("not retryable: {error}")
        } else {
            format!("failed {attempt} times, the last with: {error}")
        };
        dead_letter_task(
            self.served.bus.jetstream(),
            &self.records,
            message,
            record,
            reason,
            status,
        )
        .await
    }
}

/// Runs durable messages through the agent's message handler.
pub(super) struct MessageJob<A> {
    pub(super) served: Arc<Served<A>>,
}

impl<A: Agent> Job for MessageJob<A> {
    async fn run(&self, message: &jetstream::Message) {
        if let Err(err) = self.run_message(message).await {
            tracing::warn!(%err, subject = %message.subject, "a message could not be settled");
        }
    }
}

impl<A: Agent> MessageJob<A> {
    async fn run_message(&self, message: &jetstream::Message) -> Result<(), DeliveryError> {
        let served = &self.served;
        let info = message
            .info()
            .map_err(|err| DeliveryError::jetstream("read delivery info", err))?;
        let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX);
        let sequence = info.stream_sequence;
        let subject = message.subject.to_string();
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let agent_message = AgentMessage {
            channel: channel_of(&subject),
            subject: subject.clone(),
            message_id: header("Nats-Msg-Id"),
            from: header(FROM_HEADER),
            body: body_value(&message.payload),
            sequence,
            attempt,
        };
        let ctx = TaskContext {
            agent: served.name.clone(),
            instance_id: served.instance_id.clone(),
            task_id: agent_message
                .message_id
                .as_deref()
                .unwrap_or_default()
                .into(),
            bus: served.bus.clone(),
        };
        let handled = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            served.agent.handle_message(agent_message, ctx),
        ))
        .await;
        let error = match handled {
            Ok(Ok(())) => {
                return message
                    .ack()
                    .await
                    .map_err(|err| DeliveryError::jetstream("acknowledge a message", err));
            }
            Ok(Err(err)) if err.is_retryable() && attempt < served.options.max_deliver => {
                let delay = backoff(
                    attempt,
                    served.options.retry_backoff,
                    served.options.max_retry_backoff,
                );
                tracing::info!(%err, attempt, ?delay, %subject, "message handler failed; retrying");
                return message
                    .ack_with(AckKind::Nak(Some(delay)))
                    .await
                    .map_err(|err| DeliveryError::jetstream("schedule a retry", err));
            }
            Ok(Err(err)) => err.message().to_owned(),
            Err(_) => "the message handler panicked".to_owned(),
        };
        let letter = DeadLetter {
            subject,
            task_id: None,
            body: body_value(&message.payload),
            attempts: attempt,
            errors: vec![AttemptError {
                attempt,
                error: error.clone(),
                at: now_rfc3339(),
                instance_id: served.instance_id.to_string(),
            }],
            reason: error,
            dead_lettered_at: now_rfc3339(),
            original_sequence: sequence,
        };
        dead_letter_message(served.bus.jetstream(), message, &letter).await
    }
}

fn channel_of(subject: &str) -> MessageChannel {
    let topic = || subject.split('.').nth(1).unwrap_or_default().to_owned();
    if subject.starts_with("broadcast.") {
        MessageChannel::Broadcast(topic())
    } else if subject.starts_with("announce.") {
        MessageChannel::Announce(topic())
    } else if subject.ends_with(".direct") {
        MessageChannel::Direct
    } else {
        MessageChannel::Inbox
    }
}
