//! Tasks the bridged agent claims from its own work queue (`tasks.<agent>`):
//! a lease table over [`TaskClaims`], which reads the queue through the same
//! consumers a runtime replica of the agent uses and settles through the same
//! attempts, most urgent first.
//!
//! A claimed task stays in progress for up to [`CLAIM_LEASE`]. Completing it
//! records the result, then acknowledges it; failing it dead-letters it. A
//! claim that is never completed, or whose bridge stops, goes back to the
//! queue.

use crate::run::BridgeError;
use crate::tool_error::{ToolError, ToolErrorKind};
use crate::untrusted::untrusted;
use agentbus::delivery::{DeliveryOptions, TaskAttempt, TaskClaims};
use agentbus::events::TaskEvent;
use agentbus::{Bus, Name, TaskRequest, TaskResponse, TaskStatus};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a claimed task may stay claimed without being completed.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30 * 60);
/// How often a waiting claim looks for redeliveries, which publish nothing.
const REDELIVERY_POLL: Duration = Duration::from_secs(1);

/// The agent's queue and what it has claimed.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    bus: Bus,
    agent: Name,
    instance_id: String,
    queue: TaskClaims,
    claimed: Arc<Mutex<HashMap<String, Claimed>>>,
    arrivals: watch::Receiver<u64>,
    /// The task behind `arrivals`.
    watcher: tokio::task::AbortHandle,
}

#[derive(Debug)]
struct Claimed {
    attempt: TaskAttempt,
    request: TaskRequest,
    claimed_at: Instant,
    /// Progress acks until the lease ends.
    keepalive: JoinHandle<()>,
}

impl Claims {
    /// Opens the agent's queue and starts watching it for arrivals.
    pub(crate) async fn open(
        bus: &Bus,
        agent: &Name,
        instance_id: &str,
    ) -> Result<Self, BridgeError> {
        let queue =
            TaskClaims::open_sharing(bus, agent, instance_id, DeliveryOptions::default()).await?;
        let (arrived, arrivals) = watch::channel(0);
        let mut subscriptions = Vec::new();
        for subject in queue.subjects() {
            let subscription = bus.client().subscribe(subject).await.map_err(|source| {
                BridgeError::QueueWatch {
                    agent: agent.to_string(),
                    source,
                }
            })?;
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
            queue,
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
            let next = self
                .queue
                .next()
                .await
                .map_err(|err| ToolError::from_error(ToolErrorKind::Bus, err))?;
            if let Some((attempt, request)) = next {
                return self.hold(attempt, request).map(Some);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let poll = (deadline - now).min(REDELIVERY_POLL);
            let _ = tokio::time::timeout(poll, arrivals.changed()).await;
        }
    }

    /// Puts a claimed task in the lease table and describes it to the model:
    /// what the submitter wrote (id, type, payload) as untrusted content,
    /// what the bus knows beside it.
    fn hold(&self, attempt: TaskAttempt, request: TaskRequest) -> Result<Value, ToolError> {
        let mut view = untrusted(
            None,
            json!({
                "task_id": request.task_id,
                "task_type": request.task_type,
                "payload": request.payload,
            }),
        );
        view["priority"] = json!(request.priority);
        view["attempt"] = json!(attempt.attempt());
        view["queue"] = json!(attempt.delivery().subject());
        view["lease_seconds"] = json!(CLAIM_LEASE.as_secs());
        let task_id = request.task_id.to_string();
        let lease_end = tokio::time::Instant::now() + CLAIM_LEASE;
        let keeping = attempt.delivery().in_progress_until(lease_end);
        let keepalive = {
            let claimed = self.claimed.clone();
            let task_id = task_id.clone();
            tokio::spawn(async move {
                keeping.await;
                // JetStream redelivers the task after the ack wait.
                tracing::warn!(%task_id, "claim lease ran out; the task goes back to the queue");
                if let Ok(mut table) = claimed.lock() {
                    table.remove(&task_id);
                }
            })
        };
        let claimed = Claimed {
            attempt,
            request,
            claimed_at: Instant::now(),
            keepalive,
        };
        let previous = self
            .claimed
            .lock()
            .map_err(|_| unusable_table())?
            .insert(task_id, claimed);
        if let Some(previous) = previous {
            // The same task delivered again (its lease ran out): the new delivery wins.
            previous.keepalive.abort();
        }
        Ok(view)
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
            .map_err(|_| unusable_table())?
            .remove(task_id);
        let Some(claimed) = claimed else {
            return Err(ToolError::new(
                ToolErrorKind::NotFound,
                format!(
                    "task {task_id:?} is not claimed by {}: claim it with claim_task first (a claim lasts {} minutes)",
                    self.agent,
                    CLAIM_LEASE.as_secs() / 60
                ),
            ));
        };
        match self.settle(&claimed, outcome).await {
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
        let task_id = &claimed.request.task_id;
        let response = match outcome {
            Ok(result) => {
                let response = TaskResponse::completed(task_id, result);
                claimed.attempt.complete(&response).await.map_err(|err| {
                    let message =
                        format!("the task could not be settled ({err}); call complete_task again");
                    ToolError::with_source(ToolErrorKind::Bus, message, err)
                })?;
                response
            }
            Err(error) => {
                claimed
                    .attempt
                    .give_up(&error, TaskStatus::Failed)
                    .await
                    .map_err(|err| ToolError::from_error(ToolErrorKind::Bus, err))?;
                TaskResponse::error(task_id, TaskStatus::Failed, error)
            }
        };
        let event = TaskEvent::new(
            task_id,
            self.agent.as_str(),
            &claimed.request.task_type,
            response.status,
            response.error.as_deref(),
            claimed.claimed_at.elapsed(),
            &self.instance_id,
        );
        if let Err(err) = self
            .bus
            .publish_platform_event(event.subject(), &event)
            .await
        {
            tracing::warn!(%err, "cannot publish a task event");
        }
        Ok(json!({
            "task_id": task_id,
            "status": response.status,
            "state": if response.is_completed() { "completed" } else { "dead_lettered" },
        }))
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
            if let Err(err) = claimed.attempt.delivery().hand_back().await {
                tracing::warn!(%err, task_id = %claimed.request.task_id, "cannot hand a claimed task back; it returns after the ack wait");
            }
        }
    }
}

/// A claims table poisoned by a panic while it was held.
fn unusable_table() -> ToolError {
    ToolError::new(
        ToolErrorKind::Internal,
        "the claims table is unusable after an internal failure; restart the bridge",
    )
}
