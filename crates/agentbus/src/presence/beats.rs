//! One task per runtime keeps the presence entries of all its agents: it
//! writes each entry's heartbeat when it is due (entries due together go out
//! together, pipelined), watches everyone's entries once to report the
//! agents whose heartbeats stopped, and says goodbye for entries removed.
//!
//! Cost: one stored message per agent per interval, one watch per runtime
//! (it receives every heartbeat on the bus), one task and one timer per
//! runtime, whatever the number of agents.

use super::offline::OnlineView;
use super::{AgentPresence, PresenceChange, PresenceOptions};
use crate::client::Bus;
use crate::clock;
use crate::events::{OfflineEvent, OfflineReason};
use crate::state::{EntryKey, StateError, StateStore};
use crate::subject::events;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Where a heartbeat reads the number of tasks in flight.
pub(crate) type InFlightSource = Arc<dyn Fn() -> usize + Send + Sync>;

/// Heartbeats due within this much of each other go out in one batch.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// The heartbeat service of one runtime; stops (saying goodbye for every
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
        /// The first heartbeat's outcome.
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
        let service = Service {
            bus,
            store,
            entries: HashMap::new(),
            due: BinaryHeap::new(),
            view: OnlineView::default(),
            changes: None,
            poll: None,
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

    /// Keeps `presence` from now on; returns once its first heartbeat is
    /// stored (or says why it was not). `in_flight` is read at each heartbeat.
    pub(crate) async fn register(
        &self,
        presence: AgentPresence,
        options: PresenceOptions,
        in_flight: InFlightSource,
    ) -> Result<EntryKey, StateError> {
        let outcome = self.register_later(presence, options, in_flight);
        outcome.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// [`Beats::register`] without waiting: the first heartbeat's outcome
    /// arrives on the returned channel.
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

    /// Removes an entry (a goodbye: watchers do not report it as a timeout)
    /// and publishes its `agent_offline` with reason `shutdown`.
    pub(crate) async fn remove(&self, key: EntryKey) {
        let (done, removed) = oneshot::channel();
        if self.commands.send(Command::Remove { key, done }).is_ok() {
            let _ = removed.await;
        }
    }

    /// Says goodbye for every entry left, then stops.
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

struct Entry {
    presence: AgentPresence,
    options: PresenceOptions,
    in_flight: InFlightSource,
    /// When its next heartbeat is due.
    next: Instant,
}

struct Service {
    bus: Bus,
    store: StateStore,
    entries: HashMap<EntryKey, Entry>,
    /// Heartbeats by when they are due; stale items (removed entries, or an
    /// entry due later than noted) are skipped as they come up.
    due: BinaryHeap<Reverse<(Instant, EntryKey)>>,
    view: OnlineView,
    changes: Option<BoxStream<'static, PresenceChange>>,
    /// How often the watch of a backend without a change feed looks (Redis):
    /// the shortest interval of the entries kept.
    poll: Option<Duration>,
}

impl Service {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let next_due = self.due.peek().map(|Reverse((at, _))| *at);
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
                () = sleep_until(next_due) => self.beat_due().await,
                change = next_change(&mut self.changes) => match change {
                    Some(change) => {
                        if let Some(gone) = self.view.apply(change) {
                            let reporter = self.view.reporter();
                            report_offline(&self.bus, reporter, &gone, OfflineReason::HeartbeatTimeout).await;
                        }
                    }
                    // Reopened at the next heartbeat.
                    None => self.changes = None,
                },
            }
        }
    }

    async fn register(
        &mut self,
        presence: AgentPresence,
        options: PresenceOptions,
        in_flight: InFlightSource,
    ) -> Result<EntryKey, StateError> {
        let key = presence.entry_key()?;
        warn_about_options(&self.store, &options);
        let mut entry = Entry {
            presence,
            options,
            in_flight,
            next: Instant::now(),
        };
        put(&self.store, &key, &mut entry).await?;
        entry.next = Instant::now() + interval(&options);
        self.due.push(Reverse((entry.next, key.clone())));
        self.entries.insert(key.clone(), entry);
        self.view.own(key.clone());
        let poll = self
            .poll
            .map_or(interval(&options), |p| p.min(interval(&options)));
        self.poll = Some(poll);
        if self.changes.is_none() {
            self.open_changes().await;
        }
        Ok(key)
    }

    /// Writes every heartbeat due now (or within the batch window), together.
    async fn beat_due(&mut self) {
        let horizon = Instant::now() + BATCH_WINDOW;
        let mut batch = Vec::new();
        while let Some(Reverse((at, _))) = self.due.peek() {
            if *at > horizon {
                break;
            }
            let Some(Reverse((at, key))) = self.due.pop() else {
                break;
            };
            // Skip what was removed, and stale notes of a rescheduled entry.
            if self.entries.get(&key).is_some_and(|entry| entry.next == at) {
                batch.push(key);
            }
        }
        if self.changes.is_none() {
            self.view.clear();
            self.open_changes().await;
        }
        let store = &self.store;
        let values: Vec<(EntryKey, Vec<u8>, Duration)> = batch
            .iter()
            .filter_map(|key| {
                let entry = self.entries.get_mut(key)?;
                entry.presence.in_flight = (entry.in_flight)();
                entry.presence.last_seen = clock::now();
                let value = serde_json::to_vec(&entry.presence).expect("a presence serializes");
                Some((key.clone(), value, entry.options.offline_after))
            })
            .collect();
        let results = futures::future::join_all(
            values
                .iter()
                .map(|(key, value, ttl)| store.put_entry(key, value.clone(), *ttl)),
        )
        .await;
        for ((key, _, _), result) in values.iter().zip(results) {
            if let Err(err) = result {
                tracing::warn!(%err, ?key, "heartbeat not stored");
            }
        }
        let now = Instant::now();
        for key in batch {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.next = now + interval(&entry.options);
                self.due.push(Reverse((entry.next, key)));
            }
        }
    }

    async fn open_changes(&mut self) {
        let poll = self.poll.unwrap_or(PresenceOptions::default().interval);
        match super::changes(&self.store, poll).await {
            Ok(changes) => self.changes = Some(changes),
            Err(err) => {
                tracing::warn!(%err, "cannot watch presence entries; agents going offline are not reported by this runtime");
            }
        }
    }

    async fn goodbye(&mut self, key: &EntryKey) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        self.view.disown(key);
        // The goodbye: removed, not expired, for long enough that every
        // watcher's next look sees it so (Redis polls by interval).
        let remembered = (entry.options.offline_after * 2).max(Duration::from_secs(60));
        if let Err(err) = self.store.remove_entry(key, remembered).await {
            tracing::warn!(%err, agent = %entry.presence.name, "cannot remove the presence entry; it expires on its own");
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
        if let Err(err) = self.bus.flush().await {
            tracing::warn!(%err, "flush after agent_offline failed");
        }
    }
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
    if let Err(err) = bus.publish(events::AGENT_OFFLINE, &event).await {
        tracing::warn!(%err, agent = %gone.name, "cannot publish agent_offline");
    }
}

/// Stores an entry's heartbeat with its in-flight figure read now.
async fn put(store: &StateStore, key: &EntryKey, entry: &mut Entry) -> Result<(), StateError> {
    entry.presence.in_flight = (entry.in_flight)();
    entry.presence.last_seen = clock::now();
    let value = serde_json::to_vec(&entry.presence).expect("a presence serializes");
    store
        .put_entry(key, value, entry.options.offline_after)
        .await
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
