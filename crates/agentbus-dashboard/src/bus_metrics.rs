//! The dashboard's figures as Prometheus metrics of the whole bus, served
//! at `/metrics` behind the dashboard's token.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `agentbus_bus_tasks_total` | counter | `agent`, `task_type`, `outcome` |
//! | `agentbus_bus_task_run_seconds` | histogram | `agent`, `task_type` |
//! | `agentbus_bus_task_queue_wait_seconds` | histogram | `agent`, `task_type` |
//! | `agentbus_agents_online` | gauge | `agent` (instances) |
//! | `agentbus_agent_heartbeat_age_seconds` | gauge | `agent` |
//! | `agentbus_agent_tasks_in_flight` | gauge | `agent` |
//! | `agentbus_queue_waiting` | gauge | `queue`, `priority` |
//! | `agentbus_queue_in_progress` | gauge | `queue`, `priority` |
//! | `agentbus_queue_redelivered` | gauge | `queue`, `priority` |
//! | `agentbus_queue_oldest_age_seconds` | gauge | `queue`, `priority` |
//! | `agentbus_stream_messages` | gauge | `stream` |
//! | `agentbus_stream_bytes` | gauge | `stream` |
//! | `agentbus_stream_max_messages` | gauge | `stream` |
//! | `agentbus_stream_max_bytes` | gauge | `stream` |
//! | `agentbus_stream_used_ratio` | gauge | `stream` |
//! | `agentbus_dead_letters_stored` | gauge | |
//! | `agentbus_tasks_input_required` | gauge | |
//!
//! The counters count what the dashboard saw since it started (the
//! `platform.events.task_*` each runtime publishes); the gauges are what
//! the bus held at the last read. Labels are agent names, task types,
//! queues and streams: bounded by what is deployed, never by tasks.

use crate::live::Overview;
use agentbus::events::TaskEvent;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// Upper bounds of the run time buckets, in seconds: the runtime's own.
const TIME_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    agent: String,
    task_type: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    agent: String,
    task_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
    priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: String,
}

type Ratio = Gauge<f64, AtomicU64>;

/// The registry and every handle in it.
pub(crate) struct BusMetrics {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    run: Family<TypeLabels, Histogram>,
    wait: Family<TypeLabels, Histogram>,
    online: Family<AgentLabels, Gauge>,
    heartbeat_age: Family<AgentLabels, Ratio>,
    in_flight: Family<AgentLabels, Gauge>,
    waiting: Family<QueueLabels, Gauge>,
    in_progress: Family<QueueLabels, Gauge>,
    redelivered: Family<QueueLabels, Gauge>,
    oldest: Family<QueueLabels, Ratio>,
    stream_messages: Family<StreamLabels, Gauge>,
    stream_bytes: Family<StreamLabels, Gauge>,
    stream_max_messages: Family<StreamLabels, Gauge>,
    stream_max_bytes: Family<StreamLabels, Gauge>,
    stream_used: Family<StreamLabels, Ratio>,
    dead_letters: Gauge,
    input_required: Gauge,
    /// Held while the gauges are set and while they are encoded, so that a
    /// scrape never sees a family half set.
    settled: Mutex<()>,
}

