//! The serving loop of one agent: take tasks, queue by priority, run, answer.

use super::AgentOptions;
use super::dedup::{DedupCache, Seen};
use super::stats::Counters;
use super::task_types::TaskTypes;
use crate::agent::{Agent, Handled, TaskContext, TaskError};
use crate::client::Bus;
use crate::delivery::worker::QueueRing;
use crate::events::TaskEvent;
use crate::metrics::AgentMetrics;
use crate::name::Name;
use crate::protocol::{Priority, TaskRequest, TaskResponse, TaskStatus};
use crate::sender::Sender;
use crate::subject;
use crate::task_id::TaskKey;
use crate::task_log::{Registered, Registry, RunningTask, Stop, StopReason};
use crate::telemetry::{Destination, Parent, Traced};
use async_nats::Subject;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Everything the tasks of one agent share.
pub(super) struct Served<A> {
    pub(super) agent: A,
    pub(super) name: Name,
    pub(super) task_types: TaskTypes,
    pub(super) bus: Bus,
    pub(super) instance_id: Arc<str>,
    pub(super) options: AgentOptions,
    pub(super) dedup: Mutex<DedupCache>,
    pub(super) counters: Arc<Counters>,
    /// Its Prometheus series, when the runtime serves metrics for it.
    pub(super) metrics: Option<AgentMetrics>,
    /// The tasks the runtime holds, for cancels and answers.
    pub(super) registry: Arc<Registry>,
    /// What its handlers' spans are about, made at the first one.
    pub(super) traced_as: OnceLock<Destination>,
    /// Where a ring of its own queue goes, when it works queues.
    pub(super) queue_ring: Option<QueueRing>,
}

impl<A> Served<A> {
    /// The tasks waiting for a slot and running now.
    fn queues(&self, waiting: usize, running: usize) {
        self.counters.set_queues(waiting, running);
        if let Some(metrics) = &self.metrics {
            metrics.queues(waiting, running);
        }
    }

    /// A task refused before a handler ran, with `error`, after `took`.
    pub(super) fn rejected(&self, task_type: &str, error: &str, took: Duration) {
        self.counters.rejected(error, took);
        if let Some(metrics) = &self.metrics {
            metrics.finished(task_type, TaskStatus::Rejected, None);
        }
    }

    /// Holds a task from now until the returned guard is dropped: its
    /// cancel, deadline and log.
    /// `attempt` is `None` for a task taken over request/reply (registered
    /// only once it waits or runs past its first poll), else the attempt at
    /// a queued task (registered at once).
    /// `key` says where its record and log are kept; `task_type` is the
    /// name [`TaskTypes::check`] gave back.
    pub(super) fn hold(
        &self,
        request: &TaskRequest,
        task_type: Arc<str>,
        key: TaskKey,
        attempt: Option<u32>,
    ) -> Registered {
        let stop = request.deadline_time().map(Stop::deadline);
        let task = RunningTask::new(
            &self.bus,
            &self.instance_id,
            &self.name,
            key,
            task_type,
            attempt.unwrap_or(1),
            request.stream,
            attempt.is_some(),
            stop,
        );
        if attempt.is_some() {
            self.registry.register(task)
        } else {
            self.registry.hold(task)
        }
    }
}

/// The subscriptions an agent takes its request/reply tasks on, in its
/// queue group.
pub(super) enum TaskSubscription {
    /// `agent.<name>.>`: its tasks in both forms and its queue's rings (an
    /// agent that works its queue).
    Named(async_nats::Subscriber),
    /// `agent.<name>.task` and `agent.<name>.task.*` (an agent that works no
    /// queue: rings go to the replicas that do).
    Tasks(futures::stream::Select<async_nats::Subscriber, async_nats::Subscriber>),
}

impl TaskSubscription {
    async fn unsubscribe(&mut self) {
        match self {
            Self::Named(subscriber) => {
                let _ = subscriber.unsubscribe().await;
            }
            Self::Tasks(both) => {
                let (plain, stamped) = both.get_mut();
                let _ = plain.unsubscribe().await;
                let _ = stamped.unsubscribe().await;
            }
        }
    }
}

