//! One task per runtime keeps the presence of all its agents: the runtime's
//! heartbeat every interval, each agent's entry when it is added, when its
//! tasks in flight change and before the bucket would forget it; one watch of
//! everyone's entries, to report the agents of instances that died; and the
//! goodbyes of agents that stop.
//!
//! Cost: one stored message per runtime per interval, plus one per agent whose
//! load changed; one watch, one task and one timer per runtime, whatever the
//! number of agents.

use super::offline::OnlineView;
use super::{AgentPresence, InstanceBeat, PresenceChange, PresenceOptions, instance_key};
use crate::client::Bus;
use crate::clock;
use crate::events::{OfflineEvent, OfflineReason};
use crate::name::Name;
use crate::state::{EntryKey, StateError, StateStore};
use crate::subject::events;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Where a heartbeat reads the number of tasks in flight.
pub(crate) type InFlightSource = Arc<dyn Fn() -> usize + Send + Sync>;

/// How long an agent's entry lives without a rewrite where the backend sets
/// no limit of its own (Redis); it is rewritten at half of it.
const AGENT_ENTRY_TTL: Duration = Duration::from_secs(24 * 3600);

/// The presence service of one runtime; stops (saying goodbye for every
/// entry) when [`Beats::stop`] is called or it is dropped (dropping the
/// command sender ends the task's loop the same way).
#[derive(Debug)]
pub(crate) struct Beats {
    commands: mpsc::UnboundedSender<Command>,
    task: Option<JoinHandle<()>>,
    backend: &'static str,
}

enum Command {
    Register {
        presence: AgentPresence,
        options: PresenceOptions,
        in_flight: InFlightSource,
        /// The outcome of storing the entry (and the first heartbeat).
        stored: oneshot::Sender<Result<EntryKey, StateError>>,
    },
    Remove {
        key: EntryKey,
        done: oneshot::Sender<()>,
    },
    Stop {
        done: oneshot::Sender<()>,
    },
}

