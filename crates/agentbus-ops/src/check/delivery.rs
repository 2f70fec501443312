//! The delivery test: publish/subscribe, delivery to an offline subscriber, a
//! work queue over several workers, a broadcast to several consumers.

use super::{CONSUMER_EXPIRY, Outcome, Run, failed, messages_on};
use agentbus::subject;
use agentbus::{Priority, TaskRequest};
use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, publish::PublishAck};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// How long a worker waits for more tasks before it looks whether all are done.
const WORKER_POLL: Duration = Duration::from_millis(250);
/// Tasks a worker takes at a time: small, so the queue is shared between workers.
const WORKER_BATCH: usize = 4;
/// How long a broadcast consumer waits for a second copy that must not come.
const SECOND_COPY_WAIT: Duration = Duration::from_millis(300);

/// (1) A core subscriber receives what is published, on a subject of this run.
pub(super) async fn publish_subscribe(run: &Run<'_>) -> Outcome {
    // Not an agentbus subject: nothing but this run listens to it.
    let subject = run.names.core_subject();
    run.will_publish(&subject);
    let mut subscriber = run
        .client
        .subscribe(subject.clone())
        .await
        .map_err(|err| failed(&format!("subscribe to {subject}"), err))?;
    let payload = Bytes::from(format!("agentbus {}", run.names.name()));
    run.client
        .publish(subject.clone(), payload.clone())
        .await
        .map_err(|err| failed(&format!("publish on {subject}"), err))?;
    run.client
        .flush()
        .await
        .map_err(|err| failed("flush the connection", err))?;
    let received = tokio::time::timeout(run.receive_timeout(), subscriber.next()).await;
    let _ = subscriber.unsubscribe().await;
    match received {
        Ok(Some(message)) if message.payload == payload => Ok(format!(
            "a subscriber of {subject} received the published message"
        )),
        Ok(Some(message)) => Err(format!(
            "a subscriber of {subject} received {} bytes that are not the published message",
            message.payload.len()
        )),
        Ok(None) => Err(format!("the subscription to {subject} ended")),
        Err(_) => Err(format!(
            "the message published on {subject} did not arrive within {}",
            humantime::format_duration(run.receive_timeout())
        )),
    }
}

/// (2) A message stored while its subscriber is offline reaches the durable
/// consumer created afterwards.
pub(super) async fn offline_delivery(run: &Run<'_>) -> Outcome {
    let subject = subject::agent_inbox(run.names.name());
    run.will_publish(&subject);
    let payload = Bytes::from(format!(
        "agentbus {}: stored while offline",
        run.names.name()
    ));
    let ack = publish(run, &subject, payload.clone(), None).await?;
    let consumer_name = run.names.inbox_consumer();
    let consumer = durable_consumer(run, &ack.stream, &consumer_name, &subject).await?;
    let message = consumer
        .batch()
        .max_messages(1)
        .expires(run.receive_timeout())
        .messages()
        .await
        .map_err(|err| failed(&format!("fetch from consumer {consumer_name}"), err))?
        .next()
        .await;
    let message = match message {
        Some(Ok(message)) => message,
        Some(Err(err)) => return Err(failed(&format!("fetch from {consumer_name}"), err)),
        None => {
            return Err(format!(
                "a message stored in {} on {subject} before its durable consumer existed was not delivered within {}",
                ack.stream,
                humantime::format_duration(run.receive_timeout())
            ));
        }
    };
    if message.payload != payload {
        return Err(format!(
            "the durable consumer of {subject} received another message than the one stored"
        ));
    }
    message
        .double_ack()
        .await
        .map_err(|err| failed("acknowledge the message", err))?;
    Ok(format!(
        "a message stored in {} on {subject} before its durable consumer existed reached it",
        ack.stream
    ))
}

