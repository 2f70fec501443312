//! The runtime: serves one or many agents over one NATS connection.
//!
//! Each agent takes its tasks (`agent.<name>.task`, plain or stamped with
//! the sender) in queue group `<name>`, so replicas share the load: on one
//! subscription to `agent.<name>.>`, which also hears its queue ring, or on
//! the two task subjects when it works no queue. Up to `max_concurrency`
//! tasks of an agent run at once; further tasks wait and are taken by
//! priority (critical first), then arrival. Every task is answered with a
//! TaskResponse, including malformed, unknown, invalid and panicking ones,
//! and the agent keeps serving.

mod dedup;
pub mod discovery;
mod queued;
mod serve;
mod stats;
mod task_types;

pub use stats::AgentStats;
pub use task_types::InvalidSchema;

use crate::agent::Agent;
use crate::client::Bus;
use crate::delivery::worker::Worker;
use crate::delivery::{self, ConsumerError, DeliveryOptions, RecordError, Settler};
use crate::events::LifecycleEvent;
use crate::metrics::Metrics;
use crate::name::{InvalidName, Name};
use crate::presence::{AgentPresence, Beats, InFlightSource, PresenceOptions};
use crate::state::EntryKey;
use crate::state::{StateError, StateStore};
use crate::subject::{self, events};
use crate::task_log::{self, Registry};
use dedup::DedupCache;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How one agent is served.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Tasks handled at once; more wait in a priority queue.
    pub max_concurrency: usize,
    /// Tasks waiting at most; beyond it, new tasks stay in the subscription
    /// buffer until a slot frees (backpressure).
    pub max_waiting: usize,
    /// Bytes of payload the agent takes in at most, waiting and running
    /// together: new work is taken only while less than this is held, so at
    /// most one task beyond it. Beyond it, request/reply tasks stay in the
    /// subscription buffer and queued tasks and messages in their stream
    /// until a task ends (backpressure). Request/reply tasks, queued tasks,
    /// and each source of durable messages are bounded each. A payload is
    /// held as the text it arrived as, so a task costs about its own size
    /// until its handler parses it.
    pub max_held_bytes: usize,
    /// A handler running longer is abandoned with status `timeout`.
    pub task_timeout: Option<Duration>,
    /// How long a cancelled handler may go on before it is dropped and the
    /// task answered `cancelled` (a handler that watches
    /// [`crate::TaskContext::cancelled`] ends sooner).
    pub cancel_grace: Duration,
    /// How long a task id is remembered, so a retry is answered, not rerun.
    pub dedup_window: Duration,
    /// About how many task ids are remembered (0 turns retry deduplication
    /// off): rounded up to whole sets of four slots, an id's set chosen by
    /// its hash, so ids crowding one set push each other out a little sooner.
    /// Their responses are kept in a buffer of 512 bytes per id (at least the
    /// server's max_payload), touched as it fills; larger responses make
    /// older ids forgotten sooner.
    pub dedup_capacity: usize,
    /// Publish `platform.events.task_completed` / `task_failed` after each
    /// task. Each is one more message per task, which nats-server parses even
    /// when nobody listens: an agent serving tens of thousands of tasks a
    /// second may turn it off (see the README's Performance section).
    pub task_events: bool,
    /// Work the agent's queues (`tasks.<name>`, `work.<type>` of each
    /// accepted type) from the `agent-tasks` stream.
    pub work_queues: bool,
    /// Take durable messages ([`Agent::handle_message`]): the agent's inbox,
    /// direct channel, announcements and the broadcasts of `broadcast_topics`.
    pub messages: bool,
    /// Broadcast topics to receive (with `messages` on).
    pub broadcast_topics: Vec<String>,
    /// How queued tasks and durable messages are delivered: ack wait,
    /// deliveries before a dead letter, retry backoff.
    pub delivery: DeliveryOptions,
    /// Keep a presence entry with heartbeats (see [`crate::presence`]).
    pub presence: bool,
    /// How often heartbeats go out and when a silent agent is offline.
    pub heartbeat: PresenceOptions,
    /// Serve the runtime's Prometheus metrics at `http://<address>/metrics`
    /// and count this agent's tasks in them (see the README's metrics
    /// table). The first agent added with an address starts the endpoint
    /// (port 0 picks a free one: [`Runtime::metrics_address`]); later ones
    /// join it. The endpoint asks for no credentials: keep it on loopback
    /// or a private network. `None` (the default): no endpoint, and this
    /// agent's tasks cost nothing to count.
    pub metrics_address: Option<std::net::SocketAddr>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            max_concurrency: 64,
            max_waiting: 10_000,
            max_held_bytes: 64 << 20,
            task_timeout: None,
            cancel_grace: Duration::from_secs(5),
            dedup_window: Duration::from_secs(300),
            dedup_capacity: 10_000,
            task_events: true,
            work_queues: true,
            messages: false,
            broadcast_topics: Vec::new(),
            delivery: DeliveryOptions::default(),
            presence: true,
            heartbeat: PresenceOptions::default(),
            metrics_address: None,
        }
    }
}

