//! Prometheus metrics of a runtime's agents, served at `/metrics` (the
//! OpenMetrics text format, which Prometheus scrapes) when an agent is added
//! with [`AgentOptions::metrics_address`](crate::AgentOptions).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `agentbus_tasks_total` | counter | `agent`, `task_type`, `outcome` (`completed`, `failed`, `rejected`, `timeout`, `cancelled`) |
//! | `agentbus_task_run_seconds` | histogram | `agent`, `task_type` |
//! | `agentbus_task_queue_wait_seconds` | histogram | `agent`, `task_type` |
//! | `agentbus_tasks_in_flight` | gauge | `agent` |
//! | `agentbus_tasks_waiting` | gauge | `agent` |
//! | `agentbus_task_redeliveries_total` | counter | `agent` |
//! | `agentbus_dead_letters_total` | counter | `agent` |
//! | `agentbus_stale_results_total` | counter | `agent` |
//!
//! Label values are agent names and the task types each agent declares (a
//! task of a type the agent does not accept counts as `unknown`): the
//! series grow with agents, never with tasks or with what senders make up.
//! Every handle is made when the agent is added, so a task costs a few
//! atomic additions, and nothing at all for an agent without metrics.

use crate::protocol::TaskStatus;
use axum::http::header::CONTENT_TYPE;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds of the time buckets, in seconds: from a millisecond (a
/// tool call) to ten minutes (a long generation).
const TIME_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    600.0,
];

/// The outcomes counted, in the order of [`TypeMetrics::outcomes`].
const OUTCOMES: [TaskStatus; 5] = [
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::Rejected,
    TaskStatus::Timeout,
    TaskStatus::Cancelled,
];

/// The `task_type` of tasks of a type the agent does not accept.
const UNKNOWN_TYPE: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    agent: String,
    task_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    agent: String,
    task_type: String,
    outcome: String,
}

fn time_histogram() -> Histogram {
    Histogram::new(TIME_BUCKETS)
}

/// The metrics of one runtime: every family, registered once.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    tasks: Family<OutcomeLabels, Counter>,
    run: Family<TypeLabels, Histogram, fn() -> Histogram>,
    wait: Family<TypeLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<AgentLabels, Gauge>,
    waiting: Family<AgentLabels, Gauge>,
    redeliveries: Family<AgentLabels, Counter>,
    dead_letters: Family<AgentLabels, Counter>,
    stale: Family<AgentLabels, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let tasks = Family::<OutcomeLabels, Counter>::default();
        let run = Family::new_with_constructor(time_histogram as fn() -> Histogram);
        let wait = Family::new_with_constructor(time_histogram as fn() -> Histogram);
        let in_flight = Family::<AgentLabels, Gauge>::default();
        let waiting = Family::<AgentLabels, Gauge>::default();
        let redeliveries = Family::<AgentLabels, Counter>::default();
        let dead_letters = Family::<AgentLabels, Counter>::default();
        let stale = Family::<AgentLabels, Counter>::default();
        registry.register(
            "agentbus_tasks",
            "Tasks answered, by agent, task type and outcome (each attempt at a queued task counts)",
            tasks.clone(),
        );
        registry.register_with_unit(
            "agentbus_task_run",
            "Time handlers took, from start to outcome",
            Unit::Seconds,
            run.clone(),
        );
        registry.register_with_unit(
            "agentbus_task_queue_wait",
            "Time tasks waited before their handler started: since they were stored, for queued tasks; since they arrived, over request/reply",
            Unit::Seconds,
            wait.clone(),
        );
        registry.register(
            "agentbus_tasks_in_flight",
            "Tasks whose handler runs now",
            in_flight.clone(),
        );
        registry.register(
            "agentbus_tasks_waiting",
            "Request/reply tasks taken and waiting for a free slot",
            waiting.clone(),
        );
        registry.register(
            "agentbus_task_redeliveries",
            "Queued tasks delivered again (attempts after the first)",
            redeliveries.clone(),
        );
        registry.register(
            "agentbus_dead_letters",
            "Queued tasks this runtime moved to the dead letters",
            dead_letters.clone(),
        );
        registry.register(
            "agentbus_stale_results",
            "Outcomes of queued tasks discarded because another attempt had taken the task over",
            stale.clone(),
        );
        Self {
            registry,
            tasks,
            run,
            wait,
            in_flight,
            waiting,
            redeliveries,
            dead_letters,
            stale,
        }
    }

    /// The handles of agent `agent`, which accepts `task_types`; its series
    /// exist (at zero) from now on.
    pub(crate) fn agent<'a>(
        &self,
        agent: &str,
        task_types: impl IntoIterator<Item = &'a str>,
    ) -> AgentMetrics {
        let of_type = |task_type: &str| {
            let labels = TypeLabels {
                agent: agent.to_owned(),
                task_type: task_type.to_owned(),
            };
            let outcomes = OUTCOMES.map(|outcome| {
                self.tasks
                    .get_or_create(&OutcomeLabels {
                        agent: agent.to_owned(),
                        task_type: task_type.to_owned(),
                        outcome: outcome.as_str().to_owned(),
                    })
                    .clone()
            });
            TypeMetrics {
                outcomes,
                run: self.run.get_or_create(&labels).clone(),
                wait: self.wait.get_or_create(&labels).clone(),
            }
        };
        let labels = AgentLabels {
            agent: agent.to_owned(),
        };
        AgentMetrics {
            types: task_types
                .into_iter()
                .map(|task_type| (task_type.to_owned(), of_type(task_type)))
                .collect(),
            unknown: of_type(UNKNOWN_TYPE),
            in_flight: self.in_flight.get_or_create(&labels).clone(),
            waiting: self.waiting.get_or_create(&labels).clone(),
            redeliveries: self.redeliveries.get_or_create(&labels).clone(),
            dead_letters: self.dead_letters.get_or_create(&labels).clone(),
            stale: self.stale.get_or_create(&labels).clone(),
        }
    }

    /// Everything, in the OpenMetrics text format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// What one task type of an agent counts.
