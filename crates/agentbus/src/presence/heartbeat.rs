//! The heartbeat task: writes the entry, watches the others, says goodbye.

use super::offline::OnlineView;
use super::{AgentPresence, PresenceChange, PresenceOptions};
use crate::client::Bus;
use crate::clock;
use crate::events::{OfflineEvent, OfflineReason};
use crate::state::{BackendError, StateError, StateStore};
use crate::subject::events;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the heartbeat reads the number of tasks in flight.
pub(crate) type InFlightSource = Arc<dyn Fn() -> usize + Send + Sync>;

/// Publishes heartbeats for `presence` every `interval` until dropped or
/// stopped (then removes the entry and publishes `agent_offline`), and
/// reports agents whose heartbeats stopped (see the [module](super)).
///
/// ```no_run
/// # async fn example(bus: agentbus::Bus, store: agentbus::state::StateStore) {
/// use agentbus::presence::{AgentPresence, Heartbeat, PresenceOptions};
/// let name = agentbus::Name::parse("agent name", "mcp_agent").expect("valid");
/// let instance = uuid::Uuid::new_v4().simple().to_string();
/// let presence = AgentPresence::new(&name, &instance, &[]);
/// let heartbeat = Heartbeat::start(bus, store, presence, PresenceOptions::default());
/// heartbeat.set_in_flight(2);
/// heartbeat.stop().await;
/// # }
/// ```
#[derive(Debug)]
pub struct Heartbeat {
    in_flight: Arc<AtomicUsize>,
    stop: Option<watch::Sender<bool>>,
    first_beat: watch::Receiver<Option<Result<(), String>>>,
    backend: &'static str,
    task: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts the heartbeat task on the current tokio runtime. The name and
    /// instance id must be valid [`Name`](crate::Name)s (they become key
    /// parts); if not, nothing is written and [`Heartbeat::first_beat`] says why.
    pub fn start(
        bus: Bus,
        store: StateStore,
        presence: AgentPresence,
        options: PresenceOptions,
    ) -> Heartbeat {
        let in_flight = Arc::new(AtomicUsize::new(presence.in_flight));
        let source = in_flight.clone();
        let source: InFlightSource = Arc::new(move || source.load(Ordering::Relaxed));
        Self::start_with_source(bus, store, presence, options, in_flight, source)
    }

    /// Like [`Heartbeat::start`], with the in-flight figure read from `source`
    /// at each heartbeat (the runtime passes its task counters).
    pub(crate) fn start_with_in_flight(
        bus: Bus,
        store: StateStore,
        presence: AgentPresence,
        options: PresenceOptions,
        source: InFlightSource,
    ) -> Heartbeat {
        let in_flight = Arc::new(AtomicUsize::new(0));
        Self::start_with_source(bus, store, presence, options, in_flight, source)
    }

    fn start_with_source(
        bus: Bus,
        store: StateStore,
        presence: AgentPresence,
        options: PresenceOptions,
        in_flight: Arc<AtomicUsize>,
        source: InFlightSource,
    ) -> Heartbeat {
        let (stop, stop_rx) = watch::channel(false);
        let (first_tx, first_beat) = watch::channel(None);
        let backend = store.backend_name();
        let beating = Beating {
            bus,
            store,
            presence,
            options,
            in_flight: source,
            first_beat: Some(first_tx),
        };
        Heartbeat {
            in_flight,
            stop: Some(stop),
            first_beat,
            backend,
            task: Some(tokio::spawn(beating.run(stop_rx))),
        }
    }

    /// Sets the number of tasks in flight carried by the next heartbeats.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// Waits until the first heartbeat was written, or says why it was not.
    pub async fn first_beat(&self) -> Result<(), StateError> {
        let mut first = self.first_beat.clone();
        let outcome = match first.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => Some(Err(
                "the heartbeat task ended before its first heartbeat".into()
            )),
        };
        match outcome {
            Some(Err(reason)) => Err(StateError::Backend {
                backend: self.backend,
                operation: "store the first heartbeat",
                source: BackendError::Masked(reason),
            }),
            _ => Ok(()),
        }
    }

    /// Stops the heartbeats, removes the entry and publishes `agent_offline`.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Heartbeat {
    /// Dropping the stop sender tells the task to say goodbye on its own.
    fn drop(&mut self) {
        self.stop.take();
    }
}

