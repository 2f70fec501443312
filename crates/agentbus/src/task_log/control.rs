//! The tasks a runtime holds, and its answers to control requests about
//! them (`task.<from>.<runner>.<task_id>.control.<verb>`).
//!
//! A runtime without an agent identity subscribes to every control subject
//! once; one with an identity to those of the tasks it may run (its agent's
//! and its granted shared queues') and to the requests of clients with no
//! agent name that name no runner. A request about a task it does not hold,
//! or naming another runner, is not answered, so the runtime that holds it
//! answers alone.
//! Nor is one from an agent that did not send the task: a task obeys its
//! caller (the agent its key names) and clients with no
//! agent identity (the operator), whose names the subject carries under
//! nats-server's publish permissions. A cancel is remembered a while even
//! so, as a tombstone: a queued task taken by a worker after its cancel
//! went out is then refused instead of run.

use super::running::RunningTask;
use crate::client::Bus;
use crate::delivery::Records;
use crate::name::Name;
use crate::subject::{self, ParsedControl, TaskControl};
use crate::task_id::TaskId;
use async_nats::Subject;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cancels remembered at most, and for how long.
const TOMBSTONES: usize = 10_000;
const TOMBSTONE_AGE: Duration = Duration::from_secs(600);

type Hasher = foldhash::fast::RandomState;

/// The tasks one runtime holds, by id.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    tasks: Mutex<HashMap<TaskId, Arc<RunningTask>, Hasher>>,
    tombstones: Mutex<Tombstones>,
    /// Whether any cancel was remembered: until then, holding a task does
    /// not look at the tombstones.
    cancels_seen: AtomicBool,
}

/// A remembered cancel: the task id and who asked.
type Tombstone = (TaskId, Option<Name>);

#[derive(Debug, Default)]
struct Tombstones {
    ids: HashMap<Tombstone, Instant, Hasher>,
    order: VecDeque<Tombstone>,
}

impl Tombstones {
    fn insert(&mut self, tombstone: Tombstone) {
        let now = Instant::now();
        while self.order.len() >= TOMBSTONES
            || self
                .order
                .front()
                .and_then(|id| self.ids.get(id))
                .is_some_and(|at| now.duration_since(*at) > TOMBSTONE_AGE)
        {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.ids.remove(&old);
        }
        if self.ids.insert(tombstone.clone(), now).is_none() {
            self.order.push_back(tombstone);
        }
    }

    /// Whether `task` was cancelled by one it obeys.
    fn cancel(&self, task: &RunningTask) -> bool {
        let asked = |from: Option<&Name>| {
            self.ids
                .get(&(task.task_id().clone(), from.cloned()))
                .is_some_and(|at| at.elapsed() <= TOMBSTONE_AGE)
        };
        asked(None)
            || task
                .key()
                .caller()
                .is_some_and(|caller| asked(Some(caller)))
    }
}

/// Whether a control request from `from` may steer `task`: from the agent
/// that sent it, or from a client with no agent identity.
fn obeys(task: &RunningTask, from: Option<&Name>) -> bool {
    from.is_none() || task.key().caller() == from
}

/// A task held by the runtime, found by control requests once it is
/// registered ([`Registered::register`]); given up when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    registry: Arc<Registry>,
    task: Arc<RunningTask>,
    registered: AtomicBool,
}

impl Registered {
    pub(crate) fn task(&self) -> &Arc<RunningTask> {
        &self.task
    }

    /// Makes the task findable by cancels, answers and status requests.
    /// A task that finishes at its first poll never needs it: nothing can
    /// reach it in between, and this costs two locks per task.
    pub(crate) fn register(&self) {
        if self.registered.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(mut tasks) = self.registry.tasks.lock() {
            tasks.insert(self.task.task_id().clone(), self.task.clone());
        }
        // After the insert: a cancel that came before it left a tombstone.
        self.registry.check_tombstone(&self.task);
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if !self.registered.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut tasks) = self.registry.tasks.lock()
            && tasks
                .get(self.task.task_id())
                .is_some_and(|held| Arc::ptr_eq(held, &self.task))
        {
            tasks.remove(self.task.task_id());
        }
    }
}

impl Registry {
    /// Holds `task` until the returned guard is dropped, not registered
    /// yet; a task cancelled before it arrived is cancelled at once.
    pub(crate) fn hold(self: &Arc<Self>, task: RunningTask) -> Registered {
        let task = Arc::new(task);
        self.check_tombstone(&task);
        Registered {
            registry: self.clone(),
            task,
            registered: AtomicBool::new(false),
        }
    }

