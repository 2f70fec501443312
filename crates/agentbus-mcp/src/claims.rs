//! Tasks the bridged agent claims from its own work queue (`tasks.<agent>`),
//! through the same durable consumers a runtime replica of the agent uses
//! (`tasks-<agent>-<priority>`), most urgent first.
//!
//! A claimed task stays in progress: the bridge sends a progress ack every
//! third of the consumer's ack wait, for up to [`CLAIM_LEASE`]. Completing it stores the
//! result in the task results bucket, then acknowledges it (the runtime's
//! order, so a crash in between runs nothing twice). A claim that is never
//! completed, or whose bridge stops, goes back to the queue.

use crate::tool_error::ToolError;
use crate::untrusted::untrusted;
use agentbus::Bus;
use agentbus::delivery::{Queue, TaskState};
use agentbus::name::Name;
use agentbus::protocol::{Priority, TaskRequest, TaskResponse, TaskStatus};
use agentbus::subject::{self, events};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a claimed task may stay claimed without being completed.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30 * 60);
/// The queue consumers' ack wait, when the bridge creates them (as a runtime does).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries before a task becomes a dead letter, as a runtime has it.
const MAX_DELIVER: i64 = 5;
/// How often a waiting claim looks for redeliveries, which publish nothing.
const REDELIVERY_POLL: Duration = Duration::from_secs(1);

/// The agent's queue consumers and what it has claimed.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    bus: Bus,
    agent: Name,
    instance_id: String,
    consumers: Arc<Vec<PullConsumer>>,
    claimed: Arc<Mutex<HashMap<String, Claimed>>>,
    arrivals: watch::Receiver<u64>,
    /// The task behind `arrivals`.
    watcher: tokio::task::AbortHandle,
}

#[derive(Debug)]
struct Claimed {
    message: jetstream::Message,
    request: TaskRequest,
    attempt: u32,
    keepalive: JoinHandle<()>,
}