/// The variable [`AgentOptions::metrics_from_env`] reads.
pub const METRICS_ADDRESS_VAR: &str = "AGENTBUS_METRICS_ADDR";

/// `AGENTBUS_METRICS_ADDR` does not hold an address.
#[derive(Debug, thiserror::Error)]
#[error(
    "{METRICS_ADDRESS_VAR}={value:?} is not an address to serve metrics at, such as 127.0.0.1:9464"
)]
pub struct InvalidMetricsAddress {
    /// What the variable holds.
    pub value: String,
}

impl AgentOptions {
    /// These options with [`AgentOptions::metrics_address`] taken from the
    /// environment variable `AGENTBUS_METRICS_ADDR` (such as
    /// `127.0.0.1:9464`) when it is set, as the examples do.
    pub fn metrics_from_env(mut self) -> Result<Self, InvalidMetricsAddress> {
        if let Some(value) = std::env::var_os(METRICS_ADDRESS_VAR) {
            let value = value.to_string_lossy().into_owned();
            let address = value
                .trim()
                .parse()
                .map_err(|_| InvalidMetricsAddress { value })?;
            self.metrics_address = Some(address);
        }
        Ok(self)
    }
}

/// Why an agent could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The agent's name, or one of its task types, is not a valid name.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// A payload schema does not compile.
    #[error(transparent)]
    InvalidSchema(#[from] InvalidSchema),
    /// The agent declares no task types.
    #[error("agent {0} declares no task types; return at least one from task_types()")]
    NoTaskTypes(String),
    /// The same agent name was added twice to one runtime.
    #[error(
        "agent {0} is already served by this runtime; run replicas as separate runtimes or processes"
    )]
    Duplicate(String),
    /// The connection uses another agent's identity.
    #[error(
        "this runtime's connection uses agent {identity}'s identity, which may not serve agent {agent}; run {agent} with its own env file from `agentbus creds add {agent}`"
    )]
    OtherIdentity {
        /// The agent to serve.
        agent: String,
        /// The agent whose identity the connection uses.
        identity: String,
    },
    /// A durable consumer could not be created.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// The task results bucket is missing.
    #[error("cannot serve agent {agent}'s work queues: {source}")]
    Results {
        /// The agent.
        agent: String,
        /// Why.
        #[source]
        source: RecordError,
    },
    /// Subscribing failed.
    #[error("cannot subscribe for agent {agent}: {source}")]
    Subscribe {
        /// The agent.
        agent: String,
        /// Why.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// The metrics endpoint cannot listen.
    #[error("cannot serve metrics at http://{address}/metrics: {source}")]
    Metrics {
        /// Where it was to listen.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The presence storage cannot be opened or written.
    #[error("cannot keep agent {agent}'s presence: {source}{hint}")]
    Presence {
        /// The agent.
        agent: String,
        /// Why.
        #[source]
        source: StateError,
        /// What to do, unless the cause says it already.
        hint: &'static str,
    },
}

/// Why an agent could not be started, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuntimeErrorKind {
    /// The agent's name, a task type, topic or schema is not valid.
    InvalidAgent,
    /// The same agent name was added twice to one runtime.
    Duplicate,
    /// The connection uses another agent's identity.
    OtherIdentity,
    /// A durable consumer could not be set up.
    Consumer,
    /// The task results bucket is missing.
    Results,
    /// Subscribing failed.
    Subscribe,
    /// Presence could not be kept.
    Presence,
    /// The metrics endpoint could not listen.
    Metrics,
}