#[derive(Debug)]
struct TypeMetrics {
    /// By outcome, in the order of [`OUTCOMES`].
    outcomes: [Counter; 5],
    run: Histogram,
    wait: Histogram,
}

/// The handles of one agent's series.
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    types: Vec<(String, TypeMetrics)>,
    unknown: TypeMetrics,
    in_flight: Gauge,
    waiting: Gauge,
    redeliveries: Counter,
    dead_letters: Counter,
    stale: Counter,
}

impl AgentMetrics {
    /// An agent declares a few types: a scan is quicker than a hash.
    fn of(&self, task_type: &str) -> &TypeMetrics {
        self.types
            .iter()
            .find(|(name, _)| name == task_type)
            .map_or(&self.unknown, |(_, metrics)| metrics)
    }

    /// A handler starts on a task that waited `waited`.
    pub(crate) fn started(&self, task_type: &str, waited: Duration) {
        self.of(task_type).wait.observe(waited.as_secs_f64());
    }

    /// A task ended with `status` after its handler ran for `ran` (a
    /// rejected task ran no handler: its time is not observed).
    pub(crate) fn finished(&self, task_type: &str, status: TaskStatus, ran: Option<Duration>) {
        let metrics = self.of(task_type);
        let outcome = OUTCOMES
            .iter()
            .position(|outcome| *outcome == status)
            .unwrap_or(1); // any other status is a failure
        metrics.outcomes[outcome].inc();
        if let Some(ran) = ran {
            metrics.run.observe(ran.as_secs_f64());
        }
    }

    /// The tasks waiting for a slot and running now.
    pub(crate) fn queues(&self, waiting: usize, running: usize) {
        self.waiting.set(i64::try_from(waiting).unwrap_or(i64::MAX));
        self.in_flight
            .set(i64::try_from(running).unwrap_or(i64::MAX));
    }

    /// A queued task is delivered again.
    pub(crate) fn redelivered(&self) {
        self.redeliveries.inc();
    }

    /// A queued task was moved to the dead letters.
    pub(crate) fn dead_lettered(&self) {
        self.dead_letters.inc();
    }

    /// An outcome was discarded: another attempt held the task.
    pub(crate) fn stale(&self) {
        self.stale.inc();
    }
}

/// Serves `metrics` at `http://<address>/metrics` until the returned task
/// is aborted; returns the address it listens on (port 0 picks one).
pub(crate) async fn serve(
    metrics: Arc<Metrics>,
    address: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!(%err, "the metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}
