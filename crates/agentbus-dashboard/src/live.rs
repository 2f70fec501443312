//! What the dashboard shows, gathered from the bus.
//!
//! Two sources. As they come: `platform.events.task_*` (every task a
//! runtime finishes: its agent, type, outcome and run time) and the task
//! logs (`task.*.*.*.*.events`: which tasks run and which wait for an answer),
//! both on plain subscriptions, and presence, from one watch of its entries
//! (the dashboard's one consumer). Every poll: each stream's state and
//! limits, the consumers and subjects of the tasks stream (each queue by
//! priority), and the newest dead letters. Each poll makes one [`Overview`], which the page receives
//! whole.
//!
//! The counts of finished tasks are those seen since the dashboard
//! started; the others (queued, running, input required, dead-lettered) are
//! what the bus holds now.

use crate::bus_metrics::BusMetrics;
use agentbus::delivery::DeadLetterEntry;
use agentbus::events::{PlatformEvent, TaskEvent};
use agentbus::presence::{AgentPresence, OnlineAgents};
use agentbus::state::StateStore;
use agentbus::subject::{self, QueueKind, TASKS_STREAM};
use agentbus::task_log::{EventType, LogEvent};
use agentbus::{Bus, TaskStatus};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Finished tasks kept for the task list.
const RECENT_TASKS: usize = 500;
/// Run times (and waits) kept per agent for its percentiles: 2 KiB each,
/// 20 MiB for 10,000 busy agents.
const RUN_TIMES: usize = 128;
/// The share of its time the dashboard spends reading the bus at most: a
/// read that takes longer than this share of the poll stretches the next
/// wait (a bus with thousands of queues takes longer to read).
const READING_SHARE: u32 = 4;
/// Dead letters shown.
const DEAD_LETTERS_SHOWN: usize = 50;
/// Queues whose oldest task is looked up, per poll.
const OLDEST_LOOKUPS: usize = 200;
/// Tasks tracked as running or waiting for an answer from their logs; past
/// this, the oldest are forgotten (a log whose final event never came).
const TRACKED_TASKS: usize = 10_000;

/// Everything the first screen shows, as of one poll.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Overview {
    /// When it was read, RFC 3339.
    pub(crate) at: String,
    /// Since when finished tasks are counted, RFC 3339.
    pub(crate) counting_since: String,
    pub(crate) counts: Counts,
    pub(crate) agents: Vec<AgentRow>,
    pub(crate) queues: Vec<QueueRow>,
    pub(crate) streams: Vec<StreamRow>,
    pub(crate) dead_letters: DeadLetters,
    /// What could not be read this time, one sentence each.
    pub(crate) problems: Vec<String>,
}

/// Tasks by state.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Counts {
    pub(crate) queued: u64,
    pub(crate) running: u64,
    pub(crate) input_required: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) rejected: u64,
    pub(crate) timeout: u64,
    pub(crate) cancelled: u64,
    pub(crate) dead_lettered: u64,
}

/// One agent: its instances online and what it did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AgentRow {
    pub(crate) name: String,
    pub(crate) instances: usize,
    pub(crate) online: bool,
    /// Seconds since its newest heartbeat.
    pub(crate) heartbeat_age_s: Option<f64>,
    pub(crate) task_types: Vec<String>,
    pub(crate) in_flight: usize,
    pub(crate) done: u64,
    pub(crate) failed: u64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    /// How long its tasks waited before their handler started: median.
    pub(crate) wait_p50_ms: Option<f64>,
    pub(crate) wait_p95_ms: Option<f64>,
}

impl AgentRow {
    /// An agent with nothing counted yet.
    fn new(name: &str, online: bool) -> Self {
        Self {
            name: name.to_owned(),
            instances: 0,
            online,
            heartbeat_age_s: None,
            task_types: Vec::new(),
            in_flight: 0,
            done: 0,
            failed: 0,
            p50_ms: None,
            p95_ms: None,
            wait_p50_ms: None,
            wait_p95_ms: None,
        }
    }
}