impl Claims {
    /// Creates (or reuses) the agent's queue consumers, one per priority.
    pub(crate) async fn open(
        bus: &Bus,
        agent: &Name,
        instance_id: &str,
    ) -> Result<Self, ToolError> {
        let queue = Queue::Agent(agent.clone());
        let stream = bus
            .jetstream()
            .get_stream(subject::TASKS_STREAM)
            .await
            .map_err(|err| {
                ToolError::new(format!(
                    "cannot open the {} stream: {err}; run `agentbus setup`",
                    subject::TASKS_STREAM
                ))
            })?;
        let mut consumers = Vec::new();
        for priority in Priority::ALL {
            let name = queue.durable(priority);
            let config = jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: queue.subject(priority),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: MAX_DELIVER,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            };
            // A runtime replica of this agent may have made it already: use it as it is.
            let consumer = stream
                .get_or_create_consumer(&name, config)
                .await
                .map_err(|err| {
                    ToolError::new(format!("cannot set up the queue consumer {name}: {err}"))
                })?;
            consumers.push(consumer);
        }
        let (arrived, arrivals) = watch::channel(0);
        let mut subscriptions = Vec::new();
        for priority in Priority::ALL {
            let subscription = bus
                .client()
                .subscribe(queue.subject(priority))
                .await
                .map_err(|err| ToolError::new(format!("cannot watch the task queue: {err}")))?;
            subscriptions.push(subscription);
        }
        let watcher = tokio::spawn(async move {
            let mut all = futures::stream::select_all(subscriptions);
            while all.next().await.is_some() {
                arrived.send_modify(|count| *count += 1);
            }
        })
        .abort_handle();
        Ok(Self {
            bus: bus.clone(),
            agent: agent.clone(),
            instance_id: instance_id.to_owned(),
            consumers: Arc::new(consumers),
            claimed: Arc::default(),
            arrivals,
            watcher,
        })
    }

    /// Claims the most urgent task waiting, waiting up to `wait` for one.
    /// `None` when the queue stayed empty.
    pub(crate) async fn claim(&self, wait: Duration) -> Result<Option<Value>, ToolError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut arrivals = self.arrivals.clone();
        loop {
            arrivals.mark_unchanged();
            if let Some(claimed) = self.claim_now().await? {
                return Ok(Some(claimed));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let poll = (deadline - now).min(REDELIVERY_POLL);
            let _ = tokio::time::timeout(poll, arrivals.changed()).await;
        }
    }

    async fn claim_now(&self) -> Result<Option<Value>, ToolError> {
        for consumer in self.consumers.iter() {
            // A runtime replica may have made the consumer with its own ack wait.
            let ack_wait = consumer.cached_info().config.ack_wait;
            while let Some(message) = fetch_one(consumer).await? {
                if let Some(claimed) = self.take(message, ack_wait).await? {
                    return Ok(Some(claimed));
                }
            }
        }
        Ok(None)
    }

    /// Claims `message`, unless it is not a task (dead-lettered) or already
    /// finished (acknowledged): then `None`.
    async fn take(
        &self,
        message: jetstream::Message,
        ack_wait: Duration,
    ) -> Result<Option<Value>, ToolError> {
        let attempt = message
            .info()
            .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let request = match TaskRequest::from_json(&message.payload) {
            Ok(request) => request,
            Err((task_id, err)) => {
                self.bus
                    .dead_letter_task_message(
                        &message,
                        task_id.as_deref(),
                        &err.to_string(),
                        TaskStatus::Rejected,
                        &self.instance_id,
                    )
                    .await
                    .map_err(ToolError::from_display)?;
                return Ok(None);
            }
        };
        if attempt > 1 {
            let record = self
                .bus
                .task_record(&request.task_id)
                .await
                .map_err(ToolError::from_display)?;
            if record.is_some_and(|r| r.state != TaskState::Retrying) {
                // Finished before, its acknowledgement was lost: do not run it again.
                let _ = message.ack().await;
                return Ok(None);
            }
        }
        let view = json!({
            "task_id": request.task_id,
            "task_type": request.task_type,
            "priority": request.priority,
            "payload": untrusted(None, request.payload.clone()),
            "attempt": attempt,
            "queue": message.subject.as_str(),
            "lease_seconds": CLAIM_LEASE.as_secs(),
        });
        let keepalive = tokio::spawn(keep_in_progress(
            message.clone(),
            ack_wait,
            request.task_id.clone(),
            self.claimed.clone(),
        ));
        let claimed = Claimed {
            message,
            request,
            attempt,
            keepalive,
        };
        let previous = self
            .claimed
            .lock()
            .map_err(|_| ToolError::new("the claims table is unusable"))?
            .insert(claimed.request.task_id.clone(), claimed);
        if let Some(previous) = previous {
            // The same task delivered again (its lease ran out): the new delivery wins.
            previous.keepalive.abort();
        }
        Ok(Some(view))
    }

    /// Completes claimed task `task_id` with `result`, or gives it up for
    /// good with `error`.
    pub(crate) async fn complete(
        &self,
        task_id: &str,
        outcome: Result<Value, String>,
    ) -> Result<Value, ToolError> {
        let claimed = self
            .claimed
            .lock()
            .map_err(|_| ToolError::new("the claims table is unusable"))?
            .remove(task_id);
        let Some(claimed) = claimed else {
            return Err(ToolError::new(format!(
                "task {task_id:?} is not claimed by {}: claim it with claim_task first (a claim lasts {} minutes)",
                self.agent,
                CLAIM_LEASE.as_secs() / 60
            )));
        };
        let settled = self.settle(&claimed, outcome).await;
        match settled {
            Ok(view) => {
                claimed.keepalive.abort();
                Ok(view)
            }
            Err(err) => {
                // Keep the claim (and its keepalive) so the call can be repeated.
                if let Ok(mut table) = self.claimed.lock() {
                    table.insert(task_id.to_owned(), claimed);
                }
                Err(err)
            }
        }
    }

    async fn settle(
        &self,
        claimed: &Claimed,
        outcome: Result<Value, String>,
    ) -> Result<Value, ToolError> {
        let task_id = claimed.request.task_id.as_str();
        let subject = claimed.message.subject.as_str();
        let response = match outcome {
            Ok(result) => {
                let response = TaskResponse::completed(task_id, result);
                self.bus
                    .complete_task_record(task_id, subject, claimed.attempt, &response)
                    .await
                    .map_err(ToolError::from_display)?;
                claimed.message.double_ack().await.map_err(|err| {
                    ToolError::new(format!("the result is stored, but the task could not be acknowledged ({err}); call complete_task again"))
                })?;
                response
            }
            Err(error) => {
                self.bus
                    .dead_letter_task_message(
                        &claimed.message,
                        Some(task_id),
                        &error,
                        TaskStatus::Failed,
                        &self.instance_id,
                    )
                    .await
                    .map_err(ToolError::from_display)?;
                TaskResponse::error(task_id, TaskStatus::Failed, error)
            }
        };
        self.publish_task_event(&claimed.request, &response).await;
        Ok(json!({
            "task_id": task_id,
            "status": response.status,
            "state": if response.is_completed() { "completed" } else { "dead_lettered" },
        }))
    }

    async fn publish_task_event(&self, request: &TaskRequest, response: &TaskResponse) {
        let subject = if response.is_completed() {
            events::TASK_COMPLETED
        } else {
            events::TASK_FAILED
        };
        let body = json!({
            "task_id": request.task_id,
            "agent": self.agent.as_str(),
            "task_type": request.task_type,
            "status": response.status,
            "error": response.error,
            "instance_id": self.instance_id,
        });
        if let Err(err) = self.bus.publish(subject, &body).await {
            tracing::warn!(%err, "cannot publish a task event");
        }
    }

    /// Tasks claimed now.
    pub(crate) fn in_flight(&self) -> usize {
        self.claimed.lock().map(|table| table.len()).unwrap_or(0)
    }

    /// Hands every claimed task back to the queue and stops watching it (at shutdown).
    pub(crate) async fn release_all(&self) {
        self.watcher.abort();
        let claimed: Vec<Claimed> = match self.claimed.lock() {
            Ok(mut table) => table.drain().map(|(_, c)| c).collect(),
            Err(_) => return,
        };
        for claimed in claimed {
            claimed.keepalive.abort();
            if let Err(err) = claimed.message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(%err, task_id = %claimed.request.task_id, "cannot hand a claimed task back; it returns after the ack wait");
            }
        }
    }
}

/// Fetches one message that is there now, if any.
async fn fetch_one(consumer: &PullConsumer) -> Result<Option<jetstream::Message>, ToolError> {
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .map_err(|err| ToolError::new(format!("cannot read the task queue: {err}")))?;
    match batch.next().await {
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(err)) => Err(ToolError::new(format!("cannot read the task queue: {err}"))),
        None => Ok(None),
    }
}

/// Sends progress acks for `message` until the lease runs out, then forgets
/// the claim: JetStream redelivers the task after the ack wait.
async fn keep_in_progress(
    message: jetstream::Message,
    ack_wait: Duration,
    task_id: String,
    claimed: Arc<Mutex<HashMap<String, Claimed>>>,
) {
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    let lease_end = tokio::time::Instant::now() + CLAIM_LEASE;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticker.tick().await;
        if tokio::time::Instant::now() >= lease_end {
            break;
        }
        if let Err(err) = message.ack_with(AckKind::Progress).await {
            tracing::warn!(%err, %task_id, "cannot send a progress ack");
        }
    }
    tracing::warn!(%task_id, "claim lease ran out; the task goes back to the queue");
    if let Ok(mut table) = claimed.lock() {
        table.remove(&task_id);
    }
}