struct Beating {
    bus: Bus,
    store: StateStore,
    presence: AgentPresence,
    options: PresenceOptions,
    in_flight: InFlightSource,
    first_beat: Option<watch::Sender<Option<Result<(), String>>>>,
}

impl Beating {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let own = match self.presence.entry_key() {
            Ok(own) => own,
            Err(err) => {
                tracing::error!(%err, "presence heartbeats not started");
                self.report_first(Err(err.to_string()));
                return;
            }
        };
        self.warn_about_options();
        let mut view = OnlineView::new(own);
        let mut changes: Option<BoxStream<'static, PresenceChange>> = None;
        let mut ticker =
            tokio::time::interval(self.options.interval.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = ticker.tick() => {
                    if changes.is_none() {
                        // A new watch starts with the current entries.
                        view.clear();
                        changes = self.open_changes().await;
                    }
                    self.beat().await;
                }
                change = next_change(&mut changes) => match change {
                    Some(change) => {
                        if let Some(gone) = view.apply(change) {
                            self.report_offline(&gone, OfflineReason::HeartbeatTimeout).await;
                        }
                    }
                    // Reopened at the next tick.
                    None => changes = None,
                },
            }
        }
        self.goodbye().await;
    }

    async fn open_changes(&self) -> Option<BoxStream<'static, PresenceChange>> {
        match super::changes(&self.store, self.options.interval).await {
            Ok(changes) => Some(changes),
            Err(err) => {
                tracing::warn!(%err, "cannot watch presence entries; agents going offline are not reported by this instance");
                None
            }
        }
    }

    async fn beat(&mut self) {
        self.presence.in_flight = (self.in_flight)();
        self.presence.last_seen = clock::now();
        let result = match self.presence.entry_key() {
            Ok(key) => {
                let value = serde_json::to_vec(&self.presence).expect("a presence serializes");
                self.store
                    .put_entry(&key, value, self.options.offline_after)
                    .await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = &result {
            tracing::warn!(%err, agent = %self.presence.name, "heartbeat not stored");
        }
        self.report_first(result.map_err(|err| err.to_string()));
    }

    fn report_first(&mut self, outcome: Result<(), String>) {
        if let Some(first) = self.first_beat.take() {
            let _ = first.send(Some(outcome));
        }
    }

    async fn goodbye(&self) {
        let Ok(key) = self.presence.entry_key() else {
            return;
        };
        // The goodbye: removed, not expired, for long enough that every
        // watcher's next look sees it so (Redis polls by interval).
        let remembered = (self.options.offline_after * 2).max(Duration::from_secs(60));
        if let Err(err) = self.store.remove_entry(&key, remembered).await {
            tracing::warn!(%err, agent = %self.presence.name, "cannot remove the presence entry; it expires on its own");
        }
        self.report_offline(&self.presence, OfflineReason::Shutdown)
            .await;
        if let Err(err) = self.bus.flush().await {
            tracing::warn!(%err, "flush after agent_offline failed");
        }
    }

    async fn report_offline(&self, gone: &AgentPresence, reason: OfflineReason) {
        let event = OfflineEvent {
            agent: gone.name.clone(),
            instance_id: gone.instance_id.clone(),
            timestamp: clock::now(),
            reason,
            last_seen: gone.last_seen.clone(),
            host: gone.host.clone(),
            reported_by: self.presence.instance_id.clone(),
        };
        if let Err(err) = self.bus.publish(events::AGENT_OFFLINE, &event).await {
            tracing::warn!(%err, agent = %gone.name, "cannot publish agent_offline");
        }
    }

    fn warn_about_options(&self) {
        let PresenceOptions {
            interval,
            offline_after,
        } = self.options;
        if interval >= offline_after {
            tracing::warn!(
                ?interval,
                ?offline_after,
                "the heartbeat interval should be well below offline_after, or the agent will flap offline"
            );
        }
        if let Some(cap) = self
            .store
            .entry_ttl_cap()
            .filter(|cap| offline_after > *cap)
        {
            tracing::warn!(
                ?offline_after,
                max_age = ?cap,
                "offline_after exceeds the presence bucket's max_age, which applies instead"
            );
        }
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