    /// [`Registry::hold`], registered at once.
    pub(crate) fn register(self: &Arc<Self>, task: RunningTask) -> Registered {
        let held = self.hold(task);
        held.register();
        held
    }

    /// Cancels `task` if a cancel of its id, from one it obeys, was remembered.
    fn check_tombstone(&self, task: &RunningTask) {
        let cancelled = self.cancels_seen.load(Ordering::Acquire)
            && self
                .tombstones
                .lock()
                .is_ok_and(|tombstones| tombstones.cancel(task));
        if cancelled {
            task.cancel();
        }
    }

    /// The task `task_id` held here, if `asker` may steer it and names its
    /// runner (or none).
    fn get(&self, task_id: &TaskId, asker: Asker<'_>) -> Option<Arc<RunningTask>> {
        let task = self.tasks.lock().ok()?.get(task_id).cloned()?;
        let runs = asker
            .runner
            .is_none_or(|runner| runner == task.key().runner());
        (runs && obeys(&task, asker.from)).then_some(task)
    }

    fn cancel(&self, task_id: &TaskId, asker: Asker<'_>) -> Option<Arc<RunningTask>> {
        if let Ok(mut tombstones) = self.tombstones.lock() {
            tombstones.insert((task_id.clone(), asker.from.cloned()));
            self.cancels_seen.store(true, Ordering::Release);
        }
        let task = self.get(task_id, asker)?;
        task.cancel();
        Some(task)
    }
}

/// Who asks something of a task, and who it says runs the task.
#[derive(Debug, Clone, Copy)]
struct Asker<'a> {
    /// `None`: a client with no agent identity.
    from: Option<&'a Name>,
    /// `agent.<name>` or `work.<type>`; `None` when the asker does not know.
    runner: Option<&'a str>,
}

/// Answers control requests for the tasks in `registry` until the
/// subscription ends.
pub(crate) async fn serve_controls(
    bus: Bus,
    registry: Arc<Registry>,
    mut requests: async_nats::Subscriber,
) {
    while let Some(message) = requests.next().await {
        let Some(ParsedControl {
            from,
            runner,
            task_id,
            control,
        }) = subject::parse_task_control(&message.subject)
        else {
            continue;
        };
        let Some(reply) = message.reply else { continue };
        let asker = Asker {
            from: from.as_ref(),
            runner: runner.as_deref(),
        };
        match control {
            TaskControl::Cancel => {
                if let Some(task) = registry.cancel(&task_id, asker) {
                    respond(&bus, reply, &held(&task, "cancelling")).await;
                }
            }
            TaskControl::Status => {
                if let Some(task) = registry.get(&task_id, asker) {
                    let state = if task.asking() {
                        "input_required"
                    } else {
                        "running"
                    };
                    respond(&bus, reply, &held(&task, state)).await;
                }
            }
            TaskControl::Answer => {
                let Some(task) = registry.get(&task_id, asker) else {
                    continue;
                };
                // Logging the answer waits for the stream: not in this loop.
                let bus = bus.clone();
                tokio::spawn(async move {
                    let answer = match read_answer(&bus, &task, &message.payload).await {
                        Ok(answer) => answer,
                        Err(error) => {
                            respond(&bus, reply, &json!({ "error": error })).await;
                            return;
                        }
                    };
                    let body = match task.answer(answer).await {
                        Ok(true) => held(&task, "answered"),
                        Ok(false) => json!({
                            "error": format!("task {} is not waiting for an answer", task.task_id())
                        }),
                        Err(err) => json!({ "error": err.to_string() }),
                    };
                    respond(&bus, reply, &body).await;
                });
            }
        }
    }
}

/// The answer a request brings: its body, or with an empty body the
/// answer the caller stored beside the task's record (which no other
/// runtime hears). Else why there is none, in one sentence.
async fn read_answer(bus: &Bus, task: &RunningTask, body: &[u8]) -> Result<Value, String> {
    if !body.is_empty() {
        return serde_json::from_slice(body)
            .map_err(|err| format!("the answer is not JSON: {err}"));
    }
    let stored = async { Records::open(bus).await?.answer(task.key()).await };
    match stored.await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(format!(
            "no answer is stored for task {} (or it is not JSON)",
            task.task_id()
        )),
        Err(err) => Err(err.to_string()),
    }
}

fn held(task: &RunningTask, state: &str) -> Value {
    json!({
        "state": state,
        "agent": task.agent().as_str(),
        "instance": task.instance(),
    })
}

async fn respond(bus: &Bus, reply: Subject, body: &Value) {
    let body = serde_json::to_vec(body).expect("a JSON value serializes");
    if let Err(err) = bus.client().publish(reply, body.into()).await {
        tracing::warn!(%err, "cannot answer a task control request");
    }
}