/// (3) N tasks over K workers sharing one durable consumer: each task runs
/// exactly once, and the work-queue stream keeps none of them.
pub(super) async fn work_queue(run: &Run<'_>) -> Outcome {
    let subject = subject::task_queue(run.names.name(), Priority::Normal);
    run.will_publish(&subject);
    let stream_name = stream_of(run, &subject).await?;
    let tasks: Vec<TaskRequest> = (0..run.options.tasks)
        .map(|n| TaskRequest::new("agentbus_check", serde_json::json!({ "n": n })))
        .collect();
    // Publish them all, then wait for the acks: one round trip, not N.
    let mut acks = Vec::with_capacity(tasks.len());
    for task in &tasks {
        let message = PublishMessage::build()
            .payload(task.to_json().into())
            .message_id(&task.task_id);
        acks.push(
            run.js
                .send_publish(subject.clone(), message)
                .await
                .map_err(|err| publish_failed(&subject, err))?,
        );
    }
    for ack in acks {
        ack.await.map_err(|err| publish_failed(&subject, err))?;
    }

    let consumer_name = run.names.tasks_consumer();
    let consumer = durable_consumer(run, &stream_name, &consumer_name, &subject).await?;
    let executed: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let workers = (0..run.options.workers.max(1))
        .map(|worker| work(&consumer, worker, &executed, tasks.len()));
    for result in futures::future::join_all(workers).await {
        result?;
    }

    let executed = executed.into_inner().expect("not poisoned");
    let mut runs: HashMap<&str, usize> = HashMap::new();
    let mut per_worker: BTreeMap<usize, usize> = BTreeMap::new();
    for (worker, task_id) in &executed {
        *runs.entry(task_id.as_str()).or_default() += 1;
        *per_worker.entry(*worker).or_default() += 1;
    }
    let duplicated = runs.values().filter(|n| **n > 1).count();
    let missing = tasks
        .iter()
        .filter(|t| !runs.contains_key(t.task_id.as_str()))
        .count();
    if duplicated > 0 || missing > 0 {
        return Err(format!(
            "of {} tasks on {subject}, {duplicated} ran more than once and {missing} never ran",
            tasks.len()
        ));
    }
    let stream = run
        .js
        .get_stream(&stream_name)
        .await
        .map_err(|err| failed(&format!("open stream {stream_name}"), err))?;
    let left = messages_on(&stream, &subject).await?;
    if left > 0 {
        return Err(format!(
            "all {} tasks ran once, but stream {stream_name} still holds {left} of them: acknowledged tasks must leave a work queue (retention = \"workqueue\")",
            tasks.len()
        ));
    }
    let shares: Vec<String> = (0..run.options.workers.max(1))
        .map(|w| per_worker.get(&w).copied().unwrap_or(0).to_string())
        .collect();
    Ok(format!(
        "{} tasks on {subject} ran once each across {} workers ({}) and left stream {stream_name}",
        tasks.len(),
        shares.len(),
        shares.join("/")
    ))
}

/// One worker: takes tasks from the shared consumer, "executes" each (records
/// its id), acknowledges it, until every task has run.
async fn work(
    consumer: &PullConsumer,
    worker: usize,
    executed: &Mutex<Vec<(usize, String)>>,
    total: usize,
) -> Result<(), String> {
    let all_done = || {
        let executed = executed.lock().expect("not poisoned");
        let distinct: std::collections::HashSet<&str> =
            executed.iter().map(|(_, id)| id.as_str()).collect();
        distinct.len() >= total
    };
    while !all_done() {
        let mut batch = consumer
            .batch()
            .max_messages(WORKER_BATCH)
            .expires(WORKER_POLL)
            .messages()
            .await
            .map_err(|err| failed("fetch tasks", err))?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|err| failed("fetch tasks", err))?;
            let task = TaskRequest::from_json(&message.payload)
                .map_err(|(_, err)| format!("a queued task is not a TaskRequest: {err}"))?;
            executed
                .lock()
                .expect("not poisoned")
                .push((worker, task.task_id.to_string()));
            message
                .double_ack()
                .await
                .map_err(|err| failed("acknowledge a task", err))?;
        }
    }
    Ok(())
}