impl RuntimeError {
    /// Why the agent could not be started.
    pub fn kind(&self) -> RuntimeErrorKind {
        match self {
            Self::InvalidName(_) | Self::InvalidSchema(_) | Self::NoTaskTypes(_) => {
                RuntimeErrorKind::InvalidAgent
            }
            Self::Duplicate(_) => RuntimeErrorKind::Duplicate,
            Self::OtherIdentity { .. } => RuntimeErrorKind::OtherIdentity,
            Self::Consumer(_) => RuntimeErrorKind::Consumer,
            Self::Results { .. } => RuntimeErrorKind::Results,
            Self::Subscribe { .. } => RuntimeErrorKind::Subscribe,
            Self::Presence { .. } => RuntimeErrorKind::Presence,
            Self::Metrics { .. } => RuntimeErrorKind::Metrics,
        }
    }
}

/// Serves agents until shut down.
#[derive(Debug)]
pub struct Runtime {
    bus: Bus,
    instance_id: Arc<str>,
    agents: Vec<ServedAgent>,
    dead_letter_watch: Option<JoinHandle<()>>,
    /// Where presence entries go; NATS KV opened on first use if not given.
    state: Option<StateStore>,
    /// The heartbeats of every agent served with presence on: one service
    /// for the runtime, started with the first such agent.
    beats: Option<Beats>,
    /// The worker of every agent's durable work: one for the runtime,
    /// started with the first agent that has some.
    worker: Option<Worker>,
    /// The answers to `$SRV` discovery for every agent: one for the runtime.
    discovery: Option<discovery::Responder>,
    /// Settlers by delivery options, for tasks (`true`) or messages: agents
    /// with the same options share one.
    settlers: Vec<(DeliveryOptions, bool, Settler)>,
    /// The tasks held now, for cancels, answers and status requests.
    registry: Arc<Registry>,
    /// The answers to those requests, one task per subscription, by the
    /// subject subscribed to: one for a runtime without an agent identity,
    /// started with its first agent; with an identity, those of the tasks
    /// its agent may run.
    controls: HashMap<String, JoinHandle<()>>,
    /// The metrics of the agents added with a metrics address, and the
    /// endpoint serving them: one for the runtime.
    metrics: Option<MetricsEndpoint>,
}

/// A runtime's metrics and where they are served.
#[derive(Debug)]
struct MetricsEndpoint {
    metrics: Arc<Metrics>,
    address: std::net::SocketAddr,
    server: JoinHandle<()>,
}

#[derive(Debug)]
struct ServedAgent {
    name: Name,
    counters: Arc<stats::Counters>,
    stop: watch::Sender<Option<tokio::time::Instant>>,
    tasks: Vec<JoinHandle<()>>,
    /// Its presence entry, when it keeps one.
    presence: Option<EntryKey>,
}