/// One work queue at one priority.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueueRow {
    /// `tasks.<agent>` or `work.<task_type>`.
    pub(crate) queue: String,
    pub(crate) kind: &'static str,
    pub(crate) priority: String,
    /// Tasks stored and not yet taken (the consumer's pending count).
    pub(crate) waiting: u64,
    /// Tasks taken and not yet settled.
    pub(crate) in_progress: u64,
    /// Deliveries made again so far.
    pub(crate) redelivered: u64,
    /// Seconds since the oldest task of the queue was stored.
    pub(crate) oldest_age_s: Option<f64>,
}

/// One stream and the limit that will bite first.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamRow {
    pub(crate) name: String,
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    /// -1: no limit.
    pub(crate) max_messages: i64,
    /// -1: no limit.
    pub(crate) max_bytes: i64,
    pub(crate) max_age_s: f64,
    /// How full it is against the limit nearest to its end, in percent.
    pub(crate) used_percent: Option<f64>,
    /// That limit: `messages`, `bytes`, or `age` when only age limits it.
    pub(crate) limit: &'static str,
}

/// The dead letters.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DeadLetters {
    /// Held in the stream.
    pub(crate) total: u64,
    /// The newest, newest first.
    pub(crate) recent: Vec<DeadLetterEntry>,
}

/// A task the dashboard saw, for the task list.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SeenTask {
    pub(crate) task_id: String,
    pub(crate) agent: String,
    pub(crate) task_type: String,
    /// `running`, `input_required`, or how it ended.
    pub(crate) state: String,
    pub(crate) error: Option<String>,
    pub(crate) duration_ms: Option<f64>,
    /// When it was seen in this state, RFC 3339.
    pub(crate) at: String,
}

/// What the dashboard counted from the events since it started.
#[derive(Default)]
struct Totals {
    by_status: BTreeMap<&'static str, u64>,
    agents: HashMap<String, AgentTotals>,
    recent: VecDeque<SeenTask>,
    /// Tasks whose log says they run, or wait for an answer.
    /// Each with the number it was opened with.
    open: HashMap<String, (u64, SeenTask)>,
    /// The tasks put in `open`, oldest first, to forget the oldest; an entry
    /// whose number `open` no longer holds (the task is over) is stale.
    open_order: VecDeque<(u64, String)>,
    /// Tasks opened so far.
    opened: u64,
}

#[derive(Default)]
struct AgentTotals {
    done: u64,
    failed: u64,
    run_ms: VecDeque<f64>,
    waited_ms: VecDeque<f64>,
}

/// Keeps the last [`RUN_TIMES`] of `values`.
fn keep_last(values: &mut VecDeque<f64>, value: f64) {
    if values.len() == RUN_TIMES {
        values.pop_front();
    }
    values.push_back(value);
}

impl Totals {
    fn finished(&mut self, event: &TaskEvent<'_>) {
        *self.by_status.entry(event.status.as_str()).or_default() += 1;
        let agent = self.agents.entry(event.agent.to_string()).or_default();
        if event.status == TaskStatus::Completed {
            agent.done += 1;
        } else {
            agent.failed += 1;
        }
        keep_last(&mut agent.run_ms, event.duration_ms);
        if let Some(waited) = event.waited_ms {
            keep_last(&mut agent.waited_ms, waited);
        }
        self.open.remove(event.task_id.as_ref());
        if self.recent.len() == RECENT_TASKS {
            self.recent.pop_back();
        }
        self.recent.push_front(SeenTask {
            task_id: event.task_id.to_string(),
            agent: event.agent.to_string(),
            task_type: event.task_type.to_string(),
            state: event.status.as_str().to_owned(),
            error: event.error.as_deref().map(str::to_owned),
            duration_ms: Some(event.duration_ms),
            at: now(),
        });
    }