impl BusMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let tasks = Family::<TaskLabels, Counter>::default();
        registry.register(
            "agentbus_bus_tasks",
            "Tasks finished on the bus, by agent, task type and outcome, since the dashboard started",
            tasks.clone(),
        );
        let run = Family::<TypeLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(TIME_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "agentbus_bus_task_run",
            "Time handlers ran, as the runtimes reported it",
            Unit::Seconds,
            run.clone(),
        );
        let wait = Family::<TypeLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(TIME_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "agentbus_bus_task_queue_wait",
            "Time tasks waited before their handler started, as the runtimes reported it",
            Unit::Seconds,
            wait.clone(),
        );
        let online = Family::<AgentLabels, Gauge>::default();
        registry.register(
            "agentbus_agents_online",
            "Instances of each agent with a live heartbeat",
            online.clone(),
        );
        let heartbeat_age = Family::<AgentLabels, Ratio>::default();
        registry.register_with_unit(
            "agentbus_agent_heartbeat_age",
            "Time since the newest heartbeat of each agent's instances",
            Unit::Seconds,
            heartbeat_age.clone(),
        );
        let in_flight = Family::<AgentLabels, Gauge>::default();
        registry.register(
            "agentbus_agent_tasks_in_flight",
            "Tasks waiting or running in each agent's instances at their last heartbeat",
            in_flight.clone(),
        );
        let waiting = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "agentbus_queue_waiting",
            "Tasks stored in a work queue and not yet taken (its consumer's pending count)",
            waiting.clone(),
        );
        let in_progress = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "agentbus_queue_in_progress",
            "Tasks of a work queue taken by a worker and not yet settled",
            in_progress.clone(),
        );
        let redelivered = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "agentbus_queue_redelivered",
            "Tasks of a work queue delivered more than once and not yet settled",
            redelivered.clone(),
        );
        let oldest = Family::<QueueLabels, Ratio>::default();
        registry.register_with_unit(
            "agentbus_queue_oldest_age",
            "Time since the oldest task of a work queue was stored",
            Unit::Seconds,
            oldest.clone(),
        );
        let stream_messages = Family::<StreamLabels, Gauge>::default();
        registry.register(
            "agentbus_stream_messages",
            "Messages a stream holds",
            stream_messages.clone(),
        );
        let stream_bytes = Family::<StreamLabels, Gauge>::default();
        registry.register_with_unit(
            "agentbus_stream",
            "Bytes a stream holds",
            Unit::Bytes,
            stream_bytes.clone(),
        );
        let stream_max_messages = Family::<StreamLabels, Gauge>::default();
        registry.register(
            "agentbus_stream_max_messages",
            "A stream's message limit (-1: none)",
            stream_max_messages.clone(),
        );
        let stream_max_bytes = Family::<StreamLabels, Gauge>::default();
        registry.register_with_unit(
            "agentbus_stream_max",
            "A stream's byte limit (-1: none)",
            Unit::Bytes,
            stream_max_bytes.clone(),
        );
        let stream_used = Family::<StreamLabels, Ratio>::default();
        registry.register(
            "agentbus_stream_used_ratio",
            "How full a stream is against the limit nearest to its end (0 to 1; absent without a limit)",
            stream_used.clone(),
        );
        let dead_letters = Gauge::default();
        registry.register(
            "agentbus_dead_letters_stored",
            "Dead letters held in the dead-letter stream",
            dead_letters.clone(),
        );
        let input_required = Gauge::default();
        registry.register(
            "agentbus_tasks_input_required",
            "Tasks waiting for an answer to their question, as their logs tell",
            input_required.clone(),
        );
        Self {
            registry,
            tasks,
            run,
            wait,
            online,
            heartbeat_age,
            in_flight,
            waiting,
            in_progress,
            redelivered,
            oldest,
            stream_messages,
            stream_bytes,
            stream_max_messages,
            stream_max_bytes,
            stream_used,
            dead_letters,
            input_required,
            settled: Mutex::new(()),
        }
    }

    /// Counts a finished task.
    pub(crate) fn finished(&self, task: &TaskEvent<'_>) {
        self.tasks
            .get_or_create(&TaskLabels {
                agent: task.agent.to_string(),
                task_type: task.task_type.to_string(),
                outcome: task.status.as_str().to_owned(),
            })
            .inc();
        let labels = TypeLabels {
            agent: task.agent.to_string(),
            task_type: task.task_type.to_string(),
        };
        self.run
            .get_or_create(&labels)
            .observe(task.duration_ms / 1000.0);
        if let Some(waited) = task.waited_ms {
            self.wait.get_or_create(&labels).observe(waited / 1000.0);
        }
    }

    /// Sets the gauges to what `overview` read.
    pub(crate) fn set(&self, overview: &Overview) {
        let _settled = self.settled.lock().expect("metrics lock");
        for family in [&self.online, &self.in_flight] {
            family.clear();
        }
        self.heartbeat_age.clear();
        for agent in overview.agents.iter().filter(|agent| agent.online) {
            let labels = AgentLabels {
                agent: agent.name.clone(),
            };
            self.online
                .get_or_create(&labels)
                .set(agent.instances as i64);
            self.in_flight
                .get_or_create(&labels)
                .set(agent.in_flight as i64);
            if let Some(age) = agent.heartbeat_age_s {
                self.heartbeat_age.get_or_create(&labels).set(age);
            }
        }
        for family in [&self.waiting, &self.in_progress, &self.redelivered] {
            family.clear();
        }
        self.oldest.clear();
        for queue in &overview.queues {
            let labels = QueueLabels {
                queue: queue.queue.clone(),
                priority: queue.priority.clone(),
            };
            self.waiting
                .get_or_create(&labels)
                .set(gauge(queue.waiting));
            self.in_progress
                .get_or_create(&labels)
                .set(gauge(queue.in_progress));
            self.redelivered
                .get_or_create(&labels)
                .set(gauge(queue.redelivered));
            if let Some(age) = queue.oldest_age_s {
                self.oldest.get_or_create(&labels).set(age);
            }
        }
        for family in [
            &self.stream_messages,
            &self.stream_bytes,
            &self.stream_max_messages,
            &self.stream_max_bytes,
        ] {
            family.clear();
        }
        self.stream_used.clear();
        for stream in &overview.streams {
            let labels = StreamLabels {
                stream: stream.name.clone(),
            };
            self.stream_messages
                .get_or_create(&labels)
                .set(gauge(stream.messages));
            self.stream_bytes
                .get_or_create(&labels)
                .set(gauge(stream.bytes));
            self.stream_max_messages
                .get_or_create(&labels)
                .set(stream.max_messages);
            self.stream_max_bytes
                .get_or_create(&labels)
                .set(stream.max_bytes);
            if let Some(percent) = stream.used_percent {
                self.stream_used.get_or_create(&labels).set(percent / 100.0);
            }
        }
        self.dead_letters.set(gauge(overview.dead_letters.total));
        self.input_required
            .set(gauge(overview.counts.input_required));
    }

    /// The text Prometheus scrapes.
    pub(crate) fn encode(&self) -> String {
        let _settled = self.settled.lock().expect("metrics lock");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