impl Runtime {
    /// A runtime on `bus`, with a fresh instance id.
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            instance_id: uuid::Uuid::new_v4().simple().to_string().into(),
            agents: Vec::new(),
            dead_letter_watch: None,
            state: None,
            beats: None,
            worker: None,
            discovery: None,
            settlers: Vec::new(),
            registry: Arc::default(),
            controls: HashMap::new(),
            metrics: None,
        }
    }

    /// Where the runtime serves its metrics (`http://<address>/metrics`),
    /// once an agent was added with [`AgentOptions::metrics_address`].
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|endpoint| endpoint.address)
    }

    /// The runtime's metrics, their endpoint started at `address` if it is
    /// not yet.
    async fn metrics(
        &mut self,
        address: std::net::SocketAddr,
    ) -> Result<Arc<Metrics>, RuntimeError> {
        if let Some(endpoint) = &self.metrics {
            if endpoint.address != address && address.port() != 0 {
                tracing::warn!(
                    served = %endpoint.address,
                    asked = %address,
                    "this runtime serves its metrics at one address already; the agent's are added there"
                );
            }
            return Ok(endpoint.metrics.clone());
        }
        let metrics = Arc::new(Metrics::new());
        let (bound, server) = crate::metrics::serve(metrics.clone(), address)
            .await
            .map_err(|source| RuntimeError::Metrics { address, source })?;
        self.metrics = Some(MetricsEndpoint {
            metrics: metrics.clone(),
            address: bound,
            server,
        });
        Ok(metrics)
    }

    /// Keeps presence entries in `store` (e.g. Redis) instead of NATS KV.
    #[must_use]
    pub fn with_state(mut self, store: StateStore) -> Self {
        self.state = Some(store);
        self
    }

    /// The bus the runtime serves on.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// This runtime's instance id (one per process or runtime).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Names of the agents served.
    pub fn agent_names(&self) -> impl Iterator<Item = &Name> {
        self.agents.iter().map(|a| &a.name)
    }

    /// Current figures of the agent named `name`, if this runtime serves it.
    pub fn stats(&self, name: &str) -> Option<AgentStats> {
        self.agents
            .iter()
            .find(|a| a.name.as_str() == name)
            .map(|a| a.counters.snapshot())
    }

    /// Starts serving `agent`: validates it, subscribes, and announces it with
    /// `platform.events.agent_registered`. Tasks are taken once this returns.
    /// With [`AgentOptions::presence`] on, its first heartbeat is stored
    /// before this returns (see [`crate::presence`]).
    pub async fn add<A: Agent>(
        &mut self,
        agent: A,
        options: AgentOptions,
    ) -> Result<(), RuntimeError> {
        let name = Name::parse("agent name", agent.name())?;
        if self.agents.iter().any(|a| a.name == name) {
            return Err(RuntimeError::Duplicate(name.to_string()));
        }
        if self.bus.is_operator() {
            tracing::warn!(
                agent = %name,
                "serving with the operator identity, which may read and change everything on the bus; give the agent its own with `agentbus creds add {name}`"
            );
        }
        if let Some(identity) = self.bus.identity()
            && *identity != name
        {
            return Err(RuntimeError::OtherIdentity {
                agent: name.to_string(),
                identity: identity.to_string(),
            });
        }
        let specs = agent.task_types();
        if specs.is_empty() {
            return Err(RuntimeError::NoTaskTypes(name.to_string()));
        }
        let task_types = task_types::TaskTypes::compile(&specs)?;
        let topics = options
            .broadcast_topics
            .iter()
            .map(|t| Name::parse("topic", t))
            .collect::<Result<Vec<_>, _>>()?;
        let type_names: Vec<Name> = specs.iter().map(|s| s.name().clone()).collect();
        let presence_store = if options.presence {
            Some(self.presence_store(&name).await?)
        } else {
            None
        };
        let counters = Arc::new(stats::Counters::default());
        let metrics = match options.metrics_address {
            Some(address) => Some(
                self.metrics(address)
                    .await?
                    .agent(name.as_str(), type_names.iter().map(Name::as_str)),
            ),
            None => None,
        };
        // The worker hears of tasks on the agent's own queue through the
        // agent's subscription.
        let queue_ring = if options.work_queues {
            Some(self.worker(options.delivery.idle_poll).queue_ring(&name))
        } else {
            None
        };
        let served = Arc::new(serve::Served {
            agent,
            name: name.clone(),
            task_types,
            bus: self.bus.clone(),
            instance_id: self.instance_id.clone(),
            dedup: Mutex::new(DedupCache::new(
                options.dedup_window,
                options.dedup_capacity,
                self.bus.max_payload(),
            )),
            options,
            counters: counters.clone(),
            metrics,
            registry: self.registry.clone(),
            traced_as: std::sync::OnceLock::new(),
            queue_ring,
        });
        // Durable consumers first: if they cannot be made, nothing was started.
        let (stop, stop_rx) = watch::channel(None);
        let delivery = served.options.delivery;
        let results_error = |source| RuntimeError::Results {
            agent: name.to_string(),
            source,
        };
        let settler = if served.options.work_queues {
            Some(self.settler(delivery, true).await.map_err(results_error)?)
        } else {
            None
        };
        let message_settler = if served.options.messages {
            Some(self.settler(delivery, false).await.map_err(results_error)?)
        } else {
            None
        };
        let work = if settler.is_some() || message_settler.is_some() {
            Some(queued::agent_work(&served, &type_names, &topics, settler, message_settler).await?)
        } else {
            None
        };
        let subscribe_error = |source| RuntimeError::Subscribe {
            agent: name.to_string(),
            source,
        };
        let client = self.bus.client();
        // Rings go only to the replicas that work the queue: one that does
        // not takes its tasks on the two task subjects.
        let subscriber = if served.options.work_queues {
            serve::TaskSubscription::Named(
                client
                    .queue_subscribe(
                        String::from(subject::agent_subjects(&name)),
                        name.to_string(),
                    )
                    .await
                    .map_err(subscribe_error)?,
            )
        } else {
            let plain = client
                .queue_subscribe(subject::agent_task(&name), name.to_string())
                .await
                .map_err(subscribe_error)?;
            let stamped = client
                .queue_subscribe(
                    String::from(subject::agent_tasks_stamped(&name)),
                    name.to_string(),
                )
                .await
                .map_err(subscribe_error)?;
            serve::TaskSubscription::Tasks(futures::stream::select(plain, stamped))
        };
        self.start_discovery(&name, &type_names, &counters).await?;
        self.start_controls(&name, &type_names).await?;
        let presence = match presence_store {
            Some(store) => {
                let presence = AgentPresence::new(&name, &self.instance_id, &specs);
                Some(
                    self.register_presence(store, presence, &served.options, &counters)
                        .await?,
                )
            }
            None => None,
        };
        let works_queues = served.options.work_queues;
        let handles = vec![tokio::spawn(serve::serve(
            served.clone(),
            subscriber,
            stop_rx,
        ))];
        if let Some(work) = work {
            self.worker(delivery.idle_poll).add(work);
        }
        // The watch reads any task by its sequence: an operator's job. An
        // agent identity may not, and dead-letters its own last attempts.
        if works_queues && self.dead_letter_watch.is_none() && self.bus.identity().is_none() {
            self.dead_letter_watch = Some(tokio::spawn(delivery::watch_max_deliveries(
                self.bus.clone(),
            )));
        }
        // Tasks are taken once add() returns: the server must have the
        // subscriptions (flush only writes them to the socket).
        if let Err(err) = self.bus.sync().await {
            tracing::warn!(%err, agent = %name, "cannot confirm the subscriptions with the server");
        }
        let type_names: Vec<String> = type_names.iter().map(ToString::to_string).collect();
        publish_lifecycle(
            &self.bus,
            &self.instance_id,
            events::AGENT_REGISTERED,
            &name,
            Some(type_names),
        )
        .await;
        self.agents.push(ServedAgent {
            name,
            counters,
            stop,
            tasks: handles,
            presence,
        });
        Ok(())
    }

    /// The runtime's worker, started at the first agent with durable work;
    /// idle, it sweeps every `idle_poll` (the first agent's).
    fn worker(&mut self, idle_poll: Duration) -> &Worker {
        let bus = &self.bus;
        self.worker
            .get_or_insert_with(|| Worker::start(bus, idle_poll))
    }

    /// A settler of tasks (with the records bucket) or of messages, shared
    /// by every agent of the runtime with the same delivery options.
    async fn settler(
        &mut self,
        options: DeliveryOptions,
        tasks: bool,
    ) -> Result<Settler, RecordError> {
        if let Some((_, _, settler)) = self
            .settlers
            .iter()
            .find(|(o, t, _)| *o == options && *t == tasks)
        {
            return Ok(settler.clone());
        }
        let settler = if tasks {
            Settler::for_tasks(&self.bus, options, self.instance_id.clone()).await?
        } else {
            Settler::for_messages(&self.bus, options, self.instance_id.clone())
        };
        self.settlers.push((options, tasks, settler.clone()));
        Ok(settler)
    }

    /// The state store for presence: the one given to [`Runtime::with_state`],
    /// else NATS KV, opened on first use.
    async fn presence_store(&mut self, agent: &Name) -> Result<StateStore, RuntimeError> {
        if let Some(store) = &self.state {
            return Ok(store.clone());
        }
        let store = StateStore::open(&self.bus, None)
            .await
            .map_err(|err| presence_error(agent, err))?;
        self.state = Some(store.clone());
        Ok(store)
    }

    /// Keeps the agent's presence entry, with its tasks in flight read from
    /// its counters, and waits until the first heartbeat is stored.
    async fn register_presence(
        &mut self,
        store: StateStore,
        presence: AgentPresence,
        options: &AgentOptions,
        counters: &Arc<stats::Counters>,
    ) -> Result<EntryKey, RuntimeError> {
        let agent = Name::parse("agent name", &presence.name)?;
        let counters = counters.clone();
        let in_flight: InFlightSource = Arc::new(move || {
            let stats = counters.snapshot();
            stats.waiting + stats.running
        });
        let beats = self
            .beats
            .get_or_insert_with(|| Beats::start(self.bus.clone(), store));
        beats
            .register(presence, options.heartbeat, in_flight)
            .await
            .map_err(|err| presence_error(&agent, err))
    }

    /// Answers `$SRV.PING|INFO|STATS` for the agent from now on (see
    /// [`discovery`]); the runtime's responder starts with its first agent.
    async fn start_discovery(
        &mut self,
        name: &Name,
        task_types: &[Name],
        counters: &Arc<stats::Counters>,
    ) -> Result<(), RuntimeError> {
        let responder = match &mut self.discovery {
            Some(responder) => responder,
            None => {
                let responder = discovery::Responder::start(self.bus.client(), &self.instance_id)
                    .await
                    .map_err(|source| RuntimeError::Subscribe {
                        agent: name.to_string(),
                        source,
                    })?;
                self.discovery.insert(responder)
            }
        };
        let service = discovery::ServiceDescription {
            name: name.clone(),
            instance_id: self.instance_id.to_string(),
            task_types: task_types.to_vec(),
        };
        responder.add(service, counters.clone());
        Ok(())
    }

    /// Answers cancels, answers and status requests about the tasks this
    /// runtime holds, from now on: all of them on one subscription for a
    /// runtime without an agent identity; with one, those to the tasks of
    /// agent `name` and of the shared queues of `task_types` it may work,
    /// and those of clients with no agent name that name no runner (an
    /// identity hears no request of another agent's, nor one naming
    /// another agent's tasks).
    async fn start_controls(
        &mut self,
        name: &Name,
        task_types: &[Name],
    ) -> Result<(), RuntimeError> {
        let subjects = match self.bus.identity() {
            None => vec![subject::ALL_TASK_CONTROLS.to_owned()],
            Some(_) => {
                let granted = self.bus.granted_work_types();
                let shared = task_types
                    .iter()
                    .filter(|task_type| granted.is_none_or(|granted| granted.contains(task_type)))
                    .map(subject::work_task_controls);
                [
                    subject::agent_task_controls(name),
                    subject::ANONYMOUS_UNADDRESSED_TASK_CONTROLS.to_owned(),
                ]
                .into_iter()
                .chain(shared)
                .collect()
            }
        };
        for subject in subjects {
            if self.controls.contains_key(&subject) {
                continue;
            }
            let requests =
                self.bus
                    .client()
                    .subscribe(subject.clone())
                    .await
                    .map_err(|source| RuntimeError::Subscribe {
                        agent: name.to_string(),
                        source,
                    })?;
            let answering = tokio::spawn(task_log::serve_controls(
                self.bus.clone(),
                self.registry.clone(),
                requests,
            ));
            self.controls.insert(subject, answering);
        }
        Ok(())
    }

    /// Stops taking tasks, lets running ones finish within `grace`, answers
    /// waiting ones with `cancelled`, announces each agent's deregistration,
    /// removes its presence entry (publishing `agent_offline`) and flushes the
    /// connection.
    pub async fn shutdown(mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for agent in &self.agents {
            let _ = agent.stop.send(Some(deadline));
        }
        if let Some(watch) = &self.dead_letter_watch {
            watch.abort();
        }
        if let Some(discovery) = &self.discovery {
            discovery.stop();
        }
        // The worker and the serving loops stop together, each letting
        // running work finish until the deadline.
        let worker = async {
            if let Some(worker) = self.worker {
                worker.stop(deadline).await;
            }
        };
        let serving = async {
            for agent in &mut self.agents {
                for task in agent.tasks.drain(..) {
                    let _ = task.await;
                }
            }
        };
        futures::join!(worker, serving);
        for controls in self.controls.values() {
            controls.abort();
        }
        if let Some(endpoint) = &self.metrics {
            endpoint.server.abort();
        }
        for agent in self.agents {
            publish_lifecycle(
                &self.bus,
                &self.instance_id,
                events::AGENT_DEREGISTERED,
                &agent.name,
                None,
            )
            .await;
            // Removes the presence entry and publishes agent_offline.
            if let (Some(beats), Some(key)) = (&self.beats, agent.presence) {
                beats.remove(key).await;
            }
        }
        if let Some(beats) = self.beats {
            beats.stop().await;
        }
        if let Err(err) = self.bus.flush().await {
            tracing::warn!(%err, "flush at shutdown failed");
        }
    }

    /// Serves until SIGINT or SIGTERM, then shuts down with `grace`.
    pub async fn run_until_signal(self, grace: Duration) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        self.shutdown(grace).await;
        Ok(())
    }
}

/// A presence storage failure, saying what to do about it.
fn presence_error(agent: &Name, source: StateError) -> RuntimeError {
    let hint = match source {
        StateError::Setup { .. } => "", // it names `agentbus setup` already
        _ => {
            "; check the state backend (run `agentbus setup` to provision the NATS KV buckets), or set AgentOptions::presence to false"
        }
    };
    RuntimeError::Presence {
        agent: agent.to_string(),
        source,
        hint,
    }
}

async fn publish_lifecycle(
    bus: &Bus,
    instance_id: &str,
    subject: &'static str,
    name: &Name,
    task_types: Option<Vec<String>>,
) {
    let event = LifecycleEvent {
        agent: name.to_string(),
        instance_id: instance_id.to_owned(),
        timestamp: crate::clock::now(),
        task_types,
    };
    if let Err(err) = bus.publish_platform_event(subject, &event).await {
        tracing::warn!(%err, subject, "cannot publish lifecycle event");
    }
}