    fn logged(&mut self, event: &LogEvent) {
        let id = event.task_id.as_str();
        match event.kind {
            EventType::Started | EventType::InputReceived => {
                let agent = event.data["agent"].as_str().unwrap_or_default();
                self.open_as(id, "running", agent);
            }
            EventType::InputRequired => self.open_as(id, "input_required", ""),
            kind if kind.is_final() => {
                self.open.remove(id);
            }
            _ => {}
        }
    }

    fn open_as(&mut self, id: &str, state: &str, agent: &str) {
        if let Some((_, task)) = self.open.get_mut(id) {
            task.state = state.to_owned();
            if !agent.is_empty() {
                task.agent = agent.to_owned();
            }
            return;
        }
        let open = &mut self.open;
        let current = |open: &HashMap<String, (u64, SeenTask)>, (number, id): &(u64, String)| {
            open.get(id).is_some_and(|(opened, _)| opened == number)
        };
        while open.len() >= TRACKED_TASKS {
            let Some(oldest) = self.open_order.pop_front() else {
                break;
            };
            if current(open, &oldest) {
                open.remove(&oldest.1);
            }
        }
        // Stale entries go in one pass once they outnumber the open tasks:
        // a pass per opened task would cost the whole order each time.
        if self.open_order.len() > 2 * open.len() + 64 {
            self.open_order.retain(|entry| current(open, entry));
        }
        self.opened += 1;
        self.open_order.push_back((self.opened, id.to_owned()));
        self.open.insert(
            id.to_owned(),
            (
                self.opened,
                SeenTask {
                    task_id: id.to_owned(),
                    agent: agent.to_owned(),
                    task_type: String::new(),
                    state: state.to_owned(),
                    error: None,
                    duration_ms: None,
                    at: now(),
                },
            ),
        );
    }

    fn count(&self, status: TaskStatus) -> u64 {
        self.by_status.get(status.as_str()).copied().unwrap_or(0)
    }

    fn open_in(&self, state: &str) -> u64 {
        self.open
            .values()
            .filter(|(_, task)| task.state == state)
            .count() as u64
    }
}

/// What the routes read: the latest overview, the totals, the metrics and the bus.
pub(crate) struct Shared {
    pub(crate) bus: Bus,
    pub(crate) overview: tokio::sync::watch::Receiver<Arc<Overview>>,
    pub(crate) metrics: Arc<BusMetrics>,
    totals: Mutex<Totals>,
}

impl Shared {
    /// The tasks seen in `state` (`running`, `input_required`, or an
    /// outcome), newest first; every one seen with no state.
    pub(crate) fn tasks(&self, state: Option<&str>) -> Vec<SeenTask> {
        let totals = self.totals.lock().expect("totals lock");
        let mut open: Vec<SeenTask> = totals.open.values().map(|(_, task)| task.clone()).collect();
        open.sort_by(|a, b| b.at.cmp(&a.at));
        open.into_iter()
            .chain(totals.recent.iter().cloned())
            .filter(|task| state.is_none_or(|state| task.state == state))
            .collect()
    }
}