impl Beats {
    /// Starts the service on the current tokio runtime.
    pub(crate) fn start(bus: Bus, store: StateStore) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let backend = store.backend_name();
        let agent_ttl = store.entry_ttl_cap().unwrap_or(AGENT_ENTRY_TTL);
        let service = Service {
            bus,
            store,
            instance: None,
            options: None,
            agent_ttl,
            entries: HashMap::new(),
            next_beat: None,
            view: OnlineView::default(),
            changes: None,
        };
        Self {
            commands,
            task: Some(tokio::spawn(service.run(receiver))),
            backend,
        }
    }

    /// `"nats-kv"` or `"redis"`.
    pub(crate) fn backend(&self) -> &'static str {
        self.backend
    }

    /// Keeps `presence` from now on; returns once its entry and its
    /// instance's heartbeat are stored (or says why they were not).
    /// `in_flight` is read at each heartbeat.
    pub(crate) async fn register(
        &self,
        presence: AgentPresence,
        options: PresenceOptions,
        in_flight: InFlightSource,
    ) -> Result<EntryKey, StateError> {
        let outcome = self.register_later(presence, options, in_flight);
        outcome.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// [`Beats::register`] without waiting: the outcome arrives on the
    /// returned channel.
    pub(crate) fn register_later(
        &self,
        presence: AgentPresence,
        options: PresenceOptions,
        in_flight: InFlightSource,
    ) -> oneshot::Receiver<Result<EntryKey, StateError>> {
        let (stored, outcome) = oneshot::channel();
        let command = Command::Register {
            presence,
            options,
            in_flight,
            stored,
        };
        // A stopped service drops the command: the receiver then errs.
        let _ = self.commands.send(command);
        outcome
    }

    /// Removes an agent's entry (a goodbye: watchers do not report it as a
    /// timeout) and publishes its `agent_offline` with reason `shutdown`.
    pub(crate) async fn remove(&self, key: EntryKey) {
        let (done, removed) = oneshot::channel();
        if self.commands.send(Command::Remove { key, done }).is_ok() {
            let _ = removed.await;
        }
    }

    /// Says goodbye for every entry left and for the instance, then stops.
    pub(crate) async fn stop(mut self) {
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::Stop { done }).is_ok() {
            let _ = stopped.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The error of a registration the service could not take.
    pub(crate) fn stopped(&self) -> StateError {
        StateError::Backend {
            backend: self.backend,
            operation: "store a heartbeat",
            source: crate::state::BackendError::Masked("the heartbeat service stopped".to_owned()),
        }
    }
}

/// An agent's entry as this service keeps it.
struct Entry {
    presence: AgentPresence,
    in_flight: InFlightSource,
    /// When the entry was last written.
    written: Instant,
}

struct Service {
    bus: Bus,
    store: StateStore,
    /// The instance whose heartbeat this service writes (the instance of its
    /// agents), with its key, once an agent is registered.
    instance: Option<(EntryKey, InstanceBeat)>,
    /// The shortest interval and `offline_after` of the agents registered.
    options: Option<PresenceOptions>,
    /// How long an agent's entry lives without a rewrite.
    agent_ttl: Duration,
    entries: HashMap<EntryKey, Entry>,
    next_beat: Option<Instant>,
    view: OnlineView,
    changes: Option<BoxStream<'static, PresenceChange>>,
}

impl Service {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Register { presence, options, in_flight, stored }) => {
                        let outcome = self.register(presence, options, in_flight).await;
                        let _ = stored.send(outcome);
                    }
                    Some(Command::Remove { key, done }) => {
                        self.goodbye(&key).await;
                        let _ = done.send(());
                    }
                    Some(Command::Stop { done }) => {
                        self.goodbye_all().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.goodbye_all().await;
                        return;
                    }
                },
                () = sleep_until(self.next_beat) => self.beat().await,
                change = next_change(&mut self.changes) => match change {
                    Some(change) => {
                        let gone = self.view.apply(change);
                        self.report_deaths(gone).await;
                    }
                    // Reopened at the next heartbeat.
                    None => self.changes = None,
                },
            }
        }
    }

    async fn register(
        &mut self,
        mut presence: AgentPresence,
        options: PresenceOptions,
        in_flight: InFlightSource,
    ) -> Result<EntryKey, StateError> {
        let key = presence.entry_key()?;
        warn_about_options(&self.store, &options);
        let merged = self.options.map_or(options, |current| PresenceOptions {
            interval: current.interval.min(options.interval),
            offline_after: current.offline_after.min(options.offline_after),
        });
        self.options = Some(merged);
        if self.instance.is_none() {
            let instance = Name::parse("instance id", &presence.instance_id)?;
            let beat = InstanceBeat {
                instance_id: presence.instance_id.clone(),
                host: presence.host.clone(),
                last_seen: clock::now(),
            };
            self.view.own(presence.instance_id.clone());
            let owner = Name::parse("agent name", &presence.name)?;
            self.instance = Some((instance_key(&owner, &instance), beat));
            self.write_beat().await?;
            self.next_beat = Some(Instant::now() + interval(&merged));
            self.open_changes(merged.interval).await;
        }
        presence.in_flight = in_flight();
        put_agent(&self.store, &key, &presence, self.agent_ttl).await?;
        self.entries.insert(
            key.clone(),
            Entry {
                presence,
                in_flight,
                written: Instant::now(),
            },
        );
        Ok(key)
    }

    /// Writes the instance's heartbeat, and every agent entry whose load
    /// changed or that would soon be forgotten, together.
    async fn beat(&mut self) {
        let Some(options) = self.options else {
            self.next_beat = None;
            return;
        };
        self.next_beat = Some(Instant::now() + interval(&options));
        if self.changes.is_none() {
            self.view.clear();
            self.open_changes(options.interval).await;
        }
        if let Err(err) = self.write_beat().await {
            tracing::warn!(%err, "heartbeat not stored");
        }
        let refresh = self.agent_ttl / 2;
        let now = Instant::now();
        let mut due = Vec::new();
        for (key, entry) in &mut self.entries {
            let in_flight = (entry.in_flight)();
            if in_flight != entry.presence.in_flight || now - entry.written >= refresh {
                entry.presence.in_flight = in_flight;
                entry.written = now;
                due.push((key.clone(), entry.presence.clone()));
            }
        }
        let store = &self.store;
        let ttl = self.agent_ttl;
        let written = futures::future::join_all(
            due.iter()
                .map(|(key, presence)| put_agent(store, key, presence, ttl)),
        )
        .await;
        for ((key, _), result) in due.iter().zip(written) {
            if let Err(err) = result {
                tracing::warn!(%err, ?key, "presence entry not stored");
            }
        }
    }

    async fn write_beat(&mut self) -> Result<(), StateError> {
        let (Some((key, beat)), Some(options)) = (&mut self.instance, self.options) else {
            return Ok(());
        };
        beat.last_seen = clock::now();
        let value = serde_json::to_vec(beat).expect("a heartbeat serializes");
        self.store
            .put_entry(key, value, options.offline_after)
            .await
    }

    async fn open_changes(&mut self, poll: Duration) {
        match super::changes(&self.store, poll).await {
            Ok(changes) => self.changes = Some(changes),
            Err(err) => {
                tracing::warn!(%err, "cannot watch presence entries; agents going offline are not reported by this runtime");
            }
        }
    }

    /// Reports each agent of a dead instance, and removes its entry.
    async fn report_deaths(&mut self, gone: Vec<AgentPresence>) {
        for agent in gone {
            report_offline(
                &self.bus,
                self.view.reporter(),
                &agent,
                OfflineReason::HeartbeatTimeout,
            )
            .await;
            // An agent identity may remove its own agent's entries only: a
            // refused removal would hold this loop, and its heartbeats, for
            // the request's timeout. Another's entry expires on its own.
            let may_remove = self
                .bus
                .identity()
                .is_none_or(|me| me.as_str() == agent.name);
            if may_remove && let Ok(key) = agent.entry_key() {
                let remembered = self.remembered();
                if let Err(err) = self.store.remove_entry(&key, remembered).await {
                    tracing::debug!(%err, agent = %agent.name, "cannot remove a dead agent's entry; it expires on its own");
                }
            }
        }
    }

    /// How long a removal stays distinguishable from an expiry: long enough
    /// that every watcher's next look sees it so (Redis polls by interval).
    fn remembered(&self) -> Duration {
        let offline_after = self
            .options
            .map_or(PresenceOptions::default().offline_after, |o| {
                o.offline_after
            });
        (offline_after * 2).max(Duration::from_secs(60))
    }

    async fn goodbye(&mut self, key: &EntryKey) {
        let Some(mut entry) = self.entries.remove(key) else {
            return;
        };
        if let Err(err) = self.store.remove_entry(key, self.remembered()).await {
            tracing::warn!(%err, agent = %entry.presence.name, "cannot remove the presence entry; it expires on its own");
        }
        if let Some((_, beat)) = &self.instance {
            entry.presence.last_seen = beat.last_seen.clone();
        }
        report_offline(
            &self.bus,
            Some(entry.presence.instance_id.clone()),
            &entry.presence,
            OfflineReason::Shutdown,
        )
        .await;
    }

    async fn goodbye_all(&mut self) {
        let keys: Vec<EntryKey> = self.entries.keys().cloned().collect();
        for key in keys {
            self.goodbye(&key).await;
        }
        if let Some((key, _)) = self.instance.take()
            && let Err(err) = self.store.remove_entry(&key, self.remembered()).await
        {
            tracing::warn!(%err, "cannot remove the instance's heartbeat; it expires on its own");
        }
        if let Err(err) = self.bus.flush().await {
            tracing::warn!(%err, "flush after agent_offline failed");
        }
    }
}