/// (4) One broadcast reaches each of M durable consumers, created before it
/// was published, exactly once.
pub(super) async fn broadcast(run: &Run<'_>) -> Outcome {
    let subject = subject::broadcast(run.names.name());
    run.will_publish(&subject);
    let stream_name = stream_of(run, &subject).await?;
    let mut consumers = Vec::with_capacity(run.options.broadcast_consumers);
    for index in 0..run.options.broadcast_consumers.max(1) {
        let name = run.names.broadcast_consumer(index);
        consumers.push(durable_consumer(run, &stream_name, &name, &subject).await?);
    }
    let payload = Bytes::from(format!("agentbus {}: to everyone", run.names.name()));
    publish(run, &subject, payload.clone(), None).await?;
    let received = futures::future::join_all(
        consumers
            .iter()
            .map(|consumer| receive_once(run, consumer, &payload)),
    )
    .await;
    let mut problems = Vec::new();
    for (index, result) in received.into_iter().enumerate() {
        if let Err(problem) = result {
            problems.push(format!("consumer {index} {problem}"));
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "a broadcast on {subject} did not reach each consumer once: {}",
            problems.join("; ")
        ));
    }
    Ok(format!(
        "a broadcast on {subject} reached each of {} durable consumers exactly once ({stream_name})",
        consumers.len()
    ))
}

/// Fetches from `consumer` until the broadcast arrives, acknowledges it, and
/// makes sure no second copy follows.
async fn receive_once(
    run: &Run<'_>,
    consumer: &PullConsumer,
    payload: &Bytes,
) -> Result<(), String> {
    let first = consumer
        .batch()
        .max_messages(1)
        .expires(run.receive_timeout())
        .messages()
        .await
        .map_err(|err| failed("fetch", err))?
        .next()
        .await;
    let message = match first {
        Some(Ok(message)) => message,
        Some(Err(err)) => return Err(failed("fetch", err)),
        None => {
            return Err(format!(
                "received nothing within {}",
                humantime::format_duration(run.receive_timeout())
            ));
        }
    };
    if message.payload != *payload {
        return Err("received another message than the broadcast".to_owned());
    }
    message
        .double_ack()
        .await
        .map_err(|err| failed("acknowledge", err))?;
    let more: Vec<_> = consumer
        .batch()
        .max_messages(1)
        .expires(SECOND_COPY_WAIT)
        .messages()
        .await
        .map_err(|err| failed("fetch", err))?
        .collect()
        .await;
    if !more.is_empty() {
        return Err("received the broadcast twice".to_owned());
    }
    Ok(())
}

/// Stores `payload` on `subject` and waits for the stream's ack.
pub(super) async fn publish(
    run: &Run<'_>,
    subject: &str,
    payload: Bytes,
    message_id: Option<&str>,
) -> Result<PublishAck, String> {
    let mut message = PublishMessage::build().payload(payload);
    if let Some(id) = message_id {
        message = message.message_id(id);
    }
    run.js
        .send_publish(subject.to_owned(), message)
        .await
        .map_err(|err| publish_failed(subject, err))?
        .await
        .map_err(|err| publish_failed(subject, err))
}

/// A failure detail for a JetStream publish; "no stream" says what to do.
fn publish_failed(subject: &str, err: jetstream::context::PublishError) -> String {
    if err.kind() == PublishErrorKind::StreamNotFound {
        no_stream(subject)
    } else {
        failed(&format!("store a message on {subject}"), err)
    }
}

fn no_stream(subject: &str) -> String {
    format!("no stream stores {subject}; run `agentbus setup` to create the streams")
}

/// The name of the stream that stores `subject`.
async fn stream_of(run: &Run<'_>, subject: &str) -> Result<String, String> {
    run.js
        .stream_by_subject(subject)
        .await
        .map_err(|err| match err.kind() {
            GetStreamByNameErrorKind::NotFound => no_stream(subject),
            _ => failed(&format!("look up the stream of {subject}"), err),
        })
}

/// Creates a durable pull consumer of `subject` on `stream`, noting it for clean-up.
async fn durable_consumer(
    run: &Run<'_>,
    stream: &str,
    name: &str,
    subject: &str,
) -> Result<PullConsumer, String> {
    run.will_create_consumer(stream, name);
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: subject.to_owned(),
        // Only so that a run killed midway leaves nothing for long.
        inactive_threshold: CONSUMER_EXPIRY,
        ..Default::default()
    };
    run.js
        .create_consumer_on_stream(config, stream)
        .await
        .map_err(|err| {
            failed(
                &format!("create durable consumer {name} of {subject} on stream {stream}"),
                err,
            )
        })
}