/// The running gatherer; stops when stopped or dropped.
#[derive(Debug)]
pub(crate) struct Handle {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Handle {
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub(crate) fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts gathering.
pub(crate) struct Live;

impl Live {
    pub(crate) async fn start(
        bus: Bus,
        state_url: Option<&str>,
        poll: Duration,
    ) -> Result<Handle, crate::DashboardError> {
        let store = StateStore::open(&bus, state_url).await?;
        let presence = OnlineAgents::follow(&store).await?;
        let platform = bus.subscribe(subject::events::ALL, None).await?;
        let logs = bus.subscribe(subject::ALL_TASK_EVENTS, None).await?;
        let (publish, overview) = tokio::sync::watch::channel(Arc::new(Overview::default()));
        let shared = Arc::new(Shared {
            bus,
            overview,
            metrics: Arc::new(BusMetrics::new()),
            totals: Mutex::new(Totals::default()),
        });
        let started = now();
        let follow = tokio::spawn(follow(shared.clone(), platform, logs));
        let reading = tokio::spawn({
            let shared = shared.clone();
            async move {
                loop {
                    let began = tokio::time::Instant::now();
                    let overview = read(&shared, &presence, &started).await;
                    shared.metrics.set(&overview);
                    publish.send_replace(Arc::new(overview));
                    let took = began.elapsed();
                    tokio::time::sleep_until(began + poll.max(took * READING_SHARE)).await;
                }
            }
        });
        Ok(Handle {
            shared,
            tasks: vec![follow, reading],
        })
    }
}

/// Counts the events as they come.
async fn follow(
    shared: Arc<Shared>,
    platform: agentbus::Subscription,
    logs: agentbus::Subscription,
) {
    let mut both = futures::stream::select(platform, logs);
    while let Some(event) = both.next().await {
        if event.subject.starts_with("task.") {
            if let Ok(logged) = event.json::<LogEvent>() {
                shared.totals.lock().expect("totals lock").logged(&logged);
            }
            continue;
        }
        if let Ok(PlatformEvent::TaskCompleted(task) | PlatformEvent::TaskFailed(task)) =
            PlatformEvent::parse(&event.subject, &event.payload)
            && reported_by_its_agent(&event.subject, &task.agent)
        {
            shared.metrics.finished(&task);
            shared.totals.lock().expect("totals lock").finished(&task);
        }
    }
}

/// Whether a task event on `subject` may be about `agent`: one an agent
/// identity published carries its name ([`subject::sender_of`]) and counts
/// for that agent only; one without a name came from a client with no
/// agent identity (the operator, or any client on a bus without them).
fn reported_by_its_agent(subject: &str, agent: &str) -> bool {
    match subject::sender_of(subject) {
        agentbus::Sender::Agent(from) => from.as_str() == agent,
        agentbus::Sender::Unverified => true,
    }
}

/// Reads the bus once.
async fn read(shared: &Shared, presence: &OnlineAgents, started: &str) -> Overview {
    let bus = &shared.bus;
    let mut problems = Vec::new();
    let presence = presence.now();
    let streams = read_streams(bus).await.unwrap_or_else(|err| {
        problems.push(format!("streams: {err}"));
        Vec::new()
    });
    let queues = read_queues(bus).await.unwrap_or_else(|err| {
        problems.push(format!("queues: {err}"));
        Vec::new()
    });
    let dead_letters = match bus.recent_dead_letters(DEAD_LETTERS_SHOWN).await {
        Ok((total, recent)) => DeadLetters { total, recent },
        Err(err) => {
            problems.push(format!("dead letters: {err}"));
            DeadLetters::default()
        }
    };
    let tasks_stored = streams
        .iter()
        .find(|stream| stream.name == TASKS_STREAM)
        .map_or(0, |stream| stream.messages);
    let taken: u64 = queues.iter().map(|queue| queue.in_progress).sum();
    let totals = shared.totals.lock().expect("totals lock");
    let counts = Counts {
        queued: tasks_stored.saturating_sub(taken),
        running: presence.iter().map(|agent| agent.in_flight as u64).sum(),
        input_required: totals.open_in("input_required"),
        completed: totals.count(TaskStatus::Completed),
        failed: totals.count(TaskStatus::Failed),
        rejected: totals.count(TaskStatus::Rejected),
        timeout: totals.count(TaskStatus::Timeout),
        cancelled: totals.count(TaskStatus::Cancelled),
        dead_lettered: dead_letters.total,
    };
    let agents = agent_rows(&presence, &totals.agents);
    drop(totals);
    Overview {
        at: now(),
        counting_since: started.to_owned(),
        counts,
        agents,
        queues,
        streams,
        dead_letters,
        problems,
    }
}

/// The agents online, then those seen only in events.
fn agent_rows(presence: &[AgentPresence], totals: &HashMap<String, AgentTotals>) -> Vec<AgentRow> {
    let now = SystemTime::now();
    let mut rows: BTreeMap<&str, AgentRow> = BTreeMap::new();
    for instance in presence {
        let age = humantime::parse_rfc3339_weak(&instance.last_seen)
            .ok()
            .and_then(|seen| now.duration_since(seen).ok())
            .map(|age| age.as_secs_f64());
        let row = rows
            .entry(&instance.name)
            .or_insert_with(|| AgentRow::new(&instance.name, true));
        row.instances += 1;
        row.in_flight += instance.in_flight;
        row.heartbeat_age_s = match (row.heartbeat_age_s, age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for task_type in &instance.task_types {
            if !row.task_types.contains(&task_type.name) {
                row.task_types.push(task_type.name.clone());
            }
        }
    }
    for (name, agent) in totals {
        let row = rows
            .entry(name)
            .or_insert_with(|| AgentRow::new(name, false));
        row.done = agent.done;
        row.failed = agent.failed;
        let times = sorted(&agent.run_ms);
        row.p50_ms = percentile(&times, 0.50);
        row.p95_ms = percentile(&times, 0.95);
        let waits = sorted(&agent.waited_ms);
        row.wait_p50_ms = percentile(&waits, 0.50);
        row.wait_p95_ms = percentile(&waits, 0.95);
    }
    let mut rows: Vec<AgentRow> = rows.into_values().collect();
    // Online first, each part by name.
    rows.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.name.cmp(&b.name)));
    rows
}

fn sorted(values: &VecDeque<f64>) -> Vec<f64> {
    let mut values: Vec<f64> = values.iter().copied().collect();
    values.sort_by(f64::total_cmp);
    values
}

/// The value below which a share `q` of the sorted `times` falls.
fn percentile(times: &[f64], q: f64) -> Option<f64> {
    if times.is_empty() {
        return None;
    }
    let rank = (q * (times.len() - 1) as f64).round() as usize;
    times.get(rank).copied()
}

async fn read_streams(bus: &Bus) -> Result<Vec<StreamRow>, async_nats::Error> {
    let infos: Vec<_> = bus.jetstream().streams().try_collect().await?;
    let mut rows: Vec<StreamRow> = infos
        .into_iter()
        .map(|info| {
            let config = &info.config;
            let state = &info.state;
            let messages = fraction(state.messages, config.max_messages);
            let bytes = fraction(state.bytes, config.max_bytes);
            let (used_percent, limit) = match (messages, bytes) {
                (Some(m), Some(b)) if b > m => (Some(b), "bytes"),
                (Some(m), _) => (Some(m), "messages"),
                (None, Some(b)) => (Some(b), "bytes"),
                (None, None) if !config.max_age.is_zero() => (None, "age"),
                (None, None) => (None, "none"),
            };
            StreamRow {
                name: config.name.clone(),
                messages: state.messages,
                bytes: state.bytes,
                max_messages: config.max_messages,
                max_bytes: config.max_bytes,
                max_age_s: config.max_age.as_secs_f64(),
                used_percent,
                limit,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// `used` against `limit` in percent; `None` without a limit.
fn fraction(used: u64, limit: i64) -> Option<f64> {
    (limit > 0).then(|| used as f64 * 100.0 / limit as f64)
}

/// Every queue by priority: its stored tasks from the stream's subjects,
/// what its consumer holds, and the age of its oldest task.
async fn read_queues(bus: &Bus) -> Result<Vec<QueueRow>, async_nats::Error> {
    let stream = bus.jetstream().get_stream(TASKS_STREAM).await?;
    let mut with_subjects = stream.info_with_subjects(">").await?;
    let first_sequence = with_subjects.info.state.first_sequence;
    let mut stored: HashMap<String, usize> = HashMap::new();
    while let Some((subject, count)) = with_subjects.try_next().await? {
        stored.insert(subject, count);
    }
    let mut rows: BTreeMap<String, QueueRow> = BTreeMap::new();
    for (subject, count) in &stored {
        if let Some(row) = queue_row(&mut rows, subject) {
            row.waiting = *count as u64;
        }
    }
    let mut consumers = stream.consumers();
    while let Some(consumer) = consumers.try_next().await? {
        let config = &consumer.config;
        let filters = std::iter::once(&config.filter_subject)
            .chain(&config.filter_subjects)
            .filter(|filter| !filter.is_empty());
        for filter in filters {
            if let Some(row) = queue_row(&mut rows, filter) {
                row.waiting = consumer.num_pending;
                row.in_progress = consumer.num_ack_pending as u64;
                row.redelivered = consumer.num_redelivered as u64;
            }
        }
    }
    let now = SystemTime::now();
    for (subject, row) in rows.iter_mut().take(OLDEST_LOOKUPS) {
        if stored.get(subject).copied().unwrap_or(0) == 0 {
            continue;
        }
        let first = stream
            .raw_message_builder()
            .sequence(first_sequence)
            .next_by_subject(subject.clone())
            .send()
            .await;
        if let Ok(message) = first {
            let stored_at = SystemTime::from(message.time);
            row.oldest_age_s = now
                .duration_since(stored_at)
                .ok()
                .map(|age| age.as_secs_f64());
        }
    }
    let mut rows: Vec<QueueRow> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        a.queue
            .cmp(&b.queue)
            .then_with(|| a.priority.cmp(&b.priority))
    });
    Ok(rows)
}

/// The row of queue subject `subject`, made when first asked; `None` for a
/// subject that is not a queue's.
fn queue_row<'a>(
    rows: &'a mut BTreeMap<String, QueueRow>,
    subject: &str,
) -> Option<&'a mut QueueRow> {
    let (kind, name, priority) = subject::parse_queue(subject)?;
    let (queue, kind) = match kind {
        QueueKind::Agent => (
            subject::task_queue(&name, agentbus::Priority::Normal),
            "agent",
        ),
        QueueKind::TaskType => (
            subject::work_queue(&name, agentbus::Priority::Normal),
            "task_type",
        ),
    };
    Some(rows.entry(subject.to_owned()).or_insert_with(|| QueueRow {
        queue: queue.to_string(),
        kind,
        priority: priority.to_string(),
        waiting: 0,
        in_progress: 0,
        redelivered: 0,
        oldest_age_s: None,
    }))
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_event_counts_for_the_agent_that_reported_it_only() {
        assert!(reported_by_its_agent(
            "platform.events.task_completed.bob",
            "bob"
        ));
        assert!(!reported_by_its_agent(
            "platform.events.task_completed.alice",
            "bob"
        ));
        // Without a name: a client with no agent identity, the operator.
        assert!(reported_by_its_agent("platform.events.task_failed", "bob"));
    }

    #[test]
    fn the_oldest_open_task_is_forgotten_and_tasks_over_do_not_count() {
        let mut totals = Totals::default();
        // Tasks opened and over leave only stale entries behind.
        for n in 0..3 * TRACKED_TASKS {
            let id = format!("over-{n}");
            totals.open_as(&id, "running", "a");
            totals.open.remove(&id);
        }
        assert!(totals.open_order.len() <= 2 * totals.open.len() + 65);
        for n in 0..TRACKED_TASKS {
            totals.open_as(&format!("t{n}"), "running", "a");
        }
        assert_eq!(totals.open.len(), TRACKED_TASKS);
        // One more: the oldest open one goes, whatever stale entries precede it.
        totals.open_as("newest", "input_required", "");
        assert_eq!(totals.open.len(), TRACKED_TASKS);
        assert!(!totals.open.contains_key("t0"));
        assert!(totals.open.contains_key("t1") && totals.open.contains_key("newest"));
        assert_eq!(totals.open_in("input_required"), 1);
        // A task opened again after it was over is as new as it is.
        totals.open.remove("t1");
        totals.open_as("t1", "running", "a");
        totals.open_as("newer", "running", "a");
        assert!(totals.open.contains_key("t1"), "t1 was opened after t2");
        assert!(!totals.open.contains_key("t2"));
    }
}