impl futures::Stream for TaskSubscription {
    type Item = async_nats::Message;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Self::Named(subscriber) => subscriber.poll_next_unpin(cx),
            Self::Tasks(both) => both.poll_next_unpin(cx),
        }
    }
}

/// A task waiting for a free slot: most urgent first, then first come.
struct Waiting {
    priority: Priority,
    sequence: u64,
    /// Bytes of the message it came in.
    bytes: usize,
    arrived: Instant,
    request: TaskRequest,
    came: Came,
    held: Registered,
}

/// Where a task taken over request/reply came from, where its answer goes,
/// and the trace it came in.
struct Came {
    sender: Sender,
    reply: Option<Subject>,
    parent: Parent,
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Waiting {}

pub(super) async fn serve<A: Agent>(
    served: Arc<Served<A>>,
    mut subscriber: TaskSubscription,
    mut stop: watch::Receiver<Option<tokio::time::Instant>>,
) {
    // Handlers run inside this task rather than spawned: no task allocation
    // and no hand-off between worker threads per request (measured: the
    // largest cost of the serving path). Handlers of one agent therefore share
    // a thread; CPU-heavy handlers should use spawn_blocking.
    let mut running = FuturesUnordered::new();
    let mut waiting = BinaryHeap::new();
    let mut sequence = 0u64;
    let mut senders = LastSender::default();
    let max_concurrency = served.options.max_concurrency.max(1);
    // Bytes of the messages of waiting and running tasks.
    let mut held_bytes = 0usize;
    {
        // The stop is checked with an atomic load each turn, and its future
        // polled last, when nothing else is ready: a poll of a waiting
        // `changed()` takes the watch's lock, which every message paid when
        // it came first. The future is made once: a fresh one per turn
        // would register with the watch every message.
        let stop_sent = stop.clone();
        let stopped = stop.changed();
        tokio::pin!(stopped);
        loop {
            if stop_sent.has_changed().unwrap_or(true) {
                break;
            }
            let room = waiting.len() < served.options.max_waiting
                && held_bytes < served.options.max_held_bytes;
            tokio::select! {
                biased;
                Some(freed) = running.next(), if !running.is_empty() => {
                    held_bytes -= freed;
                    // A task that finishes at its first poll leaves its slot
                    // free at once: keep taking waiting ones.
                    while running.len() < max_concurrency
                        && let Some(Waiting { bytes, arrived, request, came, held, .. }) = waiting.pop()
                    {
                        let waited = arrived.elapsed();
                        let task = running_task(run_task(served.clone(), request, came, held, Instant::now(), waited), bytes);
                        held_bytes -= start(&mut running, task, bytes).await;
                    }
                    served.queues(waiting.len(), running.len());
                }
                message = subscriber.next(), if room => {
                    let Some(message) = message else { break };
                    // Under `agent.<name>.>` come rings of the agent's queue
                    // too, and messages kept by the inbox or direct stream,
                    // which are not tasks (their reply subject waits for the
                    // stream's ack).
                    let Some(from) = subject::agent_task_sender(&message.subject) else {
                        if let Some(priority) = subject::parse_agent_queued(&message.subject)
                            && let Some(ring) = &served.queue_ring
                        {
                            ring.ring(priority);
                        }
                        continue;
                    };
                    let reply = message.reply;
                    let arrived = Instant::now();
                    let bytes = message.payload.len();
                    let (request, task_type) = match admit(&served, &message.payload, reply.as_ref(), arrived) {
                        Admitted::Run(request, task_type) => (request, task_type),
                        Admitted::Answer(body) => {
                            // Boxed: a rare path, kept out of the loop's own future.
                            Box::pin(send_reply(&served, reply.as_ref(), body)).await;
                            continue;
                        }
                        Admitted::Waits => continue,
                    };
                    let sender = senders.of(from);
                    let key = TaskKey::of_agent(&served.name, sender.agent(), &request.task_id);
                    let held = served.hold(&request, task_type, key, None);
                    let came = Came {
                        sender,
                        reply,
                        parent: Parent::from_headers(message.headers.as_ref()),
                    };
                    held_bytes += bytes;
                    if running.len() < max_concurrency {
                        let task = running_task(run_task(served.clone(), request, came, held, arrived, Duration::ZERO), bytes);
                        held_bytes -= start(&mut running, task, bytes).await;
                    } else {
                        sequence += 1;
                        held.register();
                        waiting.push(Waiting { priority: request.priority, sequence, bytes, arrived, request, came, held });
                    }
                    served.queues(waiting.len(), running.len());
                }
                _ = &mut stopped => break,
            }
        }
    }

    // Shutdown: take no more tasks; tell waiting ones; let running ones finish in time.
    let deadline = stop.borrow().unwrap_or_else(tokio::time::Instant::now);
    served.queues(0, running.len());
    subscriber.unsubscribe().await;
    while let Some(message) = subscriber.next().now_or_never().flatten() {
        if !subject::is_agent_task(&message.subject) {
            continue;
        }
        if let Some(reply) = message.reply
            && let Ok(request) = TaskRequest::from_json(&message.payload)
        {
            Box::pin(cancel(&served, &request, Some(&reply), None)).await;
        }
    }
    for Waiting {
        request,
        came,
        held,
        ..
    } in waiting.drain()
    {
        Box::pin(cancel(&served, &request, came.reply.as_ref(), Some(&held))).await;
    }
    if tokio::time::timeout_at(deadline, async { while running.next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(agent = %served.name, abandoned = running.len(), "shutdown deadline passed with tasks still running");
        running.clear();
    }
}

/// The sender of the last task the serving loop took: most tasks come from
/// the caller of the one before, whose name is then shared rather than
/// checked and copied again.
#[derive(Default)]
struct LastSender(Option<Name>);

impl LastSender {
    /// The sender named by `token`, the last token of a task's subject
    /// ([`subject::agent_task_sender`]), as [`subject::sender_of`] reads it.
    fn of(&mut self, token: Option<&str>) -> Sender {
        let Some(token) = token else {
            return Sender::Unverified;
        };
        if let Some(last) = &self.0
            && last.as_str() == token
        {
            return Sender::Agent(last.clone());
        }
        match Name::parse("sender", token) {
            Ok(name) => {
                self.0 = Some(name.clone());
                Sender::Agent(name)
            }
            Err(_) => Sender::Unverified,
        }
    }
}

/// A task being run, boxed so that it can join the running ones unmoved;
/// it yields the bytes of the message it came in, free once it ends.
type Task = Pin<Box<dyn Future<Output = usize> + Send>>;

/// Boxes a task that came in a message of `bytes` bytes. Boxed before it
/// is first polled, so that the serving loop's own future, which every agent
/// holds while idle, does not make room for a handler's future.
fn running_task(task: impl Future<Output = ()> + Send + 'static, bytes: usize) -> Task {
    Box::pin(task.map(move |()| bytes))
}

/// Polls a new task once, here, and adds it to `running` only if it has to
/// wait: most handlers finish at their first poll, and then the task costs
/// one allocation instead of a trip through the running set's queue.
/// Returns the bytes freed at once: `bytes` when it finished, else 0.
async fn start(running: &mut FuturesUnordered<Task>, mut task: Task, bytes: usize) -> usize {
    // The poll registers this serving task's waker; once `task` is in
    // `running`, the set polls it again with its own.
    let pending = std::future::poll_fn(|cx| Poll::Ready(task.as_mut().poll(cx).is_pending())).await;
    if pending {
        running.push(task);
        0
    } else {
        bytes
    }
}

/// What to do with a message that came in.
enum Admitted {
    /// Run it: the request, and its task type's name.
    Run(TaskRequest, Arc<str>),
    /// Send this answer and drop it: it cannot run (counted as rejected), or
    /// it was answered already.
    Answer(Bytes),
    /// Nothing: the same task is running, and its answer goes to this reply
    /// subject too.
    Waits,
}

/// Parses and checks a message. Synchronous, so that the serving loop's
/// future does not hold the sending of an answer that most tasks never need.
fn admit<A: Agent>(
    served: &Served<A>,
    payload: &[u8],
    reply: Option<&Subject>,
    now: Instant,
) -> Admitted {
    let request = match TaskRequest::from_json(payload) {
        Ok(request) => request,
        Err((task_id, err)) => {
            let error = err.to_string();
            served.rejected("", &error, now.elapsed());
            let response =
                TaskResponse::error(task_id.unwrap_or_default(), TaskStatus::Rejected, error);
            return Admitted::Answer(response.to_json().into());
        }
    };
    let task_type = match served.task_types.check(served.name.as_str(), &request) {
        Ok(task_type) => task_type,
        Err(err) => {
            served.rejected(&request.task_type, err.message(), now.elapsed());
            return Admitted::Answer(err.to_response(&request.task_id).to_json().into());
        }
    };
    let seen = served
        .dedup
        .lock()
        .map(|mut dedup| dedup.check(&request.task_id, reply, now))
        .unwrap_or(Seen::New);
    match seen {
        Seen::New => Admitted::Run(request, task_type),
        Seen::Running => Admitted::Waits,
        Seen::Answered(response) => Admitted::Answer(response),
    }
}

/// What running a handler came to.
pub(super) struct Outcome {
    /// The response, limited to what fits in a message.
    pub(super) response: TaskResponse,
    /// The response as JSON.
    pub(super) body: Vec<u8>,
    /// Whether another attempt could succeed.
    pub(super) retryable: bool,
    /// From `started` to the end of the handler.
    pub(super) duration: Duration,
    /// Whether the task was cancelled or ran out of time.
    pub(super) stopped: bool,
}

/// How the handler's future ended.
enum Ran {
    /// It returned (or panicked).
    Finished(HandlerOutput),
    /// It was stopped; what it returned within the grace period, if anything.
    Stopped(StopReason, Option<HandlerOutput>),
}

/// The output of a handler: its result, or its panic.
type HandlerOutput = std::thread::Result<Result<serde_json::Value, TaskError>>;

/// Runs a handler that did not finish at its first poll until it finishes
/// or `task` is stopped: then a cancelled handler gets the agent's grace
/// period, one out of time none.
async fn run_until_stopped<A, F>(
    served: &Served<A>,
    task: &RunningTask,
    mut handler: Pin<&mut F>,
) -> Ran
where
    F: Future<Output = HandlerOutput>,
{
    tokio::select! {
        biased;
        output = &mut handler => Ran::Finished(output),
        reason = task.stopped() => {
            let grace = match reason {
                StopReason::Cancelled => served.options.cancel_grace,
                _ => Duration::ZERO,
            };
            let output = if grace.is_zero() {
                None
            } else {
                tokio::time::timeout(grace, &mut handler).await.ok()
            };
            Ran::Stopped(reason, output)
        }
    }
}

/// Runs the handler on `request`, held as `held`: a cancel, the deadline,
/// the agent's task timeout, panics and oversize results all become error
/// responses. A task stopped before it starts does not run.
///
/// `started` is when it was taken from its queue, `waited` how long it
/// waited before.
pub(super) async fn execute<A: Agent>(
    served: &Served<A>,
    request: TaskRequest,
    sender: Sender,
    held: &Registered,
    traced: &Traced,
    started: Instant,
    waited: Duration,
) -> Outcome {
    let task_id = request.task_id.clone();
    let task = held.task();
    let task_type = served.metrics.as_ref().map(|metrics| {
        metrics.started(task.task_type(), waited);
        task.task_type().clone()
    });
    let ran = match task.stop_reason() {
        Some(reason) => Ran::Stopped(reason, None),
        None => {
            task.limit(served.options.task_timeout);
            if task.logs_start() {
                // Followed: findable from its first event on.
                held.register();
                if let Err(err) = Box::pin(task.log_start()).await {
                    tracing::warn!(%err, %task_id, "cannot start the task's log");
                }
            }
            let ctx = TaskContext {
                handled: Handled::Task(task.clone()),
                sender,
            };
            let handler =
                AssertUnwindSafe(traced.within(served.agent.handle(request, ctx))).catch_unwind();
            tokio::pin!(handler);
            // Most handlers finish at their first poll: nothing could reach
            // them meanwhile, so only one that goes on is registered for
            // cancels and answers, and waits on its stop.
            match futures::poll!(&mut handler) {
                Poll::Ready(output) => Ran::Finished(output),
                Poll::Pending => {
                    held.register();
                    Box::pin(run_until_stopped(served, task, handler.as_mut())).await
                }
            }
        }
    };
    // A handler that ends on its own once stopped still ends stopped.
    let ran = match ran {
        Ran::Finished(output) => match task.stop_reason() {
            Some(reason) => Ran::Stopped(reason, Some(output)),
            None => Ran::Finished(output),
        },
        stopped => stopped,
    };
    let (response, retryable, stopped) = match ran {
        Ran::Finished(Ok(Ok(result))) => (TaskResponse::completed(&task_id, result), false, false),
        Ran::Finished(Ok(Err(err))) => (
            err.to_response(&task_id),
            err.is_retryable(),
            matches!(err.status(), TaskStatus::Cancelled | TaskStatus::Timeout),
        ),
        Ran::Finished(Err(panic)) => {
            let message = format!("the handler panicked: {}", panic_message(&*panic));
            (
                TaskError::failed(message).to_response(&task_id),
                true,
                false,
            )
        }
        Ran::Stopped(reason, output) => {
            let mut response = TaskError::stopped(reason).to_response(&task_id);
            if let Some(Ok(Ok(result))) = output {
                response.result = Some(result);
            }
            // A time limit may be enough another time; a cancel or a
            // passed deadline never is.
            (response, matches!(reason, StopReason::TimeLimit(_)), true)
        }
    };
    let body = response.to_json();
    let max = served.bus.max_payload();
    let (response, body, retryable) = if body.len() > max {
        let too_large = TaskError::permanent(format!(
            "the result is {} bytes, more than the server's max_payload of {max} bytes",
            body.len()
        ))
        .to_response(&task_id);
        let body = too_large.to_json();
        (too_large, body, false)
    } else {
        (response, body, retryable)
    };
    if let Some(error) = &response.error {
        traced.failed(error);
    }
    let duration = started.elapsed();
    served.counters.finished(&response, duration);
    if let (Some(metrics), Some(task_type)) = (&served.metrics, &task_type) {
        metrics.finished(task_type, response.status, Some(duration));
    }
    Outcome {
        response,
        body,
        retryable,
        duration,
        stopped,
    }
}

/// Runs a task taken over request/reply and answers it (and any retries of
/// it that arrived meanwhile).
async fn run_task<A: Agent>(
    served: Arc<Served<A>>,
    request: TaskRequest,
    came: Came,
    held: Registered,
    started: Instant,
    waited: Duration,
) {
    let Came {
        sender,
        reply,
        parent,
    } = came;
    let task_id = request.task_id.clone();
    let task_type = served
        .options
        .task_events
        .then(|| held.task().task_type().clone());
    let destination = || {
        let made = || Destination::new(subject::agent_task(&served.name).as_str());
        served.traced_as.get_or_init(made).clone()
    };
    let traced = Traced::process(&parent, destination, task_id.as_str());
    let outcome = execute(&served, request, sender, &held, &traced, started, waited).await;
    // Logged before the answer: whoever gets it finds the log complete.
    held.task()
        .finish(&outcome.response, outcome.duration, outcome.stopped)
        .await;
    drop(held);
    let body = Bytes::from(outcome.body);
    let waiters = served
        .dedup
        .lock()
        .map(|mut d| d.answer(&task_id, &body))
        .unwrap_or_default();
    for waiter in &waiters {
        Box::pin(send_reply(&served, Some(waiter), body.clone())).await;
    }
    // Moved, not cloned, when nobody waits (the common case): cloning a
    // `Bytes` made from a `Vec` allocates a shared header.
    send_reply(&served, reply.as_ref(), body).await;
    if let Some(task_type) = task_type {
        Box::pin(publish_task_event(
            &served,
            &task_id,
            &task_type,
            &outcome.response,
            outcome.duration,
            waited,
        ))
        .await;
    }
}

/// Answers a task the agent will not run, since it is shutting down; a held
/// task's log ends with it.
async fn cancel<A: Agent>(
    served: &Served<A>,
    request: &TaskRequest,
    reply: Option<&Subject>,
    held: Option<&Registered>,
) {
    let response = TaskResponse::error(
        &request.task_id,
        TaskStatus::Cancelled,
        "the agent is shutting down; send the task again",
    );
    served.counters.finished(&response, Duration::ZERO);
    if let Some(metrics) = &served.metrics {
        metrics.finished(&request.task_type, TaskStatus::Cancelled, None);
    }
    if let Some(held) = held {
        held.task().finish(&response, Duration::ZERO, false).await;
    }
    send_reply(served, reply, response.to_json().into()).await;
}

async fn send_reply<A: Agent>(served: &Served<A>, reply: Option<&Subject>, body: Bytes) {
    let Some(reply) = reply else { return };
    if let Err(err) = served.bus.client().publish(reply.clone(), body).await {
        tracing::warn!(%err, agent = %served.name, "cannot send a reply");
    }
}

/// Publishes `platform.events.task_completed` or `task_failed`, unless the
/// agent's options turn task events off.
pub(super) async fn publish_task_event<A: Agent>(
    served: &Served<A>,
    task_id: &str,
    task_type: &str,
    response: &TaskResponse,
    duration: Duration,
    waited: Duration,
) {
    if !served.options.task_events {
        return;
    }
    let event = TaskEvent::new(
        task_id,
        served.name.as_str(),
        task_type,
        response.status,
        response.error.as_deref(),
        duration,
        &served.instance_id,
    )
    .with_waited(waited);
    // Without an identity, from_static: no copy of the subject per event.
    let subject = match served.bus.identity() {
        Some(from) => subject::events::stamped(event.subject(), Some(from)).to_nats(),
        None => Subject::from_static(event.subject()),
    };
    if let Err(err) = served
        .bus
        .client()
        .publish(subject, event.to_json().into())
        .await
    {
        tracing::warn!(%err, "cannot publish task event");
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_sender_is_read_from_the_subject_every_time() {
        let mut senders = LastSender::default();
        let mut of = |subject: &str| {
            let from = subject::agent_task_sender(subject).expect("a task's subject");
            senders.of(from)
        };
        let alice = of("agent.bob.task.alice");
        assert_eq!(alice.agent().map(Name::as_str), Some("alice"));
        assert_eq!(of("agent.bob.task.alice"), alice);
        assert_eq!(of("agent.bob.task"), Sender::Unverified);
        assert_eq!(
            of("agent.bob.task.carol").agent().map(Name::as_str),
            Some("carol")
        );
        // Not a name: unverified, and the last good one is not reused.
        assert_eq!(of("agent.bob.task.a=b"), Sender::Unverified);
        assert_eq!(of("agent.bob.task.alice"), alice);
        for subject in [
            "agent.bob.task.alice",
            "agent.bob.task",
            "agent.bob.task.a=b",
        ] {
            assert_eq!(of(subject), subject::sender_of(subject), "{subject}");
        }
        assert_eq!(subject::agent_task_sender("agent.bob.queued.high"), None);
        assert_eq!(subject::agent_task_sender("agent.bob.task.a.b"), None);
    }
}