/// Stores an agent's entry.
async fn put_agent(
    store: &StateStore,
    key: &EntryKey,
    presence: &AgentPresence,
    ttl: Duration,
) -> Result<(), StateError> {
    let value = serde_json::to_vec(presence).expect("a presence serializes");
    store.put_entry(key, value, ttl).await
}

/// Publishes `platform.events.agent_offline` for `gone`, as `reporter`.
async fn report_offline(
    bus: &Bus,
    reporter: Option<String>,
    gone: &AgentPresence,
    reason: OfflineReason,
) {
    let event = OfflineEvent {
        agent: gone.name.clone(),
        instance_id: gone.instance_id.clone(),
        timestamp: clock::now(),
        reason,
        last_seen: gone.last_seen.clone(),
        host: gone.host.clone(),
        reported_by: reporter.unwrap_or_default(),
    };
    if let Err(err) = bus
        .publish_platform_event(events::AGENT_OFFLINE, &event)
        .await
    {
        tracing::warn!(%err, agent = %gone.name, "cannot publish agent_offline");
    }
}

fn interval(options: &PresenceOptions) -> Duration {
    options.interval.max(Duration::from_millis(10))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next change, or never when there is no change stream.
async fn next_change(
    changes: &mut Option<BoxStream<'static, PresenceChange>>,
) -> Option<PresenceChange> {
    match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

fn warn_about_options(store: &StateStore, options: &PresenceOptions) {
    let PresenceOptions {
        interval,
        offline_after,
    } = *options;
    if interval >= offline_after {
        tracing::warn!(
            ?interval,
            ?offline_after,
            "the heartbeat interval should be well below offline_after, or the agent will flap offline"
        );
    }
    if let Some(cap) = store.entry_ttl_cap().filter(|cap| offline_after > *cap) {
        tracing::warn!(
            ?offline_after,
            max_age = ?cap,
            "offline_after exceeds the presence bucket's max_age, which applies instead"
        );
    }
}
